"""The local-rebuild controller: opted-in pods come back on their node, with their volumes and IP.

How a rebuild goes (``docs/rebuild.md`` has the whole story):

1. An opted-in pod (``fulcrum.io/rebuild: local``) gets the finalizer ``fulcrum.io/rebuild``, so
   it cannot vanish before its room is reserved; bad annotations, ``emptyDir`` volumes (unless
   their loss is accepted) and unsupported owners are refused with an Event instead.
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

Changes of a StatefulSet with ``updateStrategy: OnDelete`` that touch only images and cpu/memory
are applied in place (same pod, same node, same IP): images by a pod update, cpu/memory through
the ``resize`` subresource; anything else is a local recreate. All state is in the apiserver;
this process keeps only caches.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from kubernetes import client

from kube import api, ippool
from kube.hooks import Verdict, combine, default_hook_registry, hooks_for
from kube.informer import Informer, update_object
from rebuild.workqueue import WorkQueue

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
ABANDON_SECONDS = 120.0  # a reservation nothing came for is dropped after this
EXPIRED_GRACE = timedelta(minutes=5)  # an expired reservation keeps its IP this long
COMPONENT = "fulcrum-rebuild"
RELEASED_REMEMBERED = 10_000  # finalizers removed, remembered so a lagging watch replays none
Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _id(obj: Obj) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _now() -> datetime:
    return datetime.now(UTC)


CRASH_ENV = "FULCRUM_REBUILD_CRASH_AT"


def crash_point(step: str) -> None:
    """Fault injection for tests: exit abruptly at ``step`` if $FULCRUM_REBUILD_CRASH_AT says so.

    Steps: ``reserved`` (Reservation written, IP and finalizer untouched), ``released``
    (finalizer removed: the predecessor goes), ``claiming`` (successor bound, its claim not
    yet recorded).
    """
    if os.environ.get(CRASH_ENV) == step:
        log.error("crash point %s reached: exiting", step)
        os._exit(3)


class Store:
    """The informers' sink: the latest object of each kind, and work keys for what changed."""

    KINDS = ("pods", "reservations", "ippools", "statefulsets")

    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in self.KINDS}
        self.gone: dict[str, Obj] = {}  # pods deleted since last reconciled: their last state

    def apply(self, kind: str, event: str, obj: Obj) -> None:
        key = _id(obj)
        with self.lock:
            if event == "DELETED":
                self.objects[kind].pop(key, None)
                if kind == "pods":
                    self.gone[key] = obj
            else:
                self.objects[kind][key] = obj
        self._enqueue(kind, key, obj)

    def replace(self, kind: str, objects: Iterable[Obj]) -> None:
        fresh = {_id(o): o for o in objects}
        with self.lock:
            if kind == "pods":
                for key in self.objects[kind].keys() - fresh.keys():
                    self.gone[key] = self.objects[kind][key]
            self.objects[kind] = fresh
        for key, obj in fresh.items():
            self._enqueue(kind, key, obj)

    def _enqueue(self, kind: str, key: str, obj: Obj) -> None:
        if kind == "statefulsets":  # its template changed: look at its opted-in pods
            for pod in self.owned_pods("StatefulSet", key):
                self.queue.add(f"pods/{_id(pod)}")
        elif kind != "pods" or _relevant(obj):
            # first a pod held by our finalizer (its successor waits for it to go), and an
            # opted-in pod not guarded yet (deleted before that, it would not come back locally)
            meta = _meta(obj)
            finalized = api.FINALIZER in (meta.get("finalizers") or [])
            deleting = bool(meta.get("deletionTimestamp"))
            unguarded = (
                not finalized and not deleting and api.REBUILD in (meta.get("annotations") or {})
            )
            urgent = (kind == "pods") and ((deleting and finalized) or unguarded)
            self.queue.add(f"{kind}/{key}", urgent=urgent)

    def get(self, kind: str, key: str) -> Obj | None:
        with self.lock:
            return self.objects[kind].get(key)

    def take_gone(self, key: str) -> Obj | None:
        with self.lock:
            return self.gone.pop(key, None)

    def all(self, kind: str) -> list[Obj]:
        with self.lock:
            return list(self.objects[kind].values())

    def owned_pods(self, kind: str, key: str) -> list[Obj]:
        namespace, name = key.split("/", 1)
        return [
            pod
            for pod in self.all("pods")
            if _meta(pod).get("namespace") == namespace
            and any(
                ref.get("kind") == kind and ref.get("name") == name
                for ref in _meta(pod).get("ownerReferences") or []
            )
        ]


