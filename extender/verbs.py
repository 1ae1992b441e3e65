"""The extender verbs (``k8s.io/kube-scheduler/extender/v1``) over Fulcrum's state, without HTTP.

``Verbs`` takes the wire models and returns the results; ``extender.app`` only moves them over
HTTP. A request that cannot be answered raises ``BadRequest`` with the HTTP status to answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from extender.bind import Binder, BindService
from extender.cache import ClusterCache, PendingPod
from extender.config import ExtenderSettings
from extender.decide import Decider, WeightedPolicy
from extender.events import Events, EventSink
from extender.preempt import Evictions, candidates_from_wire, result_to_wire, select_victims
from extender.rebuild_gate import RebuildGate
from extender.record import Records
from extender.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
)
from kube import objects
from kube.eligibility import bind_reason
from kube.names import InvalidName, check_object
from kube.resources import BIND, node_spec, pod_request
from policies.registry import Registry, default_registry
from scheduler.attributes import Reads
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

SETTLE_SECONDS = 0.5
# How long a pod charged at filter (kube-scheduler binds it: ``ExtenderSettings.bind_all``)
# stays charged if neither the watch shows it bound nor kube-scheduler asks about it again.
ASSUMED_SECONDS = 60.0


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _pod(args: ExtenderArgs | ExtenderPreemptionArgs, reads: Reads) -> PodRequest:
    try:
        return pod_request(args.Pod, reads)
    except ValueError as exc:
        raise BadRequest(422, f"Pod: {exc}") from exc


def _node_names(args: ExtenderArgs) -> list[str]:
    if args.NodeNames is not None:
        return args.NodeNames
    if args.Nodes is None:
        raise BadRequest(422, "Nodes: either Nodes or NodeNames must be set")
    names = []
    for i, node in enumerate(args.Nodes.items):
        name = objects.meta(node).get("name")
        if not isinstance(name, str):
            raise BadRequest(422, f"Nodes.items[{i}].metadata.name: missing")
        names.append(name)
    return names


def _snapshot_of(args: ExtenderArgs, reads: Reads) -> Snapshot:
    """A throw-away snapshot of the request's Nodes, for an extender without a cluster cache."""
    snapshot = Snapshot(capacity=len(args.Nodes.items) if args.Nodes else 1)
    for i, node in enumerate(args.Nodes.items if args.Nodes else []):
        try:
            snapshot.add_node(node["metadata"]["name"], **node_spec(node, reads))
        except (ValueError, KeyError) as exc:
            raise BadRequest(422, f"Nodes.items[{i}]: {exc}") from exc
    return snapshot


def _nowhere(args: ExtenderArgs, names: list[str], reason: str) -> ExtenderFilterResult:
    """Every node unresolvable for ``reason``: a pod whose own request is malformed.

    As a 200, so kube-scheduler's FailedScheduling event quotes the reason ("3 Pod: annotation
    fulcrum.io/gpu-milli='abc': use an integer 1..1000") and the pod waits for its own update,
    not for a back-off retry of an HTTP error that names nothing.
    """
    unresolvable = dict.fromkeys(names, reason)
    if args.NodeNames is not None:
        return ExtenderFilterResult(NodeNames=[], FailedAndUnresolvableNodes=unresolvable)
    assert args.Nodes is not None
    return ExtenderFilterResult(
        Nodes=args.Nodes.model_copy(update={"items": []}), FailedAndUnresolvableNodes=unresolvable
    )


