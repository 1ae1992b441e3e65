"""BestFit: the FGD artifact's best-fit score (``best_fit_score.go``).

With free CPU ``c_n``, free GPU milli ``G_n`` on the node and the pod's
``c`` and ``k*q``::

    s     = 0.5 * (c_n - c) / MAXC + 0.5 * (G_n - k*q) / MAXG
    score = trunc(100 * (1 - s))          MAXC = 128000, MAXG = 8000

The artifact then min-max normalises over feasible nodes, a strictly
increasing map that never changes the winner, so it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import FloatArray, PolicyBase, clip_scores, go_trunc
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, Snapshot


@dataclass(frozen=True, slots=True)
class BestFitArgs:
    max_cpu_milli: int = 128_000
    max_gpu_milli: int = 8_000


class BestFit(PolicyBase):
    name = "BestFit"

    def __init__(self, args: BestFitArgs | None = None) -> None:
        self.args = args or BestFitArgs()

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        cpu_left = snapshot.free[:, CPU_COL] - pod.cpu_milli
        gpu_left = snapshot.gpu_free.sum(axis=1) - pod.gpu_total_milli
        s = 0.5 * cpu_left / self.args.max_cpu_milli + 0.5 * gpu_left / self.args.max_gpu_milli
        return clip_scores(go_trunc(100.0 * (1.0 - s)))


def create(context: PolicyContext) -> BestFit:
    return BestFit()
