"""Every call the rebuild controller makes to the apiserver: the one module that uses the client.

It is given an ``ApiClient`` and answers in Fulcrum's terms: a write that found its object
gone or replaced is a ``False``, not an exception; a refusal the controller cannot settle
itself is a ``rebuild.errors.ApiError`` (the worker retries it with back-off). Besides the
writes, it makes the few reads a write depends on: the informers' lists, a Reservation the
watch may not show yet, a pod's current UID, a node's state for an Event.

Every pod write names the pod's UID, so a namesake (a StatefulSet's next pod, while our watch
still shows its predecessor) is never touched.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from kubernetes import client

from kube import api, ippool, objects
from kube.informer import ListFn, update_object
from kube.objects import ObjectMeta, Raw
from rebuild.errors import ApiError, Conflict, Invalid, NotFound, api_error

log = logging.getLogger(__name__)

COMPONENT = "fulcrum-rebuild"
NODE_GONE = "node is gone"
NOT_READY = "node is not Ready"
MAX_REASON = 1024  # characters of a status reason or Event message: bounded, so it always fits
RESIZE_REFUSED = (400, 403, 404, 405, 422)  # unsupported, forbidden or infeasible
Change = Callable[[dict[str, Any]], dict[str, Any] | None]
BATCH_MOVES = 256  # address moves written to a pool in one patch, at most
EVENTS_QUEUED = 10_000  # Events waiting to be written; beyond this they are logged and dropped


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except client.ApiException as exc:
        raise api_error(exc.status or 0, str(exc.reason)) from exc


def _release(holder: str, pool: dict[str, Any]) -> dict[str, Any] | None:
    return ippool.release(pool, holder)


@dataclass(eq=False)
class _Move:
    """One address move waiting for its pool's next write."""

    ops: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    written: bool = False
    lead: bool = False  # handed the next write to make


class PoolPatches:
    """Address moves of one pool written together: a group commit.

    A rollout of N opted-in pods moves 2N addresses in one IPPool; written one by one, every
    worker waits on writes of the same object that the apiserver can only apply in turn. Here
    the caller that finds no write to its pool in flight makes the next one, with every move
    that arrived meanwhile (up to BATCH_MOVES) in one JSON patch, whose ``test`` ops keep each
    move the compare-and-swap it was; then it hands the next write to the first caller still
    waiting. A batch that fails (one ``test`` failed: a retry after a crash, a hand edit) tells
    each of its callers to write its move alone, so each gets its own outcome.
    """

    def __init__(self, send: Callable[[str, str, list[dict[str, Any]]], None]) -> None:
        self.send = send
        self.lock = threading.Lock()
        self.waiting: dict[tuple[str, str], list[_Move]] = {}  # a key here: a write in flight

    def write(self, namespace: str, pool: str, ops: list[dict[str, Any]]) -> bool:
        """Write ``ops`` in a batch; whether that was done. A batch of this move alone raises
        its own error; False: the batch failed, write the move alone."""
        key, move = (namespace, pool), _Move(ops)
        with self.lock:
            lead = key not in self.waiting
            self.waiting.setdefault(key, []).append(move)
        if not lead:
            move.done.wait()
            if not move.lead:
                return move.written
        with self.lock:
            batch = self.waiting[key][:BATCH_MOVES]
            del self.waiting[key][: len(batch)]
        written = False
        try:
            self.send(namespace, pool, [op for m in batch for op in m.ops])
            written = True
        except ApiError:
            if len(batch) == 1:
                raise
        finally:  # on any error too: nobody waits forever
            for m in batch:
                m.written = written
            self._hand_on(key, batch, move)
        return written

    def _hand_on(self, key: tuple[str, str], batch: list[_Move], mine: _Move) -> None:
        with self.lock:
            rest = self.waiting[key]
            if rest:
                rest[0].lead = True
                rest[0].done.set()
            else:
                del self.waiting[key]
        for m in batch:
            if m is not mine:
                m.done.set()


class EventSender:
    """Events written by one thread of their own, so no worker waits for them: an Event tells
    people what happened, and is never what a rebuild waits on. ``flush`` waits until every
    queued Event has been tried."""

    def __init__(self, create: Callable[[str, dict[str, Any]], object]) -> None:
        self.create = create
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(EVENTS_QUEUED)
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def send(self, namespace: str, body: dict[str, Any]) -> None:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="events", daemon=True)
                self.thread.start()
        try:
            self.queue.put_nowait((namespace, body))
        except queue.Full:
            log.warning("event %s dropped: %d Events wait already", body["reason"], EVENTS_QUEUED)

    def flush(self) -> None:
        self.queue.join()

    def _run(self) -> None:
        while True:
            namespace, body = self.queue.get()
            try:
                self.create(namespace, body)
            except Exception as exc:  # an Event that cannot be written is worth a log line
                where = f"{namespace}/{body['involvedObject']['name']}"
                log.warning("event %s on %s: %s", body["reason"], where, exc)
            finally:
                self.queue.task_done()