async def settle(busy: Callable[[], bool]) -> None:
    """Give the watches a moment to show what kube-scheduler already knows, while ``busy()``.

    The scheduler may ask about a pod a few milliseconds before our watches show what decides
    it: a local-rebuild successor's pod, its predecessor's deletion or the Reservation
    (``RebuildGate.settling``), or the deletion of the victims a preemptor evicted
    (``Evictions.pending``). Answering at once would cost a successor at least
    kube-scheduler's 1 s back-off and a preemptor a second round of victims. Waits at most
    SETTLE_SECONDS, without blocking other requests; a controller that is slow or down is not
    waited for.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


class Verbs:
    """The four verbs, each taking its wire model and returning its result.

    ``cache``: the informer cache (None: filter and prioritize only, on the request's Nodes);
    ``binder``: the apiserver client for bind; ``gate``: local rebuild, observing ``cache``
    (None: off).
    """

    def __init__(
        self,
        settings: ExtenderSettings,
        cache: ClusterCache | None = None,
        binder: Binder | None = None,
        registry: Registry | None = None,
        *,
        gate: RebuildGate | None = None,
        events: EventSink | None = None,
    ) -> None:
        if gate is not None and gate.cache is not cache:
            raise ValueError("the rebuild gate must observe the verbs' cache")
        self.settings, self.cache, self.gate = settings, cache, gate
        self.decider = Decider(
            cache,
            registry or default_registry(),
            [WeightedPolicy(p.policy, p.weight) for p in settings.prioritize],
            settings.workload_prior.prior(),
            record=settings.decision_record,
        )
        if cache is not None and (cache.reads | self.decider.reads) != cache.reads:
            raise ValueError(
                f"the cache keeps {cache.reads.describe()}, the policies read "
                f"{self.decider.reads.describe()}: ClusterCache(reads=declared_reads(...))"
            )
        self.binds = (
            BindService(cache, binder, self.decider.devices, gate) if cache and binder else None
        )
        self.evictions = Evictions(cache) if cache else None
        self.records = Records()  # why each pod's node was chosen, until its bind
        self.events = Events(events)
        # pods charged to the node filter chose, which kube-scheduler binds: uid -> deadline
        self._assumed: OrderedDict[str, float] = OrderedDict()

    @contextmanager
    def _view(self, args: ExtenderArgs) -> Iterator[Snapshot]:
        if self.cache is None:
            if args.NodeNames is not None:
                raise BadRequest(
                    400,
                    "NodeNames given but this extender has no cluster cache: run it with "
                    "--kubeconfig, or set nodeCacheCapable: false so the scheduler sends Nodes",
                )
            yield _snapshot_of(args, self.decider.reads)
            return
        with self.cache.lock:
            yield self.cache.snapshot

    def _settling(self, pod: PendingPod, names: list[str]) -> bool:
        """Whether the watches are about to show what decides this pod's filter."""
        if self.gate is not None and self.gate.settling(pod):
            return True
        return self.evictions is not None and self.evictions.pending(pod.uid, names)

    async def filter(self, args: ExtenderArgs) -> ExtenderFilterResult:
        """Nodes that fit (with decideInFilter, only the one Fulcrum picks); a local-rebuild
        wait is the result's Error, which kube-scheduler retries after its back-off."""
        names = _node_names(args)
        try:
            pod = pod_request(args.Pod, self.decider.reads)
        except ValueError as exc:  # kube-scheduler shows node reasons, not an Error's text
            return _nowhere(args, names, f"Pod: {exc}")
        pending = None
        if self.cache is not None:
            self._unassume(objects.uid(args.Pod))
            self.cache.unnominate(objects.uid(args.Pod))  # decided anew, over the names sent
            noted = self.cache.note_pending(args.Pod, pod)
            unmarked = self._unmarked(noted) if self.binds is not None else ""
            if unmarked:
                return _nowhere(args, names, unmarked)
            self.decider.arrived(noted.uid, pod)
            await settle(lambda: self._settling(noted, names))
            pending = self.cache.pending(noted.uid) or noted
        choose = self.settings.decide_in_filter
        with self._view(args) as snapshot:
            out = None
            if self.gate is not None and pending is not None:
                out = self.gate.filter(self.decider, snapshot, pending, names, choose=choose)
            if out is None:
                # the record is written only on the pods Fulcrum binds
                record = (
                    self.binds is not None and pending is not None and self.fulcrum_binds(pending)
                )
                out = self.decider.filter(snapshot, pod, names, choose=choose, record=record)
        if out.retry:
            nominated = objects.pod_status(args.Pod).get("nominatedNodeName")
            if pending is not None and out.nominate and out.nominate != nominated:
                namespace, _, name = pending.key.partition("/")
                self.events.nominate(namespace, name, pending.uid, out.nominate)
            return ExtenderFilterResult(Error=out.retry)
        if pending is not None and self.binds is not None:
            if not self.fulcrum_binds(pending):
                if choose and out.passed:
                    self._assume(pending.uid, out.passed[0])
            else:
                if choose and out.passed and pending.successor is None and self.cache is not None:
                    # kube-scheduler binds asynchronously: the next pod's filter may come before
                    # this pod's bind, and must see it where it goes (its room, its owner's count)
                    self.cache.nominate(pending.uid, out.passed[0])
                if self.settings.decision_record:
                    self.records.note(pending.uid, out.record(self.decider.label, len(names)))
        if args.NodeNames is not None:
            return ExtenderFilterResult(
                NodeNames=out.passed,
                FailedNodes=out.failed,
                FailedAndUnresolvableNodes=out.unresolvable,
            )
        assert args.Nodes is not None
        keep = set(out.passed)
        items = [n for n in args.Nodes.items if n["metadata"]["name"] in keep]
        return ExtenderFilterResult(
            Nodes=args.Nodes.model_copy(update={"items": items}),
            FailedNodes=out.failed,
            FailedAndUnresolvableNodes=out.unresolvable,
        )

    def fulcrum_binds(self, pod: PendingPod) -> bool:
        """Whether kube-scheduler sends this pod to our bind (else it binds the pod itself)."""
        return self.settings.bind_all or pod.marked

    def _unmarked(self, pod: PendingPod) -> str:
        """Why this pod cannot be placed: only our bind can bind it, but kube-scheduler would
        not call it; or ""."""
        reason = "" if self.fulcrum_binds(pod) else bind_reason(pod.annotations, pod.request)
        if not reason:
            return ""
        return (
            f"Pod: {reason}, so Fulcrum must bind it, but it does not carry the resource {BIND}: "
            f"install Fulcrum's admission webhook (it marks such pods), or give a container "
            f"{BIND}: 1 in its requests and limits"
        )

    def _assume(self, uid: str, node: str) -> None:
        """Charge a pod kube-scheduler binds to the node filter chose, so that the next pod's
        filter sees it before the watch does; given up after ASSUMED_SECONDS."""
        assert self.cache is not None
        if self.cache.assume(uid, node):
            self._assumed[uid] = time.monotonic() + ASSUMED_SECONDS

    def _unassume(self, uid: str) -> None:
        """Undo ``_assume`` of a pod asked about again (it was not bound there), and of pods
        charged too long ago (no-op for those the watch has shown bound)."""
        if not self._assumed:
            return
        assert self.cache is not None
        if self._assumed.pop(uid, None) is not None:
            self.cache.unassume(uid)
        now = time.monotonic()
        while self._assumed and next(iter(self._assumed.values())) < now:
            self.cache.unassume(self._assumed.popitem(last=False)[0])

    def prioritize(self, args: ExtenderArgs) -> list[tuple[str, int]]:
        """(host, 0..10 score) per node, in the request's order (a HostPriorityList)."""
        pod, names = _pod(args, self.decider.reads), _node_names(args)
        with self._view(args) as snapshot:
            scores, internal = self.decider.prioritize(snapshot, pod, names)
        if self.settings.decision_record:
            self.records.scored(objects.uid(args.Pod), names, internal)
        return scores

    async def bind(self, args: ExtenderBindingArgs) -> ExtenderBindingResult:
        if self.binds is None:
            raise BadRequest(
                400,
                "bind needs a cluster: run the extender with --kubeconfig, or remove "
                "bindVerb from the scheduler's extender configuration",
            )
        try:
            check_object(args.PodNamespace, args.PodName)
        except InvalidName as exc:
            return ExtenderBindingResult(Error=f"bind refused: {exc}")
        self._unassume(args.PodUID)  # charged at filter, yet sent here: bind it all the same
        refusal = self._bind_refusal(args)
        if refusal:
            return ExtenderBindingResult(Error=refusal)
        # Reserve now, before the next request is served; then await the apiserver.
        ticket = self.binds.reserve(args.PodNamespace, args.PodName, args.PodUID, args.Node)
        if not ticket.error and not ticket.done:  # the record rides on the binding
            record = self.records.take(args.PodUID, args.Node)
            ticket = replace(ticket, annotations={**ticket.annotations, **record})
        error = await self.binds.commit(ticket)
        if error:
            self.events.warn(args.PodNamespace, args.PodName, args.PodUID, "BindRefused", error)
        return ExtenderBindingResult(Error=error)

    def _bind_refusal(self, args: ExtenderBindingArgs) -> str:
        """Why bind will not serve this pod, or "": a pod the cache does not know (pending, or
        already bound), or one of another scheduler."""
        assert self.cache is not None  # self.binds needs one
        pod = f"{args.PodNamespace}/{args.PodName}"
        pending = self.cache.pending(args.PodUID)
        if pending is None:
            if self.cache.bound_node(args.PodUID) is not None:
                return ""  # bound: reserve says whether to this node (done) or another
            return (
                f"bind refused: pod {pod} (uid {args.PodUID}) is not a pending pod Fulcrum's "
                "cache knows; the scheduler will retry once the pod watch has delivered it"
            )
        if pending.key != pod:
            return f"bind refused: uid {args.PodUID} is pod {pending.key}, not {pod}"
        wanted = self.settings.scheduler_name
        if pending.scheduler != wanted:
            return (
                f"bind refused: pod {pod} has schedulerName {pending.scheduler or '(none)'!r}, "
                f"and this extender binds only pods of {wanted!r} (schedulerName in its "
                "configuration)"
            )
        return ""

    def preempt(self, args: ExtenderPreemptionArgs) -> dict[str, Any]:
        """An ``ExtenderPreemptionResult`` body: one node and its victims (``select_victims``)."""
        if self.cache is None or self.evictions is None:
            raise BadRequest(
                400,
                "preempt needs a cluster cache: run the extender with --kubeconfig, or remove "
                "preemptVerb from the scheduler's extender configuration",
            )
        pod = _pod(args, self.decider.reads)
        try:
            candidates, priority = candidates_from_wire(args.model_dump())
        except ValueError as exc:
            raise BadRequest(422, str(exc)) from exc
        with self.cache.lock:
            chosen = select_victims(
                self.cache.snapshot, pod, candidates, priority, self.decider.scores
            )
        preemptor = objects.uid(args.Pod)
        for node, victims in chosen.items() if preemptor else ():
            self.evictions.note(preemptor, node, victims.uids)
        return result_to_wire(chosen)
