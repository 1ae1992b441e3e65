"""An in-memory apiserver and one controller process over it, for the rebuild controller's tests.

``FakeApiserver`` answers exactly the calls the controller makes (pods, nodes, events and the
two custom resources) on plain dicts, with resourceVersions and compare-and-swap. ``Rig`` is one
controller process: ``sync`` delivers the watch events for what changed since the last sync,
``restart`` is a new process that lists everything afresh. No threads, no network.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
from kubernetes.client import ApiClient, ApiException

from kube import api, ippool
from rebuild.controller import Controller
from rebuild.errors import TemporaryError
from rebuild.store import Store
from tests import builders

Obj = dict[str, Any]

NS = "ns"
NODE = "n1"
POOL = "web"
IP = "10.0.0.2"
OLD, NEW = "old-uid", "new-uid"
HELD = api.reservation_name(OLD)
OPTED = {api.REBUILD: "local", api.IP_POOL: POOL}
BOUND = {**OPTED, api.ASSIGNED_IP: IP}  # what the extender writes at bind


def _key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _not_found(what: str) -> ApiException:
    return ApiException(status=404, reason=f"{what} not found")


# --- the fake apiserver -----------------------------------------------------------------------


def _json_patch(doc: Obj, op: Mapping[str, Any]) -> None:
    """One RFC 6902 operation (test, remove, replace, add); KeyError/IndexError if the path is
    missing, ValueError if a test fails."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    key: int | str = int(parts[-1]) if isinstance(parent, list) else parts[-1]
    kind = op["op"]
    if kind not in ("test", "remove", "replace", "add"):
        raise ValueError(f"unsupported op {kind}")
    if kind == "test" and parent[key] != op["value"]:
        raise ValueError(f"test of {op['path']} failed")
    if kind in ("remove", "replace"):
        del parent[key]
    if kind in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            parent.insert(int(key), value)
        else:
            parent[key] = value


