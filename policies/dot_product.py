"""DotProduct: the FGD artifact's dot-product score (``dot_product_score.go``).

Node free vector ``(c_n, G_n)`` and pod vector ``(c, k*q)``, both divided by
``(MAXC, MAXG)``, GPUs merged into one dimension::

    dot   = (c_n / MAXC)(c / MAXC) + (G_n / MAXG)(k*q / MAXG)
    score = trunc(100 * (1 - dot / 2))

A smaller dot product (less aligned free space) scores higher.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import FloatArray, PolicyBase, clip_scores, go_trunc
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, Snapshot


@dataclass(frozen=True, slots=True)
class DotProductArgs:
    max_cpu_milli: int = 128_000
    max_gpu_milli: int = 8_000


class DotProduct(PolicyBase):
    name = "DotProduct"

    def __init__(self, args: DotProductArgs | None = None) -> None:
        self.args = args or DotProductArgs()

    def score(self, snapshot: Snapshot, pod: PodRequest) -> FloatArray:
        a = self.args
        cpu = snapshot.free[:, CPU_COL] / a.max_cpu_milli * (pod.cpu_milli / a.max_cpu_milli)
        gpu = (
            snapshot.gpu_free.sum(axis=1)
            / a.max_gpu_milli
            * (pod.gpu_total_milli / a.max_gpu_milli)
        )
        return clip_scores(go_trunc(100.0 * (1.0 - (cpu + gpu) / 2.0)))


def create(context: PolicyContext) -> DotProduct:
    return DotProduct()
