"""An informer-backed view of nodes and the pods on them.

The state (``ClusterCache``) is plain data updated by events, so it is tested without a cluster.
``Informer`` feeds it from the apiserver: list, then watch from the list's resourceVersion,
re-list when the watch answers 410 Gone. Scheduling requests only read the cache: they cost zero
apiserver calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from extender.resources import assigned_devices, node_spec, pod_request
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass(frozen=True)
class PendingPod:
    key: str  # namespace/name
    request: PodRequest


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
        self._assumed: dict[str, str] = {}  # uid -> key of pods we bound, until the watch agrees
        self._orphans: dict[str, dict[str, tuple[PodRequest, tuple[int, ...] | None]]] = {}
        self.bad_objects: dict[str, str] = {}  # key -> why it was ignored
        self.synced = {"nodes": threading.Event(), "pods": threading.Event()}
        self.last_event = time.monotonic()
        self.changes = 0

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.synced.values())

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
        with self.lock:  # most events are status updates of a pod we already know
            placed = self.snapshot.pods().get(uid)
            if phase not in TERMINAL_PHASES and (
                (placed is not None and placed.node == node)
                or (not node and (uid in self._pending or uid in self._assumed))
            ):
                if node:
                    self._assumed.pop(uid, None)  # the watch agrees with what we bound
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
                    self._pending[uid] = PendingPod(_pod_key(pod), request)
                return
            self._pending.pop(uid, None)
            self._forget(uid)
            self._place(uid, request, node, devices)

    def delete_pod(self, uid: str) -> None:
        with self.lock:
            self._pending.pop(uid, None)
            self._forget(uid)

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

    def _forget(self, uid: str) -> None:
        self._assumed.pop(uid, None)
        if uid in self.snapshot.pods():
            self.snapshot.release(uid)
            self.changes += 1
        for orphans in self._orphans.values():
            orphans.pop(uid, None)

    def assume(self, uid: str, node: str, devices: tuple[int, ...] | None = None) -> bool:
        """Charge pending pod ``uid`` to ``node`` now (we bound it), ahead of the watch."""
        with self.lock:
            pending = self._pending.pop(uid, None)
            if pending is None:
                return uid in self.snapshot.pods()
            self._place(uid, pending.request, node, devices)
            self._assumed[uid] = pending.key
            return True

    def unassume(self, uid: str) -> None:
        """Undo ``assume``: the pod is pending again (its bind failed)."""
        with self.lock:
            placed = self.snapshot.pods().get(uid)
            key = self._assumed.get(uid)
            if placed is not None and key is not None:
                self._forget(uid)
                self._pending[uid] = PendingPod(key, placed.pod)

    def note_pending(self, pod: Mapping[str, Any], request: PodRequest) -> None:
        """Remember a pod the scheduler asks about, in case the watch has not shown it yet."""
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return
        with self.lock:
            if uid not in self._pending and uid not in self.snapshot.pods():
                self._pending[uid] = PendingPod(_pod_key(pod), request)

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
        elif event == "DELETED":
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
            else:
                keep = {o["metadata"]["uid"] for o in objects}
                known = [*self.snapshot.pods(), *self._pending]
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


ListFn = Callable[..., Any]


class Informer:
    """List + watch one resource into a ``ClusterCache`` on a daemon thread."""

    def __init__(
        self,
        kind: str,
        list_fn: ListFn,
        cache: ClusterCache,
        *,
        field_selector: str | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self.kind, self.list_fn, self.cache = kind, list_fn, cache
        self.field_selector, self.watch_timeout = field_selector, watch_timeout
        self.relists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _call(self, **kwargs: Any) -> Any:
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        return self.list_fn(_preload_content=False, **kwargs)

    def _list(self) -> str:
        items: list[Any] = []
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_request_timeout": 60}
            if cont:
                kwargs["_continue"] = cont
            body = orjson.loads(self._call(**kwargs).data)
            items.extend(body.get("items") or [])
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                self.cache.replace(self.kind, items)
                self.relists += 1
                return str(body["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str | None:
        """Follow the watch; return the last resourceVersion, or None when a re-list is due."""
        response = self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=self.watch_timeout + 30,
        )
        try:
            for line in response:
                if self._stop.is_set():
                    return resource_version
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch {self.kind}: {obj.get('message')}")
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if kind != "BOOKMARK":
                    self.cache.apply(self.kind, kind, obj)
        finally:
            response.release_conn()
        return resource_version

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self.cache.synced[self.kind].set()
                resource_version = self._watch(resource_version)
                if resource_version is None:
                    log.info("watch %s expired (410 Gone): re-listing", self.kind)
            except Exception as exc:
                log.warning("informer %s: %s; re-listing in 1 s", self.kind, exc)
                resource_version = None
                self._stop.wait(1)