def _strategic_merge(target: Obj, patch: Mapping[str, Any]) -> None:
    """Maps merge, None deletes, ``finalizers`` (patchStrategy merge) is a union."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif key == "finalizers":
            have = list(target.get(key) or [])
            target[key] = have + [f for f in value if f not in have]
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _strategic_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApiserver:
    """The apiserver calls the controller makes (``grep 'self.core.\\|self.custom.'
    rebuild/writes.py``)."""

    def __init__(self) -> None:
        self.resized: list[str] = []
        self.resize_refusal = 0  # an HTTP status to refuse resizes with (0: accept)
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in Store.KINDS}
        self.nodes: dict[str, SimpleNamespace] = {NODE: node()}
        self.events: list[Obj] = []
        self.deleted_pods: list[str] = []  # deleted or evicted
        self.evicted: list[str] = []
        self.eviction_refusal = 0  # an HTTP status to refuse evictions with (429: a PDB)
        self.leases: dict[str, Obj] = {}  # namespace/name -> Lease
        self._versions = itertools.count(1)

    # --- what other clients (users, controllers, kubelets) write ----------------------------
    def put(self, kind: str, obj: Mapping[str, Any]) -> Obj:
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[kind][_key(stored)] = stored
        return stored

    def get(self, kind: str, name: str) -> Obj | None:
        return self.objects[kind].get(f"{NS}/{name}")

    def pool(self) -> Obj:
        found = self.get("ippools", POOL)
        assert found is not None
        ippool.check_invariants(found)
        return found

    def reservations(self) -> list[Obj]:
        return list(self.objects["reservations"].values())

    def pod(self, name: str) -> Obj:
        found = self.get("pods", name)
        assert found is not None, f"pod {name} is gone"
        return found

    def status(self, name: str) -> dict[str, Any]:
        raw = self.pod(name)["metadata"].get("annotations", {}).get(api.STATUS)
        value: dict[str, Any] = orjson.loads(raw) if raw else {}
        return value

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]

    def delete_pod(self, name: str) -> None:
        """A user, or the workload's controller, deletes the pod."""
        self.delete_namespaced_pod(name, NS)

    # --- pods and nodes ---------------------------------------------------------------------
    def _pod(self, name: str, namespace: str) -> Obj:
        found = self.objects["pods"].get(f"{namespace}/{name}")
        if found is None:
            raise _not_found(f"pod {namespace}/{name}")
        return copy.deepcopy(found)

    def _save_pod(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            # the kubelet has long stopped the containers: the last finalizer lets it go
            del self.objects["pods"][_key(pod)]
            return pod
        return self.put("pods", pod)

    @staticmethod
    def _check_uid(pod: Obj, body: Any) -> None:
        """A patch naming another ``metadata.uid`` is invalid: uid is immutable."""
        uid = body.get("metadata", {}).get("uid") if isinstance(body, Mapping) else None
        if uid is not None and uid != pod["metadata"]["uid"]:
            raise ApiException(status=422, reason="metadata.uid: field is immutable")

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any) -> Obj:
        pod = self._pod(name, namespace)
        self._check_uid(pod, body)
        before = set(pod["metadata"].get("finalizers") or [])
        try:
            if isinstance(body, list):
                for op in body:
                    _json_patch(pod, op)
            else:
                _strategic_merge(pod, body)
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiException(status=422, reason=f"patch: {exc}") from exc
        added = set(pod["metadata"].get("finalizers") or []) - before
        if added and pod["metadata"].get("deletionTimestamp"):
            raise ApiException(status=422, reason="no new finalizers on an object being deleted")
        return self._save_pod(pod)

    def patch_namespaced_pod_resize(self, name: str, namespace: str, body: Obj) -> Obj:
        if self.resize_refusal:
            raise ApiException(status=self.resize_refusal, reason="resize refused")
        pod = self._pod(name, namespace)
        self._check_uid(pod, body)
        by_name = {c["name"]: c for c in pod["spec"]["containers"]}
        for container in body["spec"]["containers"]:
            by_name[container["name"]]["resources"] = copy.deepcopy(container["resources"])
        self.resized.append(f"{namespace}/{name}")
        return self._save_pod(pod)

    def read_namespaced_pod(
        self, name: str, namespace: str, _preload_content: bool = True
    ) -> SimpleNamespace:
        assert not _preload_content
        return SimpleNamespace(data=orjson.dumps(self._pod(name, namespace)))

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None) -> Obj:
        pod = self._pod(name, namespace)
        uid = ((body or {}).get("preconditions") or {}).get("uid")
        if uid is not None and uid != pod["metadata"]["uid"]:
            raise ApiException(status=409, reason="Precondition failed: UID")
        self.deleted_pods.append(f"{namespace}/{name}")
        pod["metadata"].setdefault("deletionTimestamp", "2026-11-27T08:00:00Z")
        return self._save_pod(pod)

    def create_namespaced_pod_eviction(self, name: str, namespace: str, body: Obj) -> Obj:
        assert body["kind"] == "Eviction" and body["metadata"]["name"] == name
        if self.eviction_refusal:
            raise ApiException(status=self.eviction_refusal, reason="disruption budget")
        self.evicted.append(f"{namespace}/{name}")
        return self.delete_namespaced_pod(name, namespace, body["deleteOptions"])

    def list_pod_for_all_namespaces(
        self, *, limit: int, _continue: str | None, _preload_content: bool
    ) -> SimpleNamespace:
        """Pages of ``limit`` pods in key order; the token: the last key listed."""
        assert not _preload_content
        pods = [
            (k, obj) for k, obj in sorted(self.objects["pods"].items()) if k > (_continue or "")
        ]
        page = [copy.deepcopy(obj) for _, obj in pods[:limit]]
        more = pods[limit - 1][0] if len(pods) > limit else None
        return SimpleNamespace(data=orjson.dumps({"metadata": {"continue": more}, "items": page}))

    def read_namespaced_lease(
        self, name: str, namespace: str, _preload_content: bool
    ) -> SimpleNamespace:
        found = self.leases.get(f"{namespace}/{name}")
        if found is None:
            raise _not_found(f"lease {namespace}/{name}")
        return SimpleNamespace(data=orjson.dumps(found))

    def create_namespaced_lease(self, namespace: str, body: Obj) -> Obj:
        self.leases[f"{namespace}/{body['metadata']['name']}"] = copy.deepcopy(body)
        return body

    def replace_namespaced_lease(self, name: str, namespace: str, body: Obj) -> Obj:
        assert f"{namespace}/{name}" in self.leases
        self.leases[f"{namespace}/{name}"] = copy.deepcopy(body)
        return body

    def list_node(self, *, label_selector: str, _preload_content: bool) -> SimpleNamespace:
        assert not _preload_content
        key, value = label_selector.split("=")
        items = [
            {"metadata": {"name": name}}
            for name, n in sorted(self.nodes.items())
            if n.metadata.labels.get(key) == value
        ]
        return SimpleNamespace(data=orjson.dumps({"items": items}))

    def read_node(self, name: str) -> SimpleNamespace:
        if name not in self.nodes:
            raise _not_found(f"node {name}")
        return self.nodes[name]

    def create_namespaced_event(self, namespace: str, body: Obj) -> Obj:
        assert body["involvedObject"]["namespace"] == namespace
        self.events.append(copy.deepcopy(body))
        return body

    # --- custom objects -----------------------------------------------------------------------
    def _custom(self, group: str, version: str, plural: str) -> dict[str, Obj]:
        assert (group, version) == (api.GROUP, api.VERSION)
        return self.objects[plural]

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Obj
    ) -> Obj:
        key = f"{namespace}/{body['metadata']['name']}"
        if key in self._custom(group, version, plural):
            raise ApiException(status=409, reason=f"{plural} {key} already exists")
        assert "resourceVersion" not in body["metadata"]
        return self.put(plural, body)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Obj:
        found = self._custom(group, version, plural).get(f"{namespace}/{name}")
        if found is None:
            raise _not_found(f"{plural} {namespace}/{name}")
        return copy.deepcopy(found)

    def replace_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Obj
    ) -> Obj:
        current = self.get_namespaced_custom_object(group, version, namespace, plural, name)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason=f"{plural} {namespace}/{name} was modified")
        return self.put(plural, body)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        _content_type: str = "",
    ) -> Obj:
        assert _content_type == "application/json-patch+json"
        current = self.get_namespaced_custom_object(group, version, namespace, plural, name)
        try:
            for op in body:
                _json_patch(current, op)
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiException(status=422, reason=f"patch: {exc}") from exc
        return self.put(plural, current)

    def list_deployment_for_all_namespaces(self, *, _preload_content: bool) -> SimpleNamespace:
        assert not _preload_content
        items = [copy.deepcopy(d) for _, d in sorted(self.objects["deployments"].items())]
        return SimpleNamespace(data=orjson.dumps({"metadata": {}, "items": items}))

    def patch_namespaced_deployment(self, name: str, namespace: str, body: Any) -> Obj:
        """A JSON patch (the only kind the controller sends a Deployment)."""
        found = self.objects["deployments"].get(f"{namespace}/{name}")
        if found is None:
            raise _not_found(f"deployment {namespace}/{name}")
        current = copy.deepcopy(found)
        try:
            for op in body:
                _json_patch(current, op)
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiException(status=422, reason=f"patch: {exc}") from exc
        return self.put("deployments", current)

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Obj:
        if self._custom(group, version, plural).pop(f"{namespace}/{name}", None) is None:
            raise _not_found(f"{plural} {namespace}/{name}")
        return {"status": "Success"}


