"""``fulcrum inspect`` on a real control plane: tables and exit 0, then invariants broken on
purpose (a Reservation on a node that does not exist, a forged duplicate IP) and exit 1."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests import builders
from tests.integration.conftest import KwokCluster, kit_in

pytestmark = pytest.mark.integration

NS = "it-inspect"


@pytest.fixture(scope="module")
def kit(kwok_cluster: KwokCluster) -> Iterator[rr.Kit]:
    kit = kit_in(kwok_cluster, NS)
    rr.apply(kit, [rr.ip_pool(NS, "web", "10.64.0.0/28"), rr.deployment(NS, "web", 4, pool="web")])
    rr.wait_running(kit, NS, {"web": 4}, timeout=120)
    yield kit


def inspect(kit: rr.Kit) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fulcrum.cli", "inspect", "--name", kit.name]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_a_healthy_cluster_is_inspected_and_exits_zero(kit: rr.Kit) -> None:
    result = inspect(kit)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kwok-node-00000" in result.stdout
    assert "IP pools: it-inspect/web 4 used, 10 free" in result.stdout
    assert "pods opted in to local rebuild: 4" in result.stdout
    assert "invariants: all hold" in result.stdout
    assert "the optimiser could empty" in result.stdout


def test_broken_invariants_are_named_and_exit_non_zero(kit: rr.Kit) -> None:
    stale = builders.reservation(
        "no-such-node", name="rb-forged", namespace=NS, key=f"Deployment/{NS}/web"
    )
    kit.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.RESERVATIONS, stale)
    first, second = (p["metadata"] for p in rr.live_pods(kit, NS, "web")[:2])
    ip = first["annotations"][api.ASSIGNED_IP]
    patch = {"metadata": {"annotations": {api.ASSIGNED_IP: ip}}}
    kit.core.patch_namespaced_pod(second["name"], NS, patch)
    try:
        result = inspect(kit)
        print(result.stdout)
        assert result.returncode == 1
        assert f"Reservation {NS}/rb-forged holds node no-such-node, which is gone" in result.stdout
        assert f"IP {ip} is held by 2 pods" in result.stdout
    finally:
        kit.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.RESERVATIONS, "rb-forged"
        )


def test_explain_a_bound_pod_and_a_pending_eight_gpu_pod(kit: rr.Kit) -> None:
    web = rr.live_pods(kit, NS, "web")[0]["metadata"]["name"]
    big = rr.bare_pod(NS, "big", "big", opted=False)
    big["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "8"}}
    rr.apply(kit, [big])
    outputs = []
    for pod in (f"{NS}/{web}", f"{NS}/big"):
        cmd = [sys.executable, "-m", "fulcrum.cli", "explain", pod, "--name", kit.name]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
        print(result.stdout)
        outputs.append(result.stdout)
    assert "placed by fulcrum-scheduler" in outputs[0] and "IP 10.64.0." in outputs[0]
    assert "chosen by Archimedes: score" in outputs[0]  # the record written with the binding
    assert "/10 nodes could take it" in outputs[0]
    assert f"pod {NS}/big is Pending" in outputs[1]
    assert "0/10 nodes can take it now; 10 node has fewer than the 8 GPUs" in outputs[1]


def scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def test_the_extender_serves_the_clusters_figures(kit: rr.Kit) -> None:
    text = scrape(cluster.load_state(kit.name).extender_port)
    assert 'fulcrum_cluster_allocated_ratio{resource="cpu"}' in text
    assert "fulcrum_cluster_gpu_fragmentation_ratio" in text
    assert "fulcrum_cluster_stranded_nodes" in text
    used = next(line for line in text.splitlines() if line.startswith("fulcrum_cluster_nodes_"))
    assert float(used.split()[1]) >= 1  # the web pods run somewhere


def test_the_rebuild_controller_serves_its_metrics(kit: rr.Kit) -> None:
    text = scrape(cluster.load_state(kit.name).rebuild_port)
    assert 'fulcrum_rebuild_reconciles_total{kind="pods",outcome="done"}' in text
    assert f'fulcrum_rebuild_pool_addresses{{namespace="{NS}",pool="web",state="used"}}' in text
    assert "process_resident_memory_bytes" in text
