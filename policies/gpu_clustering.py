"""GpuClustering: the FGD artifact's GPU clustering score (``gpu_clustering_score.go``).

A GPU pod's tag is "GPU-sharing" or "k whole GPUs"; a node's tags are those of
the GPU pods on it. With ``G_n`` the node's free GPU milli::

    base  = 25 * (8000 - G_n) // 8000
    score = base + 75   node has the pod's tag and no other
                 + 50   node has the pod's tag and others
                 + 25   node has no GPU pod yet
                 +  0   otherwise
    CPU-only pods score 0.
"""

from __future__ import annotations

import numpy as np

from policies.base import FloatArray, PolicyBase
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot

MAXG = 8000


class GpuClustering(PolicyBase):
    name = "GpuClustering"

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        n = snapshot.num_nodes
        if pod.gpu_count == 0:
            return np.zeros(n, dtype=np.float64)
        kinds = snapshot.gpu_pod_kinds > 0
        tag = 0 if pod.is_gpu_sharing else pod.gpu_count
        has_tag = kinds[:, tag] if tag < kinds.shape[1] else np.zeros(n, dtype=np.bool_)
        tag_count = kinds.sum(axis=1)
        bonus = np.select(
            [has_tag & (tag_count == 1), has_tag, tag_count == 0], [75, 50, 25], default=0
        )
        base = 25 * (MAXG - snapshot.gpu_free.sum(axis=1)) // MAXG
        result: FloatArray = np.clip(base + bonus, 0, 100).astype(np.float64)
        return result


def create(context: PolicyContext) -> GpuClustering:
    return GpuClustering()
