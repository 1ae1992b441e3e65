"""Workloads for demos and tests: create pods of given shapes, wait for placement, read results."""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from fulcrum.harness.cluster import FULCRUM_SCHEDULER, NODE_LABEL

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@dataclass(frozen=True)
class PodShape:
    cpu: str
    memory: str
    gpu: int = 0


DEFAULT_SHAPES = (PodShape("4", "8Gi"), PodShape("2", "16Gi"), PodShape("8", "4Gi"))


def pod_manifest(
    name: str,
    shape: PodShape,
    *,
    scheduler: str = FULCRUM_SCHEDULER,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    requests = {"cpu": shape.cpu, "memory": shape.memory}
    if shape.gpu:
        requests["nvidia.com/gpu"] = str(shape.gpu)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "fulcrum-workload", **(labels or {})}},
        "spec": {
            "schedulerName": scheduler,
            "containers": [
                {
                    "name": "main",
                    "image": PAUSE_IMAGE,
                    "resources": {"requests": requests, "limits": requests},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def create_pods(
    api: Any,
    namespace: str,
    count: int,
    shapes: Sequence[PodShape] = DEFAULT_SHAPES,
    *,
    prefix: str = "pod",
    scheduler: str = FULCRUM_SCHEDULER,
) -> list[str]:
    names = [f"{prefix}-{i:05d}" for i in range(count)]

    def create(i: int) -> None:
        manifest = pod_manifest(names[i], shapes[i % len(shapes)], scheduler=scheduler)
        api.create_namespaced_pod(namespace, manifest)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return names


def wait_bound(
    api: Any,
    namespace: str,
    count: int,
    *,
    timeout: float = 300,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, str]:
    """Pod name -> node, once ``count`` pods in ``namespace`` have a node; raises on timeout."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        pods = api.list_namespaced_pod(namespace).items
        bound = {p.metadata.name: p.spec.node_name for p in pods if p.spec.node_name}
        if len(bound) != last:
            log(f"  {len(bound)}/{count} pods bound")
            last = len(bound)
        if len(bound) >= count:
            return bound
        if time.monotonic() > deadline:
            pending = sorted(p.metadata.name for p in pods if not p.spec.node_name)
            raise TimeoutError(
                f"{len(pending)} pods still unbound after {timeout:.0f} s: {pending[:5]}"
            )
        time.sleep(0.5)


def node_usage(api: Any) -> dict[str, tuple[float, float]]:
    """Node -> (cpu requested / allocatable, memory requested / allocatable) for kwok nodes."""
    nodes = {n.metadata.name: n for n in api.list_node(label_selector=f"{NODE_LABEL}=true").items}
    used: dict[str, list[float]] = {name: [0.0, 0.0] for name in nodes}
    for pod in api.list_pod_for_all_namespaces().items:
        if pod.spec.node_name in used and pod.status.phase not in ("Succeeded", "Failed"):
            for c in pod.spec.containers:
                req = (c.resources.requests or {}) if c.resources else {}
                used[pod.spec.node_name][0] += float(parse_quantity(req.get("cpu", "0")))
                used[pod.spec.node_name][1] += float(parse_quantity(req.get("memory", "0")))
    out = {}
    for name, node in nodes.items():
        alloc = node.status.allocatable
        out[name] = (
            used[name][0] / float(parse_quantity(alloc["cpu"])),
            used[name][1] / float(parse_quantity(alloc["memory"])),
        )
    return out


def _metrics(url: str, context: ssl.SSLContext | None = None) -> list[str]:
    """The lines of a Prometheus /metrics page."""
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return str(reply.read().decode()).splitlines()


def _metric_by_verb(port: int, metric: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in _metrics(f"http://127.0.0.1:{port}/metrics"):
        if line.startswith(metric + "{"):
            verb = line.split('verb="')[1].split('"')[0]
            values[verb] = float(line.rsplit(" ", 1)[1])
    return values


def extender_calls(port: int) -> dict[str, float]:
    """Calls per verb, read from the extender's /metrics."""
    return _metric_by_verb(port, "fulcrum_extender_requests_total")


def extender_seconds(port: int) -> dict[str, float]:
    """Total seconds spent serving each verb, read from the extender's /metrics."""
    return _metric_by_verb(port, "fulcrum_extender_latency_seconds_sum")


def scheduling_algorithm(port: int) -> tuple[float, float, float]:
    """kube-scheduler's own seconds in its scheduling algorithm (its filters, the extenders'
    calls, scoring), of those in its Filter plugins, and its attempts; from its /metrics on
    secure ``port``."""
    context = ssl._create_unverified_context()  # kube-scheduler serves a self-signed cert
    seconds = filters = attempts = 0.0
    for line in _metrics(f"https://127.0.0.1:{port}/metrics", context):
        value = line.rsplit(" ", 1)[-1]
        if line.startswith("scheduler_scheduling_algorithm_duration_seconds_sum"):
            seconds += float(value)
        elif line.startswith("scheduler_scheduling_algorithm_duration_seconds_count"):
            attempts += float(value)
        elif (
            line.startswith("scheduler_framework_extension_point_duration_seconds_sum")
            and 'extension_point="Filter"' in line
        ):
            filters += float(value)
    return seconds, filters, attempts


def scheduler_metrics(port: int) -> list[str]:
    """The lines of kube-scheduler's /metrics, on its secure ``port`` (self-signed, no auth)."""
    return _metrics(f"https://127.0.0.1:{port}/metrics", ssl._create_unverified_context())


def ensure_namespace(api: Any, namespace: str, *, timeout: float = 60) -> None:
    """Create ``namespace`` if needed and wait for its default ServiceAccount (pods need it)."""
    try:
        api.create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)
