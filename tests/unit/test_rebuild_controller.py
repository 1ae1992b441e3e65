"""The local-rebuild controller against an in-memory apiserver (``rebuild_fake``), one reconcile
at a time: opting in and refusals, reservations, crashes, claims and expiry."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import NoReturn

import pytest

from kube import api, eligibility, ippool
from kube.api import EXPIRED_GRACE
from kube.hooks import ANNOTATION as HOOKS
from kube.hooks import ReadyHook, UnknownHookError
from policies.plugins import PluginRegistry
from rebuild.controller import CRASH_ENV
from tests.unit.rebuild_fake import (
    BOUND,
    HELD,
    IP,
    NEW,
    NODE,
    OLD,
    OPTED,
    POOL,
    Obj,
    cluster,
    finalizers,
    held,
    node,
    pod,
)

# --- 1. opting in, and refusals ---------------------------------------------------------------


def test_an_opted_in_pod_gets_the_finalizer() -> None:
    rig = cluster(("pods", pod(OLD, finalized=False)))

    assert rig.reconcile("pods/ns/web-0") is None

    assert finalizers(rig) == [api.FINALIZER]
    assert rig.apiserver.events == []
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"pod:{OLD}"}


REFUSALS = {
    "bad fallback": ({**BOUND, api.FALLBACK: "sometimes"}, [], api.FALLBACK),
    "emptyDir": (BOUND, [{"name": "scratch", "emptyDir": {}}], "scratch"),
    "pool elsewhere": ({api.REBUILD: "local", api.IP_POOL: "other/pool"}, [], api.IP_POOL),
    "job": (BOUND, [], "Job"),
}


@pytest.mark.parametrize("finalized", [False, True], ids=["new", "finalized"])
@pytest.mark.parametrize("case", REFUSALS)
def test_a_pod_that_cannot_be_rebuilt_is_refused_once(case: str, finalized: bool) -> None:
    annotations, volumes, named = REFUSALS[case]
    owners = [{"kind": "Job", "name": "batch", "controller": True}] if case == "job" else []
    refused = pod(OLD, annotations=annotations, volumes=volumes, owners=owners, finalized=finalized)
    rig = cluster(("pods", refused))

    for _ in range(2):  # the second look finds its own status annotation: no second Event
        assert rig.reconcile("pods/ns/web-0") is None

    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildRefused", "Warning")
    assert named in event["message"]
    assert event["involvedObject"]["uid"] == OLD
    status = rig.apiserver.status("web-0")
    assert status["action"] == "refused"
    assert named in status["reason"]
    assert finalizers(rig) == []


def test_accepted_data_loss_is_not_refused() -> None:
    annotations = {**BOUND, api.ACCEPT_DATA_LOSS: "true"}
    scratch = [{"name": "tmp", "emptyDir": {}}]
    rig = cluster(("pods", pod(OLD, annotations=annotations, volumes=scratch, finalized=False)))

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.events == []
    assert finalizers(rig) == [api.FINALIZER]


def test_a_running_pod_refused_later_keeps_its_address() -> None:
    # it was opted in (and got the finalizer); then someone edits a bad annotation onto it
    rig = cluster(("pods", pod(OLD, annotations={**BOUND, api.FALLBACK: "sometimes"})))

    rig.reconcile("pods/ns/web-0")

    assert finalizers(rig) == []
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"pod:{OLD}"}


def test_an_unknown_hook_is_refused_by_the_rule_the_extender_uses() -> None:
    annotations = {**BOUND, HOOKS: "ready,drained"}
    refused = pod(OLD, annotations=annotations, finalized=False)
    rig = cluster(("pods", refused))

    rig.reconcile("pods/ns/web-0")

    expected = eligibility.refusal(refused, api.read_options(annotations), rig.controller.hooks)
    assert "the rebuild controller has no hook 'drained'" in expected
    assert 'where the rebuild controller runs (docs/rebuild.md, "Shipping a hook")' in expected
    [event] = rig.apiserver.events
    assert (event["reason"], event["message"]) == ("RebuildRefused", expected)
    assert rig.apiserver.status("web-0")["reason"] == expected
    assert eligibility.refused_by_controller(rig.apiserver.pod("web-0"))
    assert finalizers(rig) == []


def test_a_refused_pod_is_guarded_once_the_controller_has_its_hook() -> None:
    """Upgraded with the hook's package, the controller holds the pod's room after all, and
    its status says so (the extender reads a refusal there)."""
    annotations = {**BOUND, HOOKS: "ready,drained"}
    rig = cluster(("pods", pod(OLD, annotations=annotations, finalized=False)))
    rig.reconcile("pods/ns/web-0")
    assert rig.apiserver.status("web-0")["action"] == "refused"

    rig.restart()
    rig.controller.hooks = PluginRegistry(
        "rebuild hook", {"ready": ReadyHook(), "drained": ReadyHook()}, unknown=UnknownHookError
    )
    rig.reconcile("pods/ns/web-0")

    assert finalizers(rig) == [api.FINALIZER]
    assert rig.apiserver.status("web-0")["action"] == "guarded"
    assert not eligibility.refused_by_controller(rig.apiserver.pod("web-0"))


def test_a_create_first_pod_is_not_guarded_and_leaves_without_a_reservation() -> None:
    annotations = {**BOUND, api.ORDER: "create-first"}
    rig = cluster(("pods", pod(OLD, annotations=annotations, finalized=False)))
    rig.reconcile("pods/ns/web-0")
    assert finalizers(rig) == []

    rig.apiserver.put("pods", pod(OLD, annotations=annotations))  # guarded before the change
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.get("pods", "web-0") is None
    assert rig.apiserver.pool()["status"]["allocations"] == {}
    assert rig.apiserver.events == []


# --- 2. the predecessor leaves: a Reservation -------------------------------------------------


def test_a_deleted_pod_leaves_a_reservation_then_goes() -> None:
    predecessor = pod(OLD)
    rig = cluster(("pods", predecessor))
    rig.apiserver.delete_pod("web-0")

    assert rig.reconcile("pods/ns/web-0") is None

    [obj] = rig.apiserver.reservations()
    reservation = api.Reservation.from_object(obj)
    assert reservation.name == HELD
    assert (reservation.node, reservation.key) == (NODE, "Pod/ns/web-0")
    assert (reservation.ip, reservation.pool, reservation.claims) == (IP, POOL, ("data-0",))
    assert (reservation.predecessor, reservation.predecessor_uid) == ("web-0", OLD)
    assert reservation.template == api.reservation_template(predecessor)
    assert (reservation.phase, reservation.fallback) == ("Held", "wait")
    assert reservation.expires_at is None  # "wait" waits forever
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.get("pods", "web-0") is None  # the finalizer is gone, and so is the pod
    assert rig.apiserver.reasons() == ["Reserved"]
    assert "node n1, IP 10.0.0.2, PVCs data-0" in rig.apiserver.events[0]["message"]

    # again: the pod's DELETED event, then a restart that lists everything afresh
    pool_before = rig.apiserver.pool()
    assert rig.reconcile("pods/ns/web-0") is None
    rig.restart()
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.reconcile(f"reservations/ns/{HELD}") is None  # "wait": held until claimed

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [HELD]
    assert rig.apiserver.pool() == pool_before
    assert rig.apiserver.reasons() == ["Reserved"]


def test_a_pool_write_that_lost_a_race_is_redone_on_the_fresh_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    read = rig.apiserver.get_namespaced_custom_object

    def read_then_race(group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        found = read(group, version, namespace, plural, name)
        if plural == api.IPPOOLS and len(ippool.holders(found)) == 1:
            other, _ = ippool.allocate(found, "pod:other")  # the extender, meanwhile
            rig.apiserver.put(api.IPPOOLS, other)
        return found

    monkeypatch.setattr(rig.apiserver, "get_namespaced_custom_object", read_then_race)
    # the read-modify-write path (a single move is one conditional patch and needs no read)
    rig.controller.writes.update_pool(
        "ns", "web", lambda p: ippool.transfer(p, f"pod:{OLD}", f"reservation:{HELD}")
    )

    holders = ippool.holders(rig.apiserver.pool())
    assert holders == {f"reservation:{HELD}": IP, "pod:other": "10.0.0.1"}


def test_a_reschedule_reservation_expires_after_the_wait() -> None:
    annotations = {**BOUND, api.FALLBACK: "reschedule", api.WAIT: "90s"}
    rig = cluster(("pods", pod(OLD, annotations=annotations)))
    rig.apiserver.delete_pod("web-0")

    rig.reconcile("pods/ns/web-0")

    [obj] = rig.apiserver.reservations()
    expires = api.Reservation.from_object(obj).expires_at
    assert expires is not None
    assert timedelta(seconds=85) < expires - datetime.now(UTC) <= timedelta(seconds=90)
    delay = rig.reconcile(f"reservations/ns/{HELD}")
    assert delay is not None and 85 < delay <= 90.1


def test_an_unbound_pod_leaves_without_a_reservation() -> None:
    rig = cluster(("pods", pod(OLD, node_name=None)))
    rig.apiserver.delete_pod("web-0")

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.get("pods", "web-0") is None
    assert rig.apiserver.pool()["status"]["allocations"] == {}


# --- 3. crashes -------------------------------------------------------------------------------


class Crash(Exception):
    """Raised at a crash point instead of ending the process."""


def _exit(code: int) -> NoReturn:
    raise Crash(code)


@pytest.mark.parametrize("step", ["reserved", "released", "claiming"])
def test_a_restart_after_a_crash_finishes_the_rebuild(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rebuild.controller.os._exit", _exit)
    monkeypatch.setenv(CRASH_ENV, step)
    rig = cluster(("pods", pod(OLD)))
    crashes: list[str] = []

    def reconcile(key: str) -> float | None:
        try:
            return rig.reconcile(key)
        except Crash:
            crashes.append(key)
            monkeypatch.delenv(CRASH_ENV)
            rig.restart()  # same apiserver state, empty caches
            return rig.reconcile(key)

    rig.apiserver.delete_pod("web-0")
    reconcile("pods/ns/web-0")
    reconcile("pods/ns/web-0")  # its DELETED event
    assert len(crashes) == (0 if step == "claiming" else 1)
    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [HELD]
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.get("pods", "web-0") is None

    # the extender binds the successor on the reserved node, with the reservation and the IP
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False)
    rig.apiserver.put("pods", successor)
    reconcile("pods/ns/web-0")
    reconcile("pods/ns/web-0")

    assert len(crashes) == 1
    assert rig.apiserver.reservations() == []
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.status("web-0")["action"] == "rebuilt"
    assert rig.apiserver.reasons().count("RebuildClaimed") == 1


# --- 4. the successor claims the reservation --------------------------------------------------


def test_the_successor_takes_the_ip_and_is_rebuilt_once_ready() -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False, ready=False)
    rig.apiserver.put("pods", successor)

    assert rig.reconcile("pods/ns/web-0") is None

    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.reservations() == []
    assert finalizers(rig) == [api.FINALIZER]
    assert rig.apiserver.status("web-0")["action"] == "claimed"
    latency = rig.controller.metrics.rebuild_latency.collect()[0].samples
    assert [s.value for s in latency if s.name.endswith("_count")] == [1]  # one rebuild timed
    claimed = rig.apiserver.events[-1]
    assert (claimed["reason"], claimed["involvedObject"]["uid"]) == ("RebuildClaimed", NEW)
    assert (
        claimed["message"] == "back on node n1 in place of web-0 with IP 10.0.0.2 and PVCs data-0"
    )

    for _ in range(2):  # not Ready yet: look again soon
        delay = rig.reconcile("pods/ns/web-0")
        assert delay is not None and delay > 0
    assert rig.apiserver.status("web-0")["action"] == "claimed"

    rig.apiserver.put("pods", {**rig.apiserver.pod("web-0"), "status": pod(NEW)["status"]})
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.apiserver.status("web-0")["action"] == "rebuilt"
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.apiserver.reasons() == ["Reserved", "RebuildClaimed"]  # "rebuilt" is no Event


def test_a_claim_is_finished_even_when_the_reservations_watch_lags() -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False)
    rig.apiserver.put("pods", successor)
    rig.sync()
    rig.controller.store.apply("reservations", "DELETED", rig.apiserver.reservations()[0])

    rig.controller.reconcile("pods/ns/web-0")  # the store has not seen the Reservation

    assert rig.apiserver.reservations() == []
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.status("web-0")["action"] == "claimed"


def test_a_successor_deleted_before_its_claim_was_finished_hands_the_ip_on() -> None:
    """Under load the claim's bookkeeping can trail the rollout: the next change deletes the
    successor while its pool entry still names the reservation it claimed."""
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    rig.apiserver.put("pods", pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}))
    rig.apiserver.delete_pod("web-0")  # before any worker looked at the bound successor

    rig.reconcile("pods/ns/web-0")

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [
        api.reservation_name(NEW)
    ]
    assert ippool.holders(rig.apiserver.pool()) == {f"reservation:{api.reservation_name(NEW)}": IP}
    assert rig.apiserver.get("pods", "web-0") is None


def test_a_lagging_watch_replays_no_release_and_touches_no_namesake() -> None:
    """A StatefulSet's next pod has its predecessor's name: a watch that still shows the old pod
    terminating must neither reserve for it again (its room was claimed and dropped already)
    nor write to the new pod."""
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    stale = copy.deepcopy(rig.apiserver.pod("web-0"))
    rig.reconcile("pods/ns/web-0")  # reserved, released
    rig.apiserver.objects["reservations"].clear()  # claimed and dropped since
    rig.apiserver.put("pods", pod(NEW, node_name=None, finalized=False, annotations=OPTED))
    fresh = copy.deepcopy(rig.apiserver.pod("web-0"))
    rig.controller.store.replace("reservations", [])
    rig.controller.store.apply("pods", "MODIFIED", stale)  # what our watch still says

    rig.controller.reconcile("pods/ns/web-0")

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pod("web-0") == fresh


def test_writes_to_a_replaced_pod_are_dropped_not_retried() -> None:
    rig = cluster(("pods", pod(OLD, finalized=False)))
    rig.sync()
    rig.apiserver.objects["pods"].clear()
    rig.apiserver.put("pods", pod(NEW, finalized=False))  # same name, another pod

    rig.controller.reconcile("pods/ns/web-0")  # would add our finalizer to the old one

    assert finalizers(rig) == []


def test_an_unguarded_opted_in_pod_jumps_the_queue() -> None:
    rig = cluster()
    queue = rig.controller.queue
    queue.add("reservations/ns/other")
    rig.controller.store.apply("pods", "ADDED", pod(NEW, finalized=False))
    assert queue.get(timeout=0) == "pods/ns/web-0"


# --- 5. expiry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "state"),
    [
        ("node is cordoned", node(cordoned=True)),
        ("node is not Ready", node(ready=False)),
        ("node is gone", None),
    ],
)
def test_an_expired_reservation_lets_the_successor_go_elsewhere(
    trouble: str, state: SimpleNamespace | None
) -> None:
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=timedelta(seconds=-1))),
        ("pods", waiting),
        allocations={IP: f"reservation:{HELD}"},
    )
    if state is None:
        del rig.apiserver.nodes[NODE]
    else:
        rig.apiserver.nodes[NODE] = state

    assert rig.reconcile(f"reservations/ns/{HELD}") == EXPIRED_GRACE.total_seconds()

    [obj] = rig.apiserver.reservations()
    assert obj["status"]["phase"] == "Expired"
    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildFallback", "Warning")
    assert event["involvedObject"]["uid"] == NEW
    says = "node n1 is gone" if state is None else f"within the wait ({trouble})"
    assert says in event["message"]
    assert "keeping IP 10.0.0.2" in event["message"]
    assert rig.apiserver.status("web-0")["action"] == "fallback"
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}

    # within the grace the successor may still claim its IP; nothing changes
    delay = rig.reconcile(f"reservations/ns/{HELD}")
    assert delay is not None and 0 < delay < EXPIRED_GRACE.total_seconds()
    assert len(rig.apiserver.reservations()) == 1
    assert len(rig.apiserver.events) == 1


def test_a_successor_placed_elsewhere_before_expiry_ran_still_gets_its_fallback_event() -> None:
    """The extender stops holding a room once it expires, so kube-scheduler may place the
    successor elsewhere before the controller's expire() runs; expire() then finds no pending
    successor to tell. The claim itself reports the fallback (seen in CI: no RebuildFallback)."""
    elsewhere = pod(
        NEW, node_name="n2", annotations={**BOUND, api.RESERVATION: HELD}, finalized=False
    )
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=timedelta(seconds=-1))),
        ("pods", elsewhere),
        allocations={IP: f"reservation:{HELD}"},
    )
    rig.apiserver.nodes[NODE] = node(cordoned=True)

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.reasons() == ["RebuildFallback", "RebuildClaimed"]
    fallback, claimed = rig.apiserver.events
    assert "(node is cordoned): placed on node n2 instead" in fallback["message"]
    assert fallback["type"] == "Warning"
    assert claimed["message"].startswith("on node n2 (node n1 could not take it back)")
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}

    rig.reconcile(f"reservations/ns/{HELD}")  # expire() after the claim tells nobody again
    assert rig.apiserver.reasons() == ["RebuildFallback", "RebuildClaimed"]


def test_an_expired_reservation_past_its_grace_releases_the_ip_and_goes() -> None:
    past_grace = -EXPIRED_GRACE - timedelta(seconds=1)
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=past_grace, phase="Expired")),
        allocations={IP: f"reservation:{HELD}"},
    )

    assert rig.reconcile(f"reservations/ns/{HELD}") is None

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pool()["status"]["allocations"] == {}


@pytest.mark.parametrize("pool", ["gone", "Not_A_Name"])
def test_a_pod_whose_pool_does_not_exist_is_still_let_go(pool: str) -> None:
    """Its address cannot be returned to a pool that is not there; its finalizer must go."""
    rig = cluster(("pods", pod(OLD, annotations={api.IP_POOL: pool, api.ASSIGNED_IP: IP})))
    rig.apiserver.delete_pod("web-0")

    assert rig.reconcile("pods/ns/web-0") is None
    assert "ns/web-0" not in rig.apiserver.objects["pods"]


def test_an_opted_in_pod_placed_by_another_scheduler_is_told_why_locality_is_lost() -> None:
    placed = pod(OLD)
    placed["spec"]["schedulerName"] = "default-scheduler"
    rig = cluster(("pods", placed))

    rig.reconcile("pods/ns/web-0")

    status = rig.apiserver.status("web-0")
    assert status["action"] == "unmanaged"
    assert status["reason"].startswith("locality cannot be kept: scheduled by default-scheduler")
    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildUnmanaged", "Warning")
