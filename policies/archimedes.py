"""Archimedes: scarcity-weighted, stranding-aware fragmentation gradient (ours).

Archimedes extends FGD's expected-fragmentation gradient in two ways, each
measured on the openb trace (``docs/placement.md``):

1. **Lookahead on the shapes that can still use a node.** The target workload
   is re-weighted by how scarce each type's acceptable GPU models are: with
   ``N`` GPUs in the cluster and ``N_m`` GPUs of the models type ``m``
   accepts (``N_m = N`` for unconstrained types)::

       p~_m  ∝  p_m * (N / N_m) ** sigma                       (sigma = 1.5)

   so capacity that only a few shapes can use is protected from shapes that
   could go anywhere.
2. **Multi-resource stranding.** GPUs whose node lacks the CPU to feed them
   are lost even when every device is free. With ``rho`` the workload's CPU
   milli per GPU milli (``sum p~_m c_m / sum p~_m k_m q_m`` over GPU types),
   a node strands ``max(0, G_n - c_n / rho)`` GPU milli.

The node measure and the score (the sigmoid is truncated to whole points
like FGD's, so that near-equal nodes tie and the caller's stable node order
packs them first-fit)::

    A(n)  = sum_m p~_m f_m(n)  +  lam * max(0, G_n - c_n / rho)     (lam = 1)
    score = trunc(100 * sigmoid((A(n) - A(n')) / 1000))

``f_m`` is FGD's per-type fragment (``scheduler.fragmentation``); ``n'`` is
the node after placement; GPU-sharing pods try each device and take the
first best one, as in FGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from policies.base import FloatArray, IntArray, PolicyBase, gpu_used_after_whole
from policies.fgd import sigmoid_score, workload_of
from scheduler.fragmentation import (
    TargetWorkload,
    fragmentation_change,
    fragmentation_change_sharing,
)
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, Snapshot


@dataclass(frozen=True, slots=True)
class ArchimedesArgs:
    scarcity_exponent: float = 1.5
    stranding_weight: float = 1.0
    gradient_scale: float = 1000.0
    truncate: bool = True  # whole-point scores (ties go to the caller's node order)

    def __post_init__(self) -> None:
        if self.scarcity_exponent < 0:
            raise ValueError("archimedes.scarcityExponent: must be >= 0")
        if self.stranding_weight < 0:
            raise ValueError("archimedes.strandingWeight: must be >= 0")
        if self.gradient_scale <= 0:
            raise ValueError("archimedes.gradientScale: must be > 0")


def scarcity_weighted(
    workload: TargetWorkload, supply: dict[str, int], exponent: float
) -> TargetWorkload:
    """``p~_m ∝ p_m * (N / N_m) ** exponent`` (see the module docstring)."""
    total = sum(supply.values())
    if total == 0 or exponent == 0 or len(workload) == 0:
        return workload
    weighted = []
    for i, p in enumerate(workload.probability):
        models = workload.models[i]
        factor = 1.0
        if models and workload.gpu_count[i] > 0:
            eligible = sum(supply.get(m, 0) for m in models)
            factor = (total / max(eligible, 1)) ** exponent
        weighted.append(p * factor)
    norm = sum(weighted)
    return TargetWorkload(
        workload.cpu_milli,
        workload.gpu_milli,
        workload.gpu_count,
        workload.models,
        tuple(w / norm for w in weighted),
        workload.memory,
    )


def cpu_per_gpu_milli(workload: TargetWorkload) -> float:
    """``rho``: expected CPU milli per GPU milli of the workload's GPU types."""
    cpu = gpu = 0.0
    for i, p in enumerate(workload.probability):
        if workload.gpu_count[i] > 0:
            cpu += p * workload.cpu_milli[i]
            gpu += p * workload.gpu_count[i] * workload.gpu_milli[i]
    return cpu / gpu if gpu > 0 else 0.0


