"""Scoring one pod over 5,000 nodes: vectorised policies vs a naive per-node loop.

The cluster is the openb GPU node list repeated to 5,000 nodes and half
filled with pods drawn from the default workload. For each policy and pod
kind the script times ``policy.score`` (median of many calls) and a plain
Python loop computing the same formula node by node, checks that both give
identical scores and the same chosen node, and prints the medians and ratio.

    .venv/bin/python benchmarks/score_bench.py [--nodes 5000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from fulcrum.lab.traces import openb_dir
from policies.archimedes import Archimedes
from policies.best_fit import BestFit
from policies.dot_product import DotProduct
from policies.fgd import FGD
from policies.gpu_clustering import GpuClustering
from policies.gpu_packing import GpuPacking
from policies.least_allocated import LeastAllocated
from policies.most_allocated import MostAllocated
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import MIB, PodRequest
from scheduler.policy import Policy
from scheduler.replay import typical_workload
from scheduler.score_cache import ScoreCache
from scheduler.snapshot import CPU_COL, MEMORY_COL, Snapshot
from scheduler.trace import load_nodes, load_pods

TRACES = openb_dir()
PODS = {
    "cpu-only": PodRequest(cpu_milli=4000, memory=8192 * MIB),
    "gpu-share": PodRequest(cpu_milli=6000, memory=12288 * MIB, gpu_count=1, gpu_milli=470),
    "2-gpu": PodRequest(cpu_milli=16000, memory=65536 * MIB, gpu_count=2, gpu_milli=1000),
}
Naive = Callable[[Snapshot, PodRequest, int], float]


def build_cluster(nodes: int, seed: int = 0) -> tuple[Snapshot, TargetWorkload]:
    node_trace = load_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pod_trace = load_pods(TRACES / "openb_pod_list_default.csv")
    snapshot = Snapshot(capacity=nodes)
    for i in range(nodes):
        j = i % len(node_trace)
        count = int(node_trace.gpu_count[j])
        snapshot.add_node(
            f"node-{i:05d}",
            cpu_milli=int(node_trace.cpu_milli[j]),
            memory=int(node_trace.memory_mib[j]) * MIB,
            max_pods=1001,
            gpu_count=count,
            gpu_model=node_trace.models[j] if count else None,
        )
    rng = np.random.default_rng(seed)
    target = int(0.5 * snapshot.gpu_count.sum() * 1000)
    placed = 0
    while placed < target:
        pod = pod_trace.request(int(rng.integers(len(pod_trace))))
        rows = np.flatnonzero(snapshot.feasible(pod))
        if rows.size == 0:
            continue
        snapshot.assign(
            f"warm-{placed}-{rng.integers(1 << 30)}", pod, snapshot.names[int(rng.choice(rows))]
        )
        placed += pod.gpu_total_milli or 100
    return snapshot, typical_workload(pod_trace)


# ---------------------------------------------------------------- naive loops
def naive_least(s: Snapshot, pod: PodRequest, n: int) -> float:
    total = 0
    for col, want in ((CPU_COL, pod.cpu_milli), (MEMORY_COL, pod.memory)):
        cap = int(s.allocatable[n, col])
        req = cap - int(s.free[n, col]) + want
        total += 0 if cap == 0 or req > cap else (cap - req) * 100 // cap
    return float(total // 2)


def naive_most(s: Snapshot, pod: PodRequest, n: int) -> float:
    total = 0
    for col, want in ((CPU_COL, pod.cpu_milli), (MEMORY_COL, pod.memory)):
        cap = int(s.allocatable[n, col])
        req = cap - int(s.free[n, col]) + want
        total += 0 if cap == 0 else min(req, cap) * 100 // cap
    return float(total // 2)


def naive_best_fit(s: Snapshot, pod: PodRequest, n: int) -> float:
    gpu = sum(int(x) for x in s.gpu_free[n])
    v = 0.5 * (int(s.free[n, CPU_COL]) - pod.cpu_milli) / 128000
    v += 0.5 * (gpu - pod.gpu_total_milli) / 8000
    return float(min(max(math.trunc(100 * (1 - v)), 0), 100))


def naive_dot(s: Snapshot, pod: PodRequest, n: int) -> float:
    gpu = sum(int(x) for x in s.gpu_free[n])
    dot = int(s.free[n, CPU_COL]) / 128000 * (pod.cpu_milli / 128000)
    dot += gpu / 8000 * (pod.gpu_total_milli / 8000)
    return float(min(max(math.trunc(100 * (1 - dot / 2)), 0), 100))


def naive_clustering(s: Snapshot, pod: PodRequest, n: int) -> float:
    if pod.gpu_count == 0:
        return 0.0
    tags = {k for k, c in enumerate(s.gpu_pod_kinds[n]) if c > 0}
    tag = 0 if pod.is_gpu_sharing else pod.gpu_count
    base = 25 * (8000 - sum(int(x) for x in s.gpu_free[n])) // 8000
    bonus = 75 if tags == {tag} else 50 if tag in tags else 25 if not tags else 0
    return float(min(max(base + bonus, 0), 100))


def naive_packing(s: Snapshot, pod: PodRequest, n: int) -> float:
    if pod.gpu_count == 0:
        return 0.0
    g = [int(x) for x in s.gpu_free[n, : s.gpu_count[n]]]
    free = sum(1 for x in g if x == 1000)
    if free == len(g):
        return float(max(33 - free, 0))
    picked = [x for x in sorted(g) if x >= pod.gpu_milli][: pod.gpu_count]
    fresh = sum(1 for x in picked if x == 1000)
    if fresh:
        return float(max(50 - fresh, 33))
    return float(max(100 - sum(x * 100 // 1000 for x in picked) // 10, 50))


def naive_frag(
    w: TargetWorkload, supply_names: tuple[str, ...], cpu: int, g: list[int], model: int
) -> float:
    total = sum(g)
    frag = 0.0
    for m, p in enumerate(w.probability):
        q, k = w.gpu_milli[m], w.gpu_count[m]
        ok_model = not w.models[m] or (model >= 0 and supply_names[model] in w.models[m])
        if q == 0 or k == 0 or not ok_model:
            frag += p * total
        elif sum(1 for x in g if x >= q) >= k and cpu >= w.cpu_milli[m]:
            frag += p * sum(x for x in g if x < q)
        else:
            frag += p * total
    return frag


def _after_states(s: Snapshot, pod: PodRequest, n: int) -> list[tuple[int, list[int]]]:
    g = [int(x) for x in s.gpu_free[n, : s.gpu_count[n]]]
    if pod.is_gpu_sharing:
        out = []
        for j, x in enumerate(g):
            if x >= pod.gpu_milli:
                h = list(g)
                h[j] -= pod.gpu_milli
                out.append((j, h))
        return out
    h = list(g)
    taken = 0
    for j, x in enumerate(h):
        if x == 1000 and taken < pod.gpu_count:
            h[j] = 0
            taken += 1
    return [(0, h)]


def make_naive_fgd(w: TargetWorkload, stranding: float = 0.0, rho: float = 0.0) -> Naive:
    def measure(s: Snapshot, cpu: int, g: list[int], model: int) -> float:
        value = naive_frag(w, s.model_names, cpu, g, model)
        if stranding and rho > 0:
            value += stranding * max(sum(g) - max(cpu, 0) / rho, 0.0)
        return value

    def score(s: Snapshot, pod: PodRequest, n: int) -> float:
        cpu = int(s.free[n, CPU_COL])
        model = int(s.gpu_model[n])
        g = [int(x) for x in s.gpu_free[n, : s.gpu_count[n]]]
        before = measure(s, cpu, g, model)
        best = 0.0
        for _, h in _after_states(s, pod, n):
            after = measure(s, cpu - pod.cpu_milli, h, model)
            best = max(best, float(math.trunc(100 / (1 + math.exp(-(before - after) / 1000)))))
        return best

    return score


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cached_ms(policy: Policy, snapshot: Snapshot, pod: PodRequest, repeat: int) -> float:
    """Median ms of a ScoreCache lookup after one other pod landed on one node."""
    work = snapshot.copy()
    cache = ScoreCache()
    cache.scores(policy, work, pod)
    rng = np.random.default_rng(1)
    filler = PodRequest(cpu_milli=100, memory=64 * MIB)
    times = []
    for i in range(repeat):
        row = int(rng.choice(np.flatnonzero(work.feasible(filler))))
        work.assign(f"bench-{i}", filler, work.names[row])
        start = time.perf_counter()
        cache.scores(policy, work, pod)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--naive-repeat", type=int, default=3)
    args = parser.parse_args(argv)
    snapshot, workload = build_cluster(args.nodes)
    arch = Archimedes(workload)
    weighted, rho = arch._measure_inputs(snapshot)
    cases: list[tuple[Policy, Naive]] = [
        (LeastAllocated(), naive_least),
        (MostAllocated(), naive_most),
        (BestFit(), naive_best_fit),
        (DotProduct(), naive_dot),
        (GpuClustering(), naive_clustering),
        (GpuPacking(), naive_packing),
        (FGD(workload), make_naive_fgd(workload)),
        (arch, make_naive_fgd(weighted, arch.args.stranding_weight, rho)),
    ]
    print(
        f"{snapshot.num_nodes} nodes, {int(snapshot.gpu_count.sum())} GPUs, "
        f"{len(snapshot.pods())} pods placed; median of {args.repeat} calls "
        f"(naive: {args.naive_repeat})"
    )
    print(
        "| policy | pod | vectorised ms | cached, 1 node changed ms | naive loop ms | speed-up "
        "| same scores | same node |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for policy, naive in cases:
        for kind, pod in PODS.items():
            feasible = snapshot.feasible(pod)
            rows = np.flatnonzero(feasible)

            def vectorised(p: Policy = policy, q: PodRequest = pod) -> object:
                return p.score(snapshot, q)

            def loop(n: Naive = naive, q: PodRequest = pod) -> object:
                return [n(snapshot, q, i) for i in range(snapshot.num_nodes)]

            fast = median_ms(vectorised, args.repeat)
            slow = median_ms(loop, args.naive_repeat)
            vec = policy.score(snapshot, pod)
            ref = np.array([naive(snapshot, pod, i) for i in range(snapshot.num_nodes)])
            same = bool(np.array_equal(vec[rows], ref[rows]))
            chosen = rows[np.argmax(vec[rows])] == rows[np.argmax(ref[rows])]
            warm = cached_ms(policy, snapshot, pod, args.repeat)
            print(
                f"| {policy.name} | {kind} | {fast:.3f} | {warm:.3f} | {slow:.1f} | "
                f"{slow / fast:.0f}x | "
                f"{'yes' if same else 'NO'} | {'yes' if chosen else 'NO'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
