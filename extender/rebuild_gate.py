"""The rebuild gate: everything local rebuild decides inside the extender, in one place.

Shaped like scheduler-plugins' coscheduling, whose plugin calls one ``core.Manager`` at each
extension point: the verbs ask ``RebuildGate`` at filter (``settling``, ``filter``) and at bind
(``claim``), and the gate keeps its state beside the ``ClusterCache``, which tells it about pods
(``extender.cache.PodObserver``) and carries its placeholder charges. The gate is also the
informer sink for the rebuild controller's Reservations.

Its words, each for one thing:

- a **hold** is a held Reservation (``kube.api.Reservation``): once its predecessor has left
  the cache, its room is charged to its node as a placeholder, so no other pod can take it,
  and only a successor of the same workload (``kube.api.successor_key``) may use it;
- a **promise**: filter chose a hold for one successor (``decideInFilter``); other successors
  do not count on that hold until the pod binds or PROMISE_SECONDS pass;
- a **nomination**: the successor fits its hold's node, but kube-scheduler did not send it
  (``percentageOfNodesToScore`` below 100 sends a window): the node becomes the pod's
  ``status.nominatedNodeName``, which kube-scheduler tries first on its next attempt;
- a **claim**: a successor bound on a hold's node, naming it in ``fulcrum.io/reservation``;
  the placeholder is released, as the successor itself is now charged there;
- **leaving**: an opted-in pod the controller will reserve for is terminating or gone while
  its Reservation, on another watch, has not arrived yet: its successor waits;
- **create-first nodes**: ``fulcrum.io/rebuild-order: create-first`` holds nothing; its
  successor goes beside a predecessor of another revision with no successor beside it yet.

Which pods the controller reserves for is ``kube.eligibility``'s one rule, so the gate never
waits for a Reservation the controller will not write. All state is guarded by the cache's lock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from extender.cache import ClusterCache, PendingPod
from extender.decide import Decider, FilterOutcome, retry
from kube import api, objects
from kube.eligibility import refused_by_controller, reserved_on_delete
from kube.objects import Raw
from kube.resources import pod_request
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

log = logging.getLogger(__name__)

LEAVING_GRACE = 30.0
SETTLE_WINDOW = 2.0  # a Reservation normally follows its predecessor's deletion within this
PROMISE_SECONDS = 30.0
RELEASED_REMEMBERED = 10_000  # pods let go without a Reservation, remembered


@dataclass
class Holds:
    """What the unclaimed Reservations of a successor's predecessors offer it."""

    usable: list[api.Reservation]  # active, and free or promised to it (that one first)
    contested: int  # active but promised to another successor
    lapsed: list[api.Reservation]  # expired, or on a deleted node: only their IPs still wait


@dataclass
class Leaving:
    """An opted-in pod the controller will reserve for, terminating or gone."""

    key: str  # its successor key
    node: str
    seen: float  # when the watch first showed it terminating
    gone: float | None = None  # when it left the apiserver
    # its room, held from when it goes until its Reservation shows
    request: PodRequest | None = None


@dataclass(frozen=True)
class BindClaim:
    """What local rebuild says about binding one pod to one node."""

    fits: bool  # the pod fits the node, the room of the hold it claims given to it
    hold: api.Reservation | None = None  # claimed: the hold there, or a lapsed one (its IP only)
    refusal: str = ""  # why the pod may not bind there at all


def _rid(reservation: api.Reservation) -> str:
    return f"{reservation.namespace}/{reservation.name}"


def _placeholder(rid: str) -> str:
    return f"reservation:{rid}"


def _leaving_placeholder(uid: str) -> str:
    return f"leaving:{uid}"


def _revision(labels: Mapping[str, str]) -> str:
    return labels.get("pod-template-hash") or labels.get("controller-revision-hash") or ""


