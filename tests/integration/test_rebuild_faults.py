"""The rebuild controller killed mid-rebuild, run twice, or restarted: nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kubernetes import client

from fulcrum.harness import cluster, processes
from fulcrum.lab import rebuild_run as rr
from fulcrum.lab import successors
from kube import api, ippool
from rebuild.controller import CRASH_ENV

pytestmark = pytest.mark.integration

NS = "it-faults"
LEADER = "fulcrum-rebuild-0"


@pytest.fixture(scope="module")
def kit(kwok_cluster: Any) -> Iterator[rr.Kit]:
    kit = rr.Kit.of(kwok_cluster.name)
    kit.kubectl("create", "namespace", NS)
    rr.apply(kit, [rr.ip_pool(NS, "app", "10.66.0.0/26")])
    yield kit


def restart_controller(
    name: str, *, crash_at: str | None = None, identity: str = LEADER, wait: bool = True
) -> int:
    """Stop the cluster's controller and start another (same identity: it leads at once)."""
    state = cluster.load_state(name)
    processes.stop_process(state.rebuild_pid)
    state.rebuild_port = cluster.free_port()
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    try:
        state.rebuild_pid = cluster.start_rebuild(name, state.rebuild_port, identity=identity)
    finally:
        os.environ.pop(CRASH_ENV, None)
    cluster._save_state(state)
    return state.rebuild_pid


def exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it, or it lingers as a zombie
        return done == pid
    except ChildProcessError:
        return True


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def reservations(kit: rr.Kit) -> list[dict[str, Any]]:
    found = kit.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.RESERVATIONS)
    return list(found["items"])


def app_pool(kit: rr.Kit) -> dict[str, Any]:
    found: dict[str, Any] = kit.custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, NS, api.IPPOOLS, "app"
    )
    return found


def successor_running(kit: rr.Kit, name: str) -> bool:
    return any(
        p["status"].get("phase") == "Running" and rr.has_env("2")(p) for p in pods_named(kit, name)
    )


def pods_named(kit: rr.Kit, name: str) -> list[dict[str, Any]]:
    found = kit.core.list_namespaced_pod(
        NS, field_selector=f"metadata.name={name}", _preload_content=False
    )
    return list(orjson.loads(found.data)["items"])


@pytest.mark.parametrize("step", ["reserved", "released", "claiming"])
def test_a_controller_killed_at_any_step_leaves_exactly_one_successor_in_place(
    kit: rr.Kit, kwok_cluster: Any, step: str
) -> None:
    name = f"crash-{step}"
    rr.apply(kit, [rr.bare_pod(NS, name, "app", pool="app")])
    rr.wait_for(
        f"{name} running",
        lambda: any(p["status"].get("phase") == "Running" for p in pods_named(kit, name)),
    )
    rr.wait_for(
        f"{name} finalizer",
        lambda: api.FINALIZER in (pods_named(kit, name)[0]["metadata"].get("finalizers") or []),
    )
    (before,) = [m for m in rr.members(kit, NS, "app").values() if m.name == name]
    pid = restart_controller(kwok_cluster.name, crash_at=step)

    kit.core.delete_namespaced_pod(name, NS)
    if step != "claiming":
        rr.wait_for(f"controller crash at {step}", lambda: exited(pid), timeout=60)
        restart_controller(kwok_cluster.name)
    rr.wait_for(f"{name} gone", lambda: not pods_named(kit, name), timeout=60)
    rr.apply(kit, [rr.bare_pod(NS, name, "app", pool="app", env="2")])
    if step == "claiming":
        rr.wait_for("controller crash at claiming", lambda: exited(pid), timeout=60)
        restart_controller(kwok_cluster.name)
    rr.wait_for(f"{name} successor running", lambda: successor_running(kit, name))
    rr.wait_for("reservation claimed", lambda: not reservations(kit), timeout=60)

    (pod,) = pods_named(kit, name)
    (after,) = [m for m in rr.members(kit, NS, "app").values() if m.name == name]
    assert (after.node, after.ip) == (before.node, before.ip)
    assert after.uid != before.uid
    pool = app_pool(kit)
    ippool.check_invariants(pool)
    assert ippool.ip_holder(pool, before.ip) == f"pod:{after.uid}"
    assert pod["metadata"]["annotations"][api.RESERVATION] == api.reservation_name(before.uid)


def test_two_controllers_elect_one_leader_and_never_hand_out_an_ip_twice(
    kit: rr.Kit, kwok_cluster: Any
) -> None:
    name = kwok_cluster.name
    leader = cluster.load_state(name)
    port = cluster.free_port()
    follower = cluster.start_rebuild(name, port, identity="fulcrum-rebuild-1", leader=False)
    try:
        assert ready(leader.rebuild_port or 0) and not ready(port)
        leases = client.CoordinationV1Api(kit.core.api_client)
        lease = leases.read_namespaced_lease("fulcrum-rebuild", "kube-system")
        assert lease.spec.holder_identity == LEADER

        rr.apply(
            kit, [rr.ip_pool(NS, "duo", "10.66.1.0/26"), rr.deployment(NS, "duo", 10, pool="duo")]
        )
        rr.wait_for("duo running", lambda: rr.running(kit, NS, "duo", lambda p: True) == 10)
        before = rr.members(kit, NS, "duo")
        os.kill(leader.rebuild_pid or 0, signal.SIGKILL)  # the leader dies mid-rollout
        kit.kubectl("set", "env", "deployment/duo", "REVISION=2", "-n", NS)
        rr.wait_for("follower takes over", lambda: ready(port), timeout=60)
        rr.wait_for(
            "duo rolled", lambda: rr.running(kit, NS, "duo", rr.has_env("2")) == 10, timeout=120
        )
        kept = successors.kept(before, rr.members(kit, NS, "duo"))
        assert (kept.node, kept.pooled, kept.ip) == (10, 10, 10), kept
        duo_pool = kit.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.IPPOOLS, "duo"
        )
        ippool.check_invariants(duo_pool)
        assert len(ippool.holders(duo_pool)) == 10
    finally:
        state = cluster.load_state(name)
        state.rebuild_pid, state.rebuild_port = follower, port
        cluster._save_state(state)


def test_a_restarted_controller_relists_and_replays_nothing(kit: rr.Kit, kwok_cluster: Any) -> None:
    def counts() -> tuple[int, int, str]:
        found = kit.core.list_namespaced_event(NS, _preload_content=False)
        reasons = [e["reason"] for e in orjson.loads(found.data)["items"]]
        pool = orjson.dumps(app_pool(kit)["status"]).decode()
        return reasons.count("Reserved"), len(reservations(kit)), pool

    rr.wait_for("quiet", lambda: not reservations(kit), timeout=60)
    before = counts()
    uids = {m.uid for m in rr.members(kit, NS, "app").values()}
    restart_controller(kwok_cluster.name)
    time.sleep(5)  # a full re-list and a round of reconciles
    assert counts() == before
    assert {m.uid for m in rr.members(kit, NS, "app").values()} == uids
