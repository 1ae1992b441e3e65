"""Plumbing shared by the upstream NodeResources scoring strategies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from policies.base import FloatArray, IntArray
from scheduler.pod import PodRequest
from scheduler.snapshot import CPU_COL, EPHEMERAL_COL, MEMORY_COL, PODS_COL, Snapshot


@dataclass(frozen=True, slots=True)
class ResourceWeight:
    """One entry of ``scoringStrategy.resources``: a resource name and its weight."""

    name: str
    weight: int = 1


def validate_resources(resources: Sequence[ResourceWeight], path: str) -> None:
    """Reject bad arguments with the field path, as upstream's validation does."""
    if not resources:
        raise ValueError(f"{path}: must name at least one resource")
    seen: set[str] = set()
    for i, resource in enumerate(resources):
        if not resource.name:
            raise ValueError(f"{path}[{i}].name: must not be empty")
        if resource.name in seen:
            raise ValueError(f"{path}[{i}].name: duplicate resource {resource.name!r}")
        seen.add(resource.name)
        if not 1 <= resource.weight <= 100:
            raise ValueError(f"{path}[{i}].weight: must be in 1..100, got {resource.weight}")


def pod_quantity(pod: PodRequest, name: str) -> int:
    if name == "cpu":
        return pod.cpu_milli
    if name == "memory":
        return pod.memory
    if name == "ephemeral-storage":
        return pod.ephemeral_storage
    if name == "pods":
        return 1
    return dict(pod.extended).get(name, 0)


def requested_and_capacity(
    snapshot: Snapshot, pod: PodRequest, name: str
) -> tuple[IntArray, IntArray]:
    """Per node: requested (already placed + this pod) and allocatable of ``name``."""
    columns = {"cpu": CPU_COL, "memory": MEMORY_COL, "ephemeral-storage": EPHEMERAL_COL}
    columns["pods"] = PODS_COL
    col = columns.get(name)
    if col is None:
        names = snapshot.resource_names
        if name not in names:
            zeros = np.zeros(snapshot.num_nodes, dtype=np.int64)
            return zeros + pod_quantity(pod, name), zeros
        col = names.index(name)
    capacity = snapshot.allocatable[:, col]
    requested = capacity - snapshot.free[:, col] + pod_quantity(pod, name)
    return requested, capacity


def weighted_resource_score(
    snapshot: Snapshot,
    pod: PodRequest,
    resources: Sequence[ResourceWeight],
    resource_score: Callable[[IntArray, IntArray], IntArray],
) -> FloatArray:
    """Upstream's resource allocation scorer: ``resource_score(requested, capacity)`` per
    resource, weighted, averaged with integer division over the resources the node has."""
    total = np.zeros(snapshot.num_nodes, dtype=np.int64)
    weights = np.zeros(snapshot.num_nodes, dtype=np.int64)
    for resource in resources:
        requested, capacity = requested_and_capacity(snapshot, pod, resource.name)
        present = capacity > 0
        total += np.where(present, resource_score(requested, capacity) * resource.weight, 0)
        weights += np.where(present, resource.weight, 0)
    return (total // np.maximum(weights, 1)).astype(np.float64)
