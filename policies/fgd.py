"""FGD: Fragmentation Gradient Descent (Weng et al., USENIX ATC'23).

``F(n)`` is the node's expected GPU fragmentation against the target workload
(see ``scheduler.fragmentation``). Placing the pod moves the node to ``n'``;
the score rewards the largest drop::

    score = trunc(100 * sigmoid((F(n) - F(n')) / 1000))

A GPU-sharing pod tries every device ``j`` with ``g_j >= q`` (``n'_j`` takes
``q`` from device ``j``); the node scores the best device and the first device
reaching it is the one used. Other pods take the lowest-index free devices.

Without a target workload in the context, the policy uses the pods currently
in the snapshot (then scores are not node-local).
"""

from __future__ import annotations

import numpy as np

from policies.base import FloatArray, PolicyBase
from scheduler.fragmentation import (
    TargetWorkload,
    fragmentation_change,
    fragmentation_change_sharing,
)
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, Snapshot


def workload_of(snapshot: Snapshot, given: TargetWorkload | None) -> TargetWorkload:
    """The given workload, else the typical pods among those placed in the snapshot."""
    if given is not None:
        return given
    placed = [p.pod for p in snapshot.pods().values()]
    if not placed:
        return TargetWorkload((), (), (), (), ())
    return TargetWorkload.from_pods(placed)


def sigmoid_score(delta: FloatArray) -> FloatArray:
    """``trunc(100 * sigmoid(delta / 1000))``."""
    return np.trunc(100.0 / (1.0 + np.exp(-delta / 1000.0)))


class FGD(PolicyBase):
    name = "FGD"

    def __init__(self, workload: TargetWorkload | None = None) -> None:
        self.workload = workload
        self.node_local = workload is not None

    def device_scores(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        """Per (node, device) score of a sharing pod; -1 where the device has no room."""
        g = snapshot.gpu_free
        before, after = fragmentation_change_sharing(
            snapshot.free[:, CPU_COL],
            g,
            snapshot.gpu_model,
            workload_of(snapshot, self.workload),
            snapshot.model_names,
            cpu_request=pod.cpu_milli,
            gpu_milli=pod.gpu_milli,
        )
        scores = sigmoid_score(before[:, None] - after)
        return np.where(g >= pod.gpu_milli, scores, -1.0)

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        if pod.is_gpu_sharing:
            best: FloatArray = np.maximum(self.device_scores(snapshot, pod).max(axis=1), 0.0)
            return best
        before, after = fragmentation_change(
            snapshot.free[:, CPU_COL],
            snapshot.gpu_free,
            snapshot.gpu_model,
            workload_of(snapshot, self.workload),
            snapshot.model_names,
            cpu_request=pod.cpu_milli,
            whole_gpus=pod.gpu_count,
        )
        return sigmoid_score(before - after)

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        if not pod.is_gpu_sharing:
            return snapshot.best_fit_devices(row, pod)
        one = snapshot.take(np.array([row]))
        per_device = self.device_scores(one, pod)[0]
        return (int(np.argmax(per_device)),)


def create(context: PolicyContext) -> FGD:
    return FGD(context.workload)
