"""The bind verb: create ``pods/binding`` once per pod UID, and charge the cache at once.

A bind is two steps. ``reserve`` runs on the request's arrival, before any other request is
served: it checks that the pod still fits the node *by Fulcrum's accounting* (GPU shares
included, which kube-scheduler cannot see), chooses GPU devices and charges the pod to the cache,
so the next pod's filter already sees it. ``commit`` then creates ``pods/binding``, whose
annotations the apiserver copies onto the pod in the same write (``fulcrum.io/gpu-devices``);
if that fails, the charge is undone.

Local rebuild (``extender.rebuild_gate``): a successor bound to the node of its predecessor's
hold claims it (``fulcrum.io/reservation`` on the binding) and gets the predecessor's IP; any
other pod that names an IP pool gets an address from it, allocated by compare-and-swap before
the binding. The address rides on the binding too (``fulcrum.io/assigned-ip`` and Calico's
``ipAddrs``).

Idempotent per UID: a retried bind (say, after a lost reply) finds the pod already bound to the
same node and succeeds without a second binding; a bind for a UID the pod no longer has (the pod
was deleted and re-created under the same name) is refused, because the apiserver checks the
binding's UID precondition.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import orjson

from extender.cache import ClusterCache, PendingPod
from extender.rebuild_gate import RebuildGate
from kube import api
from kube.resources import GPU_DEVICES_ANNOTATION
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot


class BindConflict(Exception):
    """The apiserver refused the binding (409): already bound, or the UID precondition failed."""


class PodGone(Exception):
    """The pod no longer exists (404)."""


class Binder(Protocol):
    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        """Create pods/binding; the apiserver copies ``annotations`` onto the pod atomically."""
        ...

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        """(uid, node name or "") of the pod as the apiserver has it now."""
        ...

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        """An address of IPPool ``namespace/pool`` for ``holder``, by compare-and-swap.

        Raises ``ValueError`` with a message for a person (no such pool, the pod is not
        selected by it, address outside it or taken, pool exhausted).
        """
        ...


def ip_annotations(ip: str) -> dict[str, str]:
    return {api.ASSIGNED_IP: ip, api.CALICO_IPS: orjson.dumps([ip]).decode()}


DeviceChooser = Callable[[Snapshot, PodRequest, str], tuple[int, ...]]


@dataclass(frozen=True)
class Ticket:
    """A reserved bind, or (``error`` / ``done``) one that needs no apiserver call."""

    namespace: str
    name: str
    uid: str
    node: str
    error: str = ""
    done: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    claimed: api.Reservation | None = None  # the hold this bind claims
    pending: PendingPod | None = None


class BindService:
    """Reserve then commit binds. ``gate``: local rebuild's say at bind (None: it is off)."""

    def __init__(
        self,
        cache: ClusterCache,
        binder: Binder,
        devices: DeviceChooser,
        gate: RebuildGate | None = None,
    ) -> None:
        self.cache, self.binder, self.choose_devices, self.gate = cache, binder, devices, gate
        self._in_flight: set[str] = set()
        self._guard = threading.Lock()
        self._pools: dict[str, asyncio.Lock] = {}  # one allocation per pool at a time

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> str:
        """Reserve and commit in one go; "" on success, else an error a person can act on."""
        return await self.commit(self.reserve(namespace, name, uid, node))

    def reserve(self, namespace: str, name: str, uid: str, node: str) -> Ticket:
        ticket = Ticket(namespace, name, uid, node)
        pod = f"{namespace}/{name}"
        with self._guard:
            if uid in self._in_flight:
                return replace(ticket, error=f"a bind of pod {pod} is already in progress")
            self.cache.unnominate(uid)  # filter's charge of its pick: the bind charges it now
            already = self.cache.bound_node(uid)
            if already == node:
                return replace(ticket, done=True)
            if already:
                return replace(ticket, error=f"pod {pod} (uid {uid}) is already bound to {already}")
            with self.cache.lock:
                pending = self.cache.pending(uid)
                devices = None
                if pending is not None:  # else unknown to us: the watch will say where it went
                    snapshot = self.cache.snapshot
                    try:
                        row = snapshot.index_of(node)
                    except KeyError:
                        return replace(ticket, error=f"node {node} is not in Fulcrum's cache")
                    ticket, fits = self._fit(ticket, pending, row)
                    if ticket.error:
                        return ticket
                    if not fits:
                        self._unclaim(ticket)
                        return replace(
                            ticket,
                            error=f"pod {pod} no longer fits node {node} (a pod bound since "
                            "took the room); the scheduler will retry",
                        )
                    if pending.request.gpu_count:
                        devices = self.choose_devices(snapshot, pending.request, node)
                        ticket = replace(
                            ticket,
                            annotations={
                                **ticket.annotations,
                                GPU_DEVICES_ANNOTATION: ",".join(map(str, devices)),
                            },
                        )
                    self.cache.assume(uid, node, devices)
            self._in_flight.add(uid)
        return replace(ticket, pending=pending)

    def _fit(self, ticket: Ticket, pending: PendingPod, row: int) -> tuple[Ticket, bool]:
        """Whether the pod fits its node by Fulcrum's accounting; a local-rebuild successor
        claims its hold there, or is refused (``RebuildGate.claim``)."""
        if self.gate is None or pending.successor is None:
            return ticket, bool(self.cache.snapshot.feasible(pending.request)[row])
        claim = self.gate.claim(pending, ticket.node)
        if claim.refusal:
            error = f"pod {ticket.namespace}/{ticket.name}: {claim.refusal}"
            return replace(ticket, error=error), False
        if claim.hold is None:
            return ticket, claim.fits
        annotations = {**ticket.annotations, api.RESERVATION: claim.hold.name}
        if claim.hold.ip:
            annotations.update(ip_annotations(claim.hold.ip))
        return replace(ticket, claimed=claim.hold, annotations=annotations), claim.fits

    def _unclaim(self, ticket: Ticket) -> None:
        if ticket.claimed is not None and self.gate is not None:
            self.gate.unclaim(ticket.claimed)

    async def commit(self, ticket: Ticket) -> str:
        if ticket.error or ticket.done:
            return ticket.error
        try:
            return await self._call_apiserver(ticket)
        finally:
            with self._guard:
                self._in_flight.discard(ticket.uid)

    async def _pool_address(self, t: Ticket) -> dict[str, str]:
        """Annotations for an address from the pod's IP pool, if it names one and has none."""
        meta = t.pending.annotations if t.pending else {}
        pool = meta.get(api.IP_POOL)
        if not pool or api.ASSIGNED_IP in t.annotations:
            return {}
        assert t.pending is not None
        pod = {"metadata": {"namespace": t.namespace, "name": t.name, "labels": t.pending.labels}}
        # concurrent binds would only make each other's compare-and-swap fail
        async with self._pools.setdefault(f"{t.namespace}/{pool}", asyncio.Lock()):
            ip = await self.binder.allocate_ip(
                t.namespace, pool, f"pod:{t.uid}", meta.get(api.IP_REQUEST), pod
            )
        return ip_annotations(ip)

    async def _call_apiserver(self, t: Ticket) -> str:
        pod = f"{t.namespace}/{t.name}"
        try:
            annotations = {**t.annotations, **await self._pool_address(t)}
            await self.binder.bind(t.namespace, t.name, t.uid, t.node, annotations)
        except PodGone:
            self.cache.delete_pod(t.uid)
            return f"pod {pod} no longer exists; nothing to bind"
        except BindConflict:
            return await self._conflict(t)
        except ValueError as exc:  # the pod's IP pool refused it
            self._unclaim(t)
            self.cache.unassume(t.uid)
            return f"pod {pod}: {exc}"
        except Exception as exc:
            self._unclaim(t)
            self.cache.unassume(t.uid)
            return f"binding pod {pod} to {t.node} failed: {exc}; the scheduler will retry"
        return ""

    async def _conflict(self, t: Ticket) -> str:
        pod = f"{t.namespace}/{t.name}"
        try:
            current_uid, current_node = await self.binder.current(t.namespace, t.name)
        except PodGone:
            self.cache.delete_pod(t.uid)
            return f"pod {pod} no longer exists; nothing to bind"
        if current_uid != t.uid:
            self.cache.delete_pod(t.uid)
            return (
                f"stale bind: pod {pod} now has uid {current_uid}, not {t.uid}; "
                "the scheduler will retry with the new pod"
            )
        if current_node != t.node:
            self._unclaim(t)
            self.cache.unassume(t.uid)
            return f"pod {pod} is already bound to {current_node or '?'}, not {t.node}"
        return ""  # a retry of a bind whose reply was lost: already done
