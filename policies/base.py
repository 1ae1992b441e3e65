"""Shared plumbing for policies: defaults for the optional hooks and small helpers."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.attributes import NOTHING, Reads
from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.policy import MAX_SCORE, MIN_SCORE
from scheduler.snapshot import Snapshot

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


class PolicyBase:
    """Defaults: no extra filter, best-fit GPU devices, node-local scores.

    Subclasses set ``name`` and implement ``score``.
    """

    name: str = ""
    node_local: bool = True
    reads: Reads = NOTHING

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        raise NotImplementedError

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> BoolArray:
        return np.ones(snapshot.num_nodes, dtype=np.bool_)

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        return snapshot.best_fit_devices(row, pod)


def clip_scores(scores: NDArray[np.float64] | NDArray[np.int64]) -> FloatArray:
    """A new float array clipped to the internal 0..100 scale."""
    return np.clip(np.asarray(scores, dtype=np.float64), MIN_SCORE, MAX_SCORE)


def gpu_used_after_whole(gpu_free: IntArray, count: int) -> IntArray:
    """Device state after taking the ``count`` lowest-index fully free devices.

    Nodes with fewer free devices lose all they have (the result is only
    meaningful for nodes where the pod fits).
    """
    full = gpu_free >= GPU_MILLI
    taken = full & (np.cumsum(full, axis=1) <= count)
    return np.where(taken, 0, gpu_free)


def go_trunc(values: NDArray[np.float64]) -> FloatArray:
    """Truncation toward zero, like Go's ``int64(x)``."""
    return np.trunc(values)
