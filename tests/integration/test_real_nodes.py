"""Real nodes beside the kwok nodes: pods that really run, and local rebuild proven on them.

One cluster for the module: two kwok nodes and two real nodes (``fulcrum cluster up
--real-nodes 2``: a kubelet with its own containerd, runc and CNI each). The workloads are
opted in by the annotation alone; their images come from the cluster's registry. The last test
takes the cluster down and checks the host for leftovers.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import cluster, processes, realnodes
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

NS = "it-real"
WEB_POOL = "10.244.200.0/29"
DB_POOL = "10.244.201.0/29"


def _host() -> dict[str, set[str]]:
    """What a cluster's real nodes could leave behind: processes, mounts, links, iptables
    rules and chains, cgroups."""
    procs = subprocess.run(["ps", "-eo", "comm="], capture_output=True, text=True).stdout
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {
        "processes": {
            p
            for p in procs.split()
            if p
            in (
                "kubelet",
                "containerd",
                "containerd-shim",
                "pause",
                "httpd",
                "kube-proxy",
                "dnsmasq",
            )
        },
        "mounts": mounts,
        "links": {line.split(": ")[1].split("@")[0] for line in links.splitlines()},
        "iptables": {
            line.split(" [")[0] for line in rules.splitlines() if line.startswith((":", "-A"))
        },
        "cgroups": {p.name for p in Path("/sys/fs/cgroup/pids").glob("fulcrum-*")},
    }


@pytest.fixture(scope="module")
def real() -> Iterator[tuple[str, dict[str, set[str]]]]:
    require_real_nodes()
    before = _host()
    name = f"it-real-{os.getpid()}"
    cluster.up(name, nodes=2, real_nodes=2, log=print)
    try:
        yield name, before
    finally:
        cluster.down(name, log=print)


@pytest.fixture(scope="module")
def kit(real: tuple[str, dict[str, set[str]]]) -> rr.Kit:
    kit = rr.Kit.of(real[0])
    kit.kubectl("create", "namespace", NS)
    return kit


@pytest.fixture(scope="module")
def refs(real: tuple[str, dict[str, set[str]]]) -> dict[str, str]:
    state = cluster.load_state(real[0])
    return rb.push_app_images(f"127.0.0.1:{state.registry_port}", ("v1", "v2"), say=print)


def _gone(kit: rr.Kit, app: str) -> bool:
    """No pod of ``app`` at all, terminating ones included."""
    return not kit.core.list_namespaced_pod(NS, label_selector=f"{rr.APP_LABEL}={app}").items


def _events(kit: rr.Kit, pod: str) -> list[str]:
    found = kit.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}")
    return [f"{e.reason}: {e.message}" for e in found.items]


def test_real_nodes_are_registered_labelled_and_left_to_their_kubelets(
    real: tuple[str, dict[str, set[str]]], kit: rr.Kit
) -> None:
    nodes = kit.core.list_node(label_selector=f"{realnodes.NODE_LABEL}=real").items
    assert sorted(n.metadata.name for n in nodes) == ["real-1", "real-2"]
    for node in nodes:
        assert node.status.node_info.kubelet_version == "v1.34.4"
        assert node.status.node_info.container_runtime_version == "containerd://2.4.2"
        assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    env = cluster.env_exports(real[0])
    state = cluster.load_state(real[0])
    assert f"export FULCRUM_REGISTRY=127.0.0.1:{state.registry_port}" in env
    assert "export FULCRUM_POD_CIDR=10.244.0.0/16" in env
    assert "export FULCRUM_POOL_CIDR=10.244.128.0/17" in env


def test_a_pod_on_a_real_node_runs_answers_on_its_ip_and_gives_logs_and_exec(
    kit: rr.Kit, refs: dict[str, str]
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain", "namespace": NS, "labels": {"app": "plain"}},
        "spec": rb.pod_spec(refs["v1"]),
    }
    rr.apply(kit, [pod])
    rr.wait_running(kit, NS, {"plain": 1}, timeout=120)
    (running,) = rr.live_pods(kit, NS, "plain")
    ip = running["status"]["podIP"]
    node = kit.core.read_node(running["spec"]["nodeName"])
    assert node.metadata.labels[realnodes.NODE_LABEL] == "real"
    index = int(node.metadata.name.rsplit("-", 1)[1])
    assert ip.startswith(f"10.244.{index}."), ip  # the node's own slice, from host-local
    assert rb.fetch(ip, "born") == "plain"
    assert rb.fetch(ip, "image") == "v1"
    assert kit.kubectl("exec", "-n", NS, "plain", "--", "cat", "/srv/revision").strip() == "1"
    kit.kubectl("exec", "-n", NS, "plain", "--", "sh", "-c", "echo from-exec")
    assert "from-exec" not in kit.kubectl("logs", "-n", NS, "plain")  # logs work, and are its own
    kit.kubectl("delete", "pod", "-n", NS, "plain", "--wait=true")


def test_local_rebuild_on_real_nodes_keeps_node_volume_data_and_address(
    real: tuple[str, dict[str, set[str]]], kit: rr.Kit, refs: dict[str, str]
) -> None:
    """A StatefulSet with a local PersistentVolume on each real node and a Deployment, both
    with an IP pool and opted in by the annotation alone: an image change, then an env change.
    Each successor comes back on its node, reads the file its first incarnation wrote, and
    answers on its predecessor's address."""
    root = cluster.state_dir(real[0]) / "volumes"
    rr.apply(
        kit,
        [
            rr.ip_pool(NS, "web", WEB_POOL),
            rr.ip_pool(NS, "db", DB_POOL),
            *rb.local_volumes(NS, "db", ["real-1", "real-2"], root),
            rb.deployment(NS, "web", 2, refs["v1"], opted=True, pool="web"),
            rb.statefulset(NS, "db", 2, refs["v1"], pool="db"),
        ],
    )
    apps = {"web": 2, "db": 2}
    rr.wait_running(kit, NS, apps, timeout=180)
    rr.wait_guarded(kit, NS, apps)
    before = {app: rb.served(kit, NS, app) for app in apps}
    for app, pool in (("web", WEB_POOL), ("db", DB_POOL)):
        for pod in before[app].values():
            assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(pool), pod

    changes = (
        ("image", rr.has_image(refs["v2"]), "set image {kind}/{app} main=" + refs["v2"]),
        ("env", rr.has_env("2"), "set env {kind}/{app} REVISION=2"),
    )
    for what, want, command in changes:

        def change(cmd: str = command) -> None:
            for app, kind in (("web", "deployment"), ("db", "statefulset")):
                kit.kubectl(*cmd.format(kind=kind, app=app).split(), "-n", NS)

        rollouts = rr.roll(kit, NS, apps, change, want, timeout=300, say=print)
        after = {app: rb.served(kit, NS, app) for app in apps}
        for app in apps:
            print(what, rollouts[app])
            kept = rollouts[app].kept
            assert (kept.node, kept.ip) == (2, 2), (what, app, kept.misses)
            assert set(after[app]) == set(before[app])  # db by ordinal, web by address
            for key, pod in after[app].items():
                old = before[app][key]
                assert (pod.node, pod.ip) == (old.node, old.ip), (what, pod, old)
                assert pod.image == "v2", pod
                if app == "db":
                    assert pod.born == old.born == old.name, (what, pod, old)  # same disk
        assert rollouts["db"].kept.claims == 2
        before = after


