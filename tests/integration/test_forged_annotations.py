"""Forged Fulcrum-written annotations on a real control plane (issue 29, point 1).

The webhook refuses them from anyone but Fulcrum's own identity; when it is down (its
failurePolicy is Ignore) and one gets through, the extender still syncs after a restart and
schedules the next pod, and the controller's sweep still releases what it should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from fulcrum.harness import cluster, processes
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests.integration.conftest import KwokCluster, _start, kit_in, validation_off

pytestmark = pytest.mark.integration

NS = "it-forged"
# a controller whose sweep runs every second and drops what nothing came for after 3 s
FAST_SWEEP = (
    "import sys, rebuild.controller as c, rebuild.sweep as s; "
    "c.SWEEP_SECONDS = 1.0; s.ABANDON_SECONDS = 3.0; "
    "from fulcrum.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def forged_cluster() -> Iterator[KwokCluster]:
    name = f"it-forged-{os.getpid()}"
    started = _start(name, nodes=3)
    try:
        yield started
    finally:
        cluster.down(name, log=print)


@pytest.fixture(scope="module")
def kit(forged_cluster: KwokCluster) -> rr.Kit:
    return kit_in(forged_cluster, NS)


def as_user(kit: rr.Kit, user: str, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``kubectl create`` as ``user`` (impersonated, with every right: only admission stops it)."""
    state = cluster.load_state(kit.name)
    cmd = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(kit.name))]
    cmd += ["--as", user, "--as-group", "system:masters", "create", "-f", "-"]
    return subprocess.run(cmd, input=json.dumps(manifest), capture_output=True, text=True)


def pod(name: str, *, node: str = "", annotations: dict[str, str] | None = None) -> Any:
    out = rr.bare_pod(NS, name, name, opted=False, annotations=annotations or {})
    out["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    if node:
        out["spec"]["nodeName"] = node
    return out


def bound(kit: rr.Kit, name: str) -> bool:
    return bool(kit.core.read_namespaced_pod(name, NS).spec.node_name)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_a_forged_device_note_never_stops_the_extender(kit: rr.Kit) -> None:
    node = kit.core.list_node().items[0].metadata.name
    forged = pod("forged", node=node, annotations={api.GPU_DEVICES: "0"})  # and no GPU request

    refused = as_user(kit, "mallory", forged)
    assert refused.returncode != 0
    assert "fulcrum.io/gpu-devices only Fulcrum writes" in refused.stderr
    assert "mallory is not one of its service accounts" in refused.stderr

    with validation_off(kit.name):
        created = as_user(kit, "mallory", forged)
        assert created.returncode == 0, created.stderr
    state = cluster.load_state(kit.name)
    port = state.extender_port or 0
    rr.wait_for("the forged pod on its node", lambda: bound(kit, "forged"), timeout=60)

    # a restart lists the forged pod first thing: it must still sync and get ready
    processes.stop_process(state.extender_pid)
    state.extender_pid = cluster.start_extender(kit.name, port)  # waits for /readyz
    cluster._save_state(state)  # so that the fixture's teardown stops this one
    assert ready(port)

    rr.apply(kit, [pod("next")])
    rr.wait_for("the next pod bound by Fulcrum", lambda: bound(kit, "next"), timeout=120)
    assert ready(port)
    log = (cluster.state_dir(kit.name) / "extender.log").read_text()
    assert "pod it-forged/forged: its devices are chosen anew" in log


def test_only_fulcrums_identity_may_change_what_fulcrum_writes(kit: rr.Kit) -> None:
    rr.apply(kit, [pod("plain")])
    status = f"{api.STATUS}=" + '{"action": "claimed"}'
    state = cluster.load_state(kit.name)
    base = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(kit.name))]
    annotate = [*base, "annotate", "-n", NS, "pod", "plain", "--overwrite", status]
    as_mallory = ["--as", "mallory", "--as-group", "system:masters"]
    refused = subprocess.run([*annotate, *as_mallory], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "fulcrum.io/rebuild-status only Fulcrum writes" in refused.stderr
    # the harness's extender and controller run as its kubeconfig's user: trusted
    kit.kubectl("annotate", "-n", NS, "pod", "plain", "--overwrite", status)
    # an update that leaves them alone passes, whoever sends it
    labelled = [*base, "label", "-n", NS, "pod", "plain", "touched=yes", *as_mallory]
    subprocess.run(labelled, check=True, capture_output=True)


def test_a_forged_address_never_stops_the_sweep(kit: rr.Kit) -> None:
    state = cluster.load_state(kit.name)
    processes.stop_process(state.rebuild_pid)  # for one whose sweep is quick
    cmd = [sys.executable, "-c", FAST_SWEEP, "rebuild", "--kubeconfig"]
    cmd += [str(cluster.kubeconfig_path(kit.name)), "--health-port", str(state.rebuild_port)]
    cmd += ["--identity", "fulcrum-rebuild-fast"]
    url = f"http://127.0.0.1:{state.rebuild_port}/readyz"
    state.rebuild_pid = cluster.start_process(kit.name, "rebuild-fast", cmd, url)
    cluster._save_state(state)

    rr.apply(kit, [rr.ip_pool(NS, "db", "10.77.0.0/28")])
    node = kit.core.list_node().items[0].metadata.name
    unrelated = api.Reservation(
        name="rb-unrelated",
        namespace=NS,
        key=f"Pod/{NS}/nobody",
        node=node,
        predecessor="nobody",
        predecessor_uid="gone",
        template={"spec": {"containers": []}},
        devices=None,
        ip=None,
        pool=None,
        claims=(),
        fallback="wait",
        expires_at=None,
    ).to_object()
    forged = rr.bare_pod(NS, "db-0", "db", pool="db", annotations={api.ASSIGNED_IP: "10.77.0.300"})
    forged["spec"]["nodeName"] = node
    with validation_off(kit.name):
        rr.apply(kit, [forged])
    rr.wait_for(
        "the forged pod guarded",
        lambda: (
            api.FINALIZER in (kit.core.read_namespaced_pod("db-0", NS).metadata.finalizers or [])
        ),
        timeout=60,
    )
    kit.custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, NS, api.RESERVATIONS, unrelated
    )
    kit.core.delete_namespaced_pod("db-0", NS)

    def names() -> set[str]:
        found = kit.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NS, "reservations")
        return {r["metadata"]["name"] for r in found["items"]}

    def pod_gone() -> bool:
        return not [p for p in kit.core.list_namespaced_pod(NS).items if p.metadata.name == "db-0"]

    rr.wait_for("the forged pod released from its finalizer", pod_gone, timeout=60)
    rr.wait_for(
        "the unrelated Reservation released", lambda: "rb-unrelated" not in names(), timeout=90
    )
    events = kit.core.list_namespaced_event(NS, field_selector="reason=FulcrumBadValue").items
    assert any("10.77.0.300" in e.message for e in events)
