"""Filter and prioritize one pod over named nodes, with the placement core.

Fit is the snapshot's vectorised NodeResourcesFit plus GPU devices. A node whose whole
allocatable cannot hold the pod (or has no GPU of an acceptable model) is *unresolvable*: no
cluster event short of changing the node helps. Scores come from the configured policies on the
internal 0..100 scale, weighted, then mapped to the extender's 0..10 in ``to_extender_scores``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from extender.cache import ClusterCache
from policies.registry import Registry
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import PodRequest
from scheduler.policy import Policy, PolicyContext
from scheduler.snapshot import CPU_COL, EPHEMERAL_COL, MEMORY_COL, PODS_COL, Snapshot

MAX_EXTENDER_SCORE = 10
WORKLOAD_REFRESH_SECONDS = 30.0
_BASE = (("cpu", CPU_COL), ("memory", MEMORY_COL), ("ephemeral-storage", EPHEMERAL_COL))


def _show(resource: str, value: int) -> str:
    if resource == "cpu":
        return f"{value}m"
    if resource in ("memory", "ephemeral-storage"):
        return f"{value / 2**20:.0f}Mi"
    return str(value)


def explain(snapshot: Snapshot, rows: Sequence[int], pod: PodRequest) -> list[tuple[str, bool]]:
    """Why ``pod`` does not fit on each node of ``rows``, and whether that is unresolvable."""
    names = snapshot.resource_names
    for name, _ in pod.extended:
        if name not in names:
            return [(f"node has no {name}", True)] * len(rows)
    wants = [
        (name, col, value)
        for (name, col), value in zip(
            _BASE, (pod.cpu_milli, pod.memory, pod.ephemeral_storage), strict=True
        )
    ]
    wants += [(name, names.index(name), v) for name, v in pod.extended]
    wants = [w for w in wants if w[2] > 0]
    index = list(rows)
    allocatable, free = snapshot.allocatable[index].tolist(), snapshot.free[index].tolist()
    gpu_count, gpu_model = snapshot.gpu_count[index].tolist(), snapshot.gpu_model[index].tolist()
    gpu_free = snapshot.gpu_free[index].tolist()
    models = snapshot.model_names
    out: list[tuple[str, bool]] = []
    for i in range(len(index)):
        out.append(
            _explain_one(
                pod,
                wants,
                allocatable[i],
                free[i],
                gpu_count[i],
                models[gpu_model[i]] if gpu_model[i] >= 0 else "",
                gpu_free[i],
            )
        )
    return out


def _explain_one(
    pod: PodRequest,
    wants: list[tuple[str, int, int]],
    allocatable: list[int],
    free: list[int],
    gpu_count: int,
    model: str,
    gpu_free: list[int],
) -> tuple[str, bool]:
    for name, col, want in wants:
        if want > allocatable[col]:
            return (
                f"pod requests {_show(name, want)} {name}, more than the node's whole "
                f"allocatable {_show(name, allocatable[col])}",
                True,
            )
    if pod.gpu_count:
        if pod.gpu_models and model not in pod.gpu_models:
            return f"GPU model {model or 'none'} not in {'|'.join(sorted(pod.gpu_models))}", True
        if gpu_count < pod.gpu_count:
            return f"pod needs {pod.gpu_count} GPUs, the node has {gpu_count}", True
    for name, col, want in wants:
        if want > free[col]:
            return (
                f"Insufficient {name}: requests {_show(name, want)}, free "
                f"{_show(name, max(free[col], 0))} of {_show(name, allocatable[col])}",
                False,
            )
    if free[PODS_COL] < 1:
        return f"Too many pods: {allocatable[PODS_COL]} already", False
    if pod.gpu_count:
        return (
            f"Insufficient GPU: needs {pod.gpu_count} device(s) with {pod.gpu_milli} milli free, "
            f"free milli per device {gpu_free[:gpu_count]}",
            False,
        )
    return "does not fit", False


def to_extender_scores(scores: NDArray[np.float64]) -> list[int]:
    """Map internal 0..100 scores of the candidate nodes to the extender's 0..10.

    Min-max over the candidates: the best gets 10 and the worst 0, so Fulcrum's ranking is not
    flattened into one or two of eleven buckets; equal scores all get 10. The one place where
    the two scales meet.
    """
    if scores.size == 0:
        return []
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-9:
        return [MAX_EXTENDER_SCORE] * int(scores.size)
    scaled = np.rint((scores - low) * MAX_EXTENDER_SCORE / (high - low))
    return [int(v) for v in scaled]


@dataclass(frozen=True)
class WeightedPolicy:
    name: str
    weight: float


@dataclass(frozen=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]


class Decider:
    """Fit and score against a cache's snapshot, with policies built for its live workload."""

    def __init__(
        self, cache: ClusterCache | None, registry: Registry, policies: Sequence[WeightedPolicy]
    ) -> None:
        self.cache, self.registry, self.weights = cache, registry, tuple(policies)
        self._built: tuple[float, int, list[tuple[Policy, float]]] | None = None

    def _workload(self) -> TargetWorkload | None:
        if self.cache is None:
            return None
        shapes = [p.pod for p in self.cache.snapshot.pods().values()]
        shapes += [p.request for p in self.cache.pending_pods()]
        return TargetWorkload.from_pods(shapes) if shapes else None

    def policies(self) -> list[tuple[Policy, float]]:
        """The configured policies, rebuilt for the current workload every 30 s."""
        now = time.monotonic()
        changes = self.cache.changes if self.cache else 0
        if self._built is None or (
            now - self._built[0] > WORKLOAD_REFRESH_SECONDS and changes != self._built[1]
        ):
            context = PolicyContext(workload=self._workload())
            built = [(self.registry.create(w.name, context), w.weight) for w in self.weights]
            self._built = (now, changes, built)
        return self._built[2]

    def filter(
        self, snapshot: Snapshot, pod: PodRequest, names: Sequence[str], *, choose: bool = False
    ) -> FilterOutcome:
        """Nodes that fit, with a reason for each that does not.

        With ``choose``, only the best-scoring node that fits passes (ties: the lowest snapshot
        row, so equal nodes fill first-fit): kube-scheduler then skips scoring altogether.
        """
        rows, missing = self._rows(snapshot, names)
        fit = snapshot.fit(pod).feasible
        for policy, _ in self.policies():
            fit = fit & policy.filter(snapshot, pod)
        cordoned = self.cache.unschedulable if self.cache else set()
        out = FilterOutcome([], dict.fromkeys(missing, "node not in Fulcrum's cache yet"), {})
        misfits: list[tuple[str, int]] = []
        for name, row in rows:
            if name in cordoned:
                out.failed[name] = "node is cordoned (spec.unschedulable)"
            elif fit[row]:
                out.passed.append(name)
            else:
                misfits.append((name, row))
        reasons = explain(snapshot, [row for _, row in misfits], pod) if misfits else []
        for (name, _), (reason, unresolvable) in zip(misfits, reasons, strict=True):
            (out.unresolvable if unresolvable else out.failed)[name] = reason
        if choose and len(out.passed) > 1:
            index = {name: row for name, row in rows}
            candidates = np.array([index[name] for name in out.passed])
            scores = self.scores(snapshot, pod)[candidates]
            best = candidates[scores == scores.max()].min()
            out.passed[:] = [snapshot.names[int(best)]]
        return out

    def scores(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        """The configured policies' weighted mean score of every node, 0..100."""
        total = np.zeros(snapshot.num_nodes, dtype=np.float64)
        weight_sum = 0.0
        for policy, weight in self.policies():
            total += weight * policy.score(snapshot, pod)
            weight_sum += weight
        return total / weight_sum if weight_sum else total

    def prioritize(
        self, snapshot: Snapshot, pod: PodRequest, names: Sequence[str]
    ) -> list[tuple[str, int]]:
        rows, _ = self._rows(snapshot, names)
        total = self.scores(snapshot, pod)
        picked = total[[row for _, row in rows]] if rows else np.zeros(0)
        scores = dict(zip([n for n, _ in rows], to_extender_scores(picked), strict=True))
        return [(name, scores.get(name, 0)) for name in names]

    def devices(self, snapshot: Snapshot, pod: PodRequest, node: str) -> tuple[int, ...]:
        """GPU devices for ``pod`` on ``node``, chosen by the first configured policy."""
        if not pod.gpu_count:
            return ()
        policy = self.policies()[0][0]
        return policy.select_devices(snapshot, snapshot.index_of(node), pod)

    @staticmethod
    def _rows(snapshot: Snapshot, names: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
        rows: list[tuple[str, int]] = []
        missing: list[str] = []
        for name in names:
            try:
                rows.append((name, snapshot.index_of(name)))
            except KeyError:
                missing.append(name)
        return rows, missing
