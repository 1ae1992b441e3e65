"""Random: a uniformly random feasible node (the FGD artifact's baseline).

The chosen node scores 100, every other node 0. A GPU-sharing pod takes a
uniformly random device with enough free milli; whole GPUs go to the
lowest-index free devices. Deterministic for a seed: the policy owns a numpy
generator seeded from the context, so the same seed and the same call
sequence give the same choices.
"""

from __future__ import annotations

import numpy as np

from policies.base import BoolArray, FloatArray, PolicyBase
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot


class RandomFit(PolicyBase):
    name = "Random"
    node_local = False

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        feasible: BoolArray = snapshot.feasible(pod)
        scores = np.zeros(snapshot.num_nodes, dtype=np.float64)
        candidates = np.flatnonzero(feasible)
        if candidates.size:
            scores[candidates[self._rng.integers(candidates.size)]] = 100.0
        return scores

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        if not pod.is_gpu_sharing:
            return snapshot.best_fit_devices(row, pod)
        g = snapshot.gpu_free[row, : snapshot.gpu_count[row]]
        eligible = np.flatnonzero(g >= pod.gpu_milli)
        return (int(eligible[self._rng.integers(eligible.size)]),)


def create(context: PolicyContext) -> RandomFit:
    return RandomFit(context.seed)
