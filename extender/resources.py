"""Resource arithmetic on raw Kubernetes objects (dicts as the apiserver sends them).

Units: cpu in millicores, memory and ephemeral-storage in bytes, everything else in whole units.
Pod requests follow upstream NodeResourcesFit: max(sum of app containers, each init container)
plus the pod overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kubernetes.utils.quantity import parse_quantity

CPU = "cpu"
MEMORY = "memory"
PODS = "pods"
EPHEMERAL = "ephemeral-storage"
GPU = "nvidia.com/gpu"

Resources = dict[str, int]


class QuantityError(ValueError):
    """A resource quantity that Kubernetes would also refuse."""


def quantity(resource: str, value: Any) -> int:
    """Convert a Kubernetes quantity to Fulcrum's integer unit for ``resource``."""
    try:
        amount = parse_quantity(value)
    except (ValueError, TypeError) as exc:
        raise QuantityError(f"{resource}: {value!r} is not a Kubernetes quantity") from exc
    if resource == CPU:
        amount = amount * 1000
    ceiling: int = math.ceil(amount)
    return ceiling


def to_resources(values: Mapping[str, Any] | None) -> Resources:
    return {name: quantity(name, value) for name, value in (values or {}).items()}


def _add(total: Resources, more: Resources) -> None:
    for name, value in more.items():
        total[name] = total.get(name, 0) + value


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """The resources the scheduler reserves for ``pod`` (the init-container max rule)."""
    spec = pod.get("spec") or {}
    total: Resources = {}
    for container in spec.get("containers") or []:
        _add(total, to_resources((container.get("resources") or {}).get("requests")))
    restartable: Resources = {}
    for container in spec.get("initContainers") or []:
        requests = to_resources((container.get("resources") or {}).get("requests"))
        if container.get("restartPolicy") == "Always":  # sidecars run beside the app
            _add(restartable, requests)
            _add(total, requests)
            continue
        for name, value in requests.items():
            total[name] = max(total.get(name, 0), value + restartable.get(name, 0))
    _add(total, to_resources(spec.get("overhead")))
    total[PODS] = 1
    return total


def node_allocatable(node: Mapping[str, Any]) -> Resources:
    status = node.get("status") or {}
    return to_resources(status.get("allocatable") or status.get("capacity"))
