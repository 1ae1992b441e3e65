"""Garbage collection: Reservations nothing came back for, and pool addresses of vanished holders.

Both are left behind by what the controller cannot see as a rebuild: a scale-down, a
``kubectl delete`` without a re-create, a pod that never got its release. The sweep decides
from the store only, and waits before it acts, so a pod that is just being created, or a
successor its workload controller is slow to make, is never mistaken for a missing one.

It also ends waits that can never end: a Reservation held on a node that was deleted, or that
has not been Ready for over ``not_ready_seconds``, while its successor waits for it, is handed
to ``node_gone`` (the controller expires it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kube import api, ippool, objects
from kube.objects import Raw
from rebuild.store import Store, unplaced
from rebuild.writes import Writes

SWEEP_SECONDS = 30.0
ABANDON_SECONDS = 120.0  # a reservation nothing came for is dropped after this
NOT_READY_SECONDS = 300.0  # a hold on a node NotReady this long ends as on a deleted node


class Sweep:
    """One sweep per call; it remembers what it found missing last time."""

    def __init__(
        self,
        store: Store,
        writes: Writes,
        node_gone: Callable[[api.Reservation], None],
        bad_object: Callable[[Raw, str, str], None] | None = None,
        *,
        not_ready_seconds: float = NOT_READY_SECONDS,
    ) -> None:
        self.not_ready_seconds = not_ready_seconds
        self.store = store
        self.writes = writes
        self.node_gone = node_gone
        self.bad_object = bad_object or (lambda obj, kind, why: None)
        self._absent: set[str] = set()  # pool holders seen without a live owner once
        self._idle: dict[str, float] = {}  # held reservation -> since when no successor came

    def __call__(self) -> None:
        """Drop abandoned reservations; release addresses whose holder is gone.

        An address only when its holder was missing on two sweeps in a row (SWEEP_SECONDS
        apart); a reservation only once nothing came for it for ABANDON_SECONDS (on two sweeps
        at least): under load a workload controller can take a while to create a successor.
        """
        pods = self.store.all("pods")
        live = {
            str(objects.meta(p).get("uid")) for p in pods
        }  # predecessors still terminating, too
        self._reservations(pods, live)
        self._addresses(live)

    def _reservations(self, pods: list[Raw], live: set[str]) -> None:
        idle: dict[str, float] = {}
        clock = time.monotonic()
        claimed: set[str] = set()
        waiting = set()  # (namespace, successor key) of every pending pod
        for pod in pods:
            meta = objects.meta(pod)
            annotations = meta.get("annotations") or {}
            if api.RESERVATION in annotations:
                claimed.add(f"{meta.get('namespace')}/{annotations[api.RESERVATION]}")
            if unplaced(pod):
                waiting.add((meta.get("namespace"), api.successor_key(pod)))
        nodes: dict[str, str] = {}  # node -> why it is lost ("": it is not), read once a sweep
        for obj in self.store.all("reservations"):
            try:
                r = api.Reservation.from_object(obj)
            except ValueError as exc:  # one bad object never stops the sweep of the others
                self.bad_object(obj, "reservation", f"skipped by the sweep: {exc}")
                continue
            rid = f"{r.namespace}/{r.name}"
            if r.phase != "Held" or r.predecessor_uid in live or rid in claimed:
                continue
            if (r.namespace, r.key) in waiting:
                if r.node not in nodes:
                    nodes[r.node] = self.writes.node_lost(r.node, self.not_ready_seconds)
                if nodes[r.node]:
                    self.node_gone(r)
                continue
            idle[rid] = self._idle.get(rid, clock)
            if rid in self._idle and clock - idle[rid] >= ABANDON_SECONDS:  # scaled down, deleted
                self._abandon(obj, r)
        self._idle = idle

    def _abandon(self, obj: Raw, r: api.Reservation) -> None:
        self.writes.event(
            obj,
            "RebuildAbandoned",
            f"no successor of {r.key} appeared; "
            f"released node {r.node}" + (f" and IP {r.ip}" if r.ip else ""),
        )
        if r.ip and r.pool:
            self.writes.release_ip(r.namespace, r.pool, f"reservation:{r.name}")
        self.writes.delete_reservation(r.namespace, r.name)

    def _addresses(self, live: set[str]) -> None:
        reservations = {objects.meta(r).get("name") for r in self.store.all("reservations")}
        absent: set[str] = set()
        for pool in self.store.all("ippools"):
            namespace, name = objects.namespace(pool), objects.name(pool)
            try:
                held = ippool.holders(pool)
            except ValueError as exc:
                self.bad_object(pool, "ippool", f"skipped by the sweep: {exc}")
                continue
            for holder in held:
                kind, _, ref = holder.partition(":")
                if (kind == "pod" and ref not in live) or (
                    kind == "reservation" and ref not in reservations
                ):
                    key = f"{namespace}/{name}/{holder}"
                    absent.add(key)
                    if key in self._absent:
                        self.writes.release_ip(namespace, name, holder)
        self._absent = absent
