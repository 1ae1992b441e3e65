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
from dataclasses import dataclass, field
from typing import Any

import orjson

from extender.resources import Resources, node_allocatable, pod_requests

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class NodeInfo:
    name: str
    allocatable: Resources
    unschedulable: bool = False
    requested: Resources = field(default_factory=dict)
    pods: set[str] = field(default_factory=set)

    def free(self, resource: str) -> int:
        return self.allocatable.get(resource, 0) - self.requested.get(resource, 0)


@dataclass(frozen=True)
class PodInfo:
    uid: str
    key: str  # namespace/name
    node: str
    requests: Resources


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class ClusterCache:
    """Nodes and the pods bound to them; thread-safe; readers get copies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._pods: dict[str, PodInfo] = {}  # by uid, pods with a node
        self._pending: dict[str, PodInfo] = {}  # by uid, pods waiting for one
        self._orphans: dict[str, set[str]] = {}  # node name -> uids of pods seen before it
        self.synced = {"nodes": threading.Event(), "pods": threading.Event()}
        self.last_event = time.monotonic()

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.synced.values())

    # --- nodes -----------------------------------------------------------------------------
    def upsert_node(self, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        allocatable = node_allocatable(node)
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        with self._lock:
            info = self._nodes.get(name)
            if info is None:
                info = self._nodes[name] = NodeInfo(name, allocatable, unschedulable)
                for uid in self._orphans.pop(name, set()):
                    self._charge(info, self._pods[uid], +1)
            else:
                info.allocatable, info.unschedulable = allocatable, unschedulable

    def delete_node(self, name: str) -> None:
        with self._lock:
            info = self._nodes.pop(name, None)
            if info is not None and info.pods:
                self._orphans[name] = set(info.pods)

    # --- pods ------------------------------------------------------------------------------
    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        phase = (pod.get("status") or {}).get("phase")
        with self._lock:
            old = self._pods.get(uid)
            if not node or phase in TERMINAL_PHASES:
                if old is not None:
                    self._remove_pod(old)
                if not node and phase not in TERMINAL_PHASES:
                    self._pending[uid] = PodInfo(uid, _pod_key(pod), "", pod_requests(pod))
                return
            self._pending.pop(uid, None)
            if old is not None and old.node == node:
                return  # requests of a bound pod only change by in-place resize: handled later
            if old is not None:
                self._remove_pod(old)
            self._add_pod(PodInfo(uid, _pod_key(pod), node, pod_requests(pod)))

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            self._pending.pop(uid, None)
            old = self._pods.get(uid)
            if old is not None:
                self._remove_pod(old)

    def _add_pod(self, pod: PodInfo) -> None:
        self._pods[pod.uid] = pod
        node = self._nodes.get(pod.node)
        if node is None:
            self._orphans.setdefault(pod.node, set()).add(pod.uid)
        else:
            self._charge(node, pod, +1)

    def _remove_pod(self, pod: PodInfo) -> None:
        del self._pods[pod.uid]
        node = self._nodes.get(pod.node)
        if node is None:
            self._orphans.get(pod.node, set()).discard(pod.uid)
        else:
            self._charge(node, pod, -1)

    @staticmethod
    def _charge(node: NodeInfo, pod: PodInfo, sign: int) -> None:
        for name, value in pod.requests.items():
            node.requested[name] = node.requested.get(name, 0) + sign * value
        if sign > 0:
            node.pods.add(pod.uid)
        else:
            node.pods.discard(pod.uid)

    def assume(self, uid: str, node: str) -> bool:
        """Charge pending pod ``uid`` to ``node`` now (we bound it), ahead of the watch."""
        with self._lock:
            pending = self._pending.pop(uid, None)
            if pending is None:
                return uid in self._pods
            self._add_pod(PodInfo(uid, pending.key, node, pending.requests))
            return True

    def bound_node(self, uid: str) -> str | None:
        with self._lock:
            pod = self._pods.get(uid)
            return pod.node if pod else None

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
        if kind == "nodes":
            keep = {o["metadata"]["name"] for o in objects}
            for name in [n for n in self.node_names() if n not in keep]:
                self.delete_node(name)
        else:
            keep = {o["metadata"]["uid"] for o in objects}
            with self._lock:
                gone = [uid for uid in [*self._pods, *self._pending] if uid not in keep]
            for uid in gone:
                self.delete_pod(uid)
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    # --- reads -----------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def node(self, name: str) -> NodeInfo | None:
        with self._lock:
            info = self._nodes.get(name)
            if info is None:
                return None
            return NodeInfo(
                info.name, dict(info.allocatable), info.unschedulable, dict(info.requested)
            )

    def pod_count(self) -> int:
        with self._lock:
            return len(self._pods)


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
