"""ScoreCache rescoring only changed nodes, and choose_node's tie-breaking."""

from __future__ import annotations

import numpy as np

from policies.best_fit import BestFit
from policies.random_fit import RandomFit
from scheduler.pod import PodRequest
from scheduler.score_cache import ScoreCache
from scheduler.select import choose_node, pick
from scheduler.snapshot import Snapshot


def cluster(n: int = 6) -> Snapshot:
    s = Snapshot()
    for i in range(n):
        s.add_node(f"n{i}", cpu_milli=8000, memory=1 << 34, gpu_count=2, gpu_model="T4")
    return s


class CountingBestFit(BestFit):
    def __init__(self) -> None:
        super().__init__()
        self.rows_scored = 0

    def score(self, snapshot: Snapshot, pod: PodRequest) -> np.ndarray:
        self.rows_scored += snapshot.num_nodes
        return super().score(snapshot, pod)


def test_cache_rescores_only_changed_nodes_and_stays_exact() -> None:
    s = cluster()
    policy = CountingBestFit()
    cache = ScoreCache()
    pod = PodRequest(cpu_milli=1000, gpu_count=1, gpu_milli=500)
    cache.scores(policy, s, pod)
    assert policy.rows_scored == 6
    s.assign("a", pod, "n3")
    scores = cache.scores(policy, s, pod)
    assert policy.rows_scored == 7
    np.testing.assert_array_equal(scores, BestFit().score(s, pod))


def test_cache_is_dropped_when_nodes_come_and_go() -> None:
    s = cluster()
    policy = CountingBestFit()
    cache = ScoreCache()
    pod = PodRequest(cpu_milli=1000)
    cache.scores(policy, s, pod)
    s.add_node("n9", cpu_milli=4000, memory=1 << 34)
    assert cache.scores(policy, s, pod).shape == (7,)
    assert policy.rows_scored == 6 + 7


def test_cache_passes_through_non_node_local_policies() -> None:
    s = cluster()
    scores = ScoreCache().scores(RandomFit(1), s, PodRequest())
    assert sorted(scores.tolist()) == [0.0] * 5 + [100.0]


def test_pick_breaks_ties_by_rank_then_index() -> None:
    scores = np.array([5.0, 9.0, 9.0, 1.0])
    candidates = np.array([0, 1, 2, 3])
    assert pick(scores, candidates, None) == 1
    assert pick(scores, candidates, np.array([0, 7, 3, 1])) == 2


def test_choose_node_returns_none_or_a_feasible_node_with_devices() -> None:
    s = cluster(2)
    assert choose_node(s, PodRequest(cpu_milli=9000), BestFit()) is None
    s.assign("x", PodRequest(cpu_milli=7000), "n0")
    row, devices = choose_node(
        s, PodRequest(cpu_milli=2000, gpu_count=2, gpu_milli=1000), BestFit()
    ) or (None, ())
    assert row == 1 and devices == (0, 1)
