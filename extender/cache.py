"""An informer-backed view of nodes and the pods on them.

The state (``ClusterCache``) is plain data updated by events, so it is tested without a cluster.
``kube.informer.Informer`` feeds it from the apiserver (nodes, pods, and the rebuild controller's
Reservations). Scheduling requests only read the cache: they cost zero apiserver calls.

A held Reservation (``kube.api``) is charged to its node as a placeholder pod once its
predecessor has gone, so no other pod can take the room; its successor sees it through
``holds`` and may use it (``fits_in_hold``); a bound pod naming it in its
``fulcrum.io/reservation`` annotation has claimed it, which frees the placeholder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kube.resources import assigned_devices, node_spec, pod_request
from kube import api as rebuild
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")
LEAVING_GRACE = 30.0
SETTLE_WINDOW = 2.0  # a Reservation normally follows its predecessor's deletion within this
PROMISE_SECONDS = 30.0
EVICTION_SECONDS = 300.0  # how long the victims chosen for a preemptor are remembered


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass(frozen=True)
class PendingPod:
    key: str  # namespace/name
    request: PodRequest
    uid: str = ""
    successor: str | None = None  # kube.api.successor_key of a pod opted in to local rebuild
    watched: bool = False  # the pod watch delivered it, so also every event before its creation
    # labels and annotations, kept only for pods that use local rebuild or an IP pool
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Rooms:
    """What the unclaimed reservations of a successor's predecessors offer it."""

    held: list[rebuild.Reservation]  # active, and free or promised to it (that one first)
    contested: int  # active but promised to another successor
    lapsed: list[rebuild.Reservation]  # expired: only their IPs still wait


@dataclass
class Leaving:
    """An opted-in pod held by the rebuild finalizer while it terminates."""

    key: str  # its successor key
    node: str
    seen: float  # when the watch first showed it terminating
    gone: float | None = None  # when it left the apiserver


def pending_pod(pod: Mapping[str, Any], request: PodRequest) -> PendingPod:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    uid = str(meta.get("uid", ""))
    if rebuild.REBUILD not in annotations and rebuild.IP_POOL not in annotations:
        return PendingPod(_pod_key(pod), request, uid)
    successor = rebuild.successor_key(pod) if rebuild.REBUILD in annotations else None
    return PendingPod(
        _pod_key(pod),
        request,
        uid,
        successor=successor,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(annotations),
    )


def _revision(labels: Mapping[str, str]) -> str:
    return labels.get("pod-template-hash") or labels.get("controller-revision-hash") or ""


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _hold_uid(reservation_id: str) -> str:
    return f"reservation:{reservation_id}"


