"""Choosing a node from scores: the one rule the simulator and callers share."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import PodRequest
from scheduler.policy import Policy
from scheduler.snapshot import Snapshot


def pick(
    scores: NDArray[np.float64], candidates: NDArray[np.intp], rank: NDArray[np.int64] | None
) -> int:
    """The candidate with the highest score; ties to the smallest ``rank`` (else index)."""
    values = scores[candidates]
    best = candidates[values == values.max()]
    if rank is None:
        return int(best[0])
    return int(best[np.argmin(rank[best])])


def choose_node(
    snapshot: Snapshot,
    pod: PodRequest,
    policy: Policy,
    *,
    rank: NDArray[np.int64] | None = None,
) -> tuple[int, tuple[int, ...]] | None:
    """Filter, score and pick: ``(row, devices)`` or ``None`` if no node fits."""
    feasible = snapshot.feasible(pod) & policy.filter(snapshot, pod)
    candidates = np.flatnonzero(feasible)
    if candidates.size == 0:
        return None
    row = (
        int(candidates[0])
        if candidates.size == 1
        else pick(policy.score(snapshot, pod), candidates, rank)
    )
    return row, policy.select_devices(snapshot, row, pod)
