"""The Grafana dashboard in deploy/grafana asks only for metrics that are served: Fulcrum's
processes' own, and the apiserver's and kube-scheduler's as recorded from a kwokctl cluster of
Kubernetes 1.34 (tests/unit/data)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from extender.app import Metrics
from extender.cache import ClusterCache
from fulcrum.inspect import metrics
from fulcrum.inspect.inspection import ClusterCollector
from rebuild.metrics import ControllerMetrics
from rebuild.store import Store
from rebuild.workqueue import WorkQueue
from tests import builders

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "fulcrum-dashboard.json"
RECORDED = Path(__file__).parent / "data"
METRIC = re.compile(r"\b((?:fulcrum|process|apiserver|scheduler)_[a-z_]+)\b")


def served() -> set[str]:
    """Every sample name the extender and the controller can serve."""
    cache = ClusterCache()
    registries: list[CollectorRegistry] = [
        Metrics(cache).registry,
        ControllerMetrics(Store(queue := WorkQueue()), queue).registry,
    ]
    registries[0].register(ClusterCollector(cache.snapshot_copy))
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            suffix = {"histogram": "_bucket", "counter": "_total"}.get(family.type)
            if suffix:  # samples of labelled metrics show once observed
                names.add(family.name + suffix)
    return names


def recorded() -> set[str]:
    """Every sample name in the recorded /metrics of Kubernetes' components."""
    return {
        name
        for path in RECORDED.glob("*.metrics")
        for name in metrics.parse(path.read_text()).samples
    }


def test_every_panel_queries_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = served() | recorded()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {name for expr in exprs for name in METRIC.findall(expr)}
    assert asked, "the dashboard queries nothing"
    assert asked <= known, f"served by no Fulcrum process, nor recorded: {sorted(asked - known)}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_seeds_panels_are_there_and_laid_out_without_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for seed in (
        "fulcrum_cluster_available_nodes",  # nodes and available nodes
        "fulcrum_cluster_available{",  # available resources
        "fulcrum_cluster_pods",  # the pod count
        "fulcrum_cluster_node_allocated_ratio",  # each node's allocation
        "apiserver_request_total",  # requests by return code
        "apiserver_request_duration_seconds_bucket",  # and latency
        "scheduler_pod_scheduling_sli_duration_seconds_bucket",  # scheduling time per pod
    ):
        assert seed in exprs, seed
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "resource"} <= variables
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_the_extender_serves_node_counts_and_per_node_allocation() -> None:
    def node(name: str, ready: str, *, cordoned: bool = False) -> dict[str, Any]:
        out = builders.node(name, cpu="4", cordoned=cordoned)
        out["status"]["conditions"] = [{"type": "Ready", "status": ready}]
        return out

    cache = ClusterCache()
    for item in (node("n0", "True"), node("n1", "True", cordoned=True), node("n2", "False")):
        cache.apply("nodes", "ADDED", item)
    cache.apply("pods", "ADDED", builders.pod("a", node_name="n0", cpu="1"))
    registry = Metrics(cache).registry
    registry.register(ClusterCollector(cache.snapshot_copy))
    scrape = metrics.parse(generate_latest(registry).decode())
    assert scrape.total("fulcrum_cluster_nodes") == 3
    assert scrape.total("fulcrum_cluster_available_nodes") == 1
    assert scrape.total("fulcrum_cluster_pods") == 1
    assert scrape.total("fulcrum_cluster_allocatable", resource="cpu") == 12  # cores
    assert scrape.total("fulcrum_cluster_available", resource="cpu") == 11
    assert scrape.total("fulcrum_cluster_node_allocated_ratio", node="n0", resource="cpu") == 0.25
    assert scrape.total("fulcrum_cluster_node_allocated_ratio", node="n1", resource="cpu") == 0
    cache.apply("nodes", "MODIFIED", node("n2", "True"))  # Ready again
    assert (
        metrics.parse(generate_latest(registry).decode()).total("fulcrum_cluster_available_nodes")
        == 2
    )
