"""Offline optimisation with OR-Tools CP-SAT: batch packing and defragmentation.

Every entry point takes a deadline, always has a greedy answer first and asks
CP-SAT to improve on it (and to prove a bound) in the time left, so it
returns within the deadline whatever the solver does.

- :func:`pack_batch` places a batch of pods into a snapshot using as few
  nodes as it can and reports a proven lower bound, hence the gap.
- :func:`plan_room_for` finds the fewest pod moves that make a pod shape fit.
- :func:`plan_free_nodes` finds the fewest pod moves that empty ``k`` nodes.

Models count pods per (pod shape, node); GPUs enter as whole free devices for
whole-GPU pods and as total free milli for GPU-sharing pods (a relaxation of
the per-device packing). Every plan is *realised* on a copy of the snapshot
with exact device accounting before it is returned, so plans are always
feasible; the bound stays valid because it comes from a relaxation.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

try:
    from ortools.sat.python import cp_model
except ImportError as exc:  # an optional extra: the live path never needs it
    raise ImportError("the optimiser needs OR-Tools: pip install 'fulcrum[optimiser]'") from exc

from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.snapshot import CPU_COL, EPHEMERAL_COL, MEMORY_COL, PODS_COL, Snapshot

MAX_EXACT_TERMS = 60_000


@dataclass(frozen=True, slots=True)
class PackingResult:
    """Outcome of :func:`pack_batch`. ``placements[i]`` is the node of pod ``i`` (or None)."""

    placements: list[str | None]
    nodes_used: int
    lower_bound: int
    placed: int
    status: str  # "optimal", "improved", "greedy"
    elapsed_s: float

    @property
    def gap(self) -> float:
        """``(nodes_used - lower_bound) / lower_bound`` (0 when the bound is 0)."""
        return (self.nodes_used - self.lower_bound) / self.lower_bound if self.lower_bound else 0.0


@dataclass(frozen=True, slots=True)
class Move:
    pod: str
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class MovePlan:
    """Pod moves, in order, and what they achieve (``target`` or ``freed`` nodes)."""

    moves: list[Move]
    target: str | None = None
    freed: list[str] = field(default_factory=list)
    status: str = "greedy"
    elapsed_s: float = 0.0


# ----------------------------------------------------------------- helpers
def _vector(pod: PodRequest) -> NDArray[np.int64]:
    return np.array(
        [pod.cpu_milli, pod.memory, pod.ephemeral_storage, 1, pod.gpu_total_milli],
        dtype=np.int64,
    )


def _capacity(snapshot: Snapshot) -> NDArray[np.int64]:
    """Per node: free cpu, memory, ephemeral, pods, GPU milli."""
    free = snapshot.free
    cols = [CPU_COL, MEMORY_COL, EPHEMERAL_COL, PODS_COL]
    return np.column_stack([free[:, cols], snapshot.gpu_free.sum(axis=1)])


def _best_fit_row(snapshot: Snapshot, pod: PodRequest, allowed: NDArray[np.bool_]) -> int | None:
    """Feasible node leaving the least normalised free space, preferring used nodes."""
    feasible = snapshot.feasible(pod) & allowed
    rows = np.flatnonzero(feasible)
    if rows.size == 0:
        return None
    alloc = np.maximum(snapshot.allocatable[rows][:, [CPU_COL, MEMORY_COL]], 1)
    left = (snapshot.free[rows][:, [CPU_COL, MEMORY_COL]] - [pod.cpu_milli, pod.memory]) / alloc
    gpus = np.maximum(snapshot.gpu_count[rows] * GPU_MILLI, 1)
    gpu_left = (snapshot.gpu_free[rows].sum(axis=1) - pod.gpu_total_milli) / gpus
    empty = snapshot.free[rows, PODS_COL] == snapshot.allocatable[rows, PODS_COL]
    waste = left.sum(axis=1) + 2 * gpu_left * (snapshot.gpu_count[rows] > 0) + 10 * empty
    return int(rows[np.argmin(waste)])


def _order(pods: Sequence[PodRequest]) -> list[int]:
    """Largest first: GPU milli, then CPU, then memory."""
    return sorted(
        range(len(pods)),
        key=lambda i: (-pods[i].gpu_total_milli, -pods[i].cpu_milli, -pods[i].memory),
    )


def _used_nodes(snapshot: Snapshot) -> NDArray[np.bool_]:
    return snapshot.free[:, PODS_COL] < snapshot.allocatable[:, PODS_COL]


def _solver(deadline: float, workers: int = 2) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, deadline - time.perf_counter())
    solver.parameters.num_workers = workers
    return solver


# --------------------------------------------------------------- packing
def _greedy_pack(
    snapshot: Snapshot,
    pods: Sequence[PodRequest],
    order: Sequence[int],
    prefer: Sequence[NDArray[np.intp] | None],
) -> tuple[Snapshot, list[str | None]]:
    """Best-fit-decreasing; a pod with preferred rows goes to the first that fits."""
    work = snapshot.copy()
    everywhere = np.ones(work.num_nodes, dtype=np.bool_)
    placements: list[str | None] = [None] * len(pods)
    for i in order:
        pod = pods[i]
        row: int | None = None
        rows = prefer[i]
        if rows is not None and rows.size:
            fits = work.feasible(pod)[rows]
            if fits.any():
                row = int(rows[int(np.argmax(fits))])
        if row is None:
            row = _best_fit_row(work, pod, everywhere)
        if row is None:
            continue
        work.assign(f"batch-{i}", pod, work.names[row])
        placements[i] = work.names[row]
    return work, placements


def _classes(snapshot: Snapshot) -> tuple[list[list[int]], NDArray[np.int64]]:
    """Empty nodes grouped by identical capacity; returns groups and their rows' full devices."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    used = _used_nodes(snapshot)
    full = (snapshot.gpu_free >= GPU_MILLI).sum(axis=1)
    cap = _capacity(snapshot)
    for row in range(snapshot.num_nodes):
        key = (int(used[row]), *cap[row].tolist(), int(snapshot.gpu_model[row]), int(full[row]))
        if used[row]:
            key = (row,)  # open nodes stay individual
        groups[key].append(row)
    return list(groups.values()), full