class Rig:
    """One controller process over ``apiserver``."""

    def __init__(self, apiserver: FakeApiserver) -> None:
        self.apiserver = apiserver
        self.controller = self._start()

    def _start(self) -> Controller:
        controller = Controller(ApiClient())
        loose: Any = controller.writes  # the fake stands in for CoreV1Api, CustomObjectsApi, ...
        loose.core = loose.custom = loose.apps = loose.coordination = self.apiserver
        self.controller = controller
        self.sync()  # an empty store: the informers' first list
        return controller

    def restart(self) -> None:
        """A new process: nothing but what the apiserver holds survives."""
        self._start()

    def sync(self) -> None:
        """Deliver the watch events for whatever changed since the last sync."""
        store = self.controller.store
        for kind in Store.KINDS:
            now = self.apiserver.objects[kind]
            before = {_key(obj): obj for obj in store.all(kind)}
            for key in sorted(before.keys() - now.keys()):
                store.apply(kind, "DELETED", before[key])
            for key, obj in sorted(now.items()):
                if before.get(key) != obj:
                    event = "MODIFIED" if key in before else "ADDED"
                    store.apply(kind, event, copy.deepcopy(obj))

    def reconcile(self, key: str) -> float | None:
        """The informers have caught up, then a worker handles ``key``; the delay after which
        the worker would look again (``TemporaryError``), if any."""
        self.sync()
        try:
            self.controller.reconcile(key)
        except TemporaryError as exc:
            return exc.delay
        finally:
            self.controller.writes.events.flush()  # Events are written by a thread of their own
        return None


