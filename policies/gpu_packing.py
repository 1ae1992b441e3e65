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
        g = snapshot.gpu_free
        valid = np.arange(snapshot.max_gpus_per_node) < snapshot.gpu_count[:, None]
        free_devices = ((g >= GPU_MILLI) & valid).sum(axis=1)
        if pod.is_gpu_sharing:
            # One device: the smallest with g >= q. It is partly used if any
            # partly used device has room, else it is a free one (f = 1).
            partial = valid & (g >= pod.gpu_milli) & (g < GPU_MILLI)
            smallest = np.where(partial, g, GPU_MILLI).min(axis=1)
            score = np.where(
                partial.any(axis=1),
                np.maximum(100 - (smallest * 100 // GPU_MILLI) // 10, 50),
                np.maximum(50 - 1, 33),
            )
        else:
            # Whole GPUs: only free devices have room, so every picked one is fresh.
            fresh = np.minimum(free_devices, pod.gpu_count)
            score = np.where(fresh > 0, np.maximum(50 - fresh, 33), 100)
        score = np.where(free_devices == snapshot.gpu_count, 33 - free_devices, score)
        result: FloatArray = np.clip(score, 0, 100).astype(np.float64)
        return result


def create(context: PolicyContext) -> GpuPacking:
    return GpuPacking()
