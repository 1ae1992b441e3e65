"""The contract between the placement core and placement policies.

A policy scores nodes for a pod on the internal 0..100 scale (higher is
better) and picks GPU devices on the node it wins. Policies live in
``policies/``; this protocol lives here so that the simulator and the
optimiser (which must not import ``policies``) can drive any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from scheduler.fragmentation import TargetWorkload
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

MIN_SCORE = 0.0
MAX_SCORE = 100.0


@runtime_checkable
class Policy(Protocol):
    """What every placement policy provides.

    - ``score`` returns a new float array with one value in [0, 100] per node
      of the snapshot (values for nodes that do not fit are ignored but must
      still be in range). It must not modify the snapshot or the pod.
    - ``filter`` may veto nodes beyond resource fit (return all True if not).
    - ``select_devices`` picks the GPU devices on the chosen node.
    - ``node_local`` promises that a node's score depends only on that node's
      row and the pod, so callers may cache per node and rescore only nodes
      that changed.

    Optionally, ``reads`` (a ``scheduler.attributes.Reads``) declares what the policy
    reads beyond resources: node labels, taints, the pod's attributes. Only declared
    attributes are kept; a policy without ``reads`` sees resources only.
    """

    name: str
    node_local: bool

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]: ...

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]: ...

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]: ...


def score_problem(scores: object, nodes: int) -> str:
    """What is wrong with a policy's ``scores`` of ``nodes`` nodes, or "": they must be a numpy
    array of one finite number per node within 0..100."""
    if not isinstance(scores, np.ndarray) or scores.shape != (nodes,):
        got = getattr(scores, "shape", type(scores).__name__)
        return f"score must return an array of shape ({nodes},), one value per node; got {got}"
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(
        scores.dtype, np.complexfloating
    ):
        return f"scores must be real numbers, got dtype {scores.dtype}"
    if nodes == 0:
        return ""
    finite = np.isfinite(scores)
    if not finite.all():
        return f"scores must be finite: {int(nodes - finite.sum())} are NaN or infinite"
    low, high = float(scores.min()), float(scores.max())
    if low < MIN_SCORE or high > MAX_SCORE:
        return f"scores out of 0..100: {low:g}..{high:g} (clip them: policies.base.clip_scores)"
    return ""


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a policy factory may use: a seed and the expected workload, if known."""

    seed: int = 0
    workload: TargetWorkload | None = None


PolicyFactory = Callable[[PolicyContext], Policy]
"""Builds a policy; registry entries and plugins are factories."""


class PolicyCatalog(Protocol):
    """Looks policies up by name (the registry in ``policies`` implements it)."""

    def create(self, name: str, context: PolicyContext) -> Policy: ...

    def names(self) -> list[str]: ...