# --- objects --------------------------------------------------------------------------------


PREPULLS = {api.PREPULL_NODE_LABEL: "enabled"}  # its agent runs the prepull plugin


def node(
    *,
    cordoned: bool = False,
    ready: bool = True,
    since: timedelta = timedelta(0),
    labels: Mapping[str, str] = PREPULLS,
) -> SimpleNamespace:
    """A V1Node as the client returns it: only the fields the controller reads (``since``: how
    long ago its Ready condition last changed)."""
    condition = SimpleNamespace(
        type="Ready",
        status="True" if ready else "False",
        last_transition_time=datetime.now(UTC) - since,
    )
    return SimpleNamespace(
        metadata=SimpleNamespace(labels=dict(labels)),
        spec=SimpleNamespace(unschedulable=cordoned or None),
        status=SimpleNamespace(conditions=[condition]),
    )


def pod(
    uid: str,
    *,
    name: str = "web-0",
    node_name: str | None = NODE,
    annotations: Mapping[str, str] = BOUND,
    labels: Mapping[str, str] | None = None,
    owners: Iterable[Obj] = (),
    volumes: Iterable[Obj] = ({"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},),
    finalized: bool = True,
    ready: bool = True,
) -> Obj:
    """``tests.builders.pod`` as these tests want it: bound to n1 with BOUND annotations and a
    PVC, under our finalizer, its container with an image, Ready (``ready``) once bound."""
    out = builders.pod(
        uid,
        name=name,
        node_name=node_name or "",
        annotations=annotations,
        labels=labels or {"app": "web"},
        finalizers=[api.FINALIZER] if finalized else (),
        owners=owners,
        volumes=volumes,
        container="app",
    )
    out["spec"]["containers"][0]["image"] = "app:1"
    out["spec"]["schedulerName"] = api.SCHEDULER_NAME
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    out["status"] = {"conditions": [condition] if node_name else []}
    return {"apiVersion": "v1", "kind": "Pod", **out}


def pool(allocations: Mapping[str, str]) -> Obj:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "IPPool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {"cidr": "10.0.0.0/29"},
        "status": {"allocations": dict(allocations)},
    }


def held(*, fallback: str = "wait", expires: timedelta | None = None, phase: str = "Held") -> Obj:
    """The Reservation the controller writes for pod ``OLD`` (``expires``: from now)."""
    return api.Reservation(
        name=HELD,
        namespace=NS,
        key=f"Pod/{NS}/web-0",
        node=NODE,
        predecessor="web-0",
        predecessor_uid=OLD,
        template=api.reservation_template(pod(OLD)),
        devices=None,
        ip=IP,
        pool=POOL,
        claims=("data-0",),
        fallback=fallback,
        expires_at=None if expires is None else datetime.now(UTC) + expires,
        phase=phase,
    ).to_object()


def cluster(*objects: tuple[str, Obj], allocations: Mapping[str, str] | None = None) -> Rig:
    """A controller over an apiserver holding the pool (IP held by pod OLD) and ``objects``."""
    apiserver = FakeApiserver()
    apiserver.put("ippools", pool({IP: f"pod:{OLD}"} if allocations is None else allocations))
    for kind, obj in objects:
        apiserver.put(kind, obj)
    return Rig(apiserver)


def finalizers(rig: Rig, name: str = "web-0") -> list[str]:
    return list(rig.apiserver.pod(name)["metadata"].get("finalizers") or [])