def _compatible(snapshot: Snapshot, pod: PodRequest, row: int, full: int) -> int:
    """How many pods of this shape fit on an empty copy of node ``row`` (0 = none)."""
    cap = _capacity(snapshot)[row]
    need = _vector(pod)
    if pod.gpu_count:
        code = int(snapshot.gpu_model[row])
        if snapshot.gpu_count[row] == 0:
            return 0
        if pod.gpu_models and (code < 0 or snapshot.model_names[code] not in pod.gpu_models):
            return 0
    limits = [cap[r] // need[r] for r in range(len(need)) if need[r] > 0]
    if not pod.is_gpu_sharing and pod.gpu_count:
        limits.append(full // pod.gpu_count)
    if pod.is_gpu_sharing:
        per_device = snapshot.gpu_free[row] // pod.gpu_milli
        limits.append(int(per_device.sum()))
    return int(min(limits)) if limits else 10**6


@dataclass
class _ClassModel:
    """CP-SAT over node classes: ``z[(s, c)]`` pods of shape ``s`` on class ``c``, with
    ``open_count[c]`` of the class's nodes in use; minimises the nodes in use."""

    model: cp_model.CpModel
    shapes: list[PodRequest]
    groups: list[list[int]]
    open_count: list[cp_model.IntVar]
    z: dict[tuple[int, int], cp_model.IntVar]


def _class_model(
    snapshot: Snapshot, pods: Sequence[PodRequest], greedy: Sequence[str | None]
) -> _ClassModel:
    """Every shape placed as often as greedy placed it (pods that fit nowhere stay out)."""
    counts = Counter(pods)
    groups, full = _classes(snapshot)
    used, cap = _used_nodes(snapshot), _capacity(snapshot)
    cm = _ClassModel(cp_model.CpModel(), list(counts), groups, [], {})
    model = cm.model
    per_class: dict[int, list[tuple[int, cp_model.IntVar]]] = defaultdict(list)
    for c, rows in enumerate(groups):
        rep = rows[0]
        n_open = model.NewIntVar(0, len(rows), f"open{c}")
        if used[rep]:
            model.Add(n_open == 1)
        cm.open_count.append(n_open)
        for s, pod in enumerate(cm.shapes):
            per_node = _compatible(snapshot, pod, rep, int(full[rep]))
            if per_node:
                var = model.NewIntVar(0, counts[pod], f"z{s}_{c}")
                model.Add(var <= per_node * n_open)
                cm.z[(s, c)] = var
                per_class[c].append((s, var))
    for s, pod in enumerate(cm.shapes):
        terms = [cm.z[(s, c)] for c in range(len(groups)) if (s, c) in cm.z]
        placed = sum(1 for p, node in zip(pods, greedy, strict=True) if p == pod and node)
        if terms:
            model.Add(sum(terms) >= placed)
    for c, entries in per_class.items():
        rep = groups[c][0]
        for r in range(5):
            coeffs = [(int(_vector(cm.shapes[s])[r]), var) for s, var in entries]
            if any(k for k, _ in coeffs):
                model.Add(sum(k * v for k, v in coeffs) <= int(cap[rep][r]) * cm.open_count[c])
        whole = [
            (cm.shapes[s].gpu_count, var)
            for s, var in entries
            if cm.shapes[s].gpu_count and not cm.shapes[s].is_gpu_sharing
        ]
        if whole:
            model.Add(sum(k * v for k, v in whole) <= int(full[rep]) * cm.open_count[c])
    model.Minimize(sum(cm.open_count))
    return cm


def _hint(
    cm: _ClassModel, snapshot: Snapshot, pods: Sequence[PodRequest], greedy: Sequence[str | None]
) -> None:
    """Start CP-SAT from the greedy plan."""
    rows = {name: i for i, name in enumerate(snapshot.names)}
    class_of = {row: c for c, members in enumerate(cm.groups) for row in members}
    shape_index = {pod: s for s, pod in enumerate(cm.shapes)}
    hint_z: Counter[tuple[int, int]] = Counter()
    hint_open: defaultdict[int, set[int]] = defaultdict(set)
    for pod, name in zip(pods, greedy, strict=True):
        if name is not None:
            c = class_of[rows[name]]
            hint_z[(shape_index[pod], c)] += 1
            hint_open[c].add(rows[name])
    for key, var in cm.z.items():
        cm.model.AddHint(var, hint_z.get(key, 0))
    for c, var in enumerate(cm.open_count):
        cm.model.AddHint(var, len(hint_open.get(c, ())))


def pack_batch(
    snapshot: Snapshot,
    pods: Sequence[PodRequest],
    *,
    deadline_s: float = 10.0,
    workers: int = 2,
) -> PackingResult:
    """Place ``pods`` on ``snapshot`` (not modified) using as few nodes as possible.

    Greedy best-fit-decreasing first; then CP-SAT on "pods of shape s on node
    class c" (identical empty nodes form a class) minimises the nodes used,
    hinted with the greedy plan. The class model is solved exactly when small
    and otherwise used for its bound; any CP-SAT plan is realised node by node
    with exact devices, and the better of the two plans is returned.
    """
    start = time.perf_counter()
    deadline = start + deadline_s
    order = _order(pods)
    greedy_snapshot, greedy = _greedy_pack(snapshot, pods, order, [None] * len(pods))
    best, best_used, status = greedy, int(_used_nodes(greedy_snapshot).sum()), "greedy"
    cm = _class_model(snapshot, pods, greedy)
    _hint(cm, snapshot, pods, greedy)
    lower = int(_used_nodes(snapshot).sum())
    if time.perf_counter() < deadline - 0.2:
        solver = _solver(deadline - 0.1 - min(2.0, 0.3 * deadline_s), workers)
        code = solver.Solve(cm.model)
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            lower = max(lower, int(np.ceil(solver.BestObjectiveBound() - 1e-6)))
            if len(cm.z) <= MAX_EXACT_TERMS and time.perf_counter() < deadline - 0.1:
                opened = [int(solver.Value(v)) for v in cm.open_count]
                prefer = _realise_classes(pods, cm.groups, opened, cm.shapes, cm.z, solver)
                work, plan = _greedy_pack(snapshot, pods, order, prefer)
                used = int(_used_nodes(work).sum())
                placed_plan = sum(p is not None for p in plan)
                placed_best = sum(p is not None for p in best)
                if placed_plan >= placed_best and used < best_used:
                    best, best_used, status = plan, used, "improved"
            if code == cp_model.OPTIMAL and best_used <= lower:
                status = "optimal"
    return PackingResult(
        placements=best,
        nodes_used=best_used,
        lower_bound=lower,
        placed=sum(p is not None for p in best),
        status=status,
        elapsed_s=time.perf_counter() - start,
    )


def _realise_classes(
    pods: Sequence[PodRequest],
    groups: list[list[int]],
    opened: list[int],
    shape_list: list[PodRequest],
    z: dict[tuple[int, int], cp_model.IntVar],
    solver: cp_model.CpSolver,
) -> list[NDArray[np.intp] | None]:
    """Per pod, the opened rows of the class CP-SAT put it in (filled first-fit)."""
    quota: dict[int, Counter[int]] = defaultdict(Counter)
    for (s, c), var in z.items():
        count = int(solver.Value(var))
        if count:
            quota[s][c] += count
    shape_index = {pod: s for s, pod in enumerate(shape_list)}
    rows_of = [np.array(rows[: max(opened[c], 1)], dtype=np.intp) for c, rows in enumerate(groups)]
    prefer: list[NDArray[np.intp] | None] = [None] * len(pods)
    for i, pod in enumerate(pods):
        s = shape_index[pod]
        for c, left in quota[s].items():
            if left > 0:
                quota[s][c] -= 1
                prefer[i] = rows_of[c]
                break
    return prefer


# ------------------------------------------------------------------ defrag
def _move_pods(work: Snapshot, keys: Sequence[str], banned: NDArray[np.bool_]) -> list[Move] | None:
    """Move ``keys`` elsewhere (best fit, never to banned rows); None if one cannot move."""
    moves: list[Move] = []
    placements = [work.release(key) for key in keys]
    allowed = ~banned
    order = _order([p.pod for p in placements])
    for i in order:
        placement, key = placements[i], keys[i]
        row = _best_fit_row(work, placement.pod, allowed)
        if row is None:
            return None
        work.assign(key, placement.pod, work.names[row])
        moves.append(Move(key, placement.node, work.names[row]))
    return moves


def _room_on(work: Snapshot, row: int, pod: PodRequest) -> bool:
    return bool(work.feasible(pod)[row])


def _eviction_order(snapshot: Snapshot, row: int, pod: PodRequest) -> list[str]:
    """Pods on the node, the ones that free the most of what ``pod`` lacks first."""
    name = snapshot.names[row]
    keys = sorted(snapshot.pods_on(name))
    placements = snapshot.pods()
    free = _capacity(snapshot)[row].astype(np.float64)
    need = _vector(pod).astype(np.float64)
    short = np.maximum(need - free, 0) / np.maximum(need, 1)

    def gain(key: str) -> float:
        return float((np.minimum(_vector(placements[key].pod), need) * short).sum())

    return sorted(keys, key=lambda k: (-gain(k), k))


def _min_evictions(
    snapshot: Snapshot, row: int, pod: PodRequest, deadline: float
) -> list[str] | None:
    """CP-SAT: the fewest pods to evict from ``row`` so that ``pod`` fits there."""
    name = snapshot.names[row]
    keys = sorted(snapshot.pods_on(name))
    placements = snapshot.pods()
    model = cp_model.CpModel()
    evict = {k: model.NewBoolVar(k) for k in keys}
    free = _capacity(snapshot)[row]
    need = _vector(pod)
    for r in range(4):
        if need[r] > free[r]:
            model.Add(
                sum(int(_vector(placements[k].pod)[r]) * evict[k] for k in keys)
                >= int(need[r] - free[r])
            )
    if pod.gpu_count:
        devices = int(snapshot.gpu_count[row])
        g = snapshot.gpu_free[row]
        opened = []
        for j in range(devices):
            on_j = [k for k in keys if j in placements[k].devices]
            ok = model.NewBoolVar(f"dev{j}")
            model.Add(
                int(g[j]) + sum(placements[k].pod.gpu_milli * evict[k] for k in on_j)
                >= pod.gpu_milli
            ).OnlyEnforceIf(ok)
            opened.append(ok)
        model.Add(sum(opened) >= pod.gpu_count)
    model.Minimize(sum(evict.values()))
    solver = _solver(deadline, workers=1)
    code = solver.Solve(model)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return [k for k in keys if solver.Value(evict[k])]


def plan_room_for(
    snapshot: Snapshot,
    pod: PodRequest,
    *,
    deadline_s: float = 5.0,
    candidates: int = 20,
) -> MovePlan | None:
    """The fewest moves found (within the deadline) after which ``pod`` fits some node.

    Candidate nodes are those that could hold the pod if emptied, fewest pods
    first. On each, CP-SAT picks the fewest evictions (greedy as fallback);
    evicted pods are re-placed best-fit on other nodes. Returns ``None`` if
    no candidate works.
    """
    start = time.perf_counter()
    deadline = start + deadline_s
    fits = np.flatnonzero(snapshot.feasible(pod))
    if fits.size:
        return MovePlan(
            [],
            target=snapshot.names[int(fits[0])],
            status="fits",
            elapsed_s=time.perf_counter() - start,
        )
    possible = [
        row
        for row in range(snapshot.num_nodes)
        if _could_hold(snapshot, row, pod) and snapshot.pods_on(snapshot.names[row])
    ]
    possible.sort(key=lambda r: (len(snapshot.pods_on(snapshot.names[r])), r))
    best: MovePlan | None = None
    for row in possible[:candidates]:
        if time.perf_counter() > deadline - 0.05:
            break
        budget = start + deadline_s * 0.9
        chosen = None
        status = "greedy"
        if time.perf_counter() < budget:
            chosen = _min_evictions(snapshot, row, pod, min(deadline - 0.05, budget))
            status = "cp-sat"
        if chosen is None:
            chosen, status = _greedy_evictions(snapshot, row, pod), "greedy"
        if chosen is None or (best is not None and len(chosen) >= len(best.moves)):
            continue
        work = snapshot.copy()
        banned = np.zeros(work.num_nodes, dtype=np.bool_)
        banned[row] = True
        moves = _move_pods(work, chosen, banned)
        if moves is not None and _room_on(work, row, pod):
            best = MovePlan(moves, target=snapshot.names[row], status=status)
    if best is None:
        return None
    return MovePlan(best.moves, best.target, [], best.status, time.perf_counter() - start)


def _could_hold(snapshot: Snapshot, row: int, pod: PodRequest) -> bool:
    alloc = snapshot.allocatable[row]
    if alloc[CPU_COL] < pod.cpu_milli or alloc[MEMORY_COL] < pod.memory:
        return False
    if alloc[EPHEMERAL_COL] < pod.ephemeral_storage:
        return False
    if pod.gpu_count:
        if snapshot.gpu_count[row] < pod.gpu_count:
            return False
        code = int(snapshot.gpu_model[row])
        if pod.gpu_models and (code < 0 or snapshot.model_names[code] not in pod.gpu_models):
            return False
    return True


def _greedy_evictions(snapshot: Snapshot, row: int, pod: PodRequest) -> list[str] | None:
    work = snapshot.copy()
    chosen: list[str] = []
    for key in _eviction_order(snapshot, row, pod):
        if _room_on(work, row, pod):
            break
        work.release(key)
        chosen.append(key)
    return chosen if _room_on(work, row, pod) else None


def _load(snapshot: Snapshot) -> NDArray[np.int64]:
    """What each node's pods use, in ``_capacity``'s columns."""
    cols = [CPU_COL, MEMORY_COL, EPHEMERAL_COL, PODS_COL]
    used = snapshot.allocatable[:, cols] - snapshot.free[:, cols]
    gpu_used = snapshot.gpu_count * GPU_MILLI - snapshot.gpu_free.sum(axis=1)
    load: NDArray[np.int64] = np.column_stack([used, gpu_used])
    return load


def plan_free_nodes(
    snapshot: Snapshot,
    k: int,
    *,
    deadline_s: float = 5.0,
    candidates: int | None = None,
) -> MovePlan | None:
    """Moves that empty ``k`` nodes, as few as found within the deadline.

    CP-SAT chooses which ``k`` of the candidate nodes (fewest pods first) to
    drain, minimising the pods on them subject to the pooled free capacity of
    the other nodes (per resource); the choice is then realised greedily and
    the next-best choice is tried if a pod cannot be re-placed. Greedy (drain
    the nodes with the fewest pods) is the fallback.
    """
    start = time.perf_counter()
    deadline = start + deadline_s
    occupied = [r for r in range(snapshot.num_nodes) if snapshot.pods_on(snapshot.names[r])]
    if k <= 0:
        return MovePlan([], status="fits")
    occupied.sort(key=lambda r: (len(snapshot.pods_on(snapshot.names[r])), r))
    pool = occupied[: candidates or max(4 * k, 40)]
    counts = [len(snapshot.pods_on(snapshot.names[r])) for r in pool]
    cap, load = _capacity(snapshot), _load(snapshot)
    tried: set[tuple[int, ...]] = set()
    best: MovePlan | None = None
    while time.perf_counter() < deadline - 0.1:
        model = cp_model.CpModel()
        drain = [model.NewBoolVar(f"d{r}") for r in pool]
        model.Add(sum(drain) == min(k, len(pool)))
        total_free = cap.sum(axis=0)
        for res in range(5):
            # Load moved off drained nodes must fit in the free space of the rest.
            model.Add(
                sum(int(load[r, res] + cap[r, res]) * d for r, d in zip(pool, drain, strict=True))
                <= int(total_free[res])
            )
        for combo in tried:
            model.AddBoolOr([drain[pool.index(r)].Not() for r in combo])
        model.Minimize(sum(c * d for c, d in zip(counts, drain, strict=True)))
        solver = _solver(deadline - 0.05, workers=1)
        code = solver.Solve(model)
        if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
        combo = tuple(r for r, d in zip(pool, drain, strict=True) if solver.Value(d))
        tried.add(combo)
        plan = _drain(snapshot, combo)
        if plan is not None:
            best = MovePlan(plan, freed=[snapshot.names[r] for r in combo], status="cp-sat")
            break
    if best is None:
        greedy = tuple(pool[: min(k, len(pool))])
        moves = _drain(snapshot, greedy)
        if moves is None:
            return None
        best = MovePlan(moves, freed=[snapshot.names[r] for r in greedy], status="greedy")
    return MovePlan(best.moves, None, best.freed, best.status, time.perf_counter() - start)


def _drain(snapshot: Snapshot, rows: Sequence[int]) -> list[Move] | None:
    work = snapshot.copy()
    banned = np.zeros(work.num_nodes, dtype=np.bool_)
    banned[list(rows)] = True
    keys = [key for r in rows for key in sorted(work.pods_on(work.names[r]))]
    return _move_pods(work, keys, banned)
