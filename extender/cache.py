"""An informer-backed view of nodes and the pods on them: the extender's accounting.

The state (``ClusterCache``) is plain data updated by events, so it is tested without a cluster.
``kube.informer.Informer`` feeds it nodes and pods from the apiserver; scheduling requests only
read it, so they cost zero apiserver calls.

Like kube-scheduler's backend cache, it knows resources, not features. State kept beside it (the
rebuild gate, ``extender.rebuild_gate``) learns what it needs through one ``PodObserver`` and
charges what the cluster does not show (a held Reservation's room) as a *placeholder*: a charge
under a made-up uid that only its owner releases, and that a pods re-list leaves alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kube import api, objects
from kube.resources import (
    assigned_devices,
    devices_on_node,
    marked_for_bind,
    node_spec,
    pod_request,
)
from scheduler.attributes import NOTHING, Reads
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")
_KEEP_METADATA = (api.REBUILD, api.IP_POOL, api.RESERVATION)


@dataclass(frozen=True)
class PendingPod:
    key: str  # namespace/name
    request: PodRequest
    uid: str = ""
    successor: str | None = None  # kube.api.successor_key of a pod opted in to local rebuild
    watched: bool = False  # the pod watch delivered it, so also every event before its creation
    marked: bool = False  # it carries the resource fulcrum.io/bind: kube-scheduler calls our bind
    scheduler: str = ""  # its spec.schedulerName: bind serves only the configured one's pods
    # labels and annotations, kept only for pods that use local rebuild or an IP pool
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]


def pending_pod(pod: objects.Raw, request: PodRequest) -> PendingPod:
    meta = objects.meta(pod)
    annotations = meta.get("annotations") or {}
    uid = meta.get("uid", "")
    marked = marked_for_bind(pod)
    scheduler = str(objects.pod_spec(pod).get("schedulerName") or "")
    if not any(key in annotations for key in _KEEP_METADATA):
        return PendingPod(objects.key(pod), request, uid, marked=marked, scheduler=scheduler)
    successor = api.successor_key(pod) if api.REBUILD in annotations else None
    return PendingPod(
        objects.key(pod),
        request,
        uid,
        successor=successor,
        marked=marked,
        scheduler=scheduler,
        labels=dict(objects.labels(pod)),
        annotations=dict(annotations),
    )


class PodObserver(Protocol):
    """What the cache tells the state kept beside it. Called with ``ClusterCache.lock`` held,
    except ``pod_terminating``, which comes first on a busy path and takes it if it writes."""

    def pod_charged(self, uid: str) -> None:
        """``uid`` was just charged to a node (bound, assumed, its node arrived, a placeholder)."""
        ...

    def pod_released(self, uid: str) -> None:
        """``uid``'s charge or pending entry was just dropped (gone, finished, unassumed, or
        about to be charged again)."""
        ...

    def pod_bound(self, uid: str, node: str, pod: PendingPod) -> None:
        """Pod ``uid`` is on ``node``: the watch showed it there, or Fulcrum just bound it."""
        ...

    def pod_terminating(self, pod: objects.Raw, uid: str, node: str) -> None:
        """The watch showed pod ``uid``, bound to ``node``, with a deletion timestamp."""
        ...

    def pod_deleted(self, pod: objects.Raw, uid: str, node: str) -> None:
        """Pod ``uid``, bound to ``node``, left the apiserver; ``pod`` is its last state."""
        ...


class _NoObserver:
    def pod_charged(self, uid: str) -> None:
        pass

    def pod_released(self, uid: str) -> None:
        pass

    def pod_bound(self, uid: str, node: str, pod: PendingPod) -> None:
        pass

    def pod_terminating(self, pod: objects.Raw, uid: str, node: str) -> None:
        pass

    def pod_deleted(self, pod: objects.Raw, uid: str, node: str) -> None:
        pass


class ClusterCache:
    """Nodes and pods as a ``scheduler.Snapshot`` (pods keyed by UID), plus pending pods.

    Thread-safe: informer threads write, request handlers read. Hold ``lock`` while reading
    ``snapshot`` across several calls (scoring, then choosing devices); an observer shares it.
    """

    def __init__(self, reads: Reads = NOTHING) -> None:
        # the node labels, taints and pod attributes the configured policies read
        # (``extender.decide.declared_reads``); nothing else is kept
        self.reads = reads
        self.lock = threading.RLock()
        self.snapshot = Snapshot()
        self.unschedulable: set[str] = set()
        self.not_ready: set[str] = set()  # its Ready condition not True (metrics only)
        self._node_specs: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, PendingPod] = {}
        self._assumed: dict[str, PendingPod] = {}  # pods we bound, until the watch agrees
        self._orphans: dict[str, dict[str, tuple[PodRequest, tuple[int, ...] | None]]] = {}
        self._placeholders: set[str] = set()
        self._observer: PodObserver = _NoObserver()
        # key ("pod/ns/name", "node/name") -> why it was ignored or read in part; shown by
        # the extender's metrics (fulcrum_extender_bad_objects) and its log
        self.bad_objects: dict[str, str] = {}
        self._bad_pods: dict[str, str] = {}  # uid -> its key in bad_objects
        self.synced: dict[str, threading.Event] = {}  # kind -> set once its informer listed
        self.last_event = time.monotonic()
        self.changes = 0
        # uids of pods the watch showed pending for the first time, without a nominated node,
        # while ``arrivals_wanted`` (the nominator, ``extender.nominate``, takes them)
        self.arrivals_wanted = False
        self.arrivals: deque[str] = deque()
        self._nominees: dict[str, str] = {}  # pending pod uid -> its nomination's placeholder

    def observe(self, observer: PodObserver) -> None:
        """Tell ``observer`` about pods from now on; one observer per cache, so that no two
        gates charge the same placeholders."""
        if not isinstance(self._observer, _NoObserver):
            raise ValueError("this cache already has an observer")
        self._observer = observer

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.synced.values())

    def mark_event(self) -> None:
        """An informer delivered something (for the metrics' idle gauge)."""
        self.last_event = time.monotonic()

    def snapshot_copy(self) -> Snapshot:
        """A copy of the snapshot, taken under the lock, for readers that take their time
        (the inspection's figures on ``/metrics``) without holding up the filter."""
        with self.lock:
            return self.snapshot.copy()

    def has_node(self, node: str) -> bool:
        with self.lock:
            return self._has(node)

    def _has(self, node: str) -> bool:
        try:
            self.snapshot.index_of(node)
        except KeyError:
            return False
        return True

    # --- nodes -----------------------------------------------------------------------------
    def upsert_node(self, node: objects.Raw) -> None:
        name = objects.name(node)
        try:
            spec = node_spec(node, self.reads)
        except ValueError as exc:
            self.bad_objects[f"node/{name}"] = str(exc)
            log.warning("ignoring node %s: %s", name, exc)
            return
        with self.lock:
            for names, in_it in (
                (self.unschedulable, objects.unschedulable(node)),
                (self.not_ready, not objects.ready(node)),
            ):
                if in_it:
                    names.add(name)
                else:
                    names.discard(name)
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
            self.not_ready.discard(name)
            if not self._has(name):
                return
            self._node_specs.pop(name, None)
            placements = {key: self.snapshot.pods()[key] for key in self.snapshot.pods_on(name)}
            self.snapshot.remove_node(name)
            self._orphans[name] = {k: (p.pod, p.devices) for k, p in placements.items()}

    # --- pods ------------------------------------------------------------------------------
    def upsert_pod(self, pod: objects.Raw) -> None:
        meta = objects.meta(pod)
        uid = meta.get("uid", "")
        node = objects.pod_spec(pod).get("nodeName") or ""
        phase = objects.pod_status(pod).get("phase")
        if meta.get("deletionTimestamp") and node:
            self._observer.pod_terminating(pod, uid, node)
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
            request = pod_request(pod, self.reads)
        except ValueError as exc:
            self._bad_pod(uid, objects.key(pod), f"ignored: {exc}")
            return
        try:
            devices = assigned_devices(pod, request)
        except ValueError as exc:  # a forged or stale note: count the pod, choose its devices
            self._bad_pod(uid, objects.key(pod), f"its devices are chosen anew: {exc}")
            devices = None
        else:
            self._good_pod(uid)
        with self.lock:
            if not node or phase in TERMINAL_PHASES:
                self._forget(uid)
                if not node and phase not in TERMINAL_PHASES:
                    self._pending[uid] = replace(pending_pod(pod, request), watched=True)
                    if self.arrivals_wanted and not objects.pod_status(pod).get(
                        "nominatedNodeName"
                    ):
                        self.arrivals.append(uid)
                return
            self._pending.pop(uid, None)
            self._forget(uid)
            self._place(uid, request, node, devices, where=objects.key(pod))
            self._observer.pod_bound(uid, node, pending_pod(pod, request))

    def delete_pod(self, uid: str) -> None:
        with self.lock:
            self._pending.pop(uid, None)
            self._forget(uid)
            self._good_pod(uid)

    def _bad_pod(self, uid: str, key: str, why: str) -> None:
        if self.bad_objects.get(f"pod/{key}") != why:
            log.warning("pod %s: %s", key, why)
        with self.lock:
            self.bad_objects[f"pod/{key}"] = why
            if uid:
                self._bad_pods[uid] = f"pod/{key}"

    def _good_pod(self, uid: str) -> None:
        if uid in self._bad_pods:
            with self.lock:
                key = self._bad_pods.pop(uid, None)
                if key is not None:
                    self.bad_objects.pop(key, None)

    def _place(
        self,
        uid: str,
        request: PodRequest,
        node: str,
        devices: tuple[int, ...] | None,
        *,
        where: str = "",
    ) -> None:
        """Charge ``request`` to ``node``. Never raises: devices the node does not have (a
        forged ``fulcrum.io/gpu-devices``) are reported and chosen anew; a charge the snapshot
        refuses all the same is reported, and the pod is left uncharged."""
        self.changes += 1
        if not self._has(node):
            self._orphans.setdefault(node, {})[uid] = (request, devices)
            return
        row = self.snapshot.index_of(node)
        if devices is not None:
            try:
                devices_on_node(devices, int(self.snapshot.gpu_count[row]), node)
            except ValueError as exc:
                self._bad_pod(uid, where or uid, f"its devices are chosen anew: {exc}")
                devices = None
        if devices is None and request.gpu_count:
            try:
                devices = self.snapshot.best_fit_devices(row, request)
            except ValueError:  # bound by someone who ignored GPU shares: record it anyway
                devices = tuple(range(request.gpu_count))
        try:
            self.snapshot.assign(uid, request, node, devices=devices, check=False)
        except ValueError as exc:  # e.g. more GPUs than the node has: nothing to charge them to
            self._bad_pod(uid, where or uid, f"not counted on node {node}: {exc}")
            return
        self._observer.pod_charged(uid)

    def _forget(self, uid: str) -> None:
        self._assumed.pop(uid, None)
        if uid in self._nominees:
            self._release_nominee(uid)
        if uid in self.snapshot.pods():
            self.snapshot.release(uid)
            self.changes += 1
        for orphans in self._orphans.values():
            orphans.pop(uid, None)
        self._observer.pod_released(uid)

    # --- placeholders ----------------------------------------------------------------------
    def charge_placeholder(
        self, uid: str, request: PodRequest, node: str, devices: tuple[int, ...] | None
    ) -> None:
        """Charge ``request`` to ``node`` under ``uid``, a name no pod has, until released."""
        with self.lock:
            self._placeholders.add(uid)
            self._place(uid, request, node, devices)

    def release_placeholder(self, uid: str) -> None:
        with self.lock:
            self._placeholders.discard(uid)
            self._forget(uid)

    def fits(self, request: PodRequest, node: str, *, lifting: str = "") -> bool:
        """Whether ``request`` fits ``node`` now, with the charge of ``lifting`` (a placeholder
        on that node) given to it; False for a node not in the cache."""
        with self.lock:
            if not self._has(node):
                return False
            row = self.snapshot.index_of(node)
            placed = self.snapshot.pods().get(lifting) if lifting else None
            if placed is None:
                return bool(self.snapshot.feasible(request)[row])
            self.snapshot.release(lifting)
            try:
                return bool(self.snapshot.feasible(request)[row])
            finally:
                self.snapshot.assign(
                    lifting, placed.pod, placed.node, devices=placed.devices, check=False
                )

    # --- nominations ---------------------------------------------------------------------
    def nominate(self, uid: str, node: str) -> bool:
        """Charge pending pod ``uid`` to ``node``, the node Fulcrum nominated for it, until its
        filter (``unnominate``), its binding or its deletion; False if it is not pending."""
        with self.lock:
            pending = self._pending.get(uid)
            if pending is None or uid in self._nominees or not self._has(node):
                return False
            key = f"{uid}/nominated"
            self._placeholders.add(key)
            self._place(key, pending.request, node, None)
            self._nominees[uid] = key
            return True

    def unnominate(self, uid: str) -> None:
        """Lift the charge of ``uid``'s nomination: kube-scheduler asks about the pod itself."""
        if uid in self._nominees:
            with self.lock:
                if uid in self._nominees:
                    self._release_nominee(uid)

    def _release_nominee(self, uid: str) -> None:
        key = self._nominees.pop(uid)
        self._placeholders.discard(key)
        self._forget(key)

    # --- binds -----------------------------------------------------------------------------
    def assume(self, uid: str, node: str, devices: tuple[int, ...] | None = None) -> bool:
        """Charge pending pod ``uid`` to ``node`` now (we bound it), ahead of the watch."""
        with self.lock:
            pending = self._pending.pop(uid, None)
            if pending is None:
                return uid in self.snapshot.pods()
            if uid in self._nominees:
                self._release_nominee(uid)
            self._place(uid, pending.request, node, devices)
            self._assumed[uid] = pending
            self._observer.pod_bound(uid, node, pending)
            return True

    def unassume(self, uid: str) -> None:
        """Undo ``assume``: the pod is pending again (its bind failed)."""
        with self.lock:
            pending = self._assumed.get(uid)
            if uid in self.snapshot.pods() and pending is not None:
                self._forget(uid)
                self._pending[uid] = pending

    def note_pending(self, pod: objects.Raw, request: PodRequest) -> PendingPod:
        """Remember a pod the scheduler asks about, in case the watch has not shown it yet."""
        uid = objects.uid(pod)
        with self.lock:
            known = self._pending.get(uid)
            if known is not None:
                return known
            pending = pending_pod(pod, request)
            if uid and uid not in self.snapshot.pods():
                self._pending[uid] = pending
            return pending

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
    def apply(self, kind: str, event: str, obj: objects.Raw) -> None:
        """One watch event: ``obj`` is a node or a pod as the apiserver sent it."""
        self.last_event = time.monotonic()
        if kind == "nodes":
            if event == "DELETED":
                self.delete_node(objects.name(obj))
            else:
                self.upsert_node(obj)
        elif kind != "pods":
            raise ValueError(f"the cluster cache keeps nodes and pods, not {kind}")
        elif event == "DELETED":
            node = objects.node_name(obj)
            if node:
                with self.lock:
                    self._observer.pod_deleted(obj, objects.uid(obj), node)
            self.delete_pod(objects.uid(obj))
        else:
            self.upsert_pod(obj)

    def replace(self, kind: str, listed: Iterable[objects.Raw]) -> None:
        """Make ``kind`` exactly ``listed`` (a re-list), dropping what the list no longer has;
        placeholders are no pods, so they stay."""
        listed = list(listed)
        with self.lock:
            if kind == "nodes":
                keep = {objects.name(o) for o in listed}
                for name in [n for n in self.snapshot.names if n not in keep]:
                    self.delete_node(name)
            else:
                keep = {objects.uid(o) for o in listed}
                known = [*self.snapshot.pods(), *self._pending]
                for uid in [u for u in known if u not in keep and u not in self._placeholders]:
                    self.delete_pod(uid)
            for obj in listed:
                self.apply(kind, "ADDED", obj)

    # --- reads -----------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        with self.lock:
            return list(self.snapshot.names)

    def available_nodes(self) -> int:
        """Nodes Ready and schedulable (not cordoned)."""
        with self.lock:
            unavailable = self.unschedulable | self.not_ready
            return sum(1 for name in self.snapshot.names if name not in unavailable)

    def pod_count(self) -> int:
        with self.lock:
            return len(self.snapshot.pods())
