"""The ``preempt`` verb's decision: which node, and which of kube-scheduler's victims on it.

The decision is pure: no HTTP, no Kubernetes client. kube-scheduler sends, per candidate node,
the victims its own dry run chose (already reprieved against its filter plugins,
PodDisruptionBudgets first) and how many PDBs evicting them violates; the extender answers with
a subset of those nodes and, per node, a subset of the victims, by UID. kube-scheduler then only
considers the nodes returned, looks every returned UID up among the pods on that node (an
unknown UID is an error) and refuses a node with no victims unless the extender is ignorable.
``select_victims`` therefore never returns a node without victims, nor a UID that is not a
proposed victim on that node.

``select_victims`` returns only the best node, with its kept victims in kube-scheduler's order
and its ``NumPDBViolations`` as given (an upper bound once victims are reprieved: which victims
are PDB-protected is not on the wire). Returning every surviving node instead would hand the
choice back to kube-scheduler, whose ``pickOneNodeForPreemption`` ranks by its own criteria
(PDBs, priorities, victim count, start times) and ignores the extender's order (the reply is a
JSON object, i.e. a Go map): Fulcrum's fragmentation judgment would be lost.

The wire helpers translate the request's ``NodeNameToVictims`` (full pods, when
``nodeCacheCapable`` is false) or ``NodeNameToMetaVictims`` (UIDs, when true) and build the
``ExtenderPreemptionResult`` body. ``Evictions``, at the bottom, remembers what was chosen, so
that the preemptor's next filter can wait for the cache to see its victims go.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extender.cache import ClusterCache
from scheduler.pod import PodRequest
from scheduler.snapshot import Placement, Snapshot

EVICTION_SECONDS = 300.0  # how long the victims chosen for a preemptor are remembered

Scorer = Callable[[Snapshot, PodRequest], NDArray[np.float64]]

# Versions given to rows of the working copy in hypothetical states, so that a scorer caching
# per ``node_version`` (``scheduler.score_cache.ScoreCache``, used by ``Decider.scores``) never
# mistakes such a state for a real one: real versions are >= 0 and these are unique negatives.
_HYPOTHETICAL = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Victims:
    """Pods to evict on one node, by UID, and the PDB violations kube-scheduler counted."""

    uids: list[str]
    pdb_violations: int


@dataclass(frozen=True, slots=True)
class _Plan:
    node: str
    row: int
    uids: list[str]
    pdb_violations: int
    top_priority: int


def select_victims(
    snapshot: Snapshot,
    pod: PodRequest,
    candidates: Mapping[str, Victims],
    priority: Mapping[str, int],
    score: Scorer,
) -> dict[str, Victims]:
    """The one node Fulcrum would preempt on for ``pod``, with its minimal victims; ``{}`` if none.

    ``candidates`` is kube-scheduler's proposal (node -> victims); ``priority`` maps victim UID
    to pod priority (missing: 0); ``score`` is the placement score of ``pod`` on every node of a
    snapshot, 0..100, higher better (``Decider.scores``). Nothing passed in is modified: the
    work happens on one copy of ``snapshot``, every node's changes undone before the next.

    Rules:

    0. A node unknown to the snapshot is dropped. Victim UIDs that the snapshot does not have
       on that node are ignored (they free nothing in Fulcrum's view, so it cannot tell
       whether they are needed) and never returned; a node with none of its victims in the
       snapshot is dropped. (kube-scheduler would accept them: it resolves UIDs against the
       same snapshot its proposal came from. They exist only while the caches disagree.)
    1. **Fit with every victim gone.** On the copy, remove all known victims of the node; if
       the pod still does not fit there (``Snapshot.feasible``: scalar resources, pod count,
       GPU model and enough GPU devices each with the pod's share free), drop the node.
    2. **Reprieve**, like upstream's ``SelectVictimsOnNode`` but with Fulcrum's device-aware
       fit: try victims highest priority first and put a victim back (on its own devices)
       when the pod still fits without evicting it. Among victims of equal priority that can
       be put back, the one after whose return the pod's score on the node is highest goes
       first (then kube-scheduler's order). Fit only shrinks as pods return, so a victim that
       cannot come back now never can: each priority level ends when none can.
       If *every* victim comes back, Fulcrum's resources say the node needs no eviction, so
       what blocks the pod there is something Fulcrum does not model (affinity, ports,
       volumes) or a pod its cache has not seen yet: Fulcrum has no ground to second-guess
       kube-scheduler there and keeps its known victims unchanged (kube-scheduler would refuse
       an empty victim list anyway).
    3. **Respect PDBs.** Only nodes with the fewest PDB violations (as kube-scheduler counted
       them) among those that survive 1 are considered: a node violating more PDBs is never
       chosen while one violating fewer can take the pod. (Filtering before rule 1 instead
       would leave the pod unable to preempt at all whenever the PDB-friendly nodes cannot
       take it in Fulcrum's view, which kube-scheduler alone would not do.)
    4. **Rank** by (PDB violations, highest victim priority, number of victims, -score of the
       pod on the node after its victims are gone); ties: the lowest snapshot row, the same
       first-fit order as the filter's ``choose`` mode. The score goes last, as the issue's
       "least fragmentation" among otherwise equal evictions; it is computed only for the
       nodes still tied on the first three keys.
    """
    work = snapshot.copy() if candidates else snapshot
    by_pdb = _known_victims(work, candidates)
    for violations in sorted(by_pdb):
        plans = []
        for node, row, known in by_pdb[violations]:
            kept = _minimal_victims(work, pod, row, known, priority, score)
            if kept is not None:
                top = max(priority.get(uid, 0) for uid in kept)
                plans.append(_Plan(node, row, kept, violations, top))
        if plans:
            best = _best(work, pod, plans, score)
            return {best.node: Victims(list(best.uids), best.pdb_violations)}
    return {}


def _known_victims(
    work: Snapshot, candidates: Mapping[str, Victims]
) -> dict[int, list[tuple[str, int, list[str]]]]:
    """Rule 0: (node, row, victims on it here) of each candidate node, by PDB violations."""
    by_pdb: dict[int, list[tuple[str, int, list[str]]]] = {}
    for node, proposed in candidates.items():
        try:
            row = work.index_of(node)
        except KeyError:
            continue
        on_node = work.pods_on(node)
        known = [uid for uid in dict.fromkeys(proposed.uids) if uid in on_node]
        if known:
            by_pdb.setdefault(proposed.pdb_violations, []).append((node, row, known))
    return by_pdb


def _fits(work: Snapshot, pod: PodRequest, row: int) -> bool:
    """``work.feasible(pod)[row]`` on that row alone (fit is node-local; 4x faster at 5,000)."""
    return bool(work.take(np.array([row])).feasible(pod)[0])


def _put_back(work: Snapshot, uid: str, placement: Placement) -> None:
    work.assign(uid, placement.pod, placement.node, devices=placement.devices, check=False)


def _score_at(work: Snapshot, pod: PodRequest, row: int, score: Scorer) -> float:
    work.node_version[row] = -next(_HYPOTHETICAL)
    return float(score(work, pod)[row])


def _minimal_victims(
    work: Snapshot,
    pod: PodRequest,
    row: int,
    known: list[str],
    priority: Mapping[str, int],
    score: Scorer,
) -> list[str] | None:
    """Rules 1 and 2 on one node; ``work`` is left exactly as it was found."""
    version = int(work.node_version[row])
    gone = {uid: work.release(uid) for uid in known}
    try:
        if not _fits(work, pod, row):
            return None
        for level in sorted({priority.get(uid, 0) for uid in known}, reverse=True):
            pending = [uid for uid in known if priority.get(uid, 0) == level]
            while pending:
                pending = [uid for uid in pending if _fits_without(work, pod, row, uid, gone)]
                if not pending:
                    break
                chosen = pending[0]
                if len(pending) > 1:
                    chosen = max(
                        pending, key=lambda uid: _score_with(work, pod, row, uid, gone, score)
                    )
                _put_back(work, chosen, gone.pop(chosen))
                pending.remove(chosen)
        return [uid for uid in known if uid in gone] or list(known)
    finally:
        for uid, placement in gone.items():
            _put_back(work, uid, placement)
        work.node_version[row] = version


def _fits_without(
    work: Snapshot, pod: PodRequest, row: int, uid: str, gone: Mapping[str, Placement]
) -> bool:
    """Whether the pod fits on ``row`` with victim ``uid`` put back."""
    _put_back(work, uid, gone[uid])
    try:
        return _fits(work, pod, row)
    finally:
        work.release(uid)


def _score_with(
    work: Snapshot,
    pod: PodRequest,
    row: int,
    uid: str,
    gone: Mapping[str, Placement],
    score: Scorer,
) -> float:
    """The pod's score on ``row`` with victim ``uid`` put back."""
    _put_back(work, uid, gone[uid])
    try:
        return _score_at(work, pod, row, score)
    finally:
        work.release(uid)


def _best(work: Snapshot, pod: PodRequest, plans: list[_Plan], score: Scorer) -> _Plan:
    """Rule 4 over plans of equal PDB violations; scores only the nodes tied before it."""
    first = min((p.top_priority, len(p.uids)) for p in plans)
    tied = sorted((p for p in plans if (p.top_priority, len(p.uids)) == first), key=_row)
    if len(tied) == 1:
        return tied[0]
    return max(tied, key=lambda plan: _score_after(work, pod, plan, score))


def _row(plan: _Plan) -> int:
    return plan.row


def _score_after(work: Snapshot, pod: PodRequest, plan: _Plan, score: Scorer) -> float:
    """The pod's score on the plan's node once its victims are gone."""
    version = int(work.node_version[plan.row])
    gone = {uid: work.release(uid) for uid in plan.uids}
    try:
        return _score_at(work, pod, plan.row, score)
    finally:
        for uid, placement in gone.items():
            _put_back(work, uid, placement)
        work.node_version[plan.row] = version


# --- wire (k8s.io/kube-scheduler/extender/v1, Go field names) ------------------------------------


def candidates_from_wire(
    args: Mapping[str, Any],
) -> tuple[dict[str, Victims], dict[str, int]]:
    """``(candidates, priority)`` from an ``ExtenderPreemptionArgs`` body.

    ``NodeNameToVictims`` (``nodeCacheCapable: false``) carries whole pods: UID from
    ``metadata.uid``, priority from ``spec.priority`` (absent: 0). Otherwise
    ``NodeNameToMetaVictims`` carries UIDs only, so every priority is 0 (the snapshot has no
    priorities). kube-scheduler sends the other field as ``null``. Raises ``ValueError``
    naming the bad field.
    """
    meta = args.get("NodeNameToMetaVictims")
    full = args.get("NodeNameToVictims")
    field, nodes = (
        ("NodeNameToVictims", full) if full is not None else ("NodeNameToMetaVictims", meta)
    )
    if nodes is None:
        return {}, {}
    if not isinstance(nodes, Mapping):
        raise ValueError(f"{field}: expected an object of node name -> victims")
    candidates: dict[str, Victims] = {}
    priority: dict[str, int] = {}
    for node, victims in nodes.items():
        where = f"{field}.{node}"
        if victims is None:
            continue
        if not isinstance(victims, Mapping):
            raise ValueError(f"{where}: expected an object with Pods and NumPDBViolations")
        violations = victims.get("NumPDBViolations")
        violations = 0 if violations is None else violations
        if not isinstance(violations, int) or isinstance(violations, bool):
            raise ValueError(f"{where}.NumPDBViolations: expected an integer")
        pods = victims.get("Pods")
        pods = [] if pods is None else pods
        if not isinstance(pods, list):
            raise ValueError(f"{where}.Pods: expected a list")
        uids: list[str] = []
        for i, item in enumerate(pods):
            if not isinstance(item, Mapping):
                raise ValueError(f"{where}.Pods[{i}]: expected an object")
            if field == "NodeNameToMetaVictims":
                uid = item.get("UID")
            else:
                uid = (item.get("metadata") or {}).get("uid")
                value = (item.get("spec") or {}).get("priority") or 0
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{where}.Pods[{i}].spec.priority: expected an integer")
                if isinstance(uid, str):
                    priority[uid] = value
            if not isinstance(uid, str) or not uid:
                raise ValueError(f"{where}.Pods[{i}]: missing UID")
            uids.append(uid)
        candidates[node] = Victims(uids, violations)
    return candidates, priority


def result_to_wire(result: Mapping[str, Victims]) -> dict[str, Any]:
    """The ``ExtenderPreemptionResult`` body for ``select_victims``'s answer."""
    return {
        "NodeNameToMetaVictims": {
            node: {
                "Pods": [{"UID": uid} for uid in victims.uids],
                "NumPDBViolations": victims.pdb_violations,
            }
            for node, victims in result.items()
        }
    }


# --- memory ------------------------------------------------------------------------------------


class Evictions:
    """The victims preempt chose per preemptor, until the cache sees them go."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache
        self._chosen: dict[str, tuple[str, tuple[str, ...], float]] = {}  # preemptor uid ->
        # (node, victim uids, remembered until)

    def note(self, preemptor: str, node: str, victims: Iterable[str]) -> None:
        """Preempt chose ``victims`` on ``node`` for ``preemptor``; kube-scheduler evicts them."""
        now = time.monotonic()
        with self.cache.lock:
            for uid in [u for u, (_, _, until) in self._chosen.items() if until < now]:
                del self._chosen[uid]
            self._chosen[preemptor] = (node, tuple(victims), now + EVICTION_SECONDS)

    def pending(self, preemptor: str, nodes: Collection[str]) -> bool:
        """Whether a node of ``nodes`` still has, in the cache, victims chosen for ``preemptor``.

        kube-scheduler offers the extender only nodes its own filters passed, and they count a
        victim until its deletion: a node offered with its victims still here means the cache
        is behind kube-scheduler's. Answering from it would fail the pod on the node its
        preemption freed, and kube-scheduler would preempt again, on another node.
        """
        with self.cache.lock:
            entry = self._chosen.get(preemptor)
            if entry is None:
                return False
            node, victims, _ = entry
            if all(self.cache.bound_node(uid) is None for uid in victims):
                del self._chosen[preemptor]
                return False
            return node in nodes
