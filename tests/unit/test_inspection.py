"""``fulcrum inspect``'s analysis (``fulcrum.inspect.inspection``) over objects, without a
cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from extender import record
from extender.cache import ClusterCache
from fulcrum.inspect.explain import explain
from fulcrum.inspect.inspection import ClusterCollector, inspect, render
from kube import api
from tests import builders

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
FULCRUM = {"schedulerName": api.SCHEDULER_NAME}


def bound(uid: str, node: str, **kwargs: Any) -> dict[str, Any]:
    pod = builders.pod(uid, node_name=node, **kwargs)
    pod["spec"].update(FULCRUM)
    return pod


def test_a_healthy_cluster_breaks_no_invariant() -> None:
    nodes = [builders.node("n0", cpu="4", memory="8Gi"), builders.node("n1", gpus=2, model="A100")]
    pods = [
        bound("a", "n0", cpu="3"),
        bound("b", "n1", annotations={"fulcrum.io/gpu-milli": "500"}),
    ]
    report = inspect(nodes, pods, [], [], NOW)
    assert report.violations == []
    assert [n.cpu for n in report.nodes] == [(3000, 4000), (1000, 4000)]
    assert report.nodes[1].gpus == (500, 2000)
    assert "invariants: all hold" in render(report)


def test_every_broken_invariant_is_named_with_where() -> None:
    nodes = [builders.node("n0", cpu="2", memory="8Gi")]
    ip = {api.ASSIGNED_IP: "10.0.0.5"}
    opted = {api.REBUILD: "local"}
    pods = [
        bound("a", "n0", cpu="2", annotations=ip),
        bound("b", "n0", cpu="1", annotations=ip),  # cpu over-committed, IP held twice
        builders.pod("c", node_name="n0", cpu="0", annotations=opted),  # default-scheduler's
    ]
    stale = [
        builders.reservation("gone"),
        builders.reservation("n0", expires=NOW - timedelta(minutes=10), phase="Expired"),
    ]
    report = inspect(nodes, pods, stale, [], NOW)
    assert report.violations == [
        "node n0 is over-committed: cpu",
        "Reservation ns/rb-1 holds node gone, which is gone",
        "Reservation ns/rb-1 expired at 2026-12-02 07:50:00 UTC and is still there",
        "IP 10.0.0.5 is held by 2 pods: ns/a, ns/b",
        "pod ns/c is opted in to local rebuild but was scheduled by default-scheduler",
    ]
    assert "INVARIANTS BROKEN: 5" in render(report)


def test_a_node_with_its_cpu_gone_and_its_gpus_idle_is_stranded() -> None:
    nodes = [builders.node("g", cpu="8", memory="64Gi", gpus=4, model="A100")]
    report = inspect(nodes, [bound("cpu", "g", cpu="8")], [], [], NOW)
    assert report.nodes[0].stranded == "cpu exhausted, memory, GPU idle"


def test_a_corrupt_pool_is_a_broken_invariant() -> None:
    pool = {
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"cidr": "10.0.0.0/29"},
        "status": {"allocations": {"10.0.0.2": "pod:a", "10.9.9.9": "pod:b"}},
    }
    report = inspect([], [], [], [pool], NOW)
    assert len(report.violations) == 1 and report.violations[0].startswith("IPPool ns/web")


def test_explain_a_pending_gpu_pod_aggregates_what_each_node_lacks() -> None:
    nodes = [
        builders.node(f"n{i}", cpu="32", memory="64Gi", gpus=4, model="A100") for i in range(3)
    ]
    nodes.append(builders.node("cpu-only", cpu="32", memory="64Gi"))
    filler = [bound(f"f{i}", f"n{i}", cpu="1", requests={"nvidia.com/gpu": "2"}) for i in range(3)]
    waiting = builders.pod("big", cpu="4", requests={"nvidia.com/gpu": "8"})
    lines = explain("ns/big", nodes, [*filler, waiting], [], [], NOW)
    assert lines[0] == "pod ns/big is Pending"
    assert lines[1] == ("0/4 nodes can take it now; 4 node has fewer than the 8 GPUs the pod needs")
    assert lines[2] == "no moves of running pods would make room for it"


def test_explain_names_the_node_held_for_a_successor_and_rooms_held_for_others() -> None:
    nodes = [builders.node("n0", cpu="4", memory="8Gi"), builders.node("n1", cpu="4", memory="8Gi")]
    owner = [{"kind": "StatefulSet", "name": "web", "controller": True}]
    labels = {"apps.kubernetes.io/pod-index": "0"}
    successor = builders.pod(
        "new",
        name="web-0",
        cpu="3",
        annotations={api.REBUILD: "local"},
        owners=owner,
        labels=labels,
    )
    held = builders.reservation("n0")
    held["spec"]["key"] = "StatefulSet/ns/web/0"
    held["spec"]["template"] = {"spec": {"containers": [{"resources": {"requests": {"cpu": "3"}}}]}}
    lines = explain("ns/web-0", nodes, [successor], [held], [], NOW)
    assert "local rebuild: node n0 is held for it; Fulcrum passes only that node" in lines
    assert "1/2 nodes can take it now; 1 Insufficient cpu: the pod requests 3000m" in lines


def test_explain_a_bound_pod() -> None:
    pod = bound("a", "n0", annotations={api.ASSIGNED_IP: "10.0.0.5", api.IP_POOL: "web"})
    assert explain("ns/a", [builders.node("n0")], [pod], [], [], NOW) == [
        "pod ns/a",
        "on node n0, placed by fulcrum-scheduler",
        "IP 10.0.0.5 from pool web",
    ]


def test_explain_a_bound_pod_shows_its_decision_record() -> None:
    decision = record.Decision(
        "MostAllocated", 5, 2, (("n0", 75.0), ("n1", 50.0)), (("Too many pods", 3),)
    )
    pod = bound("a", "n0", annotations={api.DECISION: decision.annotation("n0")})
    lines = explain("ns/a", [builders.node("n0")], [pod], [], [], NOW)
    assert lines[2:] == [
        "chosen by MostAllocated: score 75.0 of 100; runner-up n1 at 50.0",
        "2/5 nodes could take it; the others: 3 Too many pods",
    ]
    broken = bound("b", "n0", annotations={api.DECISION: "{not json"})
    assert explain("ns/b", [builders.node("n0")], [broken], [], [], NOW)[2] == (
        "decision record (unreadable): {not json"
    )


def test_the_cluster_figures_are_metrics_read_from_the_extenders_cache() -> None:
    cache = ClusterCache()
    for item in (builders.node("n0", cpu="4"), builders.node("n1", cpu="4", gpus=2)):
        cache.apply("nodes", "ADDED", item)
    cache.apply("pods", "ADDED", bound("a", "n1", cpu="4"))  # n1: cpu gone, 2 GPUs idle
    registry = CollectorRegistry()
    registry.register(ClusterCollector(cache.snapshot_copy))
    text = generate_latest(registry).decode()
    assert 'fulcrum_cluster_allocated_ratio{resource="cpu"} 0.5' in text
    assert 'fulcrum_cluster_allocated_ratio{resource="gpu"} 0.0' in text
    assert "fulcrum_cluster_stranded_nodes 1.0" in text
    assert "fulcrum_cluster_nodes_used 1.0" in text
    assert "fulcrum_cluster_gpu_fragmentation_ratio" in text


def test_the_optimiser_says_how_many_nodes_could_be_emptied() -> None:
    nodes = [builders.node(f"n{i}", cpu="4") for i in range(4)]
    pods = [bound(f"p{i}", f"n{i}", cpu="1") for i in range(4)]  # one core used on each

    report = inspect(nodes, pods, [], [], NOW, plan_seconds=10)

    assert report.emptiable == {"nodes": 3, "moves": 3, "used": 4}
    assert "the optimiser could empty 3 of the 4 used nodes with 3 pod moves" in render(report)
    assert inspect(nodes, pods, [], [], NOW).emptiable is None  # no budget: not asked
