"""OR-Tools optimiser: batch packing with a bound, defragmentation plans, deadlines."""

from __future__ import annotations

import time

import numpy as np

from scheduler.optimiser import (
    _greedy_pack,
    _order,
    _used_nodes,
    pack_batch,
    plan_free_nodes,
    plan_room_for,
)
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

GIB = 1 << 30


def empty_cluster(nodes: int = 8) -> Snapshot:
    s = Snapshot()
    for i in range(nodes):
        s.add_node(f"n{i}", cpu_milli=8000, memory=32 * GIB, gpu_count=2, gpu_model="T4")
    return s


def test_pack_batch_proves_optimal_on_an_exact_fit() -> None:
    # 12 pods of 2000 cpu fill exactly 3 nodes of 8000 cpu: bound 3 = used 3.
    pods = [PodRequest(cpu_milli=2000, memory=GIB)] * 12
    result = pack_batch(empty_cluster(), pods, deadline_s=5)
    assert result.placed == 12
    assert result.nodes_used == 3 and result.lower_bound == 3
    assert result.status == "optimal" and result.gap == 0


def test_pack_batch_beats_or_matches_greedy_and_keeps_devices_exact() -> None:
    rng = np.random.default_rng(0)
    pods = [
        PodRequest(
            cpu_milli=int(rng.choice([1000, 3000, 5000])),
            memory=GIB,
            gpu_count=1,
            gpu_milli=int(rng.choice([300, 500, 700, 1000])),
        )
        for _ in range(14)
    ]
    snapshot = empty_cluster(10)
    result = pack_batch(snapshot, pods, deadline_s=5)
    # The baseline pack_batch starts from: best-fit-decreasing on the same pods.
    greedy, greedy_plan = _greedy_pack(snapshot, pods, _order(pods), [None] * len(pods))
    assert sum(node is not None for node in greedy_plan) == 14
    assert result.placed == 14
    assert result.lower_bound <= result.nodes_used <= int(_used_nodes(greedy).sum())
    # Realise the plan: every pod must fit where it was put, devices included (assign checks
    # each device's free milli), on the nodes the result counts.
    work = snapshot.copy()
    for i, node in enumerate(result.placements):
        assert node is not None
        work.assign(f"p{i}", pods[i], node)
    assert int(_used_nodes(work).sum()) == result.nodes_used
    assert snapshot.free[:, 0].tolist() == [8000] * 10  # input untouched


def test_pack_batch_honours_its_deadline() -> None:
    rng = np.random.default_rng(1)
    pods = [PodRequest(cpu_milli=int(rng.integers(1, 40)) * 100, memory=GIB) for _ in range(300)]
    started = time.perf_counter()
    result = pack_batch(empty_cluster(120), pods, deadline_s=1.0)
    assert time.perf_counter() - started < 2.0
    assert result.placed == 300


def test_room_for_a_whole_node_pod_moves_the_fewest_pods() -> None:
    s = empty_cluster(3)
    # n0 holds one small GPU pod, n1 two, n2 is full of CPU: the 2-GPU pod needs one move.
    s.assign("a", PodRequest(cpu_milli=1000, gpu_count=1, gpu_milli=300), "n0", devices=(0,))
    s.assign("b", PodRequest(cpu_milli=1000, gpu_count=1, gpu_milli=300), "n1", devices=(0,))
    s.assign("c", PodRequest(cpu_milli=1000, gpu_count=1, gpu_milli=300), "n1", devices=(1,))
    s.assign("d", PodRequest(cpu_milli=8000), "n2")
    big = PodRequest(cpu_milli=4000, gpu_count=2, gpu_milli=1000)
    assert not s.feasible(big).any()
    plan = plan_room_for(s, big, deadline_s=3)
    assert plan is not None
    assert plan.target == "n0" and [m.pod for m in plan.moves] == ["a"]
    assert plan.moves[0].target == "n1"
    # Applying the plan makes the pod fit on the target.
    for move in plan.moves:
        placement = s.release(move.pod)
        s.assign(move.pod, placement.pod, move.target)
    assert s.feasible(big)[s.index_of("n0")]


def test_room_for_returns_none_when_impossible() -> None:
    s = empty_cluster(2)
    assert plan_room_for(s, PodRequest(cpu_milli=9000), deadline_s=1) is None


def test_free_nodes_drains_the_emptiest() -> None:
    s = empty_cluster(4)
    s.assign("a", PodRequest(cpu_milli=1000), "n0")
    s.assign("b", PodRequest(cpu_milli=1000), "n1")
    s.assign("c", PodRequest(cpu_milli=1000), "n1")
    s.assign("d", PodRequest(cpu_milli=1000), "n2")
    s.assign("e", PodRequest(cpu_milli=1000), "n3")
    plan = plan_free_nodes(s, 2, deadline_s=3)
    assert plan is not None
    assert len(plan.moves) == 2 and len(plan.freed) == 2
    assert "n1" not in plan.freed
    assert all(m.target not in plan.freed for m in plan.moves)
