"""The decision record: why Fulcrum chose a pod's node, written onto the pod with its binding.

Filter (and prioritize, when kube-scheduler scores) note what they saw for a pod UID: the
policies, how many nodes were asked about and how many fit, the best-scored nodes, and the
reasons the others failed, counted. Bind takes the note and writes it as one annotation on the
``pods/binding``, which the apiserver copies onto the pod in the same write: no extra request.
Bounded: at most ``RANKED`` scored nodes, ``REASONS`` reasons of at most ``REASON_CHARS``
characters each, and notes for at most ``REMEMBERED`` pods not yet bound (the oldest go first),
every node's score for at most ``SCORED``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import orjson
from numpy.typing import NDArray

from kube.api import DECISION

RANKED = 3
REASONS = 5
REASON_CHARS = 160
REMEMBERED = 10_000
SCORED = 64


@dataclass(frozen=True)
class Decision:
    """What filter (and prioritize) saw for one pod. ``rule``: what decided instead of the
    policies' scores (a local-rebuild hold), or ""."""

    policy: str
    nodes: int
    feasible: int
    ranked: tuple[tuple[str, float], ...] = ()  # best first, internal 0..100 scores
    failed: tuple[tuple[str, int], ...] = ()  # reason, nodes; most common first
    rule: str = ""

    def annotation(self, node: str) -> str:
        """The record for a bind to ``node``: compact JSON, at most about 1 KiB."""
        scores = dict(self.ranked)
        record: dict[str, object] = {
            "policy": self.policy,
            "node": node,
            "feasible": self.feasible,
            "nodes": self.nodes,
        }
        if self.rule:
            record["rule"] = self.rule
        if node in scores:
            record["score"] = round(scores[node], 1)
        others = [(n, s) for n, s in self.ranked if n != node]
        if others:
            record["runnerUp"] = {"node": others[0][0], "score": round(others[0][1], 1)}
        if self.failed:
            record["failed"] = dict(self.failed)
        return orjson.dumps(record).decode()


def counted(reasons: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """The ``REASONS`` most common of (reason, nodes) pairs, each reason cut to
    ``REASON_CHARS``."""
    tally: Counter[str] = Counter()
    for reason, nodes in reasons:
        tally[reason] += nodes
    top = [(reason, n) for reason, n in tally.most_common(REASONS) if n]
    return tuple((reason[:REASON_CHARS], n) for reason, n in top)


def ranked(
    names: Sequence[str], rows: NDArray[np.intp], scores: NDArray[np.float64], chosen: int
) -> tuple[tuple[str, float], ...]:
    """The ``RANKED`` best-scored of ``rows`` as (node name, score), best first; among equal
    scores the ``chosen`` row first (``Decider.filter``'s pick), then the lowest rows."""
    best = np.lexsort((rows, rows != chosen, -scores))[:RANKED].tolist()
    return tuple((names[int(rows[i])], float(scores[i])) for i in best)


class Records:
    """Decisions noted per pod UID until its bind takes them."""

    def __init__(self) -> None:
        self._notes: OrderedDict[str, Decision] = OrderedDict()
        self._scores: OrderedDict[str, tuple[Sequence[str], NDArray[np.float64]]] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, uid: str, decision: Decision) -> None:
        if not uid:
            return
        with self._lock:
            self._notes[uid] = decision
            self._notes.move_to_end(uid)
            while len(self._notes) > REMEMBERED:
                self._notes.popitem(last=False)

    def scored(self, uid: str, names: Sequence[str], scores: NDArray[np.float64]) -> None:
        """Prioritize scored the nodes that passed filter. kube-scheduler adds its own scores
        and may bind any of them: keep every score for the ``SCORED`` latest pods, so the
        record can give the bound node's."""
        with self._lock:
            if uid not in self._notes:
                return
            best = np.argsort(-scores, kind="stable")[:RANKED].tolist()
            ranking = tuple((names[i], float(scores[i])) for i in best)
            self._notes[uid] = replace(self._notes[uid], ranked=ranking)
            self._scores[uid] = (names, scores)
            while len(self._scores) > SCORED:
                self._scores.popitem(last=False)

    def take(self, uid: str, node: str) -> dict[str, str]:
        """The annotation recording why ``uid`` goes to ``node`` (none if nothing was noted)."""
        with self._lock:
            decision = self._notes.pop(uid, None)
            names, scores = self._scores.pop(uid, ((), np.zeros(0)))
        if decision is None:
            return {}
        if node in names and node not in dict(decision.ranked):
            score = float(scores[list(names).index(node)])
            decision = replace(decision, ranked=((node, score), *decision.ranked))
        return {DECISION: decision.annotation(node)}

    def __len__(self) -> int:
        return len(self._notes)
