"""Filter and prioritize one pod over named nodes, with the placement core.

Fit is the snapshot's vectorised NodeResourcesFit plus GPU devices. A node whose whole
allocatable cannot hold the pod (or has no GPU of an acceptable model) is *unresolvable*: no
cluster event short of changing the node helps. Scores come from the configured policies on the
internal 0..100 scale, weighted, then mapped to the extender's 0..10 in ``to_extender_scores``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from numpy.typing import NDArray

from extender.cache import ClusterCache
from extender.record import Decision, counted, ranked
from extender.wire import MAX_EXTENDER_SCORE
from policies.registry import Registry
from scheduler.attributes import NOTHING, Reads, reads_of
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import PodRequest
from scheduler.policy import Policy, PolicyContext, score_problem
from scheduler.reasons import explain, explain_counts
from scheduler.score_cache import ScoreCache
from scheduler.snapshot import CPU_COL, MEMORY_COL, Snapshot
from scheduler.workload_model import LiveWorkload, WorkloadPrior, node_cpu_per_gpu

log = logging.getLogger(__name__)

WORKLOAD_REFRESH_SECONDS = 30.0
FAILURE_LOG_SECONDS = 60.0  # a failing policy is logged once a minute, counted every time
SEEN_REMEMBERED = 100_000
CORDONED = "node is cordoned (spec.unschedulable)"


def to_extender_scores(scores: NDArray[np.float64]) -> list[int]:
    """Map internal 0..100 scores of the candidate nodes to the extender's 0..10.

    Min-max over the candidates: the best gets 10 and the worst 0, so Fulcrum's ranking is not
    flattened into one or two of eleven buckets; equal scores all get 10. The one place where
    the two scales meet.
    """
    if scores.size == 0:
        return []
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-9:
        return [MAX_EXTENDER_SCORE] * int(scores.size)
    scaled = np.rint((scores - low) * MAX_EXTENDER_SCORE / (high - low))
    return [int(v) for v in scaled]


@dataclass(frozen=True)
class WeightedPolicy:
    name: str
    weight: float


def declared_reads(registry: Registry, names: Iterable[str]) -> Reads:
    """What the policies ``names`` read beyond resources (``scheduler.attributes``): what the
    cluster cache must keep for them."""
    reads = NOTHING
    for name in names:
        reads |= reads_of(registry.create(name, PolicyContext()))
    return reads


@dataclass(frozen=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    # A wait that only time or Fulcrum's own objects end (a Reservation on its way, a promise,
    # an expiry: ``extender.rebuild_gate``): answered as the filter's Error, which
    # kube-scheduler retries after its back-off (1 s doubling to 10 s). Rejected nodes instead
    # would park the pod until a cluster event kube-scheduler watches, up to 5 minutes on a
    # quiet cluster.
    retry: str = ""
    # With ``retry``: the node kube-scheduler should try first, alone, on the next attempt (the
    # pod's ``status.nominatedNodeName``), as local rebuild's held node was not sent
    nominate: str = ""
    # For the decision record (``extender.record``), when ``passed`` holds only the choice:
    feasible: int = -1  # how many nodes fit
    ranked: tuple[tuple[str, float], ...] = ()  # the best-scored of them
    reasons: tuple[tuple[str, int], ...] = ()  # why the others did not, counted
    rule: str = ""  # what decided instead of the scores (a local-rebuild hold)

    def record(self, policy: str, nodes: int) -> Decision:
        """The decision record of this outcome, for a pod asked about on ``nodes`` nodes."""
        failures = Counter([*self.failed.values(), *self.unresolvable.values()])
        reasons = self.reasons or counted(failures.items())
        feasible = self.feasible if self.feasible >= 0 else len(self.passed)
        return Decision(policy, nodes, feasible, self.ranked, reasons, self.rule)


def retry(reason: str, *, nominate: str = "") -> FilterOutcome:
    return FilterOutcome([], {}, {}, retry=reason, nominate=nominate)


def fullest(snapshot: Snapshot, tied: NDArray[np.intp]) -> int:
    """Of equally scored rows, the one whose cpu and memory are the most allocated (best fit);
    ties to the lowest row.

    Scores often tie (nodes without GPUs look alike to fragmentation), and kube-scheduler may
    send only part of the cluster (``percentageOfNodesToScore`` below 100, a window that moves
    on with every pod): the lowest row of each window would open a new node for nearly every
    window, where the fullest one keeps filling the nodes already in use.
    """
    if tied.size == 1:
        return int(tied[0])
    tied = np.sort(tied)
    cols = [CPU_COL, MEMORY_COL]
    allocatable = np.maximum(snapshot.allocatable[tied][:, cols], 1)
    used = 1.0 - snapshot.free[tied][:, cols] / allocatable
    return int(tied[np.argmax(used.sum(axis=1))])


class Decider:
    """Fit and score against a cache's snapshot, with policies built for its live workload."""

    def __init__(
        self,
        cache: ClusterCache | None,
        registry: Registry,
        policies: Sequence[WeightedPolicy],
        prior: WorkloadPrior | None = None,
        *,
        record: bool = True,
    ) -> None:
        self.cache, self.registry, self.weights = cache, registry, tuple(policies)
        self.label = "+".join(
            w.name if len(policies) == 1 else f"{w.name}:{w.weight:g}" for w in policies
        )  # the policies, as the decision record names them
        self.record = record  # count why nodes failed, for the decision record, even when choosing
        self.live = LiveWorkload(prior)
        self._seen: OrderedDict[str, None] = OrderedDict()  # pods counted as arrivals
        self._built: tuple[float, int, list[tuple[Policy, float]]] | None = None
        self._score_caches: list[ScoreCache] = []
        self._row_index: tuple[int, Snapshot | None, dict[str, int]] = (-1, None, {})
        self.reads = declared_reads(registry, (w.name for w in self.weights))
        # a policy that raised or returned bad scores: its name and what was wrong
        self.on_failure: Callable[[str, str], None] = lambda policy, problem: None
        self._failure_logged: dict[str, float] = {}

    def arrived(self, uid: str, pod: PodRequest) -> None:
        """kube-scheduler asks about pod ``uid``: the first time, it counts as an arrival."""
        if not uid or uid in self._seen:
            return
        self._seen[uid] = None
        if len(self._seen) > SEEN_REMEMBERED:
            self._seen.popitem(last=False)
        self.live.arrived(pod, time.monotonic())

    def _workload(self) -> TargetWorkload | None:
        """The live model (``scheduler.workload_model``) over the pods in the cache now."""
        if self.cache is None:
            return None
        snapshot = self.cache.snapshot
        shapes = [p.pod for p in snapshot.pods().values()]
        shapes += [p.request for p in self.cache.pending_pods()]
        cpu_per_gpu = node_cpu_per_gpu(snapshot)
        return self.live.target(shapes, time.monotonic(), node_cpu_per_gpu=cpu_per_gpu)

    def policies(self) -> list[tuple[Policy, float]]:
        """The configured policies, rebuilt for the current workload every 30 s."""
        now = time.monotonic()
        changes = self.cache.changes if self.cache else 0
        if self._built is None or (
            now - self._built[0] > WORKLOAD_REFRESH_SECONDS and changes != self._built[1]
        ):
            context = PolicyContext(workload=self._workload())
            built = [(self.registry.create(w.name, context), w.weight) for w in self.weights]
            self._built = (now, changes, built)
            self._score_caches = [ScoreCache() for _ in built]
        return self._built[2]

    def filter(
        self,
        snapshot: Snapshot,
        pod: PodRequest,
        names: Sequence[str],
        *,
        choose: bool = False,
        record: bool = True,
    ) -> FilterOutcome:
        """Nodes that fit, with a reason for each that does not.

        With ``choose``, only the best-scoring node that fits passes (ties: the fullest, so
        equal nodes fill best-fit): kube-scheduler then skips scoring altogether. The
        others are left out without reasons, which kube-scheduler needs only for a pod that
        cannot be placed (its FailedScheduling event, preemption). ``record``: the outcome
        carries the decision record's figures (the best-ranked, and with the configured
        ``record`` why the others failed); False for a pod whose record nobody writes.
        """
        rows, missing = self._rows(snapshot, names)
        fit = self._fit(snapshot, pod)
        index = rows[rows >= 0]
        cordoned = np.zeros(index.size, dtype=np.bool_)
        unschedulable = self.cache.unschedulable if self.cache else set()
        if unschedulable:
            lookup = self._lookup(snapshot)
            cordoned = np.isin(index, [lookup[n] for n in unschedulable if n in lookup])
        ok = fit[index] & ~cordoned
        good = np.flatnonzero(ok).tolist()
        if choose and good:  # kube-scheduler needs reasons only when no node passes
            candidates = index[good]
            scores = self.scores(snapshot, pod)[candidates]
            best = fullest(snapshot, candidates[scores == scores.max()])
            if not record:
                return FilterOutcome([snapshot.names[int(best)]], {}, {}, feasible=len(good))
            why: list[tuple[str, int]] = []
            if self.record:
                unfit = index[~fit[index]]
                why = explain_counts(snapshot, unfit, pod) if unfit.size else []
                why.append((CORDONED, int(cordoned.sum())))
            return FilterOutcome(
                [snapshot.names[int(best)]],
                {},
                {},
                feasible=len(good),
                ranked=ranked(snapshot.names, candidates, scores, best),
                reasons=counted(why),
            )
        out = FilterOutcome([], dict.fromkeys(missing, "node not in Fulcrum's cache yet"), {})
        known = [name for name, row in zip(names, rows, strict=True) if row >= 0]
        for i in np.flatnonzero(cordoned).tolist():
            out.failed[known[i]] = CORDONED
        bad = np.flatnonzero(~ok & ~cordoned)
        if bad.size:
            reasons, hopeless = explain(snapshot, index[bad], pod)
            for i, reason, unresolvable in zip(
                bad.tolist(), reasons, hopeless.tolist(), strict=True
            ):
                (out.unresolvable if unresolvable else out.failed)[known[i]] = reason
        out.passed.extend(known[i] for i in good)
        return out

    def pick(self, snapshot: Snapshot, pod: PodRequest) -> str:
        """The node ``filter`` with ``choose`` would pass if sent every node, or "" if none
        fits: what Fulcrum nominates (``extender.nominate``)."""
        ok = self._fit(snapshot, pod)
        if self.cache is not None and self.cache.unschedulable:
            lookup = self._lookup(snapshot)
            ok[[lookup[n] for n in self.cache.unschedulable if n in lookup]] = False
        candidates = np.flatnonzero(ok)
        if not candidates.size:
            return ""
        scores = self.scores(snapshot, pod)[candidates]
        return snapshot.names[fullest(snapshot, candidates[scores == scores.max()])]

    def _fit(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
        """Every node's fit: resources and devices, and each policy's own filter."""
        fit = snapshot.feasible(pod)
        for policy, _ in self.policies():
            fit = fit & self._vetted_filter(policy, snapshot, pod)
        return fit

    def scores(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        """The configured policies' weighted mean score of every node, 0..100."""
        total = np.zeros(snapshot.num_nodes, dtype=np.float64)
        weight_sum = 0.0
        policies = self.policies()
        for (policy, weight), cache in zip(policies, self._score_caches, strict=True):
            # a throw-away snapshot (no cluster cache) must not poison the per-shape caches
            try:
                scores = (
                    cache.scores(policy, snapshot, pod)
                    if self.cache
                    else policy.score(snapshot, pod)
                )
                problem = score_problem(scores, snapshot.num_nodes)
            except Exception as exc:  # a plugin's bug must not take the extender down
                problem = f"score raised {type(exc).__name__}: {exc}"
            if problem:  # the other policies decide this pod
                self._failed(policy, problem)
                continue
            total += weight * scores
            weight_sum += weight
        return total / weight_sum if weight_sum else total

    def _vetted_filter(
        self, policy: Policy, snapshot: Snapshot, pod: PodRequest
    ) -> NDArray[np.bool_]:
        """``policy.filter``, or every node if it raised or returned something else than one
        bool per node."""
        try:
            keep = policy.filter(snapshot, pod)
            if (
                isinstance(keep, np.ndarray)
                and keep.shape == (snapshot.num_nodes,)
                and keep.dtype == bool
            ):
                return keep
            problem = f"filter must return one bool per node ({snapshot.num_nodes},)"
        except Exception as exc:
            problem = f"filter raised {type(exc).__name__}: {exc}"
        self._failed(policy, problem)
        return np.ones(snapshot.num_nodes, dtype=np.bool_)

    def _failed(self, policy: Policy, problem: str) -> None:
        name = getattr(policy, "name", type(policy).__name__)
        self.on_failure(name, problem)
        now = time.monotonic()
        if now - self._failure_logged.get(name, -FAILURE_LOG_SECONDS) >= FAILURE_LOG_SECONDS:
            self._failure_logged[name] = now
            log.error(
                "policy %s: %s; its scores are left out (the other policies decide) until it "
                "is fixed: run policies.conformance.check_policy on it "
                "(fulcrum_policy_failures_total counts each failure)",
                name,
                problem,
            )

    def prioritize(
        self, snapshot: Snapshot, pod: PodRequest, names: Sequence[str]
    ) -> tuple[list[tuple[str, int]], NDArray[np.float64]]:
        """(host, 0..10 score) per node in ``names``' order, and the 0..100 scores (0 for a
        node not in the cache)."""
        rows, _ = self._rows(snapshot, names)
        known = rows >= 0
        scores = np.zeros(len(names), dtype=np.int64)
        internal = np.zeros(len(names), dtype=np.float64)
        internal[known] = self.scores(snapshot, pod)[rows[known]]
        scores[known] = to_extender_scores(internal[known])
        return list(zip(names, scores.tolist(), strict=True)), internal

    def devices(self, snapshot: Snapshot, pod: PodRequest, node: str) -> tuple[int, ...]:
        """GPU devices for ``pod`` on ``node``, chosen by the first configured policy."""
        if not pod.gpu_count:
            return ()
        policy = self.policies()[0][0]
        return policy.select_devices(snapshot, snapshot.index_of(node), pod)

    def _rows(self, snapshot: Snapshot, names: Sequence[str]) -> tuple[NDArray[np.intp], list[str]]:
        """Snapshot rows of ``names`` (-1 for unknown names) and the unknown names."""
        lookup = self._lookup(snapshot)
        rows = np.fromiter(map(lookup.get, names, repeat(-1)), dtype=np.intp, count=len(names))
        missing = [names[i] for i in np.flatnonzero(rows < 0).tolist()]
        return rows, missing

    def _lookup(self, snapshot: Snapshot) -> dict[str, int]:
        """Node name -> snapshot row, rebuilt when the snapshot's rows change."""
        if self._row_index[0] != snapshot.layout or self._row_index[1] is not snapshot:
            self._row_index = (
                snapshot.layout,
                snapshot,
                {n: i for i, n in enumerate(snapshot.names)},
            )
        return self._row_index[2]
