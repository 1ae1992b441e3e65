"""What ``/metrics`` shows: the standard collectors, and the rebuild controller's own."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from extender.app import create_app
from extender.config import ExtenderSettings
from kube import api
from kube.metrics import standard_registry
from rebuild.metrics import ControllerMetrics
from rebuild.store import Store
from rebuild.workqueue import WorkQueue


def test_every_process_has_process_metrics_and_its_build_info() -> None:
    text = generate_latest(standard_registry("extender")).decode()
    assert "process_cpu_seconds_total" in text
    assert 'fulcrum_build_info{component="extender",version="' in text


def test_the_extender_serves_them() -> None:
    text = TestClient(create_app(ExtenderSettings())).get("/metrics").text
    assert "process_resident_memory_bytes" in text and "fulcrum_extender_requests_total" in text


def test_the_controller_counts_reconciles_and_reads_its_store_at_each_scrape() -> None:
    queue = WorkQueue()
    store = Store(queue)
    metrics = ControllerMetrics(store, queue)
    pool = {
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"cidr": "10.0.0.0/29"},
        "status": {"allocations": {"10.0.0.2": "pod:a"}},
    }
    held = {"metadata": {"name": "rb-1", "namespace": "ns"}, "status": {"phase": "Held"}}
    store.apply(api.IPPOOLS, "ADDED", pool)
    store.apply(api.RESERVATIONS, "ADDED", held)
    metrics.reconciles.labels("pods", "done").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'fulcrum_rebuild_reconciles_total{kind="pods",outcome="done"} 1.0' in text
    assert 'fulcrum_rebuild_reservations{phase="Held"} 1.0' in text
    assert 'fulcrum_rebuild_pool_addresses{namespace="ns",pool="web",state="used"} 1.0' in text
    assert 'fulcrum_rebuild_pool_addresses{namespace="ns",pool="web",state="free"} 5.0' in text
    assert "fulcrum_rebuild_queue_depth" in text
