"""Kubernetes Events from the extender, for what a pod's owner should be told.

A bind Fulcrum refused (the pod no longer fits by its accounting, its IP pool is exhausted,
its local-rebuild hold refuses it, ...) becomes a Warning Event on the pod, which
``kubectl describe pod`` shows; what local rebuild did or could not do, the rebuild controller
reports on the pod itself (``fulcrum.io/rebuild-status`` and its Events).
Never waited for: a request posts its Event in the background and answers at once. At most one
per pod and reason every ``QUIET_SECONDS``, so a pod kube-scheduler retries does not flood them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger(__name__)

QUIET_SECONDS = 60.0
REMEMBERED = 10_000


class EventSink(Protocol):
    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """Create a Warning Event about pod ``namespace/name`` (``uid``)."""
        ...


class Events:
    def __init__(self, sink: EventSink | None) -> None:
        self.sink = sink
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def warn(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """Post the Event soon (from within the event loop), unless one was posted lately."""
        if self.sink is None or not uid:
            return
        now, key = time.monotonic(), (uid, reason)
        if now - self._last.get(key, -QUIET_SECONDS) < QUIET_SECONDS:
            return
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > REMEMBERED:
            self._last.popitem(last=False)
        task = asyncio.get_running_loop().create_task(
            self._post(namespace, name, uid, reason, message)
        )
        self._tasks.add(task)  # a reference, until it is done
        task.add_done_callback(self._tasks.discard)

    async def _post(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        assert self.sink is not None
        try:
            await self.sink.event(namespace, name, uid, reason, message)
        except Exception as exc:  # an Event is advice: losing one must not fail anything
            log.warning("could not post Event %s on pod %s/%s: %s", reason, namespace, name, exc)
