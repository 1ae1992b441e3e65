"""The extender defers to local rebuild (``extender.rebuild_gate``): holds, successors, claims
and pool addresses."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from extender import rebuild_gate
from extender.app import create_app
from extender.bind import BindService
from extender.cache import ClusterCache, PendingPod
from extender.config import ExtenderSettings
from extender.decide import Decider, WeightedPolicy
from extender.rebuild_gate import RebuildGate
from extender.verbs import settle
from kube import api, hooks
from kube import ippool as pools
from kube.resources import pod_request
from policies.registry import default_registry
from tests import builders
from tests.builders import node

pod = functools.partial(builders.pod, cpu="2", labels={"app": "web"})
OPTED = {api.REBUILD: "local", api.IP_POOL: "web"}


def reservation(
    predecessor: dict[str, Any], node_name: str, *, ip: str | None = "10.0.0.2", **kw: Any
) -> dict[str, Any]:
    return api.Reservation(
        name=api.reservation_name(predecessor["metadata"]["uid"]),
        namespace="ns",
        key=str(api.successor_key(predecessor)),
        node=node_name,
        predecessor=predecessor["metadata"]["name"],
        predecessor_uid=predecessor["metadata"]["uid"],
        template=api.reservation_template(predecessor),
        devices=None,
        ip=ip,
        pool="web" if ip else None,
        claims=(),
        fallback=kw.get("fallback", "wait"),
        expires_at=kw.get("expires_at"),
    ).to_object()


class FakeApiserver:
    def __init__(self) -> None:
        self.bound: dict[str, tuple[str, dict[str, str]]] = {}
        self.pool: dict[str, Any] = {
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"cidr": "10.0.0.0/29", "selector": {"matchLabels": {"app": "web"}}},
            "status": {"allocations": {}},
        }

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        self.bound[uid] = (node, annotations)

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        raise AssertionError("not expected")

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, Any]
    ) -> str:
        if not pools.selects(self.pool, pod):
            raise ValueError("not selected")
        self.pool, ip = pools.allocate(self.pool, holder, want=want)
        return ip


def cluster() -> tuple[ClusterCache, RebuildGate, Decider, FakeApiserver, BindService]:
    cache = ClusterCache()
    gate = RebuildGate(cache)
    for name in ("n1", "n2", "n3"):
        cache.apply("nodes", "ADDED", node(name))
    decider = Decider(cache, default_registry(), [WeightedPolicy("LeastAllocated", 1)])
    apiserver = FakeApiserver()
    return cache, gate, decider, apiserver, BindService(cache, apiserver, decider.devices, gate)


def noted(cache: ClusterCache, p: dict[str, Any]) -> PendingPod:
    return cache.note_pending(p, pod_request(p))


def decide(gate: RebuildGate, decider: Decider, p: dict[str, Any]) -> tuple[list[str], str]:
    cache = gate.cache
    pending = noted(cache, p)
    usable = gate.holds(pending).usable
    with cache.lock:
        if usable:
            out = gate.filter_on_holds(decider, cache.snapshot, pending, ["n1", "n2", "n3"], usable)
        else:
            out = decider.filter(cache.snapshot, pending.request, ["n1", "n2", "n3"])
    reasons = {**out.failed, **out.unresolvable}
    return out.passed, out.retry or next(iter(reasons.values()), "")


def test_a_held_room_is_hidden_from_others_and_given_to_the_successor() -> None:
    cache, gate, decider, apiserver, binds = cluster()
    old = pod("old", name="web-0", node_name="n2", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    gate.apply("reservations", "ADDED", reservation(old, "n2"))
    cache.apply("pods", "DELETED", old)
    free_n2 = cache.snapshot.free[cache.snapshot.index_of("n2"), 0]
    assert free_n2 == 2000  # 4 cpu, 2 held for the successor

    other = pod("other", name="big", cpu="3")
    passed, _ = decide(gate, decider, other)
    assert "n2" not in passed

    successor = pod("new", name="web-0", annotations=OPTED)  # a bare pod re-created: same name
    passed, reason = decide(gate, decider, successor)
    assert passed == ["n2"]
    assert "returns to node n2" in reason

    assert asyncio.run(binds.bind("ns", "web-0", "new", "n2")) == ""
    bound_node, annotations = apiserver.bound["new"]
    assert bound_node == "n2"
    assert annotations[api.RESERVATION] == api.reservation_name("old")
    assert annotations[api.ASSIGNED_IP] == "10.0.0.2"
    assert annotations[api.CALICO_IPS] == '["10.0.0.2"]'
    # the hold is released and the successor charged: 2 cpu used on n2, not 4
    assert cache.snapshot.free[cache.snapshot.index_of("n2"), 0] == 2000
    assert gate.holds(noted(cache, successor)).usable == []


def terminating(cache: ClusterCache) -> dict[str, Any]:
    """Opted-in pod web-0 (uid old) on n1, now terminating, held by the rebuild finalizer."""
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    leaving = pod(
        "old",
        name="web-0",
        node_name="n1",
        annotations=OPTED,
        finalizers=[api.FINALIZER],
        deleting=True,
    )
    cache.apply("pods", "MODIFIED", leaving)
    return old


def test_a_successor_waits_while_its_predecessor_terminates_unreserved() -> None:
    cache, gate, decider, _, _ = cluster()
    old = terminating(cache)
    successor = pod("new", name="web-0", annotations=OPTED)
    assert gate.leaving(noted(cache, successor)) == ["n1"]
    gate.apply("reservations", "ADDED", reservation(old, "n1"))
    assert gate.leaving(noted(cache, successor)) == []
    passed, _ = decide(gate, decider, successor)
    assert passed == ["n1"]


def test_a_room_stays_taken_from_its_pods_deletion_until_its_reservation_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The controller writes the Reservation before it lets the pod go, but the two arrive on
    different watches: in between, the room is not free for another pod (kube-scheduler would
    bind that pod there, and the successor find its hold over-committed). Given up after
    LEAVING_GRACE, if the Reservation never shows."""
    cache, gate, decider, _, _ = cluster()
    n2 = cache.snapshot.index_of("n2")
    old = pod("old", name="web-0", node_name="n2", annotations=OPTED, finalizers=[api.FINALIZER])
    cache.apply("pods", "ADDED", old)
    cache.apply(
        "pods", "MODIFIED", {**old, "metadata": {**old["metadata"], "deletionTimestamp": "x"}}
    )
    cache.apply("pods", "DELETED", old)
    assert cache.snapshot.free[n2, 0] == 2000  # still taken, no Reservation seen yet
    gate.apply("reservations", "ADDED", reservation(old, "n2"))
    assert cache.snapshot.free[n2, 0] == 2000  # now by the hold, not twice

    gone = pod("gone", name="web-1", node_name="n2", annotations=OPTED, finalizers=[api.FINALIZER])
    cache.apply("pods", "ADDED", gone)
    cache.apply("pods", "DELETED", gone)
    assert cache.snapshot.free[n2, 0] == 0
    later = time.monotonic() + rebuild_gate.LEAVING_GRACE + 1
    monkeypatch.setattr(rebuild_gate.time, "monotonic", lambda: later)
    with cache.lock:  # any pod's filter looks at the clock
        gate.filter(decider, cache.snapshot, noted(cache, pod("x", name="x")), ["n1"])
    assert cache.snapshot.free[n2, 0] == 2000  # web-1's Reservation never came: freed


