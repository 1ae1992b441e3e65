"""Trace replay with the FGD artifact's protocol (``traces/openb/PROTOCOL.md``).

Pods arrive one at a time in a seeded shuffle, optionally tuned up (or down)
to ``tune`` x the cluster's GPU capacity, never depart and are never retried.
After every event the arrived and allocated GPU milli are logged; the curve
"GPU allocation ratio vs arrived workload" is discretised exactly as the
artifact's ``merge_alloc_discrete.py`` does. Random numbers come from numpy,
not Go's ``math/rand``, so single seeds differ from the paper's; means over
seeds are what compare (the paper's own runs are not bit-deterministic).

Node choice: the feasible node with the highest score, ties to the node with
the smallest *rank*, a random permutation of the nodes fixed per run (the
artifact prefixes node names with ``rand.Perm`` and breaks ties by name).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from scheduler.fragmentation import TargetWorkload, fragmentation
from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.policy import Policy
from scheduler.score_cache import ScoreCache
from scheduler.select import pick
from scheduler.snapshot import CPU_COL, MEMORY_COL, Snapshot
from scheduler.trace import NodeTrace, PodTrace
from scheduler.workload_model import LiveWorkload, node_cpu_per_gpu

MAX_ARRIVED_PCT = 130
LEARN_EVERY = 100  # arrivals between rebuilds of a learning policy
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Arrivals:
    """The event sequence: indices into the trace (clones repeat an index)."""

    order: NDArray[np.int64]
    clones: int
    removed: int


def typical_workload(pods: PodTrace, *, coverage: float = 0.95) -> TargetWorkload:
    """The FGD "typical pods" of the original (untuned) trace."""
    requests = [pods.request(i) for i in range(len(pods))]
    return TargetWorkload.from_pods(requests, coverage=coverage, spec_strings=pods.gpu_spec)


def arrival_order(
    pods: PodTrace, *, rng: np.random.Generator, tune: float | None, gpu_capacity_milli: int
) -> Arrivals:
    """Shuffle the name-sorted pods, then tune the GPU demand to ``tune`` x capacity.

    Tune up: draw originals uniformly with replacement and append clones until
    the next draw's per-GPU milli would overshoot (the artifact's test uses
    ``q``, not ``k*q``). Tune down: drop uniformly random pods until the
    demand is at most the target.
    """
    by_name = np.array(sorted(range(len(pods)), key=lambda i: pods.names[i]), dtype=np.int64)
    order = by_name[rng.permutation(len(by_name))]
    if tune is None:
        return Arrivals(order, 0, 0)
    demand_per_pod = pods.gpu_demand_milli
    demand = int(demand_per_pod.sum())
    target = tune * gpu_capacity_milli
    clones: list[int] = []
    removed = 0
    if demand < target:
        while True:
            i = int(by_name[rng.integers(len(by_name))])
            if demand + int(pods.gpu_milli[i]) > target:
                break
            clones.append(i)
            demand += int(demand_per_pod[i])
    elif demand > target:
        kept = list(order)
        while demand > target and kept:
            j = int(rng.integers(len(kept)))
            demand -= int(demand_per_pod[kept[j]])
            kept.pop(j)
            removed += 1
        order = np.array(kept, dtype=np.int64)
    if clones:
        order = np.concatenate([order, np.array(clones, dtype=np.int64)])
    return Arrivals(order, len(clones), removed)


@dataclass(slots=True)
class ReplayResult:
    policy: str
    seed: int
    events: int
    pods_failed: int
    gpu_pods_failed: int
    alloc_curve: list[float | None]
    frag_curve: list[float | None]
    alloc_at_100: float | None
    alloc_at_130: float | None
    final_alloc_pct: float
    final_frag_pct: float
    nodes_used: int
    nodes_lower_bound: int
    elapsed_s: float
    clones: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    final_snapshot: Snapshot | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "seed": self.seed,
            "events": self.events,
            "pods_failed": self.pods_failed,
            "gpu_pods_failed": self.gpu_pods_failed,
            "alloc_at_100": self.alloc_at_100,
            "alloc_at_130": self.alloc_at_130,
            "alloc_curve": self.alloc_curve,
            "frag_curve": self.frag_curve,
            "final_alloc_pct": self.final_alloc_pct,
            "final_frag_pct": self.final_frag_pct,
            "nodes_used": self.nodes_used,
            "nodes_lower_bound": self.nodes_lower_bound,
            "clones": self.clones,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def discretise(
    arrived_pct: NDArray[np.float64], values: NDArray[np.float64], *, decimals: int = 2
) -> list[float | None]:
    """Mean of ``values`` over events whose arrived % rounds to x, for x in 0..130.

    Rounding is half-to-even, like Python's ``round``; an empty bin borrows
    the events within +-1 %; still empty gives ``None``.
    """
    a = np.round(arrived_pct)
    out: list[float | None] = []
    for x in range(MAX_ARRIVED_PCT + 1):
        sel = a == x
        if not sel.any():
            sel = (a >= x - 1) & (a <= x + 1)
        out.append(round(float(values[sel].mean()), decimals) if sel.any() else None)
    return out


def nodes_lower_bound(snapshot: Snapshot, demand: dict[str, int]) -> int:
    """max over resources of the fewest nodes whose capacity covers the demand."""
    capacities = {
        "cpu": snapshot.allocatable[:, CPU_COL],
        "memory": snapshot.allocatable[:, MEMORY_COL],
        "gpu": snapshot.gpu_count * GPU_MILLI,
    }
    bound = 0
    for name, need in demand.items():
        if need <= 0:
            continue
        caps = np.sort(capacities[name])[::-1]
        bound = max(bound, int(np.searchsorted(np.cumsum(caps), need)) + 1)
    return bound


def _node_frag(
    snapshot: Snapshot, workload: TargetWorkload, rows: NDArray[np.intp] | slice
) -> NDArray[np.float64]:
    return fragmentation(
        snapshot.free[rows, CPU_COL],
        snapshot.gpu_free[rows],
        snapshot.gpu_model[rows],
        workload,
        snapshot.model_names,
    )


def _choose(
    snapshot: Snapshot,
    pod: PodRequest,
    policy: Policy,
    cache: ScoreCache | None,
    rank: NDArray[np.int64],
    rng: np.random.Generator | None,
) -> int | None:
    """The feasible node with the best score, ties to the lowest ``rank`` (with ``rng``, to a
    new random ranking per pod); None: none fits."""
    candidates = np.flatnonzero(snapshot.feasible(pod) & policy.filter(snapshot, pod))
    if candidates.size <= 1:
        return int(candidates[0]) if candidates.size else None
    score = cache.scores if cache else _score
    ties = rng.permutation(len(rank)) if rng is not None else rank
    return pick(score(policy, snapshot, pod), candidates, ties)


def _score(policy: Policy, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
    return np.asarray(policy.score(snapshot, pod), dtype=np.float64)


def _distinct_requests(pods: PodTrace) -> tuple[list[PodRequest], NDArray[np.int64]]:
    """Each distinct pod shape once, and every trace pod's index into them (scores are cached
    per shape)."""
    shapes: dict[PodRequest, int] = {}
    shape_of = np.empty(len(pods), dtype=np.int64)
    for i in range(len(pods)):
        shape_of[i] = shapes.setdefault(pods.request(i), len(shapes))
    return list(shapes), shape_of


@dataclass
class _Tally:
    """What a replay logs after every event, and the totals it ends with."""

    events: int
    n_nodes: int
    arrived: NDArray[np.float64] = field(init=False)
    allocated: NDArray[np.float64] = field(init=False)
    frag: NDArray[np.float64] = field(init=False)
    used_rows: NDArray[np.bool_] = field(init=False)
    arrived_milli: int = 0
    allocated_milli: int = 0
    failed: int = 0
    gpu_failed: int = 0
    demand: dict[str, int] = field(default_factory=lambda: {"cpu": 0, "memory": 0, "gpu": 0})

    def __post_init__(self) -> None:
        self.arrived = np.zeros(self.events)
        self.allocated = np.zeros(self.events)
        self.frag = np.zeros(self.events)
        self.used_rows = np.zeros(self.n_nodes, dtype=np.bool_)

    def placed(self, pod: PodRequest, row: int) -> None:
        self.allocated_milli += pod.gpu_total_milli
        self.used_rows[row] = True
        self.demand["cpu"] += pod.cpu_milli
        self.demand["memory"] += pod.memory
        self.demand["gpu"] += pod.gpu_total_milli

    def unplaced(self, pod: PodRequest) -> None:
        self.failed += 1
        self.gpu_failed += pod.gpu_count > 0

    def log(self, event: int, frag_total: float) -> None:
        self.arrived[event] = self.arrived_milli
        self.allocated[event] = self.allocated_milli
        self.frag[event] = frag_total


def replay(
    nodes: NodeTrace,
    pods: PodTrace,
    policy: Policy,
    *,
    seed: int,
    tune: float | None = 1.3,
    workload: TargetWorkload | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
    random_ties: bool = False,
    learn: Callable[[TargetWorkload | None], Policy] | None = None,
) -> ReplayResult:
    """Replay ``pods`` on ``nodes`` with ``policy``; see the module docstring.

    ``random_ties`` breaks score ties uniformly at random for every pod, as
    kube-scheduler does, instead of by the run's fixed node ranking. With ``learn``, the
    policy is rebuilt every LEARN_EVERY arrivals for the workload learnt so far (the live
    model, ``scheduler.workload_model``), as the extender does, instead of knowing the trace's
    mix up front; ``workload`` still defines the fragmentation measured.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    snapshot = nodes.to_snapshot()
    n = snapshot.num_nodes
    name_rank = np.argsort(np.argsort(np.array(snapshot.names, dtype=object)))
    rank = rng.permutation(n)[name_rank]
    capacity = nodes.total_gpu_milli
    arrivals = arrival_order(pods, rng=rng, tune=tune, gpu_capacity_milli=capacity)
    workload = workload if workload is not None else typical_workload(pods)
    requests, shape_of = _distinct_requests(pods)

    frag = _node_frag(snapshot, workload, slice(None))
    frag_total = float(frag.sum())
    cache = ScoreCache() if use_cache and policy.node_local else None
    tally = _Tally(len(arrivals.order), n)
    live, cpu_per_gpu = LiveWorkload(), node_cpu_per_gpu(snapshot)
    for e, i in enumerate(arrivals.order):
        pod = requests[int(shape_of[i])]
        tally.arrived_milli += pod.gpu_total_milli
        if learn is not None:
            live.arrived(pod, float(e))
            if e % LEARN_EVERY == 0:
                placed = [p.pod for p in snapshot.pods().values()]
                policy = learn(live.target(placed, float(e), node_cpu_per_gpu=cpu_per_gpu))
                cache = ScoreCache() if use_cache and policy.node_local else None
        row = _choose(snapshot, pod, policy, cache, rank, rng if random_ties else None)
        if row is None:
            tally.unplaced(pod)
        else:
            devices = policy.select_devices(snapshot, row, pod)
            snapshot.assign(f"e{e}", pod, snapshot.names[row], devices=devices, check=False)
            tally.placed(pod, row)
            new = float(_node_frag(snapshot, workload, np.array([row]))[0])
            frag_total += new - frag[row]
            frag[row] = new
        tally.log(e, frag_total)
        if progress is not None and (e % 1000 == 0 or e == tally.events - 1):
            progress(e + 1, tally.events)
    return _result(policy.name, seed, tally, snapshot, capacity, arrivals, frag_total, started)