def stranded_gpu(cpu_free: IntArray, gpu_free: IntArray, rho: float) -> FloatArray:
    """GPU milli the node's free CPU cannot feed: ``max(0, G - c / rho)``."""
    total = gpu_free.sum(axis=-1).astype(np.float64)
    if rho <= 0:
        return np.zeros_like(total)
    result: FloatArray = np.maximum(total - np.maximum(cpu_free, 0) / rho, 0.0)
    return result


@lru_cache(maxsize=32)
def _prepared(
    workload: TargetWorkload, supply: tuple[tuple[str, int], ...], exponent: float
) -> tuple[TargetWorkload, float]:
    """Scarcity-weighted workload and its rho (pure; memoised because it is hot)."""
    weighted = scarcity_weighted(workload, dict(supply), exponent)
    return weighted, cpu_per_gpu_milli(weighted)


class Archimedes(PolicyBase):
    name = "Archimedes"

    def __init__(
        self, workload: TargetWorkload | None = None, args: ArchimedesArgs | None = None
    ) -> None:
        self.workload = workload
        self.args = args or ArchimedesArgs()
        self.node_local = workload is not None

    def _measure_inputs(self, snapshot: Snapshot) -> tuple[TargetWorkload, float]:
        base = workload_of(snapshot, self.workload)
        supply = tuple(sorted(snapshot.gpu_supply_by_model().items()))
        return _prepared(base, supply, self.args.scarcity_exponent)

    def _stranding(self, cpu: IntArray, total: IntArray, rho: float) -> FloatArray:
        return self.args.stranding_weight * stranded_gpu(cpu, total[..., None], rho)

    def device_scores(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        """Per (node, device) score of a GPU-sharing pod; -1 where the device has no room."""
        workload, rho = self._measure_inputs(snapshot)
        g = snapshot.gpu_free
        cpu = snapshot.free[:, CPU_COL]
        before, after = fragmentation_change_sharing(
            cpu,
            g,
            snapshot.gpu_model,
            workload,
            snapshot.model_names,
            cpu_request=pod.cpu_milli,
            gpu_milli=pod.gpu_milli,
        )
        if self.args.stranding_weight:
            total = g.sum(axis=1)
            before = before + self._stranding(cpu, total, rho)
            after = (
                after + self._stranding(cpu - pod.cpu_milli, total - pod.gpu_milli, rho)[:, None]
            )
        scores = self._squash(before[:, None] - after)
        return np.where(g >= pod.gpu_milli, scores, -1.0)

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        if pod.is_gpu_sharing:
            best: FloatArray = np.maximum(self.device_scores(snapshot, pod).max(axis=1), 0.0)
            return best
        workload, rho = self._measure_inputs(snapshot)
        g = snapshot.gpu_free
        cpu = snapshot.free[:, CPU_COL]
        before, after = fragmentation_change(
            cpu,
            g,
            snapshot.gpu_model,
            workload,
            snapshot.model_names,
            cpu_request=pod.cpu_milli,
            whole_gpus=pod.gpu_count,
        )
        if self.args.stranding_weight:
            total = g.sum(axis=1)
            after_g = gpu_used_after_whole(g, pod.gpu_count) if pod.gpu_count else g
            before = before + self._stranding(cpu, total, rho)
            after = after + self._stranding(cpu - pod.cpu_milli, after_g.sum(axis=1), rho)
        return self._squash(before - after)

    def _squash(self, delta: FloatArray) -> FloatArray:
        scaled = delta * (1000.0 / self.args.gradient_scale)
        if self.args.truncate:
            return sigmoid_score(scaled)
        exact: FloatArray = 100.0 / (1.0 + np.exp(-scaled / 1000.0))
        return exact

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        if not pod.is_gpu_sharing:
            return snapshot.best_fit_devices(row, pod)
        per_device = self.device_scores(snapshot.take(np.array([row])), pod)[0]
        return (int(np.argmax(per_device)),)


def create(context: PolicyContext) -> Archimedes:
    return Archimedes(context.workload)
