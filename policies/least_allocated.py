"""LeastAllocated: kube-scheduler's spreading score (``least_allocated.go``).

For each configured resource ``r`` with weight ``w_r``, where ``requested``
includes the incoming pod and ``capacity`` is the node's allocatable::

    score_r = (capacity - requested) * 100 // capacity    (0 if capacity == 0
                                                           or requested > capacity)
    score   = sum_r score_r * w_r // sum_r w_r            (resources with capacity 0 skipped)

Integer arithmetic throughout, as upstream. Upstream scores pods without a
cpu/memory request as 100m / 200MiB ("non-zero requests"); the snapshot keeps
true requests, so pass those defaults in the ``PodRequest`` if you need that.
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


def least_requested_score(requested: IntArray, capacity: IntArray) -> IntArray:
    """``(capacity - requested) * 100 // capacity``; 0 when empty or over capacity."""
    safe = np.where(capacity > 0, capacity, 1)
    score = (capacity - requested) * 100 // safe
    return np.where((capacity == 0) | (requested > capacity), 0, score)


@dataclass(frozen=True, slots=True)
class LeastAllocatedArgs:
    resources: tuple[ResourceWeight, ...] = DEFAULT_RESOURCES

    def __post_init__(self) -> None:
        validate_resources(self.resources, "leastAllocated.resources")


class LeastAllocated(PolicyBase):
    name = "LeastAllocated"

    def __init__(self, args: LeastAllocatedArgs | None = None) -> None:
        self.args = args or LeastAllocatedArgs()

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        return weighted_resource_score(snapshot, pod, self.args.resources, least_requested_score)


def create(context: PolicyContext) -> LeastAllocated:
    return LeastAllocated()