class ClusterCache:
    """Nodes and pods as a ``scheduler.Snapshot`` (pods keyed by UID), plus pending pods.

    Thread-safe: informer threads write, request handlers read. Hold ``lock`` while reading
    ``snapshot`` across several calls (scoring, then choosing devices).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.snapshot = Snapshot()
        self.unschedulable: set[str] = set()
        self._node_specs: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, PendingPod] = {}
        self._assumed: dict[str, PendingPod] = {}  # pods we bound, until the watch agrees
        self._orphans: dict[str, dict[str, tuple[PodRequest, tuple[int, ...] | None]]] = {}
        self.bad_objects: dict[str, str] = {}  # key -> why it was ignored
        self.reservations: dict[str, rebuild.Reservation] = {}  # namespace/name ->
        # terminating opted-in pod uid -> (successor key, node, when it left the apiserver)
        self._leaving: dict[str, Leaving] = {}
        self._homes: dict[str, tuple[str, str, str]] = {}  # opted-in uid -> (key, node, revision)
        self._requests: dict[str, PodRequest] = {}  # reservation -> its predecessor's request
        self._claims: dict[str, str] = {}  # reservation namespace/name -> successor uid
        self._promised: dict[str, tuple[str, float]] = {}  # reservation -> (pod uid, until)
        self._by_predecessor: dict[str, str] = {}  # predecessor uid -> reservation namespace/name
        # preemptor uid -> (node, victim uids, remembered until): what preempt chose for it
        self._evicting: dict[str, tuple[str, tuple[str, ...], float]] = {}
        self.synced: dict[str, threading.Event] = {}  # kind -> set once its informer listed
        self.last_event = time.monotonic()
        self.changes = 0

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.synced.values())

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def _has(self, node: str) -> bool:
        try:
            self.snapshot.index_of(node)
        except KeyError:
            return False
        return True

    # --- nodes -----------------------------------------------------------------------------
    def upsert_node(self, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        try:
            spec = node_spec(node)
        except ValueError as exc:
            self.bad_objects[f"node/{name}"] = str(exc)
            log.warning("ignoring node %s: %s", name, exc)
            return
        with self.lock:
            if (node.get("spec") or {}).get("unschedulable"):
                self.unschedulable.add(name)
            else:
                self.unschedulable.discard(name)
            if self._has(name):
                if self._node_specs.get(name) != spec:  # heartbeats change nothing we use
                    self.snapshot.update_node(name, **spec)
                    self._node_specs[name] = spec
                return
            self._node_specs[name] = spec
            self.snapshot.add_node(name, **spec)
            for uid, (request, devices) in self._orphans.pop(name, {}).items():
                self._place(uid, request, name, devices)

    def delete_node(self, name: str) -> None:
        with self.lock:
            self.unschedulable.discard(name)
            if not self._has(name):
                return
            self._node_specs.pop(name, None)
            placements = {key: self.snapshot.pods()[key] for key in self.snapshot.pods_on(name)}
            self.snapshot.remove_node(name)
            self._orphans[name] = {k: (p.pod, p.devices) for k, p in placements.items()}

    # --- pods ------------------------------------------------------------------------------
    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp") and node:
            self._note_leaving(pod, uid, node)
        with self.lock:  # most events are status updates of a pod we already know
            placed = self.snapshot.pods().get(uid)
            if phase not in TERMINAL_PHASES and (
                (placed is not None and placed.node == node)
                or (not node and (uid in self._pending or uid in self._assumed))
            ):
                if node:
                    self._assumed.pop(uid, None)  # the watch agrees with what we bound
                elif uid in self._pending and not self._pending[uid].watched:
                    self._pending[uid] = replace(self._pending[uid], watched=True)
                return
        try:
            request = pod_request(pod)
            devices = assigned_devices(pod)
        except ValueError as exc:
            self.bad_objects[f"pod/{_pod_key(pod)}"] = str(exc)
            log.warning("ignoring pod %s: %s", _pod_key(pod), exc)
            return
        with self.lock:
            if not node or phase in TERMINAL_PHASES:
                self._forget(uid)
                if not node and phase not in TERMINAL_PHASES:
                    self._pending[uid] = replace(pending_pod(pod, request), watched=True)
                return
            self._pending.pop(uid, None)
            self._forget(uid)
            self._place(uid, request, node, devices)
            annotations = meta.get("annotations") or {}
            if rebuild.REBUILD in annotations:
                key = rebuild.successor_key(pod)
                if key:
                    self._homes[uid] = (key, node, _revision(meta.get("labels") or {}))
            claimed = annotations.get(rebuild.RESERVATION)
            if claimed:
                self.claim(f"{meta.get('namespace', '')}/{claimed}", uid)

    def delete_pod(self, uid: str) -> None:
        with self.lock:
            self._pending.pop(uid, None)
            self._forget(uid)

    def _note_leaving(self, pod: Mapping[str, Any], uid: str, node: str) -> None:
        """An opted-in pod held by the rebuild finalizer is terminating: its successor waits."""
        meta = pod.get("metadata") or {}
        if uid in self._leaving or rebuild.FINALIZER not in (meta.get("finalizers") or []):
            return
        self._note_left(pod, uid, node)

    def _note_left(self, pod: Mapping[str, Any], uid: str, node: str) -> None:
        """An opted-in pod the rebuild controller will reserve for is going or gone.

        Also called with the pod's last state when it leaves, in case the watch never showed it
        terminating: pods the controller refuses or does not hold (create-first) are skipped.
        """
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if uid in self._leaving or rebuild.REBUILD not in annotations:
            return
        if rebuild.option_errors(annotations) or (
            rebuild.data_loss_volumes(pod) and annotations.get(rebuild.ACCEPT_DATA_LOSS) != "true"
        ):
            return
        if annotations.get(rebuild.ORDER) == "create-first":
            return
        key = rebuild.successor_key(pod)
        if key is not None:
            with self.lock:
                self._leaving[uid] = Leaving(key, node, time.monotonic())

    def _place(
        self, uid: str, request: PodRequest, node: str, devices: tuple[int, ...] | None
    ) -> None:
        self.changes += 1
        if not self._has(node):
            self._orphans.setdefault(node, {})[uid] = (request, devices)
            return
        row = self.snapshot.index_of(node)
        if devices is None and request.gpu_count:
            try:
                devices = self.snapshot.best_fit_devices(row, request)
            except ValueError:  # bound by someone who ignored GPU shares: record it anyway
                devices = tuple(range(request.gpu_count))
        self.snapshot.assign(uid, request, node, devices=devices, check=False)
        if uid in self._by_predecessor:
            self._sync_hold(self._by_predecessor[uid])

    def _forget(self, uid: str) -> None:
        self._assumed.pop(uid, None)
        self._homes.pop(uid, None)
        if uid in self.snapshot.pods():
            self.snapshot.release(uid)
            self.changes += 1
        for orphans in self._orphans.values():
            orphans.pop(uid, None)
        if uid in self._leaving:  # its Reservation may still be on its way: keep the successor
            self._leaving[uid].gone = time.monotonic()  # waiting until it shows, or LEAVING_GRACE
        if uid in self._by_predecessor:  # its node's room is now held for its successor
            self._sync_hold(self._by_predecessor[uid])

    # --- local-rebuild reservations --------------------------------------------------------
    def upsert_reservation(self, obj: Mapping[str, Any]) -> None:
        try:
            reservation = rebuild.Reservation.from_object(obj)
            request = pod_request(reservation.template)
        except (ValueError, KeyError, TypeError) as exc:
            where = f"{(obj.get('metadata') or {}).get('namespace')}/{_name(obj)}"
            self.bad_objects[f"reservation/{where}"] = str(exc)
            log.warning("ignoring reservation %s: %s", where, exc)
            return
        rid = f"{reservation.namespace}/{reservation.name}"
        with self.lock:
            self.reservations[rid] = reservation
            self._requests[rid] = request
            self._by_predecessor[reservation.predecessor_uid] = rid
            self._leaving.pop(reservation.predecessor_uid, None)
            self._sync_hold(rid)

    def delete_reservation(self, rid: str) -> None:
        with self.lock:
            reservation = self.reservations.pop(rid, None)
            self._requests.pop(rid, None)
            self._claims.pop(rid, None)
            self._promised.pop(rid, None)
            if reservation is not None:
                self._by_predecessor.pop(reservation.predecessor_uid, None)
            self._forget(_hold_uid(rid))

    def _sync_hold(self, rid: str) -> None:
        """Charge reservation ``rid``'s room to its node exactly while it must be held."""
        reservation = self.reservations.get(rid)
        uid = _hold_uid(rid)
        hold = (
            reservation is not None
            and reservation.active(self.now())
            and rid not in self._claims
            and reservation.predecessor_uid not in self.snapshot.pods()
        )
        if hold and reservation is not None and uid not in self.snapshot.pods():
            self._place(uid, self._requests[rid], reservation.node, reservation.devices)
        elif not hold and uid in self.snapshot.pods():
            self._forget(uid)

    def claim(self, rid: str, uid: str) -> None:
        """Pod ``uid`` took reservation ``rid`` (it was bound naming it): release the hold."""
        with self.lock:
            self._claims[rid] = uid
            self._sync_hold(rid)

    def unclaim(self, rid: str) -> None:
        """Undo ``claim``: the successor's bind failed; hold the room again."""
        with self.lock:
            self._claims.pop(rid, None)
            self._sync_hold(rid)

    def rooms(self, pending: PendingPod) -> Rooms:
        """The unclaimed reservations of ``pending``'s predecessors, by what they offer it."""
        rooms = Rooms([], 0, [])
        if pending.successor is None:
            return rooms
        now, clock = self.now(), time.monotonic()
        with self.lock:
            for rid, r in self.reservations.items():
                if r.key != pending.successor or rid in self._claims:
                    continue
                if not r.active(now):  # expired since the last event: stop holding its room
                    self._sync_hold(rid)
                    rooms.lapsed.append(r)
                    continue
                promised, until = self._promised.get(rid, ("", 0.0))
                if promised == pending.uid:
                    rooms.held.insert(0, r)  # what filter chose for it comes first
                elif not promised or until < clock:
                    rooms.held.append(r)
                else:
                    rooms.contested += 1
        return rooms

    def holds(self, pending: PendingPod) -> list[rebuild.Reservation]:
        """Active reservations ``pending`` may claim: its predecessors' rooms, not yet claimed
        nor promised to another successor."""
        return self.rooms(pending).held

    def promise(self, reservation: rebuild.Reservation, uid: str) -> None:
        """Keep ``reservation`` for pod ``uid`` (filter chose its node) until it binds, briefly."""
        with self.lock:
            rid = f"{reservation.namespace}/{reservation.name}"
            self._promised[rid] = (uid, time.monotonic() + PROMISE_SECONDS)

    def leaving(self, pending: PendingPod, *, within: float = LEAVING_GRACE) -> list[str]:
        """Nodes of ``pending``'s predecessors that left (or are leaving) but are not reserved yet.

        The rebuild controller writes a Reservation before it lets an opted-in pod go, but the
        two arrive here on different watches; for LEAVING_GRACE seconds after the pod went we
        trust that its Reservation is on its way. ``within``: only predecessors seen starting to
        terminate at most that many seconds ago.
        """
        if pending.successor is None:
            return []
        now = time.monotonic()
        with self.lock:
            stale = [u for u, p in self._leaving.items() if p.gone and now - p.gone > LEAVING_GRACE]
            for uid in stale:
                del self._leaving[uid]
            return [
                p.node
                for uid, p in self._leaving.items()
                if p.key == pending.successor
                and uid not in self._by_predecessor
                and now - p.seen <= within
            ]

    def homes(self, pending: PendingPod) -> list[str]:
        """``create-first``: nodes where a predecessor (same successor key, another revision)
        still runs with no pod of ``pending``'s revision beside it yet."""
        if pending.successor is None or pending.annotations.get(rebuild.ORDER) != "create-first":
            return []
        revision = _revision(pending.labels)
        old: Counter[str] = Counter()
        new: Counter[str] = Counter()
        with self.lock:
            for key, node, rev in self._homes.values():
                if key == pending.successor:
                    (new if rev == revision else old)[node] += 1
        return [node for node, count in old.items() if count > new[node]]

    def settling(self, pending: PendingPod) -> bool:
        """Whether this successor's home is about to be known: the watch has not shown the pod
        yet, or a predecessor began terminating moments ago and its Reservation is on its way."""
        current = self.pending(pending.uid) or pending
        if current.successor is None:
            return False
        if not current.watched:
            return True
        return not self.holds(current) and bool(self.leaving(current, within=SETTLE_WINDOW))

    def fits_in_hold(self, reservation: rebuild.Reservation, request: PodRequest) -> bool:
        """Whether ``request`` fits its reservation's node once the held room is given to it."""
        rid = f"{reservation.namespace}/{reservation.name}"
        with self.lock:
            if not self._has(reservation.node):
                return False
            row = self.snapshot.index_of(reservation.node)
            placed = self.snapshot.pods().get(_hold_uid(rid))
            if placed is None:
                return bool(self.snapshot.feasible(request)[row])
            self.snapshot.release(_hold_uid(rid))
            try:
                return bool(self.snapshot.feasible(request)[row])
            finally:
                self.snapshot.assign(
                    _hold_uid(rid), placed.pod, placed.node, devices=placed.devices, check=False
                )

    def assume(self, uid: str, node: str, devices: tuple[int, ...] | None = None) -> bool:
        """Charge pending pod ``uid`` to ``node`` now (we bound it), ahead of the watch."""
        with self.lock:
            pending = self._pending.pop(uid, None)
            if pending is None:
                return uid in self.snapshot.pods()
            self._place(uid, pending.request, node, devices)
            self._assumed[uid] = pending
            if pending.successor:
                self._homes[uid] = (pending.successor, node, _revision(pending.labels))
            return True

    def unassume(self, uid: str) -> None:
        """Undo ``assume``: the pod is pending again (its bind failed)."""
        with self.lock:
            pending = self._assumed.get(uid)
            if uid in self.snapshot.pods() and pending is not None:
                self._forget(uid)
                self._pending[uid] = pending

    def note_pending(self, pod: Mapping[str, Any], request: PodRequest) -> PendingPod:
        """Remember a pod the scheduler asks about, in case the watch has not shown it yet."""
        uid = (pod.get("metadata") or {}).get("uid")
        with self.lock:
            known = self._pending.get(uid or "")
            if known is not None:
                return known
            pending = pending_pod(pod, request)
            if uid and uid not in self.snapshot.pods():
                self._pending[uid] = pending
            return pending

    def note_eviction(self, preemptor: str, node: str, victims: Iterable[str]) -> None:
        """Preempt chose ``victims`` on ``node`` for ``preemptor``; kube-scheduler evicts them."""
        now = time.monotonic()
        with self.lock:
            for uid in [u for u, (_, _, until) in self._evicting.items() if until < now]:
                del self._evicting[uid]
            self._evicting[preemptor] = (node, tuple(victims), now + EVICTION_SECONDS)

    def evicting(self, preemptor: str, nodes: Collection[str]) -> bool:
        """Whether a node of ``nodes`` still has, here, victims chosen for ``preemptor``.

        kube-scheduler offers the extender only nodes its own filters passed, and they count a
        victim until its deletion: a node offered with its victims still here means this cache
        is behind kube-scheduler's. Answering from it would fail the pod on the node its
        preemption freed, and kube-scheduler would preempt again, on another node.
        """
        with self.lock:
            entry = self._evicting.get(preemptor)
            if entry is None:
                return False
            node, victims, _ = entry
            if not any(uid in self.snapshot.pods() for uid in victims):
                del self._evicting[preemptor]
                return False
            return node in nodes

    def pending_pods(self) -> list[PendingPod]:
        with self.lock:
            return list(self._pending.values())

    def pending(self, uid: str) -> PendingPod | None:
        with self.lock:
            return self._pending.get(uid)

    def bound_node(self, uid: str) -> str | None:
        with self.lock:
            placement = self.snapshot.pods().get(uid)
            return placement.node if placement else None

    # --- events and re-lists -------------------------------------------------------------------
    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        self.last_event = time.monotonic()
        if kind == "nodes":
            if event == "DELETED":
                self.delete_node(obj["metadata"]["name"])
            else:
                self.upsert_node(obj)
        elif kind == "reservations":
            if event == "DELETED":
                self.delete_reservation(f"{obj['metadata']['namespace']}/{_name(obj)}")
            else:
                self.upsert_reservation(obj)
        elif event == "DELETED":
            node = (obj.get("spec") or {}).get("nodeName")
            if node:
                with self.lock:
                    self._note_left(obj, obj["metadata"]["uid"], node)
            self.delete_pod(obj["metadata"]["uid"])
        else:
            self.upsert_pod(obj)

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Make ``kind`` exactly ``objects`` (a re-list), dropping what the list no longer has."""
        objects = list(objects)
        with self.lock:
            if kind == "nodes":
                keep = {o["metadata"]["name"] for o in objects}
                for name in [n for n in self.snapshot.names if n not in keep]:
                    self.delete_node(name)
            elif kind == "reservations":
                keep = {f"{o['metadata']['namespace']}/{_name(o)}" for o in objects}
                for rid in [r for r in self.reservations if r not in keep]:
                    self.delete_reservation(rid)
            else:
                keep = {o["metadata"]["uid"] for o in objects}
                holds = {_hold_uid(rid) for rid in self.reservations}
                known = [u for u in [*self.snapshot.pods(), *self._pending] if u not in holds]
                for uid in [u for u in known if u not in keep]:
                    self.delete_pod(uid)
            for obj in objects:
                self.apply(kind, "ADDED", obj)

    # --- reads -----------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        with self.lock:
            return list(self.snapshot.names)

    def pod_count(self) -> int:
        with self.lock:
            return len(self.snapshot.pods())
