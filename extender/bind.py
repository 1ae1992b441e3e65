"""The bind verb: create ``pods/binding`` once per pod UID, and charge the cache at once.

Idempotent per UID: a retried bind (say, after a lost reply) finds the pod already bound to the
same node and succeeds without a second binding; a bind for a UID the pod no longer has (the pod
was deleted and re-created under the same name) is refused, because the apiserver checks the
binding's UID precondition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from extender.cache import ClusterCache
from extender.resources import GPU_DEVICES_ANNOTATION
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot


class BindConflict(Exception):
    """The apiserver refused the binding (409): already bound, or the UID precondition failed."""


class PodGone(Exception):
    """The pod no longer exists (404)."""


class Binder(Protocol):
    def bind(self, namespace: str, name: str, uid: str, node: str) -> None: ...

    def annotate(self, namespace: str, name: str, uid: str, annotations: dict[str, str]) -> None:
        """Set annotations on the pod if it still has ``uid``."""
        ...

    def current(self, namespace: str, name: str) -> tuple[str, str]:
        """(uid, node name or "") of the pod as the apiserver has it now."""
        ...


DeviceChooser = Callable[[Snapshot, PodRequest, str], tuple[int, ...]]


class BindService:
    """Binds pods; GPU pods first get their devices recorded in ``fulcrum.io/gpu-devices``."""

    def __init__(self, cache: ClusterCache, binder: Binder, devices: DeviceChooser) -> None:
        self.cache, self.binder, self.choose_devices = cache, binder, devices
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def _serialised(self, uid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield
        with self._guard:
            self._locks.pop(uid, None)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> str:
        """Bind the pod; "" on success, else an error a person can act on.

        The pod is charged to the node (with its GPU devices) *before* the apiserver calls, so
        concurrent binds on the same node never pick the same device; a failed bind undoes it.
        """
        pod = f"{namespace}/{name}"
        with self._serialised(uid):
            already = self.cache.bound_node(uid)
            if already == node:
                return ""
            if already:
                return f"pod {pod} (uid {uid}) is already bound to {already}, not {node}"
            devices = self._reserve(uid, node)
            try:
                if devices:
                    value = ",".join(str(d) for d in devices)
                    self.binder.annotate(namespace, name, uid, {GPU_DEVICES_ANNOTATION: value})
                self.binder.bind(namespace, name, uid, node)
            except PodGone:
                self.cache.delete_pod(uid)
                return f"pod {pod} no longer exists; nothing to bind"
            except BindConflict:
                return self._conflict(namespace, name, uid, node)
            except Exception as exc:
                self.cache.unassume(uid)
                return f"binding pod {pod} to {node} failed: {exc}; the scheduler will retry"
            return ""

    def _reserve(self, uid: str, node: str) -> tuple[int, ...] | None:
        with self.cache.lock:
            pending = self.cache.pending(uid)
            if pending is None:
                return None  # unknown to the cache: the watch will tell us where it went
            devices = None
            if pending.request.gpu_count:
                devices = self.choose_devices(self.cache.snapshot, pending.request, node)
            self.cache.assume(uid, node, devices)
            return devices

    def _conflict(self, namespace: str, name: str, uid: str, node: str) -> str:
        pod = f"{namespace}/{name}"
        try:
            current_uid, current_node = self.binder.current(namespace, name)
        except PodGone:
            self.cache.delete_pod(uid)
            return f"pod {pod} no longer exists; nothing to bind"
        if current_uid != uid:
            self.cache.delete_pod(uid)
            return (
                f"stale bind: pod {pod} now has uid {current_uid}, not {uid}; "
                "the scheduler will retry with the new pod"
            )
        if current_node != node:
            self.cache.unassume(uid)
            return f"pod {pod} is already bound to {current_node or '?'}, not {node}"
        return ""  # a retry of a bind whose reply was lost: already done
