"""GpuNodesForGpuPods: keep GPU nodes for GPU pods, bin-pack CPU.

Filter: a CPU-only pod may use a GPU node only when no CPU-only node fits it.
Score: ``(allocatable_cpu - free_cpu + pod_cpu) * 100 // allocatable_cpu``
(MostAllocated on CPU), clipped to 0..100.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, Snapshot


class GpuNodesForGpuPods:
    name = "GpuNodesForGpuPods"
    node_local = False  # the filter looks at the whole cluster

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        capacity = snapshot.allocatable[:, CPU_COL]
        requested = capacity - snapshot.free[:, CPU_COL] + pod.cpu_milli
        score = np.minimum(requested, capacity) * 100 // np.maximum(capacity, 1)
        result: NDArray[np.float64] = np.clip(score, 0, 100).astype(np.float64)
        return result

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
        keep = np.ones(snapshot.num_nodes, dtype=np.bool_)
        if pod.gpu_count > 0:
            return keep
        cpu_nodes: NDArray[np.bool_] = snapshot.gpu_count == 0
        if (snapshot.feasible(pod) & cpu_nodes).any():
            return cpu_nodes
        return keep

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        return snapshot.best_fit_devices(row, pod)


def create(context: PolicyContext) -> GpuNodesForGpuPods:
    return GpuNodesForGpuPods()
