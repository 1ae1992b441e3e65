"""The live workload model: what pods to expect, learnt from the pods seen, with a prior.

Fragmentation-aware policies (FGD, Archimedes) score a node by what the *workload still to
come* could use on it. On a trace replay that workload is given; a live extender has to learn
it. This model counts the pod shapes it sees:

- the pods running or pending now, each once;
- every pod that arrived, once more, with a weight that halves every ``half_life_s``: the
  recent flow of arrivals, so a burst of one shape is expected to go on for a while;
- a **prior** for a cold start, while the cluster has GPUs: ``prior.pods`` pseudo-pods of one
  whole GPU and, by default, ``prior.cpu_share`` of the GPU nodes' CPU per GPU (on openb's
  nodes that is 6 of 12 cores per GPU; its GPU pods take 11 per GPU, median), or
  ``prior.cpu_per_gpu_milli`` if set. Without it, a model that has seen only CPU
  pods expects no GPU pods at all; then every node looks the same to the GPU terms, and a
  packer fills GPU nodes' CPU until their GPUs are stranded (issue 14: 190 of 200 pods placed
  where all fit). With it, the policies keep CPU beside each GPU for the GPU pods to come
  (Archimedes' stranding term uses its CPU per GPU milli). Real GPU pods soon outweigh it.

Pure (no clock of its own: callers pass the time), so the simulator and the extender share it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scheduler.fragmentation import TargetWorkload
from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.snapshot import CPU_COL, Snapshot

ShapeKey = tuple[int, int, int, frozenset[str]]  # cpu milli, GPU milli per device, devices, models


@dataclass(frozen=True)
class WorkloadPrior:
    """What to expect before any GPU pod is seen (configuration: ``workloadPrior``)."""

    cpu_per_gpu_milli: int | None = None  # a GPU pod's CPU per whole GPU; None: cpu_share
    pods: float = 10.0  # its weight, in pods, against what is observed
    half_life_s: float = 3600.0  # how fast the memory of arrivals fades
    cpu_share: float = 0.5  # of the GPU nodes' CPU per GPU, when cpu_per_gpu_milli is None

    def __post_init__(self) -> None:
        if self.cpu_per_gpu_milli is not None and self.cpu_per_gpu_milli < 0:
            raise ValueError("workloadPrior.cpuPerGpuMilli: must be >= 0")
        if not 0 <= self.cpu_share <= 1:
            raise ValueError("workloadPrior.cpuShare: must be between 0 and 1")
        if self.pods < 0:
            raise ValueError("workloadPrior.pods: must be >= 0")
        if self.half_life_s <= 0:
            raise ValueError("workloadPrior.halfLifeSeconds: must be > 0")


def node_cpu_per_gpu(snapshot: Snapshot) -> float:
    """The GPU nodes' allocatable CPU milli per GPU (median over them), 0 without GPUs."""
    gpus = snapshot.gpu_count
    rows = gpus > 0
    if not rows.any():
        return 0.0
    return float(np.median(snapshot.allocatable[rows, CPU_COL] / gpus[rows]))


def _key(pod: PodRequest) -> ShapeKey:
    q = pod.gpu_milli if pod.gpu_count else 0
    return (pod.cpu_milli, q, pod.gpu_count, frozenset(pod.gpu_models))


class LiveWorkload:
    """Decayed counts of arrived pod shapes; ``target`` adds the current pods and the prior."""

    def __init__(self, prior: WorkloadPrior | None = None) -> None:
        self.prior = prior or WorkloadPrior()
        self._arrived: dict[ShapeKey, float] = {}  # shape -> weight as of ``_at``
        self._at = 0.0

    def _decay_to(self, now: float) -> None:
        if now <= self._at:
            return
        factor = math.exp(-(now - self._at) * math.log(2) / self.prior.half_life_s)
        self._arrived = {k: w * factor for k, w in self._arrived.items() if w * factor > 1e-3}
        self._at = now

    def arrived(self, pod: PodRequest, now: float) -> None:
        """A pod was seen for the first time at ``now`` (seconds, any monotonic origin)."""
        self._decay_to(now)
        key = _key(pod)
        self._arrived[key] = self._arrived.get(key, 0.0) + 1.0

    def target(
        self, current: Iterable[PodRequest], now: float, *, node_cpu_per_gpu: float
    ) -> TargetWorkload | None:
        """The workload to expect: ``current`` pods, the decayed arrivals and, if the cluster
        has GPUs (``node_cpu_per_gpu``: its GPU nodes' CPU milli per GPU, 0 without GPUs), the
        prior GPU pod; None when there is nothing to go on."""
        self._decay_to(now)
        weights = dict(self._arrived)
        for pod in current:
            key = _key(pod)
            weights[key] = weights.get(key, 0.0) + 1.0
        chosen = typical(weights)
        if node_cpu_per_gpu > 0 and self.prior.pods > 0:  # after the cut: rare next to CPU pods
            cpu = self.prior.cpu_per_gpu_milli
            if cpu is None:
                cpu = int(self.prior.cpu_share * node_cpu_per_gpu)
            key = (cpu, GPU_MILLI, 1, frozenset[str]())
            chosen[key] = chosen.get(key, 0.0) + self.prior.pods
        return _workload(chosen)


def typical(weights: dict[ShapeKey, float], coverage: float = 0.95) -> dict[ShapeKey, float]:
    """FGD's "typical pods" of weighted shapes (``TargetWorkload.from_pods`` with weights): the
    heaviest shapes covering ``coverage`` of the weight."""
    total = sum(weights.values())
    chosen: dict[ShapeKey, float] = {}
    covered = 0.0
    for key, weight in sorted(weights.items(), key=lambda kw: (kw[1], _order(kw[0])), reverse=True):
        if covered >= coverage * total:
            break
        chosen[key] = weight
        covered += weight
    return chosen


def _workload(weights: dict[ShapeKey, float]) -> TargetWorkload | None:
    norm = sum(weights.values())
    if norm <= 0:
        return None
    chosen = list(weights.items())
    return TargetWorkload(
        cpu_milli=tuple(k[0] for k, _ in chosen),
        gpu_milli=tuple(k[1] for k, _ in chosen),
        gpu_count=tuple(k[2] for k, _ in chosen),
        models=tuple(k[3] for k, _ in chosen),
        probability=tuple(w / norm for _, w in chosen),
    )


def _order(key: ShapeKey) -> tuple[int, int, int, str]:
    return key[0], key[1], key[2], "|".join(sorted(key[3]))
