"""Placement-policy plugins as users run them: pip-installed into a fresh virtual environment,
named in the ExtenderConfiguration, and served by ``fulcrum serve`` from that environment
(``fulcrum cluster up --python``) to fulcrum-scheduler on a kwok cluster.

One cluster for the module; each test starts the extender again with its configuration.
Every configuration binds all pods (``bindAll: true``), so each pod carries its decision record.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fulcrum.harness import chart, cluster, processes
from fulcrum.lab import rebuild_run as rr
from fulcrum.lab.workload import PodShape, ensure_namespace, pod_manifest, wait_bound
from kube.api import DECISION
from tests.integration.test_deploy_dryrun import Kubectl
from tests.pluginenv import fresh_venv
from tests.unit.test_chart import helm

__all__ = ["helm"]  # the fixture

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    ROOT / "examples" / "fulcrum-policy-example",
    ROOT / "examples" / "fulcrum-tenant-affinity",
    ROOT / "examples" / "fulcrum-zone-spread",
    ROOT / "tests" / "plugins" / "broken_policy",
]
CPU_NODES = [f"kwok-node-{i:05d}" for i in range(4)]
GPU_NODES = [f"kwok-gpu-{i:05d}" for i in range(2)]
NODE = {"cpu": "8", "memory": "32Gi"}  # room for four pods of 2 CPUs
ZONES = {"zone-a": CPU_NODES[:2], "zone-b": CPU_NODES[2:], "zone-c": GPU_NODES}
TENANT_NODES = [CPU_NODES[0], CPU_NODES[2]]  # labelled fulcrum.io/tenant: a


@pytest.fixture(scope="module")
def plugins_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Four CPU nodes and two GPU nodes over three zones; the extender runs from a virtual
    environment where the plugin packages were pip-installed."""
    python = fresh_venv(tmp_path_factory.mktemp("venv"), *PACKAGES)
    name = f"it-plugins-{os.getpid()}"
    config = extender_config(tmp_path_factory.mktemp("config"), "GpuNodesForGpuPods")
    cluster.up(name, nodes=0, extender_config=config, python=python, log=print)
    try:
        cluster.add_nodes(name, len(CPU_NODES), cluster.NodeShape(**NODE))
        gpu = cluster.NodeShape(**NODE, gpu=4, gpu_model="NVIDIA-A100")
        cluster.add_nodes(name, len(GPU_NODES), gpu, prefix="kwok-gpu")
        cluster.wait_nodes_ready(name, len(CPU_NODES) + len(GPU_NODES), log=print)
        api = cluster.core_api(name)
        for zone, nodes in ZONES.items():
            for node in nodes:
                labels = {"topology.kubernetes.io/zone": zone}
                if node in TENANT_NODES:
                    labels["fulcrum.io/tenant"] = "a"
                api.patch_node(node, {"metadata": {"labels": labels}})
        yield name
    finally:
        cluster.down(name, log=print)


def extender_config(directory: Path, *policies: str) -> Path:
    """An ExtenderConfiguration weighing ``policies`` ("Name" or "Name:weight")."""
    entries = []
    for spec in policies:
        policy, _, weight = spec.partition(":")
        entries.append({"policy": policy, "weight": float(weight or 1)})
    path = directory / "extender.yaml"
    path.write_text(json.dumps({"prioritize": entries, "bindAll": True}))  # JSON is YAML
    return path


@pytest.fixture
def serving(plugins_cluster: str, tmp_path: Path) -> Iterator[Any]:
    """Start the extender with the policies a test names, in a namespace of the test's own;
    its pods are deleted afterwards so the next test finds the nodes empty."""
    name = plugins_cluster
    api = cluster.core_api(name)
    namespaces: list[str] = []

    def serve(namespace: str, *policies: str) -> Any:
        cluster.restart_extender(name, extender_config(tmp_path, *policies))
        ensure_namespace(api, namespace)
        namespaces.append(namespace)
        return api

    yield serve
    for namespace in namespaces:  # its pods, and what would create them again
        api.delete_namespace(namespace, grace_period_seconds=0)
        rr.wait_for(
            f"the pods of {namespace} gone",
            lambda ns=namespace: not api.list_namespaced_pod(ns).items,
            timeout=60,
        )


def create(api: Any, namespace: str, count: int, *, prefix: str, **labels: str) -> None:
    """``count`` pods of 2 CPUs, one after the other, as kube-scheduler takes them."""
    for i in range(count):
        pod = pod_manifest(f"{prefix}-{i}", PodShape("2", "2Gi"), labels=labels)
        api.create_namespaced_pod(namespace, pod)


def records(api: Any, namespace: str) -> dict[str, dict[str, Any]]:
    """Pod name -> its decision record."""
    out = {}
    for pod in api.list_namespaced_pod(namespace).items:
        annotations = pod.metadata.annotations or {}
        assert DECISION in annotations, f"{pod.metadata.name} has no decision record"
        out[pod.metadata.name] = json.loads(annotations[DECISION])
        assert out[pod.metadata.name]["node"] == pod.spec.node_name
    return out


def extender_alive(name: str) -> bool:
    state = cluster.load_state(name)
    if state.extender_pid is None or not processes.pid_alive(state.extender_pid):
        return False
    url = f"http://127.0.0.1:{state.extender_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return bool(reply.status == 200)