class Writes:
    """The controller's apiserver calls; see the module docstring."""

    def __init__(self, api_client: Any) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.pool_patches = PoolPatches(self._patch_pool)
        self.events = EventSender(lambda ns, body: self.core.create_namespaced_event(ns, body))

    def lists(self) -> dict[str, ListFn]:
        """The list (and watch) call of each kind ``rebuild.store.Store`` keeps."""
        custom = functools.partial(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION)
        return {
            "pods": self.core.list_pod_for_all_namespaces,
            "reservations": functools.partial(custom, api.RESERVATIONS),
            "ippools": functools.partial(custom, api.IPPOOLS),
            "statefulsets": self.apps.list_stateful_set_for_all_namespaces,
            "deployments": self.apps.list_deployment_for_all_namespaces,
        }

    # --- Deployments ---------------------------------------------------------------------------
    def held_deployments(self) -> list[Raw]:
        """Every Deployment of the cluster that carries ``fulcrum.io/prepull-hold``."""
        with _translated():
            found = self.apps.list_deployment_for_all_namespaces(_preload_content=False)
        return [
            d
            for d in orjson.loads(found.data).get("items") or []
            if api.PREPULL_HOLD in (objects.meta(d).get("annotations") or {})
        ]

    def resume_deployment(self, meta: ObjectMeta, hold: str, *, unpause: bool) -> bool:
        """End Fulcrum's pre-pull hold of a Deployment: remove ``fulcrum.io/prepull-hold`` (if
        it still says ``hold``) and, with ``unpause``, set ``spec.paused: false`` in the same
        write (if it is still paused). False if the hold is not (or no longer) this one: a
        JSON patch whose tests make it touch only the pause Fulcrum made."""
        key = api.PREPULL_HOLD.replace("~", "~0").replace("/", "~1")
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": f"/metadata/annotations/{key}", "value": hold},
            {"op": "remove", "path": f"/metadata/annotations/{key}"},
        ]
        if unpause:
            patch += [
                {"op": "test", "path": "/spec/paused", "value": True},
                {"op": "replace", "path": "/spec/paused", "value": False},
            ]
        try:
            with _translated():
                self.apps.patch_namespaced_deployment(meta["name"], meta["namespace"], patch)
        except (NotFound, Invalid):
            return False
        return True

    # --- Fulcrum's custom objects ------------------------------------------------------------
    def create_reservation(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Reservation; False if it exists (made before a restart)."""
        try:
            with _translated():
                self.custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.RESERVATIONS, body
                )
        except Conflict:
            return False
        return True

    def read_custom(self, plural: str, namespace: str, name: str) -> Raw | None:
        """One of Fulcrum's custom objects as the apiserver has it now, or None (404)."""
        try:
            with _translated():
                found: Raw = self.custom.get_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, plural, name
                )
        except NotFound:
            return None
        return found

    def update_custom(self, plural: str, namespace: str, name: str, change: Change) -> None:
        """Compare-and-swap one of Fulcrum's custom objects (``kube.informer.update_object``)."""
        where = (api.GROUP, api.VERSION, namespace, plural, name)
        with _translated():
            update_object(
                lambda: self.custom.get_namespaced_custom_object(*where),
                lambda body: self.custom.replace_namespaced_custom_object(*where, body),
                change,
            )

    def update_pool(self, namespace: str, name: str, change: Change) -> None:
        self.update_custom(api.IPPOOLS, namespace, name, change)

    def release_ip(self, namespace: str, pool: str, holder: str) -> None:
        """Return whatever address ``holder`` has in ``pool`` (read-modify-write)."""
        self.update_pool(namespace, pool, functools.partial(_release, holder))

    def move_ip(
        self, namespace: str, pool: str, ip: str, old: str, new: str | None, *, settle: bool = True
    ) -> None:
        """Hand ``ip`` from holder ``old`` to ``new`` (None: back to the pool).

        A JSON patch whose ``test`` makes it conditional on ``old`` still holding ``ip``: a
        compare-and-swap of that one entry, without reading (and rewriting) the whole pool,
        batched with the moves other workers make meanwhile (``PoolPatches``). If the test
        fails (a retry after a crash, or a hand edit), the pool is read and the pure ``ippool``
        rules decide (idempotent: nothing to move is no write), unless not ``settle``.
        """
        path = "/status/allocations/" + ip.replace("~", "~0").replace("/", "~1")
        ops: list[dict[str, Any]] = [{"op": "test", "path": path, "value": old}]
        ops.append(
            {"op": "replace", "path": path, "value": new} if new else {"op": "remove", "path": path}
        )
        try:
            # a move that may well find its address gone (not ``settle``) is written alone, so
            # a failed test fails no batch
            if not settle or not self.pool_patches.write(namespace, pool, ops):
                self._patch_pool(namespace, pool, ops)
        except (Conflict, Invalid):
            if not settle:
                return
            if new:
                self.update_pool(namespace, pool, lambda p: ippool.transfer(p, old, new))
            else:
                self.release_ip(namespace, pool, old)

    def _patch_pool(self, namespace: str, pool: str, ops: list[dict[str, Any]]) -> None:
        with _translated():
            self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                api.IPPOOLS,
                pool,
                ops,
                _content_type="application/json-patch+json",
            )

    def delete_reservation(self, namespace: str, name: str) -> None:
        try:
            with _translated():
                self.custom.delete_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.RESERVATIONS, name
                )
        except NotFound:
            pass

    # --- pods ----------------------------------------------------------------------------------
    def add_finalizer(self, meta: ObjectMeta) -> None:
        self.patch_pod(meta, {"metadata": {"finalizers": [api.FINALIZER]}})  # strategic: appended

    def remove_finalizer(self, meta: ObjectMeta) -> bool:
        """Remove our finalizer from the pod ``meta`` describes; whether this call removed it."""
        finalizers = list(meta.get("finalizers") or [])
        if api.FINALIZER not in finalizers:
            return False
        index = finalizers.index(api.FINALIZER)
        patch = [  # fails (422) if the list changed since we read it; then we retry
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": api.FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        return self.patch_pod(meta, patch)

    def patch_pod(self, meta: ObjectMeta, patch: dict[str, Any] | list[Any]) -> bool:
        """Patch the pod ``meta`` describes, that very pod: a pod of the same name but another
        UID (a StatefulSet's next one, while our watch lags) is left alone. False if the pod is
        gone or replaced."""
        uid = meta["uid"]
        if isinstance(patch, list):  # JSON patch
            patch = [{"op": "test", "path": "/metadata/uid", "value": uid}, *patch]
        else:  # a merge patch naming another uid fails (422: metadata.uid is immutable)
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "uid": uid}}
        try:
            with _translated():
                self.core.patch_namespaced_pod(meta["name"], meta["namespace"], patch)
        except NotFound:
            return False
        except Invalid:
            if self._replaced(meta):
                return False
            raise
        return True

    def _replaced(self, meta: ObjectMeta) -> bool:
        """Whether the apiserver has no pod by this name with this UID any more."""
        try:
            with _translated():
                current = self.core.read_namespaced_pod(
                    meta["name"], meta["namespace"], _preload_content=False
                )
        except NotFound:
            return True
        return bool(orjson.loads(current.data)["metadata"]["uid"] != meta["uid"])

    def resize(self, meta: ObjectMeta, resources: Mapping[str, Mapping[str, Any]]) -> bool:
        """cpu/memory through the pod's ``resize`` subresource; False if the server refuses."""
        if not resources:
            return True
        body = {
            "metadata": {"uid": meta["uid"]},  # this very pod (422 otherwise)
            "spec": {
                "containers": [{"name": n, "resources": r} for n, r in sorted(resources.items())]
            },
        }
        try:
            with _translated():
                self.core.patch_namespaced_pod_resize(meta["name"], meta["namespace"], body)
        except ApiError as exc:
            if exc.status in RESIZE_REFUSED:
                log.info(
                    "resize of %s/%s refused (%s): recreating it instead",
                    meta["namespace"],
                    meta["name"],
                    exc.reason,
                )
                return False
            raise
        return True

    def finalized_pods(self, *, deleting_only: bool) -> Iterator[Raw]:
        """Every pod of the cluster under ``fulcrum.io/rebuild`` (only those being deleted, with
        ``deleting_only``), listed a page at a time."""
        token = None
        while True:
            with _translated():
                page = self.core.list_pod_for_all_namespaces(
                    limit=500, _continue=token, _preload_content=False
                )
            found = orjson.loads(page.data)
            for pod in found.get("items") or []:
                if api.FINALIZER in objects.finalizers(pod) and (
                    objects.deleting(pod) or not deleting_only
                ):
                    yield pod
            token = (found.get("metadata") or {}).get("continue")
            if not token:
                return

    def lease_renewal(self, namespace: str, name: str) -> str | None:
        """What changes each time a controller renews Lease ``name`` (its holder and renew
        time), or None if there is no such Lease."""
        try:
            with _translated():
                lease = self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False
                )
        except NotFound:
            return None
        spec = orjson.loads(lease.data).get("spec") or {}
        return f"{spec.get('holderIdentity')}@{spec.get('renewTime')}"

    def hold_lease(self, namespace: str, name: str, holder: str, seconds: int) -> None:
        """Make ``holder`` the holder of Lease ``name`` for ``seconds`` (created if missing):
        the controller that held it fails to renew and exits, and none takes it meanwhile."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": seconds,
            "acquireTime": now,
            "renewTime": now,
        }
        with _translated():
            try:
                found = self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                body = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
                self.coordination.create_namespaced_lease(namespace, body)
                return
            lease = orjson.loads(found.data)
            lease["spec"] = {**(lease.get("spec") or {}), **spec}
            self.coordination.replace_namespaced_lease(name, namespace, lease)

    def evict_pod(self, meta: ObjectMeta) -> bool:
        """Evict this very pod through ``pods/eviction``, so PodDisruptionBudgets are honoured;
        False if one forbids it now (429). Gone or replaced already is done."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "deleteOptions": {"preconditions": {"uid": meta["uid"]}},
        }
        try:
            with _translated():
                self.core.create_namespaced_pod_eviction(meta["name"], meta["namespace"], body)
        except (NotFound, Conflict):
            pass
        except ApiError as exc:
            if exc.status == 429:
                return False
            raise
        return True

    def release(self, pod: Raw, why: str, *, warning: bool = True) -> bool:
        """Remove ``fulcrum.io/rebuild`` from ``pod`` without a Reservation, with an Event
        ``RebuildReleased`` saying ``why``; whether this call removed it."""
        if not self.remove_finalizer(objects.meta(pod)):
            return False
        self.event(pod, "RebuildReleased", why, warning=warning)
        return True

    # --- what people see -----------------------------------------------------------------------
    def report(
        self, pod: Raw, action: str, reason: str, *, warning: bool = False, event: bool = True
    ) -> None:
        """Write the status annotation and an Event, unless the pod already says exactly this."""
        meta = objects.meta(pod)
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"
        current = api.rebuild_status(meta.get("annotations") or {})
        if current.get("action") == action and current.get("reason") == reason:
            return
        now = datetime.now(UTC).isoformat()
        value = orjson.dumps({"action": action, "reason": reason, "time": now}).decode()
        patch = {"metadata": {"annotations": {api.STATUS: value}}}
        if self.patch_pod(meta, patch) and event:
            self.event(pod, f"Rebuild{action.title().replace('-', '')}", reason, warning=warning)

    def event(self, obj: Raw, reason: str, message: str, *, warning: bool = False) -> None:
        """An Event on ``obj``, sent by ``EventSender`` (this returns at once)."""
        meta = objects.meta(obj)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
            "message": message[:MAX_REASON],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.events.send(str(meta["namespace"]), body)

    def node_lost(self, node: str, not_ready_seconds: float) -> str:
        """Why a hold on ``node`` can never end well (NODE_GONE, or NOT_READY: its Ready
        condition not True for over ``not_ready_seconds``), or "" while it may yet."""
        try:
            obj = self.core.read_node(node)
        except client.ApiException as exc:
            if exc.status == 404:
                return NODE_GONE
            raise
        ready = next((c for c in obj.status.conditions or [] if c.type == "Ready"), None)
        if ready is None or ready.status == "True":
            return ""
        since = ready.last_transition_time
        if since is not None and (datetime.now(UTC) - since).total_seconds() < not_ready_seconds:
            return ""
        return NOT_READY

    def labelled_nodes(self, label: str, value: str) -> set[str]:
        """The names of the Nodes labelled ``label=value`` (one list call, however many)."""
        with _translated():
            found = self.core.list_node(label_selector=f"{label}={value}", _preload_content=False)
        return {str(objects.name(n)) for n in orjson.loads(found.data).get("items") or []}

    def node_trouble(self, node: str) -> str:
        """Why ``node`` may not have taken a pod back, as an Event says it."""
        try:
            obj = self.core.read_node(node)
        except client.ApiException as exc:
            return NODE_GONE if exc.status == 404 else f"node unreadable: {exc.reason}"
        if obj.spec.unschedulable:
            return "node is cordoned"
        ready = next((c for c in obj.status.conditions or [] if c.type == "Ready"), None)
        if ready is None or ready.status != "True":
            return NOT_READY
        return "node is full or kube-scheduler rejected it"
