"""The CP-SAT optimiser on a 1,000-node / 25,000-pod snapshot (the JDOS test-cluster size).

1. Place 25,000 pods online, one at a time, with a policy (default
   LeastAllocated, kube-scheduler's default spreading) and count nodes used.
2. ``pack_batch``: the same pods packed offline into the empty cluster within
   a deadline; prints nodes used, the proven lower bound and the gap of both
   the online and the offline packing to that bound.
3. ``plan_free_nodes`` and ``plan_room_for`` on the online snapshot.

    .venv/bin/python benchmarks/optimiser_bench.py [--deadline 30] [--policy leastallocated]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from policies.registry import get_policy
from scheduler.optimiser import pack_batch, plan_free_nodes, plan_room_for
from scheduler.pod import MIB, PodRequest
from scheduler.policy import PolicyContext
from scheduler.select import choose_node
from scheduler.snapshot import PODS_COL, Snapshot

GIB = 1 << 30


def cluster(nodes: int) -> Snapshot:
    snapshot = Snapshot(capacity=nodes)
    for i in range(nodes):
        gpu = i % 5 == 0
        snapshot.add_node(
            f"node-{i:04d}",
            cpu_milli=64000 if not gpu else 96000,
            memory=256 * GIB if not gpu else 512 * GIB,
            ephemeral_storage=500 * GIB,
            max_pods=110,
            gpu_count=8 if gpu else 0,
            gpu_model="V100" if gpu else None,
        )
    return snapshot


def workload(pods: int, seed: int) -> list[PodRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pods):
        if rng.random() < 0.96:
            out.append(
                PodRequest(
                    cpu_milli=int(rng.choice([250, 500, 1000, 2000, 4000])),
                    memory=int(rng.choice([512, 1024, 2048, 4096, 8192])) * MIB,
                )
            )
        elif rng.random() < 0.6:
            out.append(
                PodRequest(
                    cpu_milli=4000,
                    memory=16 * GIB,
                    gpu_count=1,
                    gpu_milli=int(rng.choice([250, 500, 1000])),
                )
            )
        else:
            k = int(rng.choice([1, 1, 2, 4]))
            out.append(
                PodRequest(cpu_milli=8000 * k, memory=32 * GIB * k, gpu_count=k, gpu_milli=1000)
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=25000)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--policy", default="LeastAllocated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pods = workload(args.pods, args.seed)
    online = cluster(args.nodes)
    policy = get_policy(args.policy, PolicyContext(seed=args.seed))
    start = time.perf_counter()
    failed = 0
    for i, pod in enumerate(pods):
        choice = choose_node(online, pod, policy)
        if choice is None:
            failed += 1
            continue
        row, devices = choice
        online.assign(f"pod-{i}", pod, online.names[row], devices=devices)
    used_online = int((online.free[:, PODS_COL] < online.allocatable[:, PODS_COL]).sum())
    print(
        f"online {policy.name}: {args.pods - failed}/{args.pods} placed on "
        f"{used_online} nodes in {time.perf_counter() - start:.1f}s"
    )

    result = pack_batch(cluster(args.nodes), pods, deadline_s=args.deadline)
    bound = result.lower_bound
    print(
        f"pack_batch (deadline {args.deadline:.0f}s): {result.placed} placed on "
        f"{result.nodes_used} nodes, lower bound {bound}, status {result.status}, "
        f"{result.elapsed_s:.1f}s"
    )
    print(f"gap to bound: online {(used_online - bound) / bound:+.1%}, offline {result.gap:+.1%}")

    t = time.perf_counter()
    plan = plan_free_nodes(online, 10, deadline_s=args.deadline / 3)
    moves = len(plan.moves) if plan else None
    print(
        f"plan_free_nodes(k=10): {moves} moves, status {plan.status if plan else '-'}, "
        f"{time.perf_counter() - t:.1f}s (deadline {args.deadline / 3:.0f}s)"
    )
    big = PodRequest(cpu_milli=32000, memory=128 * GIB, gpu_count=8, gpu_milli=1000)
    t = time.perf_counter()
    room = plan_room_for(online, big, deadline_s=args.deadline / 3)
    if room is None:
        outcome = "no plan"
    elif room.status == "fits":
        outcome = f"fits already on {room.target}"
    else:
        outcome = f"{len(room.moves)} moves to free {room.target} ({room.status})"
    print(
        f"plan_room_for(8-GPU pod): {outcome}, {time.perf_counter() - t:.1f}s "
        f"(deadline {args.deadline / 3:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