def test_the_example_plugin_keeps_gpu_nodes_for_gpu_pods(serving: Any) -> None:
    api = serving("it-gpu-nodes", "GpuNodesForGpuPods")
    create(api, "it-gpu-nodes", 6, prefix="cpu")
    gpu_pod = pod_manifest("gpu", PodShape("1", "1Gi", gpu=1))
    api.create_namespaced_pod("it-gpu-nodes", gpu_pod)

    placement = wait_bound(api, "it-gpu-nodes", 7, timeout=120)

    assert placement.pop("gpu") in GPU_NODES
    assert set(placement.values()) <= set(CPU_NODES)
    assert {r["policy"] for r in records(api, "it-gpu-nodes").values()} == {"GpuNodesForGpuPods"}


def test_an_installed_plugin_that_fails_at_import_is_named_not_fatal(
    plugins_cluster: str, tmp_path: Path
) -> None:
    log = (cluster.state_dir(plugins_cluster) / "extender.log").read_text()
    assert "cannot load plugin policy 'BrokenAtImport' (fulcrum-broken-policy 0.0.1" in log
    assert "clashes with an existing policy of that name, which is used instead" in log

    config = extender_config(tmp_path, "BrokenAtImport")
    with pytest.raises(cluster.ClusterError) as refused:
        cluster.restart_extender(plugins_cluster, config)
    assert "prioritize[0].policy: cannot load plugin policy 'BrokenAtImport'" in str(refused.value)
    assert "pip uninstall fulcrum-broken-policy" in str(refused.value)
    assert extender_alive(plugins_cluster)  # refused before the running one was stopped


def test_a_plugin_named_like_a_builtin_does_not_replace_it(serving: Any) -> None:
    api = serving("it-clash", "MostAllocated")  # the plugin's MostAllocated raises in score
    create(api, "it-clash", 3, prefix="packed")
    placement = wait_bound(api, "it-clash", 3, timeout=120)
    assert len(set(placement.values())) == 1  # the built-in bin-packs
    assert {r["policy"] for r in records(api, "it-clash").values()} == {"MostAllocated"}


@pytest.mark.parametrize("policy", ["ScoreRaises", "WrongShape", "NanScores", "OutOfRange"])
def test_a_plugin_with_bad_scores_does_not_take_the_extender_down(
    serving: Any, plugins_cluster: str, policy: str
) -> None:
    namespace = f"it-{policy.lower()}"
    api = serving(namespace, policy, "Archimedes")
    create(api, namespace, 2, prefix="pod")
    wait_bound(api, namespace, 2, timeout=120)  # placed by Archimedes alone
    assert extender_alive(plugins_cluster)
    assert {r["policy"] for r in records(api, namespace).values()} == {f"{policy}:1+Archimedes:1"}
    log = (cluster.state_dir(plugins_cluster) / "extender.log").read_text()
    assert f"policy {policy}: " in log  # what was wrong, named


def test_tenant_pods_fill_their_tenants_nodes_then_fall_back(serving: Any) -> None:
    api = serving("it-tenant", "TenantAffinity:10", "Archimedes:1")
    create(api, "it-tenant", 10, prefix="a", tenant="a")  # room for 8 on the tenant's nodes

    placement = wait_bound(api, "it-tenant", 10, timeout=120)

    on_tenant_nodes = Counter(n for n in placement.values() if n in TENANT_NODES)
    assert on_tenant_nodes == dict.fromkeys(TENANT_NODES, 4), placement  # full
    policies = {r["policy"] for r in records(api, "it-tenant").values()}
    assert policies == {"TenantAffinity:10+Archimedes:1"}


def test_zone_spread_spreads_a_deployment_over_the_zones(serving: Any) -> None:
    api = serving("it-zones", "ZoneSpread")
    web = rr.deployment("it-zones", "web", 6, opted=False)  # 6 pods of 2 CPUs
    client.AppsV1Api(api.api_client).create_namespaced_deployment("it-zones", web)

    placement = wait_bound(api, "it-zones", 6, timeout=120)

    zone_of = {node: zone for zone, nodes in ZONES.items() for node in nodes}
    assert Counter(zone_of[n] for n in placement.values()) == dict.fromkeys(ZONES, 2), placement
    assert {r["policy"] for r in records(api, "it-zones").values()} == {"ZoneSpread"}


def test_the_charts_plugin_installer_passes_pod_security_restricted(
    plugins_cluster: str, helm: Path, tmp_path: Path
) -> None:
    """The init container (plugins.packages) through the apiserver's validation and Pod
    Security admission, in the "restricted" namespace the chart creates (kwok runs no
    containers: tests/unit/test_chart_plugins.py runs its pip command)."""
    namespace = "fulcrum-plugins-it"
    sets = ["namespace.create=true", "webhook.certificate.source=secret"]
    sets.append("plugins.packages={fulcrum-tenant-affinity==0.1.0}")
    rendered = chart.split_sources(chart.template(helm, namespace=namespace, set_values=sets))
    files = {}
    for source in ("namespace.yaml", "deployment.yaml", "rebuild.yaml"):
        files[source] = tmp_path / source
        files[source].write_text(rendered[f"templates/{source}"])
    state = cluster.load_state(plugins_cluster)
    kubectl = Kubectl(state.kubectl, cluster.kubeconfig_path(plugins_cluster))
    kubectl.ok("apply", "-f", str(files.pop("namespace.yaml")))
    paths = [arg for path in files.values() for arg in ("-f", str(path))]
    result = kubectl.run("apply", "--dry-run=server", *paths)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "PodSecurity" not in result.stderr, result.stderr
    for deployment in ("fulcrum-scheduler", "fulcrum-rebuild"):
        assert f"deployment.apps/{deployment} created (server dry run)" in result.stdout
