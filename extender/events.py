"""What the extender writes about a pod besides its bind: Events, and nominations.

A bind Fulcrum refused (the pod no longer fits by its accounting, its IP pool is exhausted,
its local-rebuild hold refuses it, ...) becomes a Warning Event on the pod, which
``kubectl describe pod`` shows; what local rebuild did or could not do, the rebuild controller
reports on the pod itself (``fulcrum.io/rebuild-status`` and its Events).
Never waited for: a request posts its Event in the background and answers at once. At most one
per pod and reason every ``QUIET_SECONDS``, so a pod kube-scheduler retries does not flood them.

A successor whose held node kube-scheduler did not send gets that node nominated
(``status.nominatedNodeName``, ``extender.rebuild_gate``), in the background too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Protocol

log = logging.getLogger(__name__)

QUIET_SECONDS = 60.0
# kube-scheduler clears a nomination when the nominated node fails the pod; one a second at most
NOMINATE_QUIET_SECONDS = 1.0
REMEMBERED = 10_000


class EventSink(Protocol):
    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """Create a Warning Event about pod ``namespace/name`` (``uid``)."""
        ...

    async def nominate(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Set pod ``namespace/name``'s (``uid``'s) ``status.nominatedNodeName`` to ``node``."""
        ...


class Events:
    def __init__(self, sink: EventSink | None) -> None:
        self.sink = sink
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def warn(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """Post the Event soon (from within the event loop), unless one was posted lately."""
        if self.sink is not None and self._due(uid, reason, QUIET_SECONDS):
            what = f"Event {reason}"
            self._soon(
                what, namespace, name, self.sink.event(namespace, name, uid, reason, message)
            )

    def nominate(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Nominate ``node`` for the pod soon (from within the event loop), unless just done."""
        if self.sink is not None and self._due(uid, f"nominate {node}", NOMINATE_QUIET_SECONDS):
            what = f"nomination of node {node}"
            self._soon(what, namespace, name, self.sink.nominate(namespace, name, uid, node))

    def _due(self, uid: str, what: str, quiet: float) -> bool:
        now, key = time.monotonic(), (uid, what)
        if not uid or now - self._last.get(key, -quiet) < quiet:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > REMEMBERED:
            self._last.popitem(last=False)
        return True

    def _soon(self, what: str, namespace: str, name: str, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._post(what, namespace, name, call))
        self._tasks.add(task)  # a reference, until it is done
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _post(what: str, namespace: str, name: str, call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        except Exception as exc:  # advice: losing it must not fail anything
            log.warning("could not post %s on pod %s/%s: %s", what, namespace, name, exc)