def test_an_address_outside_the_pool_network_is_refused_on_the_node(kit: rr.Kit) -> None:
    """An IPPool outside FULCRUM_POOL_CIDR: Fulcrum binds the pod with an address from it, and
    the node's IPAM refuses it, naming the pool network; the pod's sandbox is not made."""
    rr.apply(
        kit,
        [
            rr.ip_pool(NS, "stray", "10.99.0.0/29"),
            rr.bare_pod(NS, "stray", "stray", opted=True, pool="stray")
            | {"spec": rb.pod_spec("fulcrum.local/pause:3.10")},
        ],
    )
    wanted = f"outside this node's pool CIDRs [{realnodes.POOL_CIDR}]"

    def refused() -> bool:
        return any(wanted in e or "FULCRUM_POOL_CIDR" in e for e in _events(kit, "stray"))

    rr.wait_for("the sandbox refused", refused, timeout=60)
    pod = kit.core.read_namespaced_pod("stray", NS)
    assert pod.status.phase == "Pending" and not pod.status.pod_ip
    kit.kubectl("delete", "pod", "-n", NS, "stray", "--wait=true")


def test_a_registry_that_is_down_is_named_in_the_pods_events(
    real: tuple[str, dict[str, set[str]]], kit: rr.Kit, refs: dict[str, str]
) -> None:
    state = cluster.load_state(real[0])
    registry = f"127.0.0.1:{state.registry_port}"
    root = cluster.state_dir(real[0]) / "real"
    realnodes.stop_registry(root)
    try:
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pull", "namespace": NS},
            "spec": rb.pod_spec(f"{registry}/{rb.REPOSITORY}:v3"),
        }
        rr.apply(kit, [pod])

        def named() -> bool:
            return any(registry in e and "refused" in e for e in _events(kit, "pull"))

        rr.wait_for("the pull failure naming the registry", named, timeout=60)
    finally:
        realnodes.start_registry(root, state.registry_port or 0)
        kit.kubectl("delete", "pod", "-n", NS, "pull", "--wait=true")


