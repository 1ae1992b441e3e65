"""The Grafana dashboard in deploy/grafana asks only for metrics Fulcrum's processes serve."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from extender.app import Metrics
from extender.cache import ClusterCache
from fulcrum.inspect.inspection import ClusterCollector
from rebuild.metrics import ControllerMetrics
from rebuild.store import Store
from rebuild.workqueue import WorkQueue

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "fulcrum-dashboard.json"


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


def test_every_panel_queries_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = served()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {
        name for expr in exprs for name in re.findall(r"\b((?:fulcrum|process)_[a-z_]+)\b", expr)
    }
    assert asked, "the dashboard queries nothing"
    assert asked <= known, f"not served by any Fulcrum process: {sorted(asked - known)}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