def _result(
    policy: str,
    seed: int,
    tally: _Tally,
    snapshot: Snapshot,
    capacity: int,
    arrivals: Arrivals,
    final_frag: float,
    started: float,
) -> ReplayResult:
    arrived_pct = tally.arrived / capacity * 100.0
    alloc_curve = discretise(arrived_pct, np.round(tally.allocated / capacity * 100.0, 2))
    frag_curve = discretise(arrived_pct, tally.frag / capacity * 100.0)
    return ReplayResult(
        policy=policy,
        seed=seed,
        events=tally.events,
        pods_failed=tally.failed,
        gpu_pods_failed=int(tally.gpu_failed),
        alloc_curve=alloc_curve,
        frag_curve=frag_curve,
        alloc_at_100=alloc_curve[100],
        alloc_at_130=alloc_curve[MAX_ARRIVED_PCT],
        final_alloc_pct=round(float(tally.allocated_milli) / capacity * 100.0, 2),
        final_frag_pct=round(final_frag / capacity * 100.0, 2),
        nodes_used=int(tally.used_rows.sum()),
        nodes_lower_bound=nodes_lower_bound(snapshot, tally.demand),
        elapsed_s=time.perf_counter() - started,
        clones=arrivals.clones,
        final_snapshot=snapshot,
    )
