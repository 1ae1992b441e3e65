"""The informers' sink: the latest pods, Reservations, IPPools, StatefulSets and Deployments,
and work keys.

Everything the controller decides from is read here, never from the apiserver directly, so one
reconcile sees one consistent picture; what changed is queued as ``<kind>/<namespace>/<name>``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kube import api, objects
from kube.objects import Raw
from rebuild.workqueue import WorkQueue


def unplaced(pod: Raw) -> bool:
    """Not bound to a node yet, and not going away."""
    return not objects.node_name(pod) and not objects.deleting(pod)


def _relevant(meta: objects.ObjectMeta) -> bool:
    annotations = meta.get("annotations") or {}
    return (
        api.REBUILD in annotations
        or api.IP_POOL in annotations
        or api.FINALIZER in (meta.get("finalizers") or [])
    )


def slim(pod: Raw) -> Raw:
    """What the controller keeps of a pod it has nothing to do for (no ``fulcrum.io`` rebuild or
    pool annotation, not our finalizer): that it lives (its UID, for the sweep), and where. A
    full pod is some 10 KiB; a cluster's worth of them was most of the controller's memory."""
    meta = objects.meta(pod)
    kept = {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}
    return {"metadata": kept, "spec": {"nodeName": objects.node_name(pod) or None}}


def _kept(kind: str, obj: Raw) -> Raw:
    if kind == "deployments" and not api.template_opted_in(obj):
        meta = objects.meta(obj)  # nothing to pre-pull for: only that it exists
        return {"metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}}
    return obj if kind != "pods" or _relevant(objects.meta(obj)) else slim(obj)


class Store:
    """The latest object of each kind, and work keys for what changed."""

    KINDS = ("pods", "reservations", "ippools", "statefulsets", "deployments")

    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Raw]] = {kind: {} for kind in self.KINDS}
        self.gone: dict[str, Raw] = {}  # pods deleted since last reconciled: their last state

    def apply(self, kind: str, event: str, obj: Raw) -> None:
        key = objects.key(obj)
        with self.lock:
            if event == "DELETED":
                self.objects[kind].pop(key, None)
                if kind == "pods" and _relevant(objects.meta(obj)):  # the rest needs no goodbye
                    self.gone[key] = obj
            else:
                self.objects[kind][key] = _kept(kind, obj)
        self._enqueue(kind, key, obj)

    def replace(self, kind: str, listed: Iterable[Raw]) -> None:
        fresh = {objects.key(o): _kept(kind, o) for o in listed}
        with self.lock:
            if kind == "pods":
                for key in self.objects[kind].keys() - fresh.keys():
                    if _relevant(objects.meta(self.objects[kind][key])):
                        self.gone[key] = self.objects[kind][key]
            self.objects[kind] = fresh
        for key, obj in fresh.items():
            self._enqueue(kind, key, obj)

    def _enqueue(self, kind: str, key: str, obj: Raw) -> None:
        if kind == "statefulsets":  # its template changed: look at its opted-in pods
            for pod in self.owned_pods("StatefulSet", key):
                self.queue.add(f"pods/{objects.key(pod)}")
            return
        meta = objects.meta(obj)
        if kind == "deployments":  # an opted-in template: its pre-pull (rebuild.prepull)
            if api.template_opted_in(obj):
                self.queue.add(f"deployments/{key}")
            return
        if kind == "pods" and not _relevant(meta):
            return
        if kind == "pods" and api.PREPULL in (meta.get("annotations") or {}):
            # a node's answer to a pre-pull: the Deployment it holds may go on
            owner = api.successor_key(obj) or ""
            if owner.startswith("Deployment/"):
                self.queue.add(f"deployments/{owner.split('/', 1)[1]}")
        # first a pod held by our finalizer (its successor waits for it to go), and an
        # opted-in pod not guarded yet (deleted before that, it would not come back locally)
        finalized = api.FINALIZER in (meta.get("finalizers") or [])
        deleting = bool(meta.get("deletionTimestamp"))
        unguarded = (
            not finalized and not deleting and api.REBUILD in (meta.get("annotations") or {})
        )
        urgent = (kind == "pods") and ((deleting and finalized) or unguarded)
        self.queue.add(f"{kind}/{key}", urgent=urgent)

    def get(self, kind: str, key: str) -> Raw | None:
        with self.lock:
            return self.objects[kind].get(key)

    def take_gone(self, key: str) -> Raw | None:
        with self.lock:
            return self.gone.pop(key, None)

    def all(self, kind: str) -> list[Raw]:
        with self.lock:
            return list(self.objects[kind].values())

    def owned_pods(self, kind: str, key: str) -> list[Raw]:
        namespace, name = key.split("/", 1)
        owned = []
        for pod in self.all("pods"):
            meta = objects.meta(pod)
            if meta.get("namespace") == namespace and any(
                ref.get("kind") == kind and ref.get("name") == name
                for ref in meta.get("ownerReferences") or []
            ):
                owned.append(pod)
        return owned

    def pending_successors(self, namespace: str, key: str) -> list[Raw]:
        """Unplaced pods of ``namespace`` whose successor key is ``key``."""
        return [
            pod
            for pod in self.all("pods")
            if objects.meta(pod).get("namespace") == namespace
            and unplaced(pod)
            and api.successor_key(pod) == key
        ]
