"""Reusing node scores across pods of the same shape.

For a ``node_local`` policy a node's score depends only on its own row and
the pod, so after the first pod of a shape only nodes whose row changed since
(``Snapshot.node_version``) need rescoring. The simulator uses this; the
extender can too (one cache per policy instance; it holds no global state).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.attributes import reads_of
from scheduler.pod import PodRequest
from scheduler.policy import Policy
from scheduler.snapshot import Snapshot


class ScoreCache:
    """Per pod shape: last scores of every node and the node versions they saw."""

    def __init__(self, max_shapes: int = 4096) -> None:
        self._max_shapes = max_shapes
        self._layout = -1
        self._entries: dict[PodRequest, tuple[NDArray[np.float64], NDArray[np.int64]]] = {}

    def scores(self, policy: Policy, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        """``policy.score(snapshot, pod)``, rescoring only changed nodes when possible.

        Returns an array owned by the cache: copy it before modifying it.
        Falls back to a full score for policies that are not ``node_local`` or that read
        attributes (two pods of one shape may differ in labels or owner).
        """
        if not policy.node_local or reads_of(policy):
            return np.asarray(policy.score(snapshot, pod), dtype=np.float64)
        if snapshot.layout != self._layout:
            self._entries.clear()
            self._layout = snapshot.layout
        versions = snapshot.node_version
        entry = self._entries.get(pod)
        if entry is None:
            if len(self._entries) >= self._max_shapes:
                self._entries.clear()
            scores = np.array(policy.score(snapshot, pod), dtype=np.float64)
            self._entries[pod] = (scores, versions.copy())
            return scores
        scores, seen = entry
        stale = np.flatnonzero(seen != versions)
        if stale.size:
            scores[stale] = policy.score(snapshot.take(stale), pod)
            seen[stale] = versions[stale]
        return scores
