"""What every Fulcrum process exposes on ``/metrics`` besides its own: process and platform
metrics, and ``fulcrum_build_info`` (Prometheus conventions; each process keeps its own
registry, so tests can build several apps in one process)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector


def standard_registry(component: str) -> CollectorRegistry:
    """A registry with the process and platform collectors and ``fulcrum_build_info``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    try:
        release = version("fulcrum")
    except PackageNotFoundError:
        release = "unknown"
    info = Gauge(
        "fulcrum_build_info",
        "Fulcrum's version and the component serving these metrics; always 1",
        ["version", "component"],
        registry=registry,
    )
    info.labels(release, component).set(1)
    return registry
