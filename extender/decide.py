"""Fit and score one pod against nodes known to the cache.

Fit is upstream NodeResourcesFit on requests: a node fits when, for every resource the pod
requests, ``requested + pod <= allocatable``. A pod that asks for more than a node's whole
allocatable can never fit there (no cluster event helps): that node is *unresolvable*.

Score is MostAllocated over cpu and memory (bin-packing), 0..100:
``mean_r (requested_r + pod_r) * 100 / allocatable_r``.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.cache import NodeInfo
from extender.resources import CPU, MEMORY, PODS, Resources


@dataclass(frozen=True)
class Misfit:
    reason: str
    unresolvable: bool


def _show(resource: str, value: int) -> str:
    if resource == CPU:
        return f"{value}m"
    if resource in (MEMORY, "ephemeral-storage"):
        return f"{value / 2**20:.0f}Mi"
    return str(value)


def misfit(node: NodeInfo, requests: Resources) -> Misfit | None:
    """Why ``requests`` do not fit on ``node``, or None when they do."""
    if node.unschedulable:
        return Misfit("node is cordoned (spec.unschedulable)", unresolvable=False)
    for resource, want in requests.items():
        if want <= 0:
            continue
        allocatable = node.allocatable.get(resource, 0)
        if want > allocatable:
            what = "pods" if resource == PODS else resource
            return Misfit(
                f"pod requests {_show(resource, want)} {what}, more than the node's whole "
                f"allocatable {_show(resource, allocatable)}",
                unresolvable=True,
            )
        free = node.free(resource)
        if want > free:
            return Misfit(
                f"Insufficient {resource}: requests {_show(resource, want)}, "
                f"free {_show(resource, max(free, 0))} of {_show(resource, allocatable)}",
                unresolvable=False,
            )
    return None


def most_allocated_score(node: NodeInfo, requests: Resources) -> float:
    ratios = []
    for resource in (CPU, MEMORY):
        allocatable = node.allocatable.get(resource, 0)
        if allocatable > 0:
            used = node.requested.get(resource, 0) + requests.get(resource, 0)
            ratios.append(min(used, allocatable) * 100 / allocatable)
    return sum(ratios) / len(ratios) if ratios else 0.0
