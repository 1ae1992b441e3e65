"""The local-rebuild controller: opted-in pods come back on their node, with their volumes and IP.

How a rebuild goes (``docs/rebuild.md`` has the whole story):

1. An opted-in pod (``fulcrum.io/rebuild: local``) gets the finalizer ``fulcrum.io/rebuild``, so
   it cannot vanish before its room is reserved; a pod ``kube.eligibility`` refuses (bad
   annotations, ``emptyDir`` volumes unless their loss is accepted, unsupported owners, unknown
   hooks) gets an Event instead.
2. When it is deleted (a Deployment or StatefulSet rollout, ``kubectl replace --force``, or this
   controller recreating a StatefulSet pod under ``OnDelete``), the controller creates a
   ``Reservation`` (node, resources, GPU devices, IP, PVCs) named after the pod's UID, moves the
   pod's IP in its pool to the reservation, and only then removes the finalizer. Every step is
   idempotent, so a controller killed between any two of them finishes the job on restart.
3. The extender passes the successor (same Deployment, same StatefulSet ordinal, same bare-pod
   name) only on the reserved node, hides the room from every other pod, and binds the successor
   with ``fulcrum.io/reservation`` and the IP. The controller then moves the IP to the successor,
   deletes the reservation, and marks the pod rebuilt once its post-rebuild hooks agree.
4. A reservation with ``fulcrum.io/rebuild-fallback: reschedule`` expires after
   ``fulcrum.io/rebuild-wait``: its room is released and the successor is placed normally (it
   keeps the IP), with an Event saying why.

A template's new images are pulled on each predecessor's node before it goes
(``rebuild.prepull``). OnDelete StatefulSets are brought to their new revision by
``rebuild.inplace``; abandoned
reservations and addresses are collected by ``rebuild.sweep``; every apiserver call is in
``rebuild.writes``. All state is in the apiserver; this process keeps only caches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kube import api, eligibility, ippool, objects
from kube.hooks import combine, default_hook_registry, hooks_for
from kube.informer import Informer
from kube.objects import Pod, Raw
from kube.resources import assigned_devices
from rebuild import inplace
from rebuild.errors import NotFound, TemporaryError
from rebuild.metrics import ControllerMetrics
from rebuild.prepull import PrePuller
from rebuild.store import Store
from rebuild.sweep import NOT_READY_SECONDS, SWEEP_SECONDS, Sweep
from rebuild.workqueue import WorkQueue
from rebuild.writes import COMPONENT, NODE_GONE, NOT_READY, Writes

log = logging.getLogger(__name__)

POST_REBUILD_RETRY_SECONDS = 1.0
RELEASED_REMEMBERED = 10_000  # finalizers removed, remembered so a lagging watch replays none
CRASH_ENV = "FULCRUM_REBUILD_CRASH_AT"
# workers reconciling at once: a rollout's deletions each wait on three apiserver writes (the
# Reservation, the IP, the finalizer) before the pod may go, and the workers mostly wait
WORKERS = 16


def crash_point(step: str) -> None:
    """Fault injection for tests: exit abruptly at ``step`` if $FULCRUM_REBUILD_CRASH_AT says so.

    Steps: ``reserved`` (Reservation written, IP and finalizer untouched), ``released``
    (finalizer removed: the predecessor goes), ``claiming`` (successor bound, its claim not
    yet recorded).
    """
    if os.environ.get(CRASH_ENV) == step:
        log.error("crash point %s reached: exiting", step)
        os._exit(3)


class Controller:
    """Reconciles pods, reservations and pools; see the module docstring for the protocol."""

    def __init__(
        self,
        api_client: Any,
        *,
        workers: int = WORKERS,
        scheduler_name: str = api.SCHEDULER_NAME,
        not_ready_seconds: float = NOT_READY_SECONDS,
        prepull_wait: float = api.DEFAULT_PREPULL_WAIT_SECONDS,
    ) -> None:
        self.writes = Writes(api_client)
        self.queue = WorkQueue()
        self.store = Store(self.queue)
        # the new images pulled on a predecessor's node before it goes (rebuild.prepull)
        self.prepull = PrePuller(self.store, self.writes, prepull_wait)
        # a hold on a node deleted, or NotReady over not_ready_seconds, ends (``expire``)
        self.not_ready_seconds = not_ready_seconds
        self.sweep = Sweep(
            self.store,
            self.writes,
            self.expire,
            self.bad_object,
            not_ready_seconds=not_ready_seconds,
        )
        # "kind/namespace/name" -> why it was read in part or skipped (the last BAD_REMEMBERED)
        self.bad_objects: dict[str, str] = {}
        self.metrics = ControllerMetrics(self.store, self.queue)
        self.hooks = default_hook_registry()
        self.pacing = inplace.Pacing()  # OnDelete StatefulSets: one pod at a time
        self.workers = workers
        self.scheduler_name = scheduler_name  # the kube-scheduler profile of Fulcrum's extender
        self.identity = f"{COMPONENT}-{uuid.uuid4().hex[:8]}"
        # uids whose finalizer we removed: our watch may still show them terminating (recent
        # ones; a restart re-lists, and a re-list shows no such pod)
        self._released: dict[str, None] = {}
        self._stop = threading.Event()
        self.informers: list[Informer] = []

    # --- running -----------------------------------------------------------------------------
    def start(self, *, sync_timeout: float = 120) -> None:
        self.informers = [
            Informer(kind, list_fn, self.store) for kind, list_fn in self.writes.lists().items()
        ]
        for informer in self.informers:
            informer.start()
        deadline = time.monotonic() + sync_timeout
        for informer in self.informers:
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(
                    f"the {informer.kind} informer did not sync in {sync_timeout:.0f} s: are "
                    "Fulcrum's CRDs installed (kubectl apply -f deploy/crds/) and may this "
                    "identity list and watch them?"
                )
        for i in range(self.workers):
            threading.Thread(target=self._work, name=f"rebuild-{i}", daemon=True).start()
        threading.Thread(target=self._sweeper, name="rebuild-sweep", daemon=True).start()
        log.info(
            "rebuild controller %s running; rebuild hooks: %s",
            self.identity,
            ", ".join(self.hooks.names()),
        )

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()
        for informer in self.informers:
            informer.stop()

    def _sweeper(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            self.queue.add("sweep")

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            kind = key.split("/", 1)[0]
            try:
                self.reconcile(key)
                self.queue.forget(key)
                self.metrics.reconciles.labels(kind, "done").inc()
            except TemporaryError as exc:
                self.queue.forget(key)
                self.queue.add_after(key, exc.delay)
                self.metrics.reconciles.labels(kind, "later").inc()
            except Exception as exc:
                log.warning("reconciling %s: %s; retrying", key, exc)
                self.queue.add_rate_limited(key)
                self.metrics.reconciles.labels(kind, "error").inc()
            finally:
                self.queue.done(key)

    def reconcile(self, key: str) -> None:
        """Handle one work key; ``TemporaryError`` asks for it again after its delay."""
        if key == "sweep":
            self.sweep()
            return
        kind, ref = key.split("/", 1)
        if kind == "deployments":
            found = self.store.get("deployments", ref)
            if found:
                self.prepull.deployment(found)
            return
        if kind == "reservations":
            found = self.store.get("reservations", ref)
            if found:
                self.reservation(api.Reservation.from_object(found))
            return
        pod = self.store.get("pods", ref)
        if pod is not None:
            self.pod(cast(Pod, pod))
        elif (gone := self.store.take_gone(ref)) is not None:
            # a pod left the apiserver: return its IP unless a reservation holds it now
            held = f"{objects.namespace(gone)}/{api.reservation_name(objects.uid(gone))}"
            if self.store.get("reservations", held) is None:
                self.release_pod_ip(cast(Pod, gone), settle=False)

    # --- pods --------------------------------------------------------------------------------
    def pod(self, pod: Pod) -> None:
        """One pod's step, its annotations read once. What is held for it when it goes is
        ``kube.eligibility``'s rule, the extender's too, so the two never disagree about a pod."""
        options = api.read_options(objects.annotations(pod))
        refusal = eligibility.refusal(pod, options, self.hooks)
        if refusal:
            self.writes.report(pod, "refused", refusal, warning=True)
        if not eligibility.reserved_on_delete(pod, options, self.hooks):
            # refused, not opted in, or create-first (its successor starts beside it): nothing
            # to hold, so let it go (a live pod keeps its IP)
            if api.FINALIZER in objects.finalizers(pod):
                if objects.deleting(pod):
                    self.release_pod_ip(pod)
                self.remove_finalizer(pod)
        elif objects.deleting(pod):
            self.leave(pod, options)
        else:
            self.live(pod)

    def leave(self, pod: Pod, options: api.RebuildOptions) -> None:
        """A deleted pod: reserve its room (if it was placed), then let it go."""
        if api.FINALIZER not in objects.finalizers(pod) or objects.uid(pod) in self._released:
            return
        if objects.node_name(pod):
            claimed = objects.annotations(pod).get(api.RESERVATION)
            if claimed and self.take_over(pod, claimed) is not None:
                # deleted before we finished its claim: the IP is still the claimed
                # reservation's; make it the pod's so the new reservation takes it
                self.writes.delete_reservation(objects.namespace(pod), claimed)
            self.reserve(pod, options)
        else:
            self.release_pod_ip(pod)
        self.remove_finalizer(pod)
        crash_point("released")

    def live(self, pod: Pod) -> None:
        """A running or pending opted-in pod: guard it, finish its claim, keep it up to date."""
        meta = objects.meta(pod)
        if api.FINALIZER not in objects.finalizers(pod):
            self.writes.add_finalizer(meta)
        if eligibility.refused_by_controller(pod):  # no longer: say so, for the extender
            self.writes.report(pod, "guarded", "no longer refused: its room is held when it goes")
        if not objects.node_name(pod):
            return
        scheduler = objects.pod_spec(pod).get("schedulerName") or "default-scheduler"
        if scheduler != self.scheduler_name:
            self.writes.report(
                pod,
                "unmanaged",
                f"locality cannot be kept: scheduled by {scheduler}, which knows nothing of "
                f"local rebuild; set spec.schedulerName: {self.scheduler_name}, or install "
                "Fulcrum's admission webhook, which does that for annotated pods",
                warning=True,
            )
        claimed = objects.annotations(pod).get(api.RESERVATION)
        if claimed:
            self.finish(pod, claimed)
            if api.rebuild_status(objects.annotations(pod)).get("action") == "claimed":
                return
        sts = inplace.statefulset_key(meta)
        if sts is not None:
            namespace = objects.namespace(pod)
            inplace.update(
                pod,
                meta,
                self.store.get("statefulsets", sts),
                self.hooks,
                self.writes,
                sibling=lambda name: self.store.get("pods", f"{namespace}/{name}"),
                pacing=self.pacing,
                prepull=self.prepull.before_eviction,
            )

    def bad_object(self, obj: Raw, kind: str, why: str) -> None:
        """``obj`` has a value Fulcrum does not write: counted, logged and (once per reason)
        an Event; the caller reads the rest of it, or skips it."""
        key = f"{kind}/{objects.key(obj)}"
        self.metrics.bad_objects.labels(kind).inc()
        if self.bad_objects.get(key) != why:
            log.warning("%s: %s", key, why)
            self.writes.event(obj, "FulcrumBadValue", why, warning=True)
        self.bad_objects[key] = why
        while len(self.bad_objects) > RELEASED_REMEMBERED:
            del self.bad_objects[next(iter(self.bad_objects))]

    def written(
        self, pod: Pod, options: api.RebuildOptions
    ) -> tuple[str | None, tuple[int, ...] | None]:
        """The pod's address and GPU devices as Fulcrum wrote them at bind, each None when its
        annotation is not what Fulcrum writes (an address outside the pod's pool, devices the
        pod cannot have): reported, and the rest of the pod's room is held all the same."""
        annotations = objects.annotations(pod)
        try:
            ip = api.assigned_ip(annotations)
        except ValueError as exc:
            self.bad_object(pod, "pod", f"{exc}; no address is held for the successor")
            ip = None
        pool = self.store.get("ippools", f"{objects.namespace(pod)}/{options.pool}")
        if ip and pool is not None:
            try:
                inside = ip in ippool.pool_addresses(pool)
            except ValueError:  # a malformed pool: its own readers report it
                inside = True
            if not inside:
                why = (
                    f"annotation {api.ASSIGNED_IP}={ip} is not an address of IPPool {options.pool}"
                )
                self.bad_object(pod, "pod", f"{why}; no address is held for the successor")
                ip = None
        try:
            devices = assigned_devices(pod)
        except ValueError as exc:
            self.bad_object(pod, "pod", f"{exc}; no GPU devices are held for the successor")
            devices = None
        return ip, devices

    def reserve(self, pod: Pod, options: api.RebuildOptions) -> None:
        """Hold the deleted pod's node room, IP and volumes for its successor."""
        namespace, uid = objects.namespace(pod), objects.uid(pod)
        name = api.reservation_name(uid)
        ip, devices = self.written(pod, options)
        reservation = api.Reservation(
            name=name,
            namespace=namespace,
            key=str(api.successor_key(pod)),
            node=objects.node_name(pod),
            predecessor=objects.name(pod),
            predecessor_uid=uid,
            template=api.reservation_template(pod),
            devices=devices or None,
            ip=ip,
            pool=options.pool if ip else None,
            claims=api.claim_names(pod),
            fallback=options.fallback,
            expires_at=(
                datetime.now(UTC) + timedelta(seconds=options.wait_seconds)
                if options.fallback == "reschedule"
                else None
            ),
            phase="Held",
            claimed_by=None,
            resource_version=None,
        )
        if self.store.get("reservations", f"{namespace}/{name}") is None:
            if self.writes.create_reservation(namespace, reservation.to_object()):
                self.metrics.reserved(f"{namespace}/{name}")
                self.writes.event(
                    pod,
                    "Reserved",
                    f"node {reservation.node}"
                    + (f", IP {ip}" if ip else "")
                    + (f", PVCs {', '.join(reservation.claims)}" if reservation.claims else "")
                    + f" held for the successor of {reservation.key}",
                )
            crash_point("reserved")
        if ip and options.pool:
            self.writes.move_ip(namespace, options.pool, ip, f"pod:{uid}", f"reservation:{name}")

    def take_over(self, pod: Pod, claimed: str) -> api.Reservation | None:
        """Hand the IP of reservation ``claimed`` (which the pod claimed at bind) to the pod;
        the reservation, or None if it is gone already."""
        namespace, uid = objects.namespace(pod), objects.uid(pod)
        found = self.store.get("reservations", f"{namespace}/{claimed}")
        action = api.rebuild_status(objects.annotations(pod)).get("action")
        if found is None and action not in ("claimed", "rebuilt"):
            # our reservations watch may lag the pods watch: ask before deciding it is done
            found = self.writes.read_custom(api.RESERVATIONS, namespace, claimed)
        if found is None:
            return None
        reservation = api.Reservation.from_object(found)
        if reservation.key != api.successor_key(pod):  # a forged fulcrum.io/reservation
            why = (
                f"annotation {api.RESERVATION}={api.quoted(claimed)} names the Reservation of "
                f"{reservation.key}, not of this pod's workload; it is left alone"
            )
            self.bad_object(pod, "pod", why)
            return None
        crash_point("claiming")
        if reservation.ip and reservation.pool:
            self.writes.move_ip(
                namespace, reservation.pool, reservation.ip, f"reservation:{claimed}", f"pod:{uid}"
            )
        return reservation

    def finish(self, pod: Pod, claimed: str) -> None:
        """The successor was bound on its reservation: give it the IP, drop the reservation.

        Raises ``TemporaryError`` while its post-rebuild hooks do not agree yet.
        """
        reservation = self.take_over(pod, claimed)
        current = api.rebuild_status(objects.annotations(pod))
        if reservation is not None:
            node = objects.node_name(pod)
            where = f"back on node {node}"
            if node != reservation.node:
                where = f"on node {node} (node {reservation.node} could not take it back)"
                if current.get("action") != "fallback":
                    # the extender stops holding a room the moment it expires, so the pod
                    # may be placed before expire() runs and finds no pending successor
                    self.report_fallback(pod, reservation, placed_on=node)
            self.writes.report(  # before the reservation goes, so a crash cannot lose this status
                pod,
                "claimed",
                f"{where} in place of {reservation.predecessor}"
                + (f" with IP {reservation.ip}" if reservation.ip else "")
                + (f" and PVCs {', '.join(reservation.claims)}" if reservation.claims else ""),
            )
            namespace = objects.namespace(pod)
            self.writes.delete_reservation(namespace, claimed)
            self.metrics.claimed(f"{namespace}/{claimed}")
            return  # the status write brings the pod back here for the post-rebuild hooks
        if current.get("action") != "claimed":
            return
        hooks = hooks_for(objects.annotations(pod), self.hooks)
        verdict = combine(hook.post_rebuild(pod) for hook in hooks)
        if not verdict.allow:
            raise TemporaryError(verdict.retry_after or POST_REBUILD_RETRY_SECONDS, verdict.reason)
        reason = current.get("reason", "rebuilt locally")
        self.writes.report(pod, "rebuilt", reason, event=False)

    def release_pod_ip(self, pod: Pod, *, settle: bool = True) -> None:
        """Return the pod's address to its pool. Without ``settle``, only if the pool still
        says the pod holds it (one conditional write): otherwise a reservation took it over, or
        it was released already, and the sweep deals with anything left over."""
        annotations = objects.annotations(pod)
        pool = api.read_options(annotations).pool
        if not pool:
            return
        namespace, holder = objects.namespace(pod), f"pod:{objects.uid(pod)}"
        try:
            ip = api.assigned_ip(annotations)
        except ValueError as exc:  # the pool knows what the pod holds: release that
            self.bad_object(pod, "pod", f"{exc}; releasing what the pool says the pod holds")
            ip = None
        try:
            if ip:
                self.writes.move_ip(namespace, pool, ip, holder, None, settle=settle)
            else:  # never bound with an address, or bound by another scheduler: check the pool
                self.writes.release_ip(namespace, pool, holder)
        except NotFound:  # no such pool: nothing to give back, and the pod must not stay held
            log.info("%s: no IPPool %s; no address to release", objects.key(pod), pool)

    def remove_finalizer(self, pod: Pod) -> None:
        if self.writes.remove_finalizer(objects.meta(pod)) and objects.deleting(pod):
            self._released[objects.uid(pod)] = None
            while len(self._released) > RELEASED_REMEMBERED:
                del self._released[next(iter(self._released))]

    # --- reservations --------------------------------------------------------------------------
    def reservation(self, r: api.Reservation) -> None:
        """Expire a ``reschedule`` reservation on time; drop it once its grace is over too."""
        now = datetime.now(UTC)
        if r.phase == "Held" and r.expires_at is not None:
            if now < r.expires_at:
                raise TemporaryError((r.expires_at - now).total_seconds() + 0.05)
            self.expire(r)
            raise TemporaryError(api.EXPIRED_GRACE.total_seconds())
        if r.phase == "Expired" and r.expires_at is not None:
            if now < r.expires_at + api.EXPIRED_GRACE:
                raise TemporaryError((r.expires_at + api.EXPIRED_GRACE - now).total_seconds())
            if r.ip and r.pool:
                self.writes.move_ip(r.namespace, r.pool, r.ip, f"reservation:{r.name}", None)
            self.writes.delete_reservation(r.namespace, r.name)

    def expire(self, r: api.Reservation) -> None:
        """End the hold: on time (``reschedule``), or at once when its node was deleted or has
        been NotReady over ``not_ready_seconds`` (any fallback; the sweep finds those). The IP
        stays the Reservation's for EXPIRED_GRACE, for the successor to take."""
        now = datetime.now(UTC)

        def mark(obj: dict[str, Any]) -> dict[str, Any] | None:
            if (obj.get("status") or {}).get("phase", "Held") != "Held":
                return None
            obj.setdefault("status", {})["phase"] = "Expired"
            obj["spec"].setdefault("expiresAt", now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            return obj

        self.writes.update_custom(api.RESERVATIONS, r.namespace, r.name, mark)
        for pod in self.store.pending_successors(r.namespace, r.key)[:1]:
            # the status write also makes kube-scheduler look at the pod again
            self.report_fallback(pod, r)

    def report_fallback(self, pod: Raw, r: api.Reservation, placed_on: str = "") -> None:
        """The RebuildFallback Event and status; ``placed_on``: the node it already went to."""
        outcome = f"placed on node {placed_on} instead" if placed_on else "placing it normally"
        trouble = self.writes.node_trouble(r.node)
        if trouble == NODE_GONE:
            why = "is gone"
        elif trouble == NOT_READY and r.expires_at is None:  # a wait ended by the sweep
            why = f"has not been Ready for over {self.not_ready_seconds:g} s"
        else:
            why = f"could not take the pod back within the wait ({trouble})"
        self.writes.report(
            pod,
            "fallback",
            f"node {r.node} {why}: {outcome}" + (f", keeping IP {r.ip}" if r.ip else ""),
            warning=True,
        )
