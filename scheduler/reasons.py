"""Why a pod does not fit a node: the first failing check per node, named as kube-scheduler
names its own (``Insufficient cpu: the pod requests 2000m``), vectorised over the nodes.

The extender's filter (``extender.decide``) and ``fulcrum explain`` give the same reasons, from
a snapshot, so both live in the placement core. A reason is *unresolvable* when no cluster event
short of changing the node helps: the node's whole allocatable is too small, or it has no GPU of
an acceptable model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import PodRequest
from scheduler.snapshot import CPU_COL, EPHEMERAL_COL, MEMORY_COL, PODS_COL, Snapshot

_BASE = (("cpu", CPU_COL), ("memory", MEMORY_COL), ("ephemeral-storage", EPHEMERAL_COL))


def _show(resource: str, value: int) -> str:
    if resource == "cpu":
        return f"{value}m"
    if resource in ("memory", "ephemeral-storage"):
        return f"{value / 2**20:.0f}Mi"
    return str(value)


def _checks(names: Sequence[str], pod: PodRequest) -> list[tuple[str, int, int]] | str:
    """(resource, snapshot column, request) for each resource the pod requests; or the name of
    an extended resource no node has."""
    checks: list[tuple[str, int, int]] = [
        (name, col, want)
        for (name, col), want in zip(
            _BASE, (pod.cpu_milli, pod.memory, pod.ephemeral_storage), strict=True
        )
        if want > 0
    ]
    for name, want in pod.extended:
        if name not in names:
            return name
        checks.append((name, names.index(name), want))
    return checks


class _Reasons:
    """The first failing check per node: ``note`` checks in order, ``result`` reads them."""

    def __init__(self, size: int) -> None:
        self.code = np.full(size, -1, dtype=np.int64)
        self.messages: list[str] = []
        self.unresolvable: list[bool] = []

    def note(self, mask: NDArray[np.bool_], message: str, hopeless: bool) -> None:
        self.code[(self.code < 0) & mask] = len(self.messages)
        self.messages.append(message)
        self.unresolvable.append(hopeless)

    def result(self) -> tuple[list[str], NDArray[np.bool_]]:
        self.note(self.code < 0, "does not fit", False)
        codes = self.code
        return [self.messages[c] for c in codes.tolist()], np.asarray(self.unresolvable)[codes]

    def counted(self) -> list[tuple[str, int]]:
        """(reason, nodes) for each reason that applies, without a string per node."""
        self.note(self.code < 0, "does not fit", False)
        counts = np.bincount(self.code, minlength=len(self.messages)).tolist()
        return [(m, n) for m, n in zip(self.messages, counts, strict=True) if n]


def explain(
    snapshot: Snapshot, rows: NDArray[np.intp], pod: PodRequest
) -> tuple[list[str], NDArray[np.bool_]]:
    """Why ``pod`` does not fit on each node of ``rows``, and which reasons are unresolvable
    (``_checked``)."""
    checked = _checked(snapshot, rows, pod)
    if isinstance(checked, str):
        return [checked] * len(rows), np.ones(len(rows), dtype=np.bool_)
    return checked.result()


def explain_counts(
    snapshot: Snapshot, rows: NDArray[np.intp], pod: PodRequest
) -> list[tuple[str, int]]:
    """``explain``'s reasons counted: (reason, nodes), for the decision record."""
    checked = _checked(snapshot, rows, pod)
    return [(checked, len(rows))] if isinstance(checked, str) else checked.counted()


def _checked(snapshot: Snapshot, rows: NDArray[np.intp], pod: PodRequest) -> _Reasons | str:
    """The first failing check of ``pod`` on each node of ``rows`` (or the one reason for all).

    Reasons name the resource and the pod's request but not the node's numbers, so that
    kube-scheduler's FailedScheduling event aggregates them ("120 node(s) had Insufficient
    cpu: the pod requests 2000m"), as upstream's do. The first failing check wins, in this
    order: whole allocatable too small or GPU model/count wrong (unresolvable), then free
    resources, then pod count, then free GPU devices.
    """
    checks = _checks(snapshot.resource_names, pod)
    if isinstance(checks, str):
        return f"node has no {checks}"
    allocatable, free = snapshot.allocatable[rows], snapshot.free[rows]
    reasons = _Reasons(len(rows))
    for name, col, want in checks:
        reasons.note(
            allocatable[:, col] < want,
            f"node's whole allocatable {name} is less than the pod's request {_show(name, want)}",
            True,
        )
    if pod.gpu_count:
        if pod.gpu_models:
            wanted = [snapshot.model_code(m) for m in pod.gpu_models if m in snapshot.model_names]
            reasons.note(
                ~np.isin(snapshot.gpu_model[rows], wanted),
                f"no GPU of model {'|'.join(sorted(pod.gpu_models))}",
                True,
            )
        reasons.note(
            snapshot.gpu_count[rows] < pod.gpu_count,
            f"node has fewer than the {pod.gpu_count} GPUs the pod needs",
            True,
        )
    for name, col, want in checks:
        message = f"Insufficient {name}: the pod requests {_show(name, want)}"
        reasons.note(free[:, col] < want, message, False)
    reasons.note(free[:, PODS_COL] < 1, "Too many pods", False)
    if pod.gpu_count:
        reasons.note(
            np.ones(len(rows), dtype=np.bool_),
            f"Insufficient GPU: the pod needs {pod.gpu_count} device(s) with "
            f"{pod.gpu_milli} milli free",
            False,
        )
    return reasons
