"""Policies whose ``score`` breaks the contract (``scheduler.policy.Policy``) in one way each."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot

Score = Callable[[int], NDArray[np.float64]]  # nodes -> scores


class BadScores:
    node_local = True

    def __init__(self, name: str, scores: Score) -> None:
        self.name, self._scores = name, scores

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        return self._scores(snapshot.num_nodes)

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
        return np.ones(snapshot.num_nodes, dtype=np.bool_)

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        return snapshot.best_fit_devices(row, pod)


def _fail(nodes: int) -> NDArray[np.float64]:
    raise ZeroDivisionError("ScoreRaises fails in score on purpose")


def raises(context: PolicyContext) -> BadScores:
    return BadScores("ScoreRaises", _fail)


def wrong_shape(context: PolicyContext) -> BadScores:
    return BadScores("WrongShape", lambda nodes: np.zeros(nodes + 1))


def nan(context: PolicyContext) -> BadScores:
    return BadScores("NanScores", lambda nodes: np.full(nodes, np.nan))


def out_of_range(context: PolicyContext) -> BadScores:
    return BadScores("OutOfRange", lambda nodes: np.full(nodes, 250.0))
