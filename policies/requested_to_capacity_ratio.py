"""RequestedToCapacityRatio: kube-scheduler's shaped score (``requested_to_capacity_ratio.go``).

``shape`` is a list of ``(utilization %, score 0..10)`` points with strictly
increasing utilization; scores are scaled by 10 to the 0..100 range. Per
resource, with integer arithmetic::

    u       = requested * 100 // capacity          (100 if capacity == 0 or requested > capacity)
    f(u)    = piecewise-linear through the shape points, flat outside them
    score   = round(sum_r f(u_r) * w_r / sum_r w_r)  over resources with capacity > 0
                                                      and f(u_r) > 0

The default shape ``[(0, 0), (100, 10)]`` is bin-packing (MostAllocated-like).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.base import FloatArray, IntArray, PolicyBase
from policies.resource_allocation import ResourceWeight, requested_and_capacity, validate_resources
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot

MAX_CUSTOM_PRIORITY_SCORE = 10
MAX_UTILIZATION = 100


@dataclass(frozen=True, slots=True)
class ShapePoint:
    utilization: int
    score: int


def validate_shape(shape: Sequence[ShapePoint], path: str) -> None:
    if not shape:
        raise ValueError(f"{path}: at least one point is required")
    for i, point in enumerate(shape):
        if not 0 <= point.utilization <= MAX_UTILIZATION:
            raise ValueError(f"{path}[{i}].utilization: must be in 0..100, got {point.utilization}")
        if not 0 <= point.score <= MAX_CUSTOM_PRIORITY_SCORE:
            raise ValueError(f"{path}[{i}].score: must be in 0..10, got {point.score}")
        if i > 0 and point.utilization <= shape[i - 1].utilization:
            raise ValueError(f"{path}[{i}].utilization: values must be strictly increasing")


def broken_linear(utilization: IntArray, shape: Sequence[ShapePoint]) -> IntArray:
    """Upstream's ``buildBrokenLinearFunction`` (scores already x10), vectorised."""
    scores = [p.score * 10 for p in shape]
    result = np.full(utilization.shape, scores[-1], dtype=np.int64)
    done = np.zeros(utilization.shape, dtype=np.bool_)
    for i, point in enumerate(shape):
        here = ~done & (utilization <= point.utilization)
        if i == 0:
            value = np.full(utilization.shape, scores[0], dtype=np.int64)
        else:
            prev = shape[i - 1]
            slope_num = (scores[i] - scores[i - 1]) * (utilization - prev.utilization)
            # Go's integer division truncates toward zero (the slope may be negative).
            span = point.utilization - prev.utilization
            value = scores[i - 1] + np.trunc(slope_num / span).astype(np.int64)
        result = np.where(here, value, result)
        done |= here
    return result


@dataclass(frozen=True, slots=True)
class RequestedToCapacityRatioArgs:
    shape: tuple[ShapePoint, ...] = (ShapePoint(0, 0), ShapePoint(100, 10))
    resources: tuple[ResourceWeight, ...] = (ResourceWeight("cpu", 1), ResourceWeight("memory", 1))

    def __post_init__(self) -> None:
        validate_shape(self.shape, "requestedToCapacityRatio.shape")
        validate_resources(self.resources, "requestedToCapacityRatio.resources")


class RequestedToCapacityRatio(PolicyBase):
    name = "RequestedToCapacityRatio"

    def __init__(self, args: RequestedToCapacityRatioArgs | None = None) -> None:
        self.args = args or RequestedToCapacityRatioArgs()

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        total = np.zeros(snapshot.num_nodes, dtype=np.int64)
        weights = np.zeros(snapshot.num_nodes, dtype=np.int64)
        for resource in self.args.resources:
            requested, capacity = requested_and_capacity(snapshot, pod, resource.name)
            over = (capacity == 0) | (requested > capacity)
            utilization = np.where(
                over, MAX_UTILIZATION, requested * MAX_UTILIZATION // np.maximum(capacity, 1)
            )
            resource_score = broken_linear(utilization, self.args.shape)
            counted = (capacity > 0) & (resource_score > 0)
            total += np.where(counted, resource_score * resource.weight, 0)
            weights += np.where(counted, resource.weight, 0)
        # math.Round: half away from zero; all values are non-negative here.
        return np.floor(total / np.maximum(weights, 1) + 0.5)


def create(context: PolicyContext) -> RequestedToCapacityRatio:
    return RequestedToCapacityRatio()