def test_a_node_whose_kubelet_dies_is_reported_and_its_rebuilds_wait_or_fall_back(
    real: tuple[str, dict[str, set[str]]], kit: rr.Kit, refs: dict[str, str]
) -> None:
    """real-2's kubelet is killed: the node turns NotReady and `fulcrum cluster status` reports
    it with its pods. Two opted-in bare pods on it are replaced (force-deleted, as an operator
    does on a dead node): the one with `fulcrum.io/rebuild-fallback: wait` waits, saying why;
    the one with `reschedule` (after `fulcrum.io/rebuild-wait: 5s`) is placed on real-1 and
    keeps its address."""
    kit.kubectl("cordon", "real-1")
    pods: list[dict[str, Any]] = []
    for i, fallback in enumerate(("wait", "reschedule")):
        app = f"dead-{fallback}"
        pods.append(rr.ip_pool(NS, app, f"10.244.{202 + i}.0/29"))
        pod = rr.bare_pod(NS, app, app, opted=True, pool=app)
        pod["metadata"]["annotations"] |= {
            api.FALLBACK: fallback,
            api.WAIT: "5s",
        }
        pod["spec"] = rb.pod_spec(refs["v1"])
        pods.append(pod)
    rr.apply(kit, pods)
    pods = pods[1::2]  # the pods, without their pools
    rr.wait_running(kit, NS, {"dead-wait": 1, "dead-reschedule": 1}, timeout=120)
    rr.wait_guarded(kit, NS, {"dead-wait": 1, "dead-reschedule": 1})
    kit.kubectl("uncordon", "real-1")
    ip = {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in rr.live_pods(kit, NS, "dead-reschedule")
    }
    assert all(p["spec"]["nodeName"] == "real-2" for p in rr.live_pods(kit, NS, "dead-wait"))

    root = cluster.state_dir(real[0]) / "real" / "real-2"
    processes.terminate(list(processes.processes_under(root / "kubelet.yaml")), grace=0)

    def not_ready() -> bool:
        node = kit.core.read_node("real-2")
        return any(c.type == "Ready" and c.status != "True" for c in node.status.conditions)

    rr.wait_for("real-2 NotReady", not_ready, timeout=150, interval=2)
    status = subprocess.run(
        [sys.executable, "-m", "fulcrum.cli", "cluster", "status", "--name", real[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"real node real-2: NOT Ready, [1-9]\d* pods", status), status

    for pod in pods:  # a dead kubelet confirms no deletion: the operator forces it
        name = pod["metadata"]["name"]
        kit.kubectl("delete", "pod", "-n", NS, name, "--grace-period=0", "--force")
        rr.wait_for(f"{name} gone", functools.partial(_gone, kit, name), timeout=60)
    rr.apply(kit, pods)
    rr.wait_running(kit, NS, {"dead-reschedule": 1}, timeout=120)
    (moved,) = rr.live_pods(kit, NS, "dead-reschedule")
    assert moved["spec"]["nodeName"] == "real-1"
    assert moved["status"]["podIP"] == ip["dead-reschedule"]
    assert rb.fetch(moved["status"]["podIP"], "born") == "dead-reschedule"
    (waiting,) = rr.live_pods(kit, NS, "dead-wait")
    assert not waiting["spec"].get("nodeName")  # held for real-2, not placed elsewhere
    held = kit.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.RESERVATIONS)
    assert [r["spec"]["node"] for r in held["items"] if "dead-wait" in r["spec"]["key"]] == [
        "real-2"
    ], held["items"]


def test_cluster_down_leaves_no_process_mount_link_cgroup_or_iptables_rule(
    real: tuple[str, dict[str, set[str]]],
) -> None:
    name, before = real
    assert _host()["processes"] >= {"kubelet", "containerd"}
    cluster.down(name, log=print)
    time.sleep(1)
    after = _host()
    left = {kind: sorted(after[kind] - before[kind]) for kind in after}
    left["mounts"] = [m for m in left["mounts"] if re.search("fulcrum|kubelet|netns", m)]
    assert not any(left.values()), left
    assert not cluster.state_dir(name).exists()