def test_a_cordoned_held_node_makes_the_successor_wait_with_a_reason() -> None:
    cache, gate, decider, _, _ = cluster()
    old = pod("old", name="web-0", node_name="n3", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    later = datetime.now(UTC) + timedelta(minutes=1)
    gate.apply("reservations", "ADDED", reservation(old, "n3", expires_at=later))
    cache.apply("nodes", "MODIFIED", node("n3", cordoned=True))

    passed, reason = decide(gate, decider, pod("new", name="web-0", annotations=OPTED))

    assert passed == []
    assert "waiting to rebuild on node n3: it is cordoned" in reason
    assert "normal placement from" in reason


def test_an_expired_reservation_frees_the_room_but_keeps_the_ip() -> None:
    cache, gate, decider, apiserver, binds = cluster()
    old = pod("old", name="web-0", node_name="n3", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    past = datetime.now(UTC) - timedelta(seconds=1)
    gate.apply("reservations", "ADDED", reservation(old, "n3", ip="10.0.0.5", expires_at=past))
    assert cache.snapshot.free[cache.snapshot.index_of("n3"), 0] == 4000

    successor = pod("new", name="web-0", annotations=OPTED)
    passed, _ = decide(gate, decider, successor)
    assert len(passed) == 3  # normal placement
    assert asyncio.run(binds.bind("ns", "web-0", "new", "n1")) == ""
    assert apiserver.bound["new"][1][api.ASSIGNED_IP] == "10.0.0.5"


def test_a_hold_on_a_deleted_node_lets_the_successor_go_elsewhere_with_its_ip() -> None:
    """fallback: wait on a node that is gone would otherwise wait forever."""
    cache, gate, decider, apiserver, binds = cluster()
    old = pod("old", name="web-0", node_name="n3", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    gate.apply("reservations", "ADDED", reservation(old, "n3", ip="10.0.0.5"))
    cache.apply("nodes", "DELETED", node("n3"))

    successor = pod("new", name="web-0", annotations=OPTED)
    passed, _ = decide(gate, decider, successor)
    assert passed == ["n1", "n2"]  # normal placement
    assert asyncio.run(binds.bind("ns", "web-0", "new", "n1")) == ""
    assert apiserver.bound["new"][1][api.ASSIGNED_IP] == "10.0.0.5"
    assert apiserver.bound["new"][1][api.RESERVATION] == api.reservation_name("old")


def test_a_pool_pod_gets_an_address_and_an_outside_one_is_refused() -> None:
    cache, gate, decider, apiserver, binds = cluster()
    first = pod("a", name="a", annotations={api.IP_POOL: "web"})
    decide(gate, decider, first)
    assert asyncio.run(binds.bind("ns", "a", "a", "n1")) == ""
    assert apiserver.bound["a"][1][api.ASSIGNED_IP] == "10.0.0.1"

    outside = pod("b", name="b", annotations={api.IP_POOL: "web", api.IP_REQUEST: "10.9.9.9"})
    decide(gate, decider, outside)
    error = asyncio.run(binds.bind("ns", "b", "b", "n1"))
    assert "outside pool" in error
    assert "b" not in apiserver.bound
    assert cache.bound_node("b") is None  # the charge was undone
    assert pools.holders(apiserver.pool) == {"pod:a": "10.0.0.1"}


@pytest.mark.parametrize("event", ["DELETED", "relist"])
def test_deleting_a_reservation_releases_its_room(event: str) -> None:
    cache, gate, _, _, _ = cluster()
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    obj = reservation(old, "n1")
    gate.apply("reservations", "ADDED", obj)
    assert cache.snapshot.free[0, 0] == 2000
    if event == "DELETED":
        gate.apply("reservations", "DELETED", obj)
    else:
        gate.replace("reservations", [])
    assert cache.snapshot.free[0, 0] == 4000
    cache.replace("pods", [])  # a pod re-list never drops held rooms by mistake


def replica(uid: str, revision: str, *, node_name: str = "") -> dict[str, Any]:
    p = pod(uid, name=f"web-{revision}-{uid}", node_name=node_name, annotations={**FIRST})
    p["metadata"]["labels"]["pod-template-hash"] = revision
    p["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": f"web-{revision}", "controller": True}
    ]
    return p


FIRST = {api.REBUILD: "local", api.ORDER: "create-first"}


def test_create_first_places_a_successor_beside_a_predecessor_without_one() -> None:
    cache, gate, _, _, _ = cluster()
    cache.apply("pods", "ADDED", replica("a", "old", node_name="n2"))
    cache.apply("pods", "ADDED", replica("b", "old", node_name="n3"))
    new = replica("c", "new")
    assert sorted(gate.create_first_nodes(noted(cache, new))) == ["n2", "n3"]

    cache.apply("pods", "ADDED", replica("d", "new", node_name="n2"))  # n2 has its successor
    assert gate.create_first_nodes(noted(cache, new)) == ["n3"]

    plain = pod("e", name="x", annotations={api.REBUILD: "local"})  # delete-first: no homes
    assert gate.create_first_nodes(noted(cache, plain)) == []


def test_settle_waits_for_the_watch_then_answers_at_once() -> None:
    cache, gate, _, _, _ = cluster()
    successor = pod("new", name="web-0", annotations=OPTED)
    pending = noted(cache, successor)
    assert gate.settling(pending)  # the scheduler asked before the watch showed the pod
    threading.Timer(0.05, cache.apply, ("pods", "ADDED", successor)).start()
    started = time.monotonic()
    asyncio.run(settle(lambda: gate.settling(pending)))
    settled = cache.pending(pending.uid)
    assert settled is not None and settled.watched
    assert 0.04 < time.monotonic() - started < 0.4
    started = time.monotonic()
    asyncio.run(settle(lambda: gate.settling(settled)))  # nothing to wait for
    assert time.monotonic() - started < 0.05


def two_successors_one_hold(
    cache: ClusterCache, gate: RebuildGate
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Deployment replica (uid old) gone from n2, held there; two successors pending."""
    old = replica("old", "v1", node_name="n2")
    old["metadata"]["annotations"] = dict(OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    gate.apply("reservations", "ADDED", reservation(old, "n2"))
    first, second = replica("s1", "v2"), replica("s2", "v2")
    for p in (first, second):
        p["metadata"]["annotations"] = dict(OPTED)
        cache.apply("pods", "ADDED", p)
    return first, second


def test_a_room_promised_to_one_successor_makes_another_wait_not_go_elsewhere() -> None:
    cache, gate, decider, apiserver, binds = cluster()
    first, second = two_successors_one_hold(cache, gate)

    one = noted(cache, first)
    with cache.lock:
        out = gate.filter(decider, cache.snapshot, one, ["n1", "n2", "n3"], choose=True)
    assert out.passed == ["n2"]  # and promised to s1

    two = noted(cache, second)
    assert gate.holds(two).usable == [] and gate.holds(two).contested == 1
    refused = asyncio.run(binds.bind("ns", second["metadata"]["name"], "s2", "n1"))
    assert "promised to other successors" in refused
    assert asyncio.run(binds.bind("ns", first["metadata"]["name"], "s1", "n2")) == ""
    assert apiserver.bound["s1"][1][api.RESERVATION] == api.reservation_name("old")
    assert gate.holds(two).contested == 0


def test_a_predecessor_seen_only_as_gone_still_makes_its_successor_wait() -> None:
    cache, gate, _, _, _ = cluster()
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)  # its terminating state never reached us
    successor = pod("new", name="web-0", annotations=OPTED)
    cache.apply("pods", "ADDED", successor)
    assert gate.leaving(noted(cache, successor)) == ["n1"]

    refused = pod("x", name="scratch", node_name="n1", annotations={api.REBUILD: "nope"})
    cache.apply("pods", "ADDED", refused)
    cache.apply("pods", "DELETED", refused)  # the controller refuses it: nothing will be held
    again = pod("y", name="scratch", annotations={api.REBUILD: "nope"})
    assert gate.leaving(noted(cache, again)) == []


def test_a_predecessor_that_terminated_slowly_still_makes_its_successor_wait_once_gone() -> None:
    """The rebuild controller may take longer than LEAVING_GRACE to let a pod go (it writes the
    Reservation first); once the pod is gone, its Reservation is on its way, so the successor
    waits for it, counted from the pod's going, not from when it began terminating."""
    cache, gate, _, _, _ = cluster()
    old = terminating(cache)
    gate._leaving["old"].seen -= rebuild_gate.LEAVING_GRACE + 10  # began terminating long ago
    successor = pod("new", name="web-0", annotations=OPTED)
    assert gate.leaving(noted(cache, successor)) == []  # the controller may be down: go

    cache.apply("pods", "DELETED", old)  # it went: its Reservation was written first
    cache.apply("pods", "ADDED", successor)
    assert gate.leaving(noted(cache, successor)) == ["n1"]
    assert gate.settling(noted(cache, successor))


def test_a_pod_the_controller_refused_for_a_hook_it_lacks_makes_no_successor_wait() -> None:
    """The extender loads no hooks; the controller refuses a pod naming one it lacks, and says
    so in the pod's status: no Reservation comes, so its successor must not wait out
    LEAVING_GRACE for one."""
    cache, gate, decider, _, _ = cluster()
    refused = orjson.dumps({"action": "refused", "reason": "no hook 'nope'"}).decode()
    unknown = {**OPTED, hooks.ANNOTATION: "nope"}
    old = pod("old", name="web-0", node_name="n1", annotations={**unknown, api.STATUS: refused})
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    successor = pod("new", name="web-0", annotations=unknown)
    cache.apply("pods", "ADDED", successor)
    pending = noted(cache, successor)

    assert gate.leaving(pending) == []
    assert not gate.settling(pending)
    with cache.lock:
        assert gate.filter(decider, cache.snapshot, pending, ["n1", "n2", "n3"]) is None


@pytest.mark.parametrize("named", ["drain-connections", "leader-aware,drain-connections"])
def test_a_pod_naming_a_hook_only_the_controller_has_keeps_its_room(named: str) -> None:
    """The extender runs without the hook's package: the pod's room is held all the same from
    when it goes until its Reservation shows."""
    cache, gate, _, _, _ = cluster()
    annotations = {**OPTED, hooks.ANNOTATION: named}
    old = pod("old", name="web-0", node_name="n1", annotations=annotations)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    successor = pod("new", name="web-0", annotations=annotations)
    cache.apply("pods", "ADDED", successor)
    assert gate.leaving(noted(cache, successor)) == ["n1"]
    assert cache.snapshot.free[0, 0] == 2000  # its room, held on n1


def test_a_pods_relist_keeps_the_charge_of_a_hold() -> None:
    cache, gate, _, _, _ = cluster()
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED)
    cache.apply("pods", "ADDED", old)
    cache.apply("pods", "DELETED", old)
    gate.apply("reservations", "ADDED", reservation(old, "n1"))
    cache.replace("pods", [pod("other", name="other", node_name="n2")])
    assert cache.snapshot.free[0, 0] == 2000  # the hold's placeholder is no pod to drop
    assert cache.snapshot.free[1, 0] == 2000


def test_a_predecessor_back_in_the_cache_takes_its_room_from_the_hold() -> None:
    cache, gate, _, _, _ = cluster()
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED)
    gate.apply("reservations", "ADDED", reservation(old, "n1"))
    assert cache.snapshot.free[0, 0] == 2000  # held: the predecessor is not in the cache
    cache.apply("pods", "ADDED", old)
    assert cache.snapshot.free[0, 0] == 2000  # charged once, to the predecessor itself
    cache.apply("pods", "DELETED", old)
    assert cache.snapshot.free[0, 0] == 2000  # held again


def test_one_gate_per_cache() -> None:
    cache, _, _, _, _ = cluster()
    with pytest.raises(ValueError, match="already has an observer"):
        RebuildGate(cache)


def test_a_wait_only_time_or_a_reservation_ends_is_an_error_the_scheduler_retries() -> None:
    """kube-scheduler parks a pod whose nodes were rejected until a cluster event it watches
    (up to 5 min on a quiet cluster); a Reservation is not one. So a successor waiting for its
    Reservation gets the filter's Error (retried after back-off); one waiting for its cordoned
    node under ``wait`` gets rejected nodes (the uncordon requeues it)."""
    cache, gate, _, _, _ = cluster()
    app = TestClient(
        create_app(ExtenderSettings(decide_in_filter=False, bind_all=True), cache, gate=gate)
    )
    old = pod("old", name="web-0", node_name="n1", annotations=OPTED, finalizers=[api.FINALIZER])
    cache.apply("pods", "ADDED", old)
    cache.apply(
        "pods", "MODIFIED", {**old, "metadata": {**old["metadata"], "deletionTimestamp": "x"}}
    )
    successor = pod("new", name="web-0", annotations=OPTED)
    cache.apply("pods", "ADDED", successor)
    names = ["n1", "n2", "n3"]

    reply = app.post("/filter", json={"Pod": successor, "NodeNames": names}).json()
    assert "waiting for the rebuild controller to reserve node n1" in reply["Error"]
    assert not reply.get("NodeNames") and not reply.get("FailedAndUnresolvableNodes")

    cache.apply("pods", "DELETED", old)
    gate.apply("reservations", "ADDED", reservation(old, "n1"))
    cache.apply("nodes", "MODIFIED", node("n1", cordoned=True))
    reply = app.post("/filter", json={"Pod": successor, "NodeNames": names}).json()
    assert not reply.get("Error") and not reply.get("NodeNames")
    assert set(reply["FailedAndUnresolvableNodes"]) == set(names)

    timed = reservation(
        old, "n1", fallback="reschedule", expires_at=datetime.now(UTC) + timedelta(minutes=1)
    )
    gate.apply("reservations", "MODIFIED", timed)
    reply = app.post("/filter", json={"Pod": successor, "NodeNames": names}).json()
    assert "normal placement from" in reply["Error"]


class Nominations:
    """An apiserver that records the nominations the extender writes."""

    def __init__(self) -> None:
        self.nominated: list[tuple[str, str, str]] = []

    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        pass

    async def nominate(self, namespace: str, name: str, uid: str, node: str) -> None:
        self.nominated.append((f"{namespace}/{name}", uid, node))


def test_a_held_node_kube_scheduler_did_not_send_is_nominated_and_promised() -> None:
    """With percentageOfNodesToScore below 100, kube-scheduler sends a window of the nodes,
    which may leave out the successor's held node: the extender has kube-scheduler retry and
    nominates the held node (once), which kube-scheduler then tries first, alone."""
    cache, gate, _, _, _ = cluster()
    apiserver = Nominations()
    settings = ExtenderSettings(bind_all=True)
    first, second = two_successors_one_hold(cache, gate)

    with TestClient(create_app(settings, cache, gate=gate, events=apiserver)) as app:
        for _ in range(2):  # kube-scheduler's retry before the nomination shows: not written twice
            reply = app.post("/filter", json={"Pod": first, "NodeNames": ["n1", "n3"]}).json()
            assert "node n2, held for this pod, was not among the nodes" in reply["Error"]
        assert apiserver.nominated == [(f"ns/{first['metadata']['name']}", "s1", "n2")]
        assert gate.holds(noted(cache, second)).contested == 1  # n2 is promised to s1

        nominated = {**first, "status": {"nominatedNodeName": "n2"}}
        reply = app.post("/filter", json={"Pod": nominated, "NodeNames": ["n2"]}).json()
        assert reply["NodeNames"] == ["n2"]
    assert len(apiserver.nominated) == 1


def test_a_predecessor_released_without_a_reservation_makes_no_successor_wait() -> None:
    """No rebuild controller ran: the pod was let go (rebuild.release); none will come."""
    cache, gate, decider, _, _ = cluster()
    old = terminating(cache)
    successor = pod("new", name="web-0", annotations=OPTED)
    assert gate.leaving(noted(cache, successor)) == ["n1"]

    gate.released("old")
    cache.apply("pods", "DELETED", old)  # its last state arrives after the release

    assert gate.leaving(noted(cache, successor)) == []
    passed, _ = decide(gate, decider, successor)
    assert "n1" in passed
