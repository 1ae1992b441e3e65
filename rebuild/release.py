"""Letting pods go when no controller will: a stale rebuild Lease, and uninstalling.

The admission webhook puts ``fulcrum.io/rebuild`` on opted-in pods whether or not a controller
runs. Without one, a deleted opted-in pod would stay Terminating forever: a StatefulSet's
ordinal could not come back and its namespace could not be deleted. So:

- ``Releaser`` runs in a process that runs when the controller does not (the extender, ``fulcrum
  serve``): once no controller has renewed the rebuild Lease for ``after`` seconds, by this
  process's own clock, it removes the finalizer of every pod being deleted, without a
  Reservation, with a Warning Event ``RebuildReleased`` saying why;
- ``release_all`` removes it from every pod of the cluster, for an uninstall (``fulcrum rebuild
  --release-all``, the chart's pre-delete hook), and resumes every Deployment the admission
  webhook paused for a pre-pull (``fulcrum.io/prepull-hold``): no controller will.

Nothing is released while the Lease cannot be read (a refusal is not an outage).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kube import api, objects
from rebuild.errors import ApiError, Conflict
from rebuild.writes import Writes

log = logging.getLogger(__name__)

RELEASE_AFTER_SECONDS = 120.0  # no controller for this long: deleted pods are let go
RELEASE_ALL_HOLDER = "fulcrum-release-all"
HOLD_SECONDS = 60  # how long --release-all keeps the controllers' Lease from them
UNINSTALL_REASON = "Fulcrum's rebuild controller is being uninstalled: released, nothing reserved"


class LeaseWatch:
    """Whether a controller has renewed its Lease within ``after`` seconds.

    Measured on this process's monotonic clock, from when it last saw the Lease change (or
    from its start), so clock skew between nodes does not matter. ``read`` answers what
    changes at each renewal, or None if there is no Lease.
    """

    def __init__(
        self,
        read: Callable[[], str | None],
        *,
        after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read, self.after, self.clock = read, after, clock
        self.last_seen: str | None = None
        self.changed = clock()

    def stale(self) -> bool:
        try:
            seen = self.read()
        except Exception as exc:  # refused, or no answer: an outage of ours is not the controller's
            log.warning("cannot read the rebuild Lease (%s): releasing nothing", exc)
            return False
        now = self.clock()
        if seen is not None and seen != self.last_seen:
            self.last_seen, self.changed = seen, now
        return now - self.changed >= self.after


class Releaser:
    """Lets deleted pods go while no controller holds Lease ``namespace/name``."""

    def __init__(
        self,
        writes: Writes,
        *,
        namespace: str,
        name: str,
        after: float = RELEASE_AFTER_SECONDS,
        on_release: Callable[[str], None] = lambda uid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writes, self.on_release = writes, on_release
        self.watch = LeaseWatch(
            lambda: writes.lease_renewal(namespace, name), after=after, clock=clock
        )
        self.why = (
            f"no rebuild controller has renewed Lease {namespace}/{name} for {after:g} s: "
            "released without a Reservation (its successor is placed normally)"
        )

    def check(self) -> list[str]:
        """One look: the UIDs of the pods let go now (none while the Lease is fresh)."""
        if not self.watch.stale():
            return []
        released = []
        for pod in self.writes.finalized_pods(deleting_only=True):
            try:
                done = self.writes.release(pod, self.why)
            except ApiError as exc:  # its finalizers changed meanwhile: the next look retries
                log.info("%s: not released this time: %s", objects.key(pod), exc)
                continue
            if done:
                log.warning("%s: %s", objects.key(pod), self.why)
                released.append(objects.uid(pod))
                self.on_release(objects.uid(pod))
        return released

    def run(self, stop: threading.Event, period: float) -> None:
        """``check`` every ``period`` seconds until ``stop``; a failed look (the apiserver
        refusing or unreachable) is logged and retried, and never ends the thread."""
        while not stop.wait(period):
            try:
                self.check()
            except Exception as exc:
                log.warning("releasing pods of a stopped rebuild controller: %s", exc)

    def start(self, period: float | None = None) -> threading.Event:
        """``run`` in a daemon thread (period: a tenth of the bound, 1 to 10 s); set the
        returned Event to stop it."""
        stop = threading.Event()
        period = period if period is not None else min(10.0, max(1.0, self.watch.after / 10))
        threading.Thread(
            target=self.run, args=(stop, period), name="rebuild-release", daemon=True
        ).start()
        return stop


def release_all(
    writes: Writes,
    *,
    lease: tuple[str, str, int] | None = None,
    why: str = UNINSTALL_REASON,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Remove ``fulcrum.io/rebuild`` from every pod of the cluster, each with an Event; how many.

    ``lease`` (namespace, name, lease seconds): first take the controllers' Lease for
    HOLD_SECONDS and wait one lease duration, so the leader has stopped and no controller puts
    a finalizer back while the chart is being uninstalled.
    """
    if lease is not None:
        namespace, name, seconds = lease
        for attempt in range(5):  # the leader may renew between our read and our write
            try:
                writes.hold_lease(namespace, name, RELEASE_ALL_HOLDER, HOLD_SECONDS)
                break
            except Conflict:
                if attempt == 4:
                    raise
        log.info(
            "holding Lease %s/%s; waiting %d s for its leader to stop", namespace, name, seconds
        )
        sleep(seconds)
    count = 0
    for pod in writes.finalized_pods(deleting_only=False):
        if writes.release(pod, why, warning=False):
            count += 1
    for deployment in writes.held_deployments():  # no controller will end their pre-pull hold
        hold = objects.meta(deployment)["annotations"][api.PREPULL_HOLD]
        paused = bool((deployment.get("spec") or {}).get("paused"))
        writes.resume_deployment(objects.meta(deployment), hold, unpause=paused)
        log.info("resumed Deployment %s, held for a pre-pull", objects.key(deployment))
    writes.events.flush()
    return count
