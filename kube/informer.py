"""Kubernetes plumbing shared by the extender and the rebuild controller.

``Informer`` lists then watches one resource into a ``Sink`` on a daemon thread (re-listing
when the watch answers 410 Gone, or fails); ``update_object`` is a compare-and-swap
read-modify-write of one object, retried on conflict.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

ListFn = Callable[..., Any]
# a field selector for the pods that still hold resources on their node
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


class Sink(Protocol):
    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        ...

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """A (re-)list: the resource is now exactly ``objects``."""
        ...


class Informer:
    """List + watch one resource into a ``Sink`` on a daemon thread.

    ``list_fn`` is a generated client's list method (``list_node``, or a
    ``functools.partial`` of ``list_cluster_custom_object``); responses are decoded with orjson
    rather than into client models. ``synced`` is set after the first complete list.
    """

    def __init__(
        self,
        kind: str,
        list_fn: ListFn,
        sink: Sink,
        *,
        field_selector: str | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self.kind, self.list_fn, self.sink = kind, list_fn, sink
        self.field_selector, self.watch_timeout = field_selector, watch_timeout
        self.relists = 0
        self.synced = threading.Event()
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
                self.sink.replace(self.kind, items)
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
                    self.sink.apply(self.kind, kind, obj)
        finally:
            response.release_conn()
        return resource_version

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self.synced.set()
                resource_version = self._watch(resource_version)
                if resource_version is None:
                    log.info("watch %s expired (410 Gone): re-listing", self.kind)
            except Exception as exc:
                if self._stop.is_set():  # stopped while its watch was open: nothing to report
                    return
                log.warning("informer %s: %s; re-listing in 1 s", self.kind, exc)
                resource_version = None
                self._stop.wait(1)


def update_object(
    get: Callable[[], Any],
    put: Callable[[dict[str, Any]], Any],
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    attempts: int = 8,
) -> bool:
    """Compare-and-swap: read, apply ``change`` (None: nothing to do), write; retry on 409.

    The write carries the resourceVersion that was read, so the apiserver refuses it (409
    Conflict) if anyone wrote in between; then we read again. Returns whether it wrote.
    Raises the client's ``ApiException`` on anything else (404 included).
    """
    for _ in range(attempts):
        current = get()
        changed = change(copy.deepcopy(current))
        if changed is None:
            return False
        try:
            put(changed)
            return True
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
    raise RuntimeError(f"gave up after {attempts} conflicting updates; will retry")
