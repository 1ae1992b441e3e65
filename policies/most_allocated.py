"""MostAllocated: kube-scheduler's bin-packing score (``most_allocated.go``).

For each configured resource ``r`` with weight ``w_r`` (``requested`` includes
the incoming pod and is capped at ``capacity``)::

    score_r = min(requested, capacity) * 100 // capacity    (0 if capacity == 0)
    score   = sum_r score_r * w_r // sum_r w_r              (resources with capacity 0 skipped)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.base import FloatArray, IntArray, PolicyBase
from policies.resource_allocation import (
    ResourceWeight,
    validate_resources,
    weighted_resource_score,
)
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot

DEFAULT_RESOURCES = (ResourceWeight("cpu", 1), ResourceWeight("memory", 1))


def most_requested_score(requested: IntArray, capacity: IntArray) -> IntArray:
    """``min(requested, capacity) * 100 // capacity``; 0 when capacity is 0."""
    safe = np.where(capacity > 0, capacity, 1)
    score = np.minimum(requested, capacity) * 100 // safe
    return np.where(capacity == 0, 0, score)


@dataclass(frozen=True, slots=True)
class MostAllocatedArgs:
    resources: tuple[ResourceWeight, ...] = DEFAULT_RESOURCES

    def __post_init__(self) -> None:
        validate_resources(self.resources, "mostAllocated.resources")


class MostAllocated(PolicyBase):
    name = "MostAllocated"

    def __init__(self, args: MostAllocatedArgs | None = None) -> None:
        self.args = args or MostAllocatedArgs()

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        return weighted_resource_score(snapshot, pod, self.args.resources, most_requested_score)


def create(context: PolicyContext) -> MostAllocated:
    return MostAllocated()