class RebuildGate:
    """Holds, promises, claims, leaving predecessors and create-first nodes for local rebuild.

    Subscribes itself to ``cache`` (one gate per cache). It loads no rebuild hooks: a pod
    naming a well-spelt one is taken as the controller would take it, unless the controller
    said it refused the pod (``kube.eligibility``).
    """

    def __init__(self, cache: ClusterCache) -> None:
        self.cache, self.lock = cache, cache.lock
        self.reservations: dict[str, api.Reservation] = {}  # namespace/name ->
        self.bad_objects: dict[str, str] = {}  # key -> why it was ignored
        self._requests: dict[str, PodRequest] = {}  # reservation -> its predecessor's request
        self._by_predecessor: dict[str, str] = {}  # predecessor uid -> reservation
        self._claims: dict[str, str] = {}  # reservation -> successor uid
        self._promised: dict[str, tuple[str, float]] = {}  # reservation -> (pod uid, until)
        self._leaving: dict[str, Leaving] = {}  # opted-in pod uid ->
        self._opted_in: dict[str, tuple[str, str, str]] = {}  # bound uid -> (key, node, revision)
        self._released: dict[str, None] = {}  # uids let go without a Reservation (``released``)
        cache.observe(self)

    # --- the Reservation informer's sink -----------------------------------------------------
    def apply(self, kind: str, event: str, obj: Raw) -> None:
        if kind != api.RESERVATIONS:
            raise ValueError(f"the rebuild gate keeps reservations, not {kind}")
        self.cache.mark_event()
        if event == "DELETED":
            self.delete_reservation(objects.key(obj))
        else:
            self.upsert_reservation(obj)

    def replace(self, kind: str, listed: Iterable[Raw]) -> None:
        listed = list(listed)
        with self.lock:
            keep = {objects.key(o) for o in listed}
            for rid in [r for r in self.reservations if r not in keep]:
                self.delete_reservation(rid)
            for obj in listed:
                self.apply(kind, "ADDED", obj)

    def upsert_reservation(self, obj: Raw) -> None:
        try:
            reservation = api.Reservation.from_object(obj)
            request = pod_request(reservation.template)
        except (ValueError, KeyError, TypeError) as exc:
            where = objects.key(obj)
            self.bad_objects[f"reservation/{where}"] = str(exc)
            log.warning("ignoring reservation %s: %s", where, exc)
            return
        rid = _rid(reservation)
        with self.lock:
            self.reservations[rid] = reservation
            self._requests[rid] = request
            self._by_predecessor[reservation.predecessor_uid] = rid
            if self._leaving.pop(reservation.predecessor_uid, None) is not None:
                self.cache.release_placeholder(_leaving_placeholder(reservation.predecessor_uid))
            self._sync(rid)

    def delete_reservation(self, rid: str) -> None:
        with self.lock:
            reservation = self.reservations.pop(rid, None)
            self._requests.pop(rid, None)
            self._claims.pop(rid, None)
            self._promised.pop(rid, None)
            if reservation is not None:
                self._by_predecessor.pop(reservation.predecessor_uid, None)
            self.cache.release_placeholder(_placeholder(rid))

    def _sync(self, rid: str) -> None:
        """Charge hold ``rid``'s room to its node exactly while it must be held."""
        reservation = self.reservations.get(rid)
        uid = _placeholder(rid)
        holding = (
            reservation is not None
            and reservation.active(datetime.now(UTC))
            and rid not in self._claims
            and self.cache.bound_node(reservation.predecessor_uid) is None
        )
        charged = self.cache.bound_node(uid) is not None
        if holding and reservation is not None and not charged:
            self.cache.charge_placeholder(
                uid, self._requests[rid], reservation.node, reservation.devices
            )
        elif not holding and charged:
            self.cache.release_placeholder(uid)

    # --- the cache's PodObserver ---------------------------------------------------------------
    def pod_charged(self, uid: str) -> None:
        if uid in self._by_predecessor:  # the predecessor is back: it holds its room itself
            self._sync(self._by_predecessor[uid])

    def pod_released(self, uid: str) -> None:
        self._opted_in.pop(uid, None)
        leaving = self._leaving.get(uid)
        if leaving is not None:  # its Reservation may still be on its way: keep the successor
            leaving.gone = time.monotonic()  # waiting until it shows, or LEAVING_GRACE, and its
            if leaving.request is not None and uid not in self._by_predecessor:  # room with it
                self.cache.charge_placeholder(
                    _leaving_placeholder(uid), leaving.request, leaving.node, None
                )
        if uid in self._by_predecessor:  # its node's room is now held for its successor
            self._sync(self._by_predecessor[uid])

    def pod_bound(self, uid: str, node: str, pod: PendingPod) -> None:
        if pod.successor:
            self._opted_in[uid] = (pod.successor, node, _revision(pod.labels))
        claimed = pod.annotations.get(api.RESERVATION)
        if claimed:
            self._claim(f"{pod.namespace}/{claimed}", uid)

    def pod_terminating(self, pod: Raw, uid: str, node: str) -> None:
        """Held by the rebuild finalizer, the pod goes only once its Reservation is written."""
        if uid not in self._leaving and api.FINALIZER in objects.finalizers(pod):
            self.pod_deleted(pod, uid, node)

    def pod_deleted(self, pod: Raw, uid: str, node: str) -> None:
        """Also called with the pod's last state when it leaves, in case the watch never showed
        it terminating: pods the controller will not reserve for, or said it refused, are
        skipped."""
        annotations = objects.annotations(pod)
        if uid in self._leaving or uid in self._released or api.REBUILD not in annotations:
            return
        if not reserved_on_delete(pod, api.read_options(annotations)) or refused_by_controller(pod):
            return
        key = api.successor_key(pod)
        if key is not None:
            try:
                request: PodRequest | None = pod_request(pod)
            except ValueError:
                request = None
            with self.lock:
                self._leaving[uid] = Leaving(key, node, time.monotonic(), request=request)

    # --- what a successor may use -------------------------------------------------------------
    def holds(self, pending: PendingPod) -> Holds:
        """The unclaimed holds of ``pending``'s predecessors, by what they offer it."""
        holds = Holds([], 0, [])
        if pending.successor is None:
            return holds
        now, clock = datetime.now(UTC), time.monotonic()
        with self.lock:
            for rid, r in self.reservations.items():
                if r.key != pending.successor or rid in self._claims:
                    continue
                if not r.active(now) or not self.cache.has_node(r.node):
                    # expired since the last event (stop charging its room), or its node was
                    # deleted: the successor is placed normally and takes only the IP
                    self._sync(rid)
                    holds.lapsed.append(r)
                    continue
                promised, until = self._promised.get(rid, ("", 0.0))
                if promised == pending.uid:
                    holds.usable.insert(0, r)  # what filter chose for it comes first
                elif not promised or until < clock:
                    holds.usable.append(r)
                else:
                    holds.contested += 1
        return holds

    def leaving(self, pending: PendingPod, *, within: float = LEAVING_GRACE) -> list[str]:
        """Nodes of ``pending``'s predecessors that left (or are leaving) but are not reserved yet.

        The rebuild controller writes a Reservation before it lets an opted-in pod go, but the
        two arrive here on different watches; for LEAVING_GRACE seconds after the pod went we
        trust that its Reservation is on its way. ``within``: only predecessors seen starting to
        terminate, or gone, at most that many seconds ago (the controller may hold a pod
        longer than that; one still terminating after it is not waited for, in case the
        controller is down).
        """
        if pending.successor is None:
            return []
        now = time.monotonic()
        with self.lock:
            self.forget_stale_leaving(now)
            return [
                p.node
                for uid, p in self._leaving.items()
                if p.key == pending.successor
                and uid not in self._by_predecessor
                and now - (p.seen if p.gone is None else p.gone) <= within
            ]

    def released(self, uid: str) -> None:
        """Pod ``uid`` was let go without a Reservation (no rebuild controller ran,
        ``rebuild.release``): its successor waits for none."""
        with self.lock:
            self._released[uid] = None
            while len(self._released) > RELEASED_REMEMBERED:
                del self._released[next(iter(self._released))]
            if self._leaving.pop(uid, None) is not None:
                self.cache.release_placeholder(_leaving_placeholder(uid))

    def forget_stale_leaving(self, now: float) -> None:
        """Stop waiting for the Reservations of pods gone more than LEAVING_GRACE ago (their
        rooms are free again)."""
        with self.lock:
            stale = [u for u, p in self._leaving.items() if p.gone and now - p.gone > LEAVING_GRACE]
            for uid in stale:
                del self._leaving[uid]
                self.cache.release_placeholder(_leaving_placeholder(uid))

    def create_first_nodes(self, pending: PendingPod) -> list[str]:
        """``create-first``: nodes where a predecessor (same successor key, another revision)
        still runs with no pod of ``pending``'s revision beside it yet."""
        if pending.successor is None or pending.annotations.get(api.ORDER) != "create-first":
            return []
        revision = _revision(pending.labels)
        old: Counter[str] = Counter()
        new: Counter[str] = Counter()
        with self.lock:
            for key, node, rev in self._opted_in.values():
                if key == pending.successor:
                    (new if rev == revision else old)[node] += 1
        return [node for node, count in old.items() if count > new[node]]

    def settling(self, pending: PendingPod) -> bool:
        """Whether this successor's home is about to be known: the watch has not shown the pod
        yet, or a predecessor began terminating moments ago and its Reservation is on its way."""
        current = self.cache.pending(pending.uid) or pending
        if current.successor is None:
            return False
        if not current.watched:
            return True
        return not self.holds(current).usable and bool(self.leaving(current, within=SETTLE_WINDOW))

    def fits_in_hold(self, hold: api.Reservation, request: PodRequest) -> bool:
        """Whether ``request`` fits its hold's node once the held room is given to it."""
        return self.cache.fits(request, hold.node, lifting=_placeholder(_rid(hold)))

    # --- filter --------------------------------------------------------------------------------
    def filter(
        self,
        decider: Decider,
        snapshot: Snapshot,
        pod: PendingPod,
        names: Sequence[str],
        *,
        choose: bool = False,
    ) -> FilterOutcome | None:
        """Where local rebuild puts ``pod``, or None when it has no say (place it normally).

        A successor waits (``retry``, with the reason) while its home is not known yet: our
        watch has not shown it (we may have missed its predecessor's deletion), its predecessor
        is leaving unreserved, or every hold of its workload is promised to another successor.
        It passes only on its holds (``filter_on_holds``). A ``create-first`` pod passes only
        on its create-first nodes, where there is headroom.
        """
        if self._leaving:
            self.forget_stale_leaving(time.monotonic())
        if pod.successor is None:
            return None
        holds = self.holds(pod)
        if holds.usable:
            return self.filter_on_holds(decider, snapshot, pod, names, holds.usable, choose=choose)
        leaving = self.leaving(pod)
        reason = ""
        if not pod.watched:
            reason = "local rebuild: Fulcrum's cache has not caught up with this pod yet"
        elif leaving:
            reason = (
                f"waiting for the rebuild controller to reserve node {leaving[0]}, where this "
                "pod's predecessor is terminating"
            )
        elif holds.contested:
            reason = (
                "local rebuild: every hold of this pod's workload is promised to another "
                "successor being bound; waiting"
            )
        if reason:
            return retry(reason)
        beside_nodes = set(self.create_first_nodes(pod))
        if not beside_nodes:
            log.info("%s: nothing held for %s; placing it normally", pod.key, pod.successor)
            return None
        out = decider.filter(snapshot, pod.request, names)
        beside = [n for n in out.passed if n in beside_nodes] or out.passed  # no headroom there
        if choose and beside:
            beside = decider.filter(snapshot, pod.request, beside, choose=True).passed
        others = {n: "create-first: placed beside its predecessor" for n in out.passed}
        for n in beside:
            others.pop(n)
        return FilterOutcome(beside, out.failed, {**out.unresolvable, **others})

    def filter_on_holds(
        self,
        decider: Decider,
        snapshot: Snapshot,
        pod: PendingPod,
        names: Sequence[str],
        holds: Sequence[api.Reservation],
        *,
        choose: bool = False,
    ) -> FilterOutcome:
        """Only the nodes of ``holds`` (this pod's), where it fits.

        Every other node is unresolvable for it (so kube-scheduler never preempts on its
        behalf), with a reason naming the held node; when no held node can take it back, every
        node carries the reason why and when the fallback (if any) places it normally. With
        ``choose``, the one chosen is promised to this pod until it binds. A held node that
        would take it back but was not sent is nominated (``_nominate``).
        """
        asked = set(names)
        passed: list[str] = []
        unsent: list[api.Reservation] = []
        why: dict[str, str] = {}
        for hold in holds:
            if hold.node in self.cache.unschedulable:
                why[hold.node] = "it is cordoned"
            elif not self.fits_in_hold(hold, pod.request):
                why[hold.node] = (
                    f"its predecessor {hold.predecessor} is still there, terminating"
                    if self.cache.bound_node(hold.predecessor_uid) is not None
                    else "the pod no longer fits the room held for it"
                )
            elif hold.node not in asked:
                unsent.append(hold)
            else:
                passed.append(hold.node)
        passed = list(dict.fromkeys(passed))
        if not passed and unsent:
            return self._nominate(unsent[0], pod)
        if passed:
            if choose:
                rows = np.array([snapshot.index_of(n) for n in passed], dtype=np.intp)
                passed = [passed[int(np.argmax(decider.scores(snapshot, pod.request)[rows]))]]
                self._promise(next(h for h in holds if h.node == passed[0]), pod.uid)
            reason = f"held for local rebuild: the pod returns to node {passed[0]}"
            held = next(h for h in holds if h.node == passed[0])
            return FilterOutcome(
                passed,
                {},
                {n: reason for n in names if n not in passed},
                rule=f"local rebuild: node {held.node} held by Reservation {held.name}",
            )
        hold = holds[0]
        reason = f"waiting to rebuild on node {hold.node}: {why[hold.node]}; "
        if hold.expires_at is not None:  # ends by time: have kube-scheduler retry
            return retry(reason + f"normal placement from {hold.expires_at:%H:%M:%S} UTC")
        # ends when the node is uncordoned or room is freed there: events kube-scheduler watches
        reason += "fulcrum.io/rebuild-fallback is wait"
        return FilterOutcome([], {}, dict.fromkeys(names, reason))

    def _nominate(self, hold: api.Reservation, pod: PendingPod) -> FilterOutcome:
        """The successor fits its held node, but kube-scheduler did not send that node: with
        ``percentageOfNodesToScore`` below 100 it sends a window of the feasible nodes, which
        moves on with every pod, or its own view of the node lags ours. Have it nominate the
        node (``status.nominatedNodeName``): kube-scheduler tries a pod's nominated node first,
        alone, before any window. Retried after its back-off; the hold is promised meanwhile."""
        self._promise(hold, pod.uid)
        return retry(
            f"local rebuild: node {hold.node}, held for this pod, was not among the nodes "
            "kube-scheduler sent (percentageOfNodesToScore below 100, or its view of the "
            "node lags); nominated it, which kube-scheduler tries first",
            nominate=hold.node,
        )

    def _promise(self, hold: api.Reservation, uid: str) -> None:
        """The bind will claim ``hold``: until then no other successor may count on it."""
        with self.lock:
            self._promised[_rid(hold)] = (uid, time.monotonic() + PROMISE_SECONDS)

    # --- bind ----------------------------------------------------------------------------------
    def claim(self, pending: PendingPod, node: str) -> BindClaim:
        """Claim for ``pending`` its hold on ``node`` (or, if its Reservation lapsed, just that
        one's IP). Call with the cache's lock held; ``unclaim`` undoes it if the bind fails.

        Refused a node with no hold for it while its workload still has holds, leaving
        predecessors or promises elsewhere.
        """
        holds = self.holds(pending)
        hold = next((h for h in holds.usable if h.node == node), None)
        if hold is None and (holds.usable or holds.contested or self.leaving(pending)):
            return BindClaim(
                False,
                refusal=f"no hold for it on node {node} (its workload's holds are elsewhere, "
                "or claimed by or promised to other successors); the scheduler will retry",
            )
        if hold is not None:
            fits = self.fits_in_hold(hold, pending.request)
        else:
            fits = self.cache.fits(pending.request, node)
            hold = next(iter(holds.lapsed), None)
        if hold is not None:
            self._claim(_rid(hold), pending.uid)
        return BindClaim(fits, hold)

    def unclaim(self, hold: api.Reservation) -> None:
        """Undo ``claim``: the successor's bind failed; hold the room again."""
        with self.lock:
            self._claims.pop(_rid(hold), None)
            self._sync(_rid(hold))

    def _claim(self, rid: str, uid: str) -> None:
        """Pod ``uid`` took hold ``rid`` (it was bound naming it): release the placeholder."""
        with self.lock:
            self._claims[rid] = uid
            self._sync(rid)
