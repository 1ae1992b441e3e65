"""No pod is trapped: deleted pods let go when no controller holds the Lease, and at uninstall."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiException

from kube import api
from rebuild import release
from rebuild.errors import ApiError
from tests.unit.rebuild_fake import NEW, OLD, FakeApiserver, Rig, cluster, finalizers, pod

LEASE = ("kube-system", "fulcrum-rebuild")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def renew(apiserver: FakeApiserver, at: str) -> None:
    spec = {"holderIdentity": "fulcrum-rebuild-0", "renewTime": at, "leaseDurationSeconds": 15}
    apiserver.leases["/".join(LEASE)] = {"metadata": {"name": LEASE[1]}, "spec": spec}


def releaser(rig: Rig, clock: Clock, released: list[str] | None = None) -> release.Releaser:
    return release.Releaser(
        rig.controller.writes,
        namespace=LEASE[0],
        name=LEASE[1],
        after=120,
        clock=clock,
        on_release=(released if released is not None else []).append,
    )


def deleted(uid: str, name: str) -> dict[str, object]:
    out = pod(uid, name=name)
    out["metadata"]["deletionTimestamp"] = "2026-12-07T03:00:00Z"
    return out


def test_a_deleted_pod_is_released_once_no_controller_renewed_the_lease_for_the_bound() -> None:
    rig = cluster(("pods", deleted(OLD, "web-0")), ("pods", pod(NEW, name="web-1")))
    renew(rig.apiserver, "2026-12-07T03:00:00.000000Z")
    clock, released = Clock(), []
    watcher = releaser(rig, clock, released)
    assert watcher.check() == []  # the Lease as it was last renewed

    clock.now += 119
    assert watcher.check() == []  # within the bound: the controller may be restarting
    assert finalizers(rig) == [api.FINALIZER]

    clock.now += 1
    assert watcher.check() == [OLD]
    rig.controller.writes.events.flush()

    assert "web-0" not in {p["metadata"]["name"] for p in rig.apiserver.objects["pods"].values()}
    assert finalizers(rig, "web-1") == [api.FINALIZER]  # a live pod keeps it
    assert released == [OLD]
    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildReleased", "Warning")
    assert (
        "no rebuild controller has renewed Lease kube-system/fulcrum-rebuild for 120 s"
        in (event["message"])
    )
    assert rig.apiserver.reservations() == []


def test_a_renewed_lease_keeps_every_pod_held() -> None:
    rig = cluster(("pods", deleted(OLD, "web-0")))
    clock = Clock()
    watcher = releaser(rig, clock)
    for second in range(0, 600, 10):
        renew(rig.apiserver, f"2026-12-07T03:{second // 60:02d}:{second % 60:02d}Z")
        clock.now += 10
        assert watcher.check() == []
    assert finalizers(rig) == [api.FINALIZER]


def test_no_lease_at_all_counts_from_the_start() -> None:
    """The controller was never installed, or uninstalled: its Lease is gone."""
    rig = cluster(("pods", deleted(OLD, "web-0")))
    clock = Clock()
    watcher = releaser(rig, clock)
    assert watcher.check() == []
    clock.now += 120
    assert watcher.check() == [OLD]


def test_a_lease_that_cannot_be_read_releases_nothing() -> None:
    rig = cluster(("pods", deleted(OLD, "web-0")))
    clock = Clock()
    watcher = releaser(rig, clock)

    def forbidden() -> None:
        raise ApiError(403, "Forbidden")

    watcher.watch.read = forbidden  # type: ignore[assignment]
    clock.now += 1000
    assert watcher.check() == []
    assert finalizers(rig) == [api.FINALIZER]


def test_release_all_lets_every_pod_go_across_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    pods = [("pods", pod(f"uid-{i}", name=f"web-{i}")) for i in range(3)]
    rig = cluster(*pods, ("pods", deleted(OLD, "old-0")))
    plain = pod("plain", name="plain-0", finalized=False)
    rig.apiserver.put("pods", plain)
    listed = rig.apiserver.list_pod_for_all_namespaces

    def small_pages(**kwargs: object) -> object:
        return listed(**{**kwargs, "limit": 2})  # type: ignore[arg-type]

    monkeypatch.setattr(rig.apiserver, "list_pod_for_all_namespaces", small_pages)

    assert release.release_all(rig.controller.writes) == 4

    for i in range(3):
        assert finalizers(rig, f"web-{i}") == []
    assert {p["metadata"]["name"] for p in rig.apiserver.objects["pods"].values()} == {
        "web-0",
        "web-1",
        "web-2",
        "plain-0",
    }
    assert [e["reason"] for e in rig.apiserver.events] == ["RebuildReleased"] * 4
    assert release.release_all(rig.controller.writes) == 0  # nothing left, nothing written


@pytest.mark.parametrize("existing", [True, False])
def test_release_all_first_takes_the_lease_from_the_controllers(existing: bool) -> None:
    """Else a running controller would put the finalizer back on live pods while the chart is
    being uninstalled."""
    rig = cluster(("pods", pod(NEW, name="web-1")))
    if existing:
        renew(rig.apiserver, "2026-12-07T03:00:00.000000Z")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        assert finalizers(rig, "web-1") == [api.FINALIZER]  # the Lease first, then the pods
        slept.append(seconds)

    count = release.release_all(rig.controller.writes, lease=(*LEASE, 15), sleep=sleep)

    assert count == 1 and slept == [15]
    spec = rig.apiserver.leases["/".join(LEASE)]["spec"]
    assert spec["holderIdentity"] == release.RELEASE_ALL_HOLDER
    assert spec["leaseDurationSeconds"] == release.HOLD_SECONDS
    assert finalizers(rig, "web-1") == []


def test_release_all_takes_the_lease_even_when_the_leader_renews_meanwhile() -> None:
    rig = cluster(("pods", pod(NEW, name="web-1")))
    renew(rig.apiserver, "2026-12-07T03:00:00.000000Z")
    replace = rig.apiserver.replace_namespaced_lease
    conflicts = [1]

    def racing(name: str, namespace: str, body: dict[str, object]) -> object:
        if conflicts:
            conflicts.pop()
            raise ApiException(status=409, reason="the object has been modified")
        return replace(name, namespace, body)

    rig.apiserver.replace_namespaced_lease = racing  # type: ignore[method-assign]

    assert release.release_all(rig.controller.writes, lease=(*LEASE, 0), sleep=lambda s: None)
    assert rig.apiserver.leases["/".join(LEASE)]["spec"]["holderIdentity"] == (
        release.RELEASE_ALL_HOLDER
    )