def _unplaced(pod: Obj) -> bool:
    """Not bound to a node yet, and not going away."""
    return not (pod.get("spec") or {}).get("nodeName") and not _meta(pod).get("deletionTimestamp")


def _relevant(pod: Obj) -> bool:
    meta = _meta(pod)
    annotations = meta.get("annotations") or {}
    return (
        api.REBUILD in annotations
        or api.IP_POOL in annotations
        or api.FINALIZER in (meta.get("finalizers") or [])
    )


class Controller:
    """Reconciles pods, reservations and pools; see the module docstring for the protocol."""

    def __init__(self, api_client: Any, *, workers: int = 4) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.queue = WorkQueue()
        self.store = Store(self.queue)
        self.hooks = default_hook_registry()
        self.workers = workers
        self.identity = f"{COMPONENT}-{uuid.uuid4().hex[:8]}"
        self._absent: set[str] = set()  # pool holders seen without a live owner once
        self._idle: dict[str, float] = {}  # held reservation -> since when no successor came
        # uids whose finalizer we removed: our watch may still show them terminating (recent
        # ones; a restart re-lists, and a re-list shows no such pod)
        self._released: dict[str, None] = {}
        self._stop = threading.Event()
        self.informers: list[Informer] = []

    # --- running -----------------------------------------------------------------------------
    def start(self, *, sync_timeout: float = 120) -> None:
        custom = functools.partial(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION)
        self.informers = [
            Informer("pods", self.core.list_pod_for_all_namespaces, self.store),
            Informer("reservations", functools.partial(custom, api.RESERVATIONS), self.store),
            Informer("ippools", functools.partial(custom, api.IPPOOLS), self.store),
            Informer("statefulsets", self.apps.list_stateful_set_for_all_namespaces, self.store),
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
        log.info("rebuild controller %s running", self.identity)

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
            try:
                retry_after = self.reconcile(key)
                self.queue.forget(key)
                if retry_after is not None:
                    self.queue.add_after(key, retry_after)
            except Exception as exc:
                log.warning("reconciling %s: %s; retrying", key, exc)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)

    def reconcile(self, key: str) -> float | None:
        """Handle one work key; the seconds after which to look again, if any."""
        if key == "sweep":
            self.sweep()
            return None
        kind, ref = key.split("/", 1)
        if kind == "reservations":
            found = self.store.get("reservations", ref)
            return self.reservation(api.Reservation.from_object(found)) if found else None
        pod = self.store.get("pods", ref)
        if pod is None:
            gone = self.store.take_gone(ref)
            if gone is not None:
                self.pod_gone(gone)
            return None
        return self.pod(pod)

    # --- pods --------------------------------------------------------------------------------
    def pod(self, pod: Obj) -> float | None:
        meta = _meta(pod)
        annotations = meta.get("annotations") or {}
        finalized = api.FINALIZER in (meta.get("finalizers") or [])
        deleting = bool(meta.get("deletionTimestamp"))
        refusal = self.refusal(pod)
        create_first = not refusal and api.parse_options(annotations).order == "create-first"
        if refusal or api.REBUILD not in annotations or create_first:
            # create-first successors start beside their predecessor: nothing to hold
            if refusal:
                self.report(pod, "refused", refusal, warning=True)
            if finalized:  # nothing to hold for it: let it go (a live pod keeps its IP)
                if deleting:
                    self.release_pod_ip(pod)
                self.remove_finalizer(pod)
            return None
        node = (pod.get("spec") or {}).get("nodeName")
        if deleting:
            if finalized and meta.get("uid") not in self._released:
                if node:
                    claimed = annotations.get(api.RESERVATION)
                    if claimed and self.take_over(pod, claimed) is not None:
                        # deleted before we finished its claim: the IP is still the claimed
                        # reservation's; make it the pod's so the new reservation takes it
                        self.delete_reservation(str(meta["namespace"]), claimed)
                    self.reserve(pod)
                else:
                    self.release_pod_ip(pod)
                self.remove_finalizer(pod)
                crash_point("released")
            return None
        if not finalized:
            self.add_finalizer(pod)
        claimed = annotations.get(api.RESERVATION)
        if node and claimed:
            retry = self.finish(pod, claimed)
            if retry is not None or self.status(pod).get("action") == "claimed":
                return retry
        if node:
            return self.in_place(pod)
        return None

    def refusal(self, pod: Obj) -> str:
        """Why this pod's annotations cannot be honoured, or ""."""
        annotations = _meta(pod).get("annotations") or {}
        errors = api.option_errors(annotations)
        if errors:
            return "; ".join(str(e) for e in errors)
        try:
            hooks_for(annotations, self.hooks)
        except ValueError as exc:
            return str(exc)
        options = api.parse_options(annotations)
        if not options.enabled:
            return ""
        lossy = api.data_loss_volumes(pod)
        if lossy and not options.accept_data_loss:
            return (
                f"volume(s) {', '.join(lossy)} are emptyDir or ephemeral: their data would not "
                f'survive a rebuild; annotate {api.ACCEPT_DATA_LOSS}: "true" to accept that'
            )
        if api.successor_key(pod) is None:
            owners = [r.get("kind") for r in _meta(pod).get("ownerReferences") or []]
            return (
                f"pods owned by {', '.join(map(str, owners))} cannot be rebuilt locally; "
                "supported: bare pods, Deployments, ReplicaSets and StatefulSets"
            )
        return ""

    def reserve(self, pod: Obj) -> None:
        """Hold the deleted pod's node room, IP and volumes for its successor."""
        meta = _meta(pod)
        namespace, uid = str(meta["namespace"]), str(meta["uid"])
        options = api.parse_options(meta.get("annotations") or {})
        name = api.reservation_name(uid)
        ip = (meta.get("annotations") or {}).get(api.ASSIGNED_IP)
        devices = (meta.get("annotations") or {}).get("fulcrum.io/gpu-devices")
        reservation = api.Reservation(
            name=name,
            namespace=namespace,
            key=str(api.successor_key(pod)),
            node=str(pod["spec"]["nodeName"]),
            predecessor=str(meta["name"]),
            predecessor_uid=uid,
            template=api.reservation_template(pod),
            devices=tuple(int(d) for d in devices.split(",")) if devices else None,
            ip=ip,
            pool=options.pool if ip else None,
            claims=api.claim_names(pod),
            fallback=options.fallback,
            expires_at=(
                _now() + timedelta(seconds=options.wait_seconds)
                if options.fallback == "reschedule"
                else None
            ),
            phase="Held",
            claimed_by=None,
            resource_version=None,
        )
        if self.store.get("reservations", f"{namespace}/{name}") is None:
            try:
                self.custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.RESERVATIONS, reservation.to_object()
                )
                self.event(
                    pod,
                    "Reserved",
                    f"node {reservation.node}"
                    + (f", IP {ip}" if ip else "")
                    + (f", PVCs {', '.join(reservation.claims)}" if reservation.claims else "")
                    + f" held for the successor of {reservation.key}",
                )
            except client.ApiException as exc:
                if exc.status != 409:  # 409: made before a restart
                    raise
            crash_point("reserved")
        if ip and options.pool:
            self.move_ip(namespace, options.pool, ip, f"pod:{uid}", f"reservation:{name}")

    def pending_successors(self, namespace: str, key: str) -> list[Obj]:
        return [
            pod
            for pod in self.store.all("pods")
            if _meta(pod).get("namespace") == namespace
            and _unplaced(pod)
            and api.successor_key(pod) == key
        ]

    def take_over(self, pod: Obj, claimed: str) -> api.Reservation | None:
        """Hand the IP of reservation ``claimed`` (which ``pod`` claimed at bind) to the pod;
        the reservation, or None if it is gone already."""
        meta = _meta(pod)
        namespace, uid = str(meta["namespace"]), str(meta["uid"])
        found = self.store.get("reservations", f"{namespace}/{claimed}")
        if found is None and self.status(pod).get("action") not in ("claimed", "rebuilt"):
            # our reservations watch may lag the pods watch: ask before deciding it is done
            found = self.read_custom(api.RESERVATIONS, namespace, claimed)
        if found is None:
            return None
        crash_point("claiming")
        reservation = api.Reservation.from_object(found)
        if reservation.ip and reservation.pool:
            self.move_ip(
                namespace, reservation.pool, reservation.ip, f"reservation:{claimed}", f"pod:{uid}"
            )
        return reservation

    def finish(self, pod: Obj, claimed: str) -> float | None:
        """The successor was bound on its reservation: give it the IP, drop the reservation."""
        meta = _meta(pod)
        namespace = str(meta["namespace"])
        reservation = self.take_over(pod, claimed)
        if reservation is not None:
            node = pod["spec"]["nodeName"]
            where = f"back on node {node}"
            if node != reservation.node:
                where = f"on node {node} (node {reservation.node} could not take it back)"
                if self.status(pod).get("action") != "fallback":
                    # the extender stops holding a room the moment it expires, so the pod
                    # may be placed before expire() runs and finds no pending successor
                    self.report_fallback(pod, reservation, placed_on=node)
            self.report(  # before the reservation goes, so a crash cannot lose this status
                pod,
                "claimed",
                f"{where} in place of {reservation.predecessor}"
                + (f" with IP {reservation.ip}" if reservation.ip else "")
                + (f" and PVCs {', '.join(reservation.claims)}" if reservation.claims else ""),
            )
            self.delete_reservation(namespace, claimed)
            return None  # the status write brings the pod back here for the post-rebuild hooks
        status = self.status(pod)
        if status.get("action") != "claimed":
            return None
        verdict = combine(
            hook.post_rebuild(pod) for hook in hooks_for(meta.get("annotations"), self.hooks)
        )
        if not verdict.allow:
            return verdict.retry_after or 1.0
        self.report(pod, "rebuilt", status.get("reason", "rebuilt locally"), event=False)
        return None

    def in_place(self, pod: Obj) -> float | None:
        """StatefulSets with OnDelete: images and cpu/memory in place, the rest recreated."""
        owner = next(
            (
                r
                for r in _meta(pod).get("ownerReferences") or []
                if r.get("controller") and r.get("kind") == "StatefulSet"
            ),
            None,
        )
        if owner is None:
            return None
        sts = self.store.get("statefulsets", f"{_meta(pod)['namespace']}/{owner['name']}")
        if sts is None or (sts.get("spec") or {}).get("updateStrategy", {}).get("type") != (
            "OnDelete"
        ):
            return None
        revision = (sts.get("status") or {}).get("updateRevision")
        labels = _meta(pod).get("labels") or {}
        if not revision or labels.get("controller-revision-hash") == revision:
            return None
        verdict = self.pre_rebuild(pod)
        if not verdict.allow:
            self.report(pod, "delayed", verdict.reason)
            return verdict.retry_after or 5.0
        template = sts["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
        change = _in_place_change(pod["spec"], template, claims)
        name, namespace = _meta(pod)["name"], _meta(pod)["namespace"]
        if change is not None and self.resize(pod, change.resources):
            patch: list[dict[str, Any]] = [
                {"op": "replace", "path": f"/spec/containers/{i}/image", "value": image}
                for i, image in change.images.items()
            ]
            patch.append(
                {
                    "op": "replace",
                    "path": "/metadata/labels/controller-revision-hash",
                    "value": revision,
                }
            )
            if not self._patch_pod(_meta(pod), patch):
                return None
            what = " and ".join(
                w
                for w, done in (("image", change.images), ("cpu/memory", change.resources))
                if done
            )
            self.report(pod, "in-place", f"{what} updated in place to revision {revision}")
        else:
            self.report(pod, "recreating", f"local recreate for revision {revision}")
            try:  # this very pod, not a successor of the same name
                self.core.delete_namespaced_pod(
                    name, namespace, body={"preconditions": {"uid": _meta(pod)["uid"]}}
                )
            except client.ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        return None

    def resize(self, pod: Obj, resources: Mapping[str, Mapping[str, Any]]) -> bool:
        """cpu/memory through the pod's ``resize`` subresource; False if the server refuses."""
        if not resources:
            return True
        body = {
            "metadata": {"uid": _meta(pod)["uid"]},  # this very pod (422 otherwise)
            "spec": {
                "containers": [{"name": n, "resources": r} for n, r in sorted(resources.items())]
            },
        }
        try:
            self.core.patch_namespaced_pod_resize(_meta(pod)["name"], _meta(pod)["namespace"], body)
        except client.ApiException as exc:
            if exc.status in (400, 403, 404, 405, 422):  # unsupported, forbidden or infeasible
                log.info("resize of %s refused (%s): recreating it instead", _id(pod), exc.reason)
                return False
            raise
        return True

    def pre_rebuild(self, pod: Obj) -> Verdict:
        hooks = hooks_for(_meta(pod).get("annotations"), self.hooks)
        return combine(hook.pre_rebuild(pod) for hook in hooks)

    def pod_gone(self, pod: Obj) -> None:
        """A pod left the apiserver: return its IP unless a reservation holds it now."""
        self.release_pod_ip(pod, settle=False)

    def release_pod_ip(self, pod: Obj, *, settle: bool = True) -> None:
        """Return the pod's address to its pool. Without ``settle``, only if the pool still
        says the pod holds it (one conditional write): otherwise a reservation took it over, or
        it was released already, and the sweep deals with anything left over."""
        meta = _meta(pod)
        annotations = meta.get("annotations") or {}
        pool = annotations.get(api.IP_POOL)
        if pool and "/" not in pool:
            holder = f"pod:{meta.get('uid')}"
            ip = annotations.get(api.ASSIGNED_IP)
            if ip:
                self.move_ip(str(meta["namespace"]), pool, ip, holder, None, settle=settle)
            else:  # never bound with an address, or bound by another scheduler: check the pool
                self.update_pool(str(meta["namespace"]), pool, functools.partial(_release, holder))

    # --- reservations --------------------------------------------------------------------------
    def reservation(self, r: api.Reservation) -> float | None:
        now = _now()
        if r.phase == "Held" and r.expires_at is not None:
            if now < r.expires_at:
                return (r.expires_at - now).total_seconds() + 0.05
            self.expire(r)
            return EXPIRED_GRACE.total_seconds()
        if r.phase == "Expired" and r.expires_at is not None:
            if now < r.expires_at + EXPIRED_GRACE:
                return (r.expires_at + EXPIRED_GRACE - now).total_seconds()
            if r.ip and r.pool:
                self.move_ip(r.namespace, r.pool, r.ip, f"reservation:{r.name}", None)
            self.delete_reservation(r.namespace, r.name)
        return None

    def expire(self, r: api.Reservation) -> None:
        def mark(obj: dict[str, Any]) -> dict[str, Any] | None:
            if (obj.get("status") or {}).get("phase", "Held") != "Held":
                return None
            obj.setdefault("status", {})["phase"] = "Expired"
            return obj

        self.update_custom(api.RESERVATIONS, r.namespace, r.name, mark)
        for pod in self.pending_successors(r.namespace, r.key)[:1]:
            # the status write also makes kube-scheduler look at the pod again
            self.report_fallback(pod, r)

    def report_fallback(self, pod: Obj, r: api.Reservation, placed_on: str = "") -> None:
        """The RebuildFallback Event and status; ``placed_on``: the node it already went to."""
        outcome = f"placed on node {placed_on} instead" if placed_on else "placing it normally"
        self.report(
            pod,
            "fallback",
            f"node {r.node} could not take the pod back within the wait "
            f"({self.node_trouble(r.node)}): {outcome}" + (f", keeping IP {r.ip}" if r.ip else ""),
            warning=True,
        )

    def node_trouble(self, node: str) -> str:
        try:
            obj = self.core.read_node(node)
        except client.ApiException as exc:
            return "node is gone" if exc.status == 404 else f"node unreadable: {exc.reason}"
        if obj.spec.unschedulable:
            return "node is cordoned"
        ready = next((c for c in obj.status.conditions or [] if c.type == "Ready"), None)
        if ready is None or ready.status != "True":
            return "node is not Ready"
        return "node is full or kube-scheduler rejected it"

    # --- garbage collection ------------------------------------------------------------------
    def sweep(self) -> None:
        """Drop abandoned reservations; release addresses whose holder is gone.

        An address only when its holder was missing on two sweeps in a row (SWEEP_SECONDS
        apart), so a pod that is just being created is never mistaken for a missing one; a
        reservation only once nothing came for it for ABANDON_SECONDS (on two sweeps at least):
        under load a workload controller can take a while to create a successor.
        """
        idle: dict[str, float] = {}
        clock = time.monotonic()
        pods = self.store.all("pods")
        live = {str(_meta(p).get("uid")) for p in pods}  # predecessors still terminating, too
        claimed = {
            f"{_meta(p).get('namespace')}/{(_meta(p).get('annotations') or {})[api.RESERVATION]}"
            for p in pods
            if api.RESERVATION in (_meta(p).get("annotations") or {})
        }
        waiting = {  # (namespace, successor key) of every pending pod, once per sweep
            (_meta(p).get("namespace"), api.successor_key(p)) for p in pods if _unplaced(p)
        }
        for obj in self.store.all("reservations"):
            r = api.Reservation.from_object(obj)
            rid = f"{r.namespace}/{r.name}"
            if (
                r.phase != "Held"
                or r.predecessor_uid in live
                or rid in claimed
                or (r.namespace, r.key) in waiting
            ):
                continue
            idle[rid] = self._idle.get(rid, clock)
            if rid in self._idle and clock - idle[rid] >= ABANDON_SECONDS:  # scaled down, deleted
                self.event(
                    obj,
                    "RebuildAbandoned",
                    f"no successor of {r.key} appeared; "
                    f"released node {r.node}" + (f" and IP {r.ip}" if r.ip else ""),
                )
                if r.ip and r.pool:
                    self.update_pool(
                        r.namespace, r.pool, functools.partial(_release, f"reservation:{r.name}")
                    )
                self.delete_reservation(r.namespace, r.name)
        self._idle = idle
        reservations = {_meta(r).get("name") for r in self.store.all("reservations")}
        absent: set[str] = set()
        for pool in self.store.all("ippools"):
            namespace, name = _meta(pool)["namespace"], _meta(pool)["name"]
            for holder in ippool.holders(pool):
                kind, _, ref = holder.partition(":")
                if (kind == "pod" and ref not in live) or (
                    kind == "reservation" and ref not in reservations
                ):
                    key = f"{namespace}/{name}/{holder}"
                    absent.add(key)
                    if key in self._absent:
                        self.update_pool(namespace, name, functools.partial(_release, holder))
        self._absent = absent

    # --- apiserver writes ----------------------------------------------------------------------
    def move_ip(
        self, namespace: str, pool: str, ip: str, old: str, new: str | None, *, settle: bool = True
    ) -> None:
        """Hand ``ip`` from holder ``old`` to ``new`` (None: back to the pool) in one write.

        A JSON patch whose ``test`` makes it conditional on ``old`` still holding ``ip``: a
        compare-and-swap of that one entry, without reading (and rewriting) the whole pool. If
        the test fails (a retry after a crash, or a hand edit), the pool is read and the pure
        ``ippool`` rules decide (idempotent: nothing to move is no write), unless not ``settle``.
        """
        path = "/status/allocations/" + ip.replace("~", "~0").replace("/", "~1")
        ops: list[dict[str, Any]] = [{"op": "test", "path": path, "value": old}]
        ops.append(
            {"op": "replace", "path": path, "value": new} if new else {"op": "remove", "path": path}
        )
        try:
            self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                api.IPPOOLS,
                pool,
                ops,
                _content_type="application/json-patch+json",
            )
        except client.ApiException as exc:
            if exc.status not in (409, 422):
                raise
            if not settle:
                return
            if new:
                self.update_pool(namespace, pool, lambda p: ippool.transfer(p, old, new))
            else:
                self.update_pool(namespace, pool, functools.partial(_release, old))

    def read_custom(self, plural: str, namespace: str, name: str) -> Obj | None:
        """One of Fulcrum's custom objects as the apiserver has it now, or None (404)."""
        try:
            found: Obj = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, plural, name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def update_pool(
        self, namespace: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> None:
        self.update_custom(api.IPPOOLS, namespace, name, change)

    def update_custom(
        self,
        plural: str,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> None:
        """Compare-and-swap one of Fulcrum's custom objects (``kube.informer.update_object``)."""
        where = (api.GROUP, api.VERSION, namespace, plural, name)
        update_object(
            lambda: self.custom.get_namespaced_custom_object(*where),
            lambda body: self.custom.replace_namespaced_custom_object(*where, body),
            change,
        )

    def delete_reservation(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.RESERVATIONS, name
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def add_finalizer(self, pod: Obj) -> None:
        meta = _meta(pod)
        patch = {"metadata": {"finalizers": [api.FINALIZER]}}  # strategic merge: appended
        self._patch_pod(meta, patch)

    def remove_finalizer(self, pod: Obj) -> None:
        meta = _meta(pod)
        finalizers = list(meta.get("finalizers") or [])
        if api.FINALIZER not in finalizers:
            return
        index = finalizers.index(api.FINALIZER)
        patch = [  # fails (422) if the list changed since we read it; then we retry
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": api.FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        if self._patch_pod(meta, patch) and meta.get("deletionTimestamp"):
            self._released[str(meta["uid"])] = None
            while len(self._released) > RELEASED_REMEMBERED:
                del self._released[next(iter(self._released))]

    def _patch_pod(self, meta: Mapping[str, Any], patch: dict[str, Any] | list[Any]) -> bool:
        """Patch the pod ``meta`` describes, that very pod: a pod of the same name but another
        UID (a StatefulSet's next one, while our watch lags) is left alone. False if the pod is
        gone or replaced."""
        uid = meta["uid"]
        if isinstance(patch, list):  # JSON patch
            patch = [{"op": "test", "path": "/metadata/uid", "value": uid}, *patch]
        else:  # a merge patch naming another uid fails (422: metadata.uid is immutable)
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "uid": uid}}
        try:
            self.core.patch_namespaced_pod(meta["name"], meta["namespace"], patch)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 422 and self._replaced(meta):
                return False
            raise
        return True

    def _replaced(self, meta: Mapping[str, Any]) -> bool:
        """Whether the apiserver has no pod by this name with this UID any more."""
        try:
            current = self.core.read_namespaced_pod(
                meta["name"], meta["namespace"], _preload_content=False
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return bool(orjson.loads(current.data)["metadata"]["uid"] != meta["uid"])

    @staticmethod
    def status(pod: Obj) -> dict[str, Any]:
        raw = (_meta(pod).get("annotations") or {}).get(api.STATUS)
        try:
            value = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def report(
        self, pod: Obj, action: str, reason: str, *, warning: bool = False, event: bool = True
    ) -> None:
        """Write the status annotation and an Event, unless the pod already says exactly this."""
        current = self.status(pod)
        if current.get("action") == action and current.get("reason") == reason:
            return
        status = {"action": action, "reason": reason, "time": _now().isoformat()}
        patch = {"metadata": {"annotations": {api.STATUS: orjson.dumps(status).decode()}}}
        if self._patch_pod(_meta(pod), patch) and event:
            self.event(pod, f"Rebuild{action.title().replace('-', '')}", reason, warning=warning)

    def event(self, obj: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        meta = _meta(obj)
        now = _now()
        body = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}"},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj.get("kind", "Pod"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except client.ApiException as exc:  # an Event is worth a log line, not a retry
            log.warning("event %s on %s: %s", reason, _id(obj), exc.reason)


def _release(holder: str, pool: dict[str, Any]) -> dict[str, Any] | None:
    return ippool.release(pool, holder)


_SAME = (
    "name",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "volumeMounts",
    "ports",
    "workingDir",
)


def _own(items: Any) -> list[Any]:
    """``items`` without what the ServiceAccount admission plugin adds to every pod."""
    return [
        item for item in items or [] if not str(item.get("name", "")).startswith("kube-api-access-")
    ]


@dataclass(frozen=True)
class InPlace:
    """What can change in a running pod: images (a pod update) and cpu/memory (a resize)."""

    images: dict[int, str]  # container index -> new image
    resources: dict[str, dict[str, Any]]  # container name -> new resources


def _in_place_change(pod_spec: Obj, template: Obj, claim_templates: set[str]) -> InPlace | None:
    """How to take ``template``'s change in place, or None if anything else differs.

    The StatefulSet controller adds a volume per claim template (``claim_templates``) to its
    pods, and the ServiceAccount admission plugin a token volume: neither is a difference.
    """
    have, want = pod_spec.get("containers") or [], template.get("containers") or []
    inits = [_as_admitted(c) for c in pod_spec.get("initContainers") or []]
    if (
        len(have) != len(want)
        or inits != [_as_admitted(c) for c in template.get("initContainers") or []]
        or [v for v in _own(pod_spec.get("volumes")) if v.get("name") not in claim_templates]
        != _own(template.get("volumes"))
    ):
        return None
    change = InPlace({}, {})
    for i, (a, b) in enumerate(zip(have, want, strict=True)):
        a, b = _as_admitted(a), _as_admitted(b)
        if any(a.get(k) != b.get(k) for k in _SAME if k != "resources"):
            return None
        if a.get("image") != b.get("image"):
            change.images[i] = str(b.get("image"))
        if a.get("resources") != b.get("resources"):
            if _without_cpu_memory(a.get("resources")) != _without_cpu_memory(b.get("resources")):
                return None
            change.resources[str(b["name"])] = b.get("resources") or {}
    return change if change.images or change.resources else None


def _without_cpu_memory(resources: Any) -> dict[str, Any]:
    return {
        kind: {r: q for r, q in (values or {}).items() if r not in ("cpu", "memory")}
        for kind, values in (resources or {}).items()
    }


def _as_admitted(container: Obj) -> dict[str, Any]:
    """A container as a pod made from it has it: the token mount dropped, requests defaulted."""
    out = {**container, "volumeMounts": _own(container.get("volumeMounts")) or None}
    resources = dict(container.get("resources") or {})
    if resources.get("limits") and not resources.get("requests"):
        resources["requests"] = resources["limits"]  # the apiserver copies limits to requests
    out["resources"] = resources or None
    return out
