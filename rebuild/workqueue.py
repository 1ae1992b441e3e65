"""A thread-safe per-key work queue with delays and per-key backoff, after client-go's.

Workers loop on ``key = queue.get()`` ... ``queue.done(key)``. The guarantees:

- a key waiting in the queue is there once, however often it is added;
- a key being processed is never handed to a second worker; added meanwhile, it is
  marked dirty and queued again when the first worker calls :meth:`WorkQueue.done`;
- :meth:`WorkQueue.add_after` holds a key back for a while (the earliest request wins);
  :meth:`WorkQueue.add_rate_limited` does so for an exponentially growing delay per key
  (5 ms doubling up to 60 s) until :meth:`WorkQueue.forget` resets it.

Delayed keys are promoted by whichever :meth:`WorkQueue.get` is waiting, so the queue runs
no thread of its own.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

BASE_DELAY = 0.005
MAX_DELAY = 60.0


class ExponentialBackoff:
    """Per-key delays ``base * 2**failures``, capped at ``cap``. Not thread-safe on its own."""

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        """The delay before retrying ``key`` now, counting this as one more failure."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures >= 64:  # 2**64 * base is past any sane cap; avoid float overflow
            return self.cap
        return min(self.base * 2.0**failures, self.cap)

    def failures(self, key: str) -> int:
        """How many times ``key`` was retried since it was last forgotten."""
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff: its next delay is ``base`` again."""
        self._failures.pop(key, None)


class WorkQueue:
    """Keys to reconcile, each handed to one worker at a time. See the module docstring."""

    def __init__(
        self,
        backoff: ExponentialBackoff | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff or ExponentialBackoff()
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._dirty: set[str] = set()  # to be processed: in _ready, or processing and re-added
        self._processing: set[str] = set()
        self._due: dict[str, float] = {}  # delayed key -> when it becomes ready
        self._delayed: list[tuple[float, int, str]] = []  # heap; stale entries skipped
        self._order = itertools.count()
        self._shutting_down = False

    def add(self, key: str, *, urgent: bool = False) -> None:
        """Queue ``key`` unless it is already queued (or it is processing: then on ``done``).

        An ``urgent`` key goes to the front, ahead of everything ready (moved there if it was
        queued already).
        """
        with self._cond:
            if urgent and key in self._dirty and key not in self._processing:
                self._ready.remove(key)
                self._dirty.discard(key)
            self._add(key, urgent=urgent)

    def add_after(self, key: str, seconds: float) -> None:
        """Queue ``key`` in ``seconds``; an earlier pending request for it wins."""
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            when = self._clock() + seconds
            if key in self._due and self._due[key] <= when:
                return
            self._due[key] = when
            heapq.heappush(self._delayed, (when, next(self._order), key))
            self._cond.notify_all()  # a waiting get may now have to wake earlier

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` after its backoff delay, which doubles on every call."""
        with self._cond:
            delay = self._backoff.when(key)
        self.add_after(key, delay)

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff (call when it was processed successfully)."""
        with self._cond:
            self._backoff.forget(key)

    def requeues(self, key: str) -> int:
        """How many rate-limited adds ``key`` had since it was last forgotten."""
        with self._cond:
            return self._backoff.failures(key)

    def get(self, timeout: float | None = None) -> str | None:
        """The next key, blocking up to ``timeout`` seconds (None: forever).

        Returns None on timeout or once the queue is shut down. The caller must call
        :meth:`done` with the key when it has finished with it.
        """
        with self._cond:
            deadline = None if timeout is None else self._clock() + timeout
            while not self._shutting_down:
                now = self._clock()
                self._promote(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    return None
                if self._delayed:
                    until_due = self._delayed[0][0] - now
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond.wait(wait)
            return None

    def done(self, key: str) -> None:
        """``key`` is no longer being processed; queue it again if it was added meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._ready.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        """Stop: pending and later adds are dropped and every ``get`` returns None."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    def __len__(self) -> int:
        """Keys ready to be handed out now (not the delayed ones, nor those processing)."""
        with self._cond:
            self._promote(self._clock())
            return len(self._ready)

    def _add(self, key: str, *, urgent: bool = False) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            if urgent:
                self._ready.appendleft(key)
            else:
                self._ready.append(key)
            self._cond.notify()

    def _promote(self, now: float) -> None:
        """Move the delayed keys that are due into the queue."""
        while self._delayed and self._delayed[0][0] <= now:
            when, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == when:
                del self._due[key]
                self._add(key)
