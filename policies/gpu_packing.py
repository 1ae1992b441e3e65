"""GpuPacking: the FGD artifact's GPU packing score (``gpu_packing_score.go``).

CPU-only pods score 0. Otherwise, with ``F`` the node's fully free devices:

- all devices free (``F == K_n``): ``33 - F`` (prefer small idle nodes);
- else pick, in ascending free-milli order (stable), the first ``k`` devices
  with ``g >= q``; if ``f`` of them are fully free: ``max(50 - f, 33)``;
- else (all picked devices are partly used):
  ``max(100 - (sum_picked g * 100 // 1000) // 10, 50)``.
"""

from __future__ import annotations

import numpy as np

from policies.base import FloatArray, PolicyBase
from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot


class GpuPacking(PolicyBase):
    name = "GpuPacking"

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        n = snapshot.num_nodes
        if pod.gpu_count == 0:
            return np.zeros(n, dtype=np.float64)
        valid = np.arange(snapshot.max_gpus_per_node) < snapshot.gpu_count[:, None]
        g = np.where(valid, snapshot.gpu_free, -1)
        free_devices = (g == GPU_MILLI).sum(axis=1)
        ordered = np.sort(g, axis=1, kind="stable")
        eligible = ordered >= pod.gpu_milli
        picked = eligible & (np.cumsum(eligible, axis=1) <= pod.gpu_count)
        fresh = (picked & (ordered == GPU_MILLI)).sum(axis=1)
        used_sum = np.where(picked, ordered * 100 // GPU_MILLI, 0).sum(axis=1)
        score = np.where(
            fresh > 0,
            np.maximum(50 - fresh, 33),
            np.maximum(100 - used_sum // 10, 50),
        )
        score = np.where(free_devices == snapshot.gpu_count, 33 - free_devices, score)
        result: FloatArray = np.clip(score, 0, 100).astype(np.float64)
        return result


def create(context: PolicyContext) -> GpuPacking:
    return GpuPacking()
