"""The local-rebuild controller against an in-memory apiserver, one reconcile at a time.

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
from typing import Any, NoReturn

import orjson
import pytest
from kubernetes.client import ApiClient, ApiException

from kube import api, ippool
from rebuild import controller as controller_module
from rebuild.controller import CRASH_ENV, EXPIRED_GRACE, Controller, Store
from kube.hooks import ANNOTATION as HOOKS
from kube.hooks import LEADER, LEADER_RETRY_SECONDS, ROLE_LABEL

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
    """The apiserver calls the controller makes (``grep 'self.core.\\|self.custom.'``)."""

    def __init__(self) -> None:
        self.resized: list[str] = []
        self.resize_refusal = 0  # an HTTP status to refuse resizes with (0: accept)
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in Store.KINDS}
        self.nodes: dict[str, SimpleNamespace] = {NODE: node()}
        self.events: list[Obj] = []
        self.deleted_pods: list[str] = []
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
        loose: Any = controller  # the fake stands in for CoreV1Api, CustomObjectsApi, AppsV1Api
        loose.core = loose.custom = loose.apps = self.apiserver
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
        """The informers have caught up, then a worker handles ``key``."""
        self.sync()
        return self.controller.reconcile(key)


# --- objects --------------------------------------------------------------------------------


def node(*, cordoned: bool = False, ready: bool = True) -> SimpleNamespace:
    """A V1Node as the client returns it: only the fields the controller reads."""
    condition = SimpleNamespace(type="Ready", status="True" if ready else "False")
    return SimpleNamespace(
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
    meta: Obj = {
        "name": name,
        "namespace": NS,
        "uid": uid,
        "labels": dict(labels or {"app": "web"}),
        "annotations": dict(annotations),
        "ownerReferences": list(owners),
    }
    if finalized:
        meta["finalizers"] = [api.FINALIZER]
    spec: Obj = {
        "containers": [{"name": "app", "image": "app:1", "resources": {"requests": {"cpu": "1"}}}],
        "volumes": list(volumes),
    }
    if node_name:
        spec["nodeName"] = node_name
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {"conditions": [condition] if node_name else []},
    }


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


# --- 1. opting in, and refusals ---------------------------------------------------------------


def test_an_opted_in_pod_gets_the_finalizer() -> None:
    rig = cluster(("pods", pod(OLD, finalized=False)))

    assert rig.reconcile("pods/ns/web-0") is None

    assert finalizers(rig) == [api.FINALIZER]
    assert rig.apiserver.events == []
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"pod:{OLD}"}


REFUSALS = {
    "bad fallback": ({**BOUND, api.FALLBACK: "sometimes"}, [], api.FALLBACK),
    "emptyDir": (BOUND, [{"name": "scratch", "emptyDir": {}}], "scratch"),
    "pool elsewhere": ({api.REBUILD: "local", api.IP_POOL: "other/pool"}, [], api.IP_POOL),
    "job": (BOUND, [], "Job"),
}


@pytest.mark.parametrize("finalized", [False, True], ids=["new", "finalized"])
@pytest.mark.parametrize("case", REFUSALS)
def test_a_pod_that_cannot_be_rebuilt_is_refused_once(case: str, finalized: bool) -> None:
    annotations, volumes, named = REFUSALS[case]
    owners = [{"kind": "Job", "name": "batch", "controller": True}] if case == "job" else []
    refused = pod(OLD, annotations=annotations, volumes=volumes, owners=owners, finalized=finalized)
    rig = cluster(("pods", refused))

    for _ in range(2):  # the second look finds its own status annotation: no second Event
        assert rig.reconcile("pods/ns/web-0") is None

    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildRefused", "Warning")
    assert named in event["message"]
    assert event["involvedObject"]["uid"] == OLD
    status = rig.apiserver.status("web-0")
    assert status["action"] == "refused"
    assert named in status["reason"]
    assert finalizers(rig) == []


def test_accepted_data_loss_is_not_refused() -> None:
    annotations = {**BOUND, api.ACCEPT_DATA_LOSS: "true"}
    scratch = [{"name": "tmp", "emptyDir": {}}]
    rig = cluster(("pods", pod(OLD, annotations=annotations, volumes=scratch, finalized=False)))

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.events == []
    assert finalizers(rig) == [api.FINALIZER]


def test_a_running_pod_refused_later_keeps_its_address() -> None:
    # it was opted in (and got the finalizer); then someone edits a bad annotation onto it
    rig = cluster(("pods", pod(OLD, annotations={**BOUND, api.FALLBACK: "sometimes"})))

    rig.reconcile("pods/ns/web-0")

    assert finalizers(rig) == []
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"pod:{OLD}"}


# --- 2. the predecessor leaves: a Reservation -------------------------------------------------


def test_a_deleted_pod_leaves_a_reservation_then_goes() -> None:
    predecessor = pod(OLD)
    rig = cluster(("pods", predecessor))
    rig.apiserver.delete_pod("web-0")

    assert rig.reconcile("pods/ns/web-0") is None

    [obj] = rig.apiserver.reservations()
    reservation = api.Reservation.from_object(obj)
    assert reservation.name == HELD
    assert (reservation.node, reservation.key) == (NODE, "Pod/ns/web-0")
    assert (reservation.ip, reservation.pool, reservation.claims) == (IP, POOL, ("data-0",))
    assert (reservation.predecessor, reservation.predecessor_uid) == ("web-0", OLD)
    assert reservation.template == api.reservation_template(predecessor)
    assert (reservation.phase, reservation.fallback) == ("Held", "wait")
    assert reservation.expires_at is None  # "wait" waits forever
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.get("pods", "web-0") is None  # the finalizer is gone, and so is the pod
    assert rig.apiserver.reasons() == ["Reserved"]
    assert "node n1, IP 10.0.0.2, PVCs data-0" in rig.apiserver.events[0]["message"]

    # again: the pod's DELETED event, then a restart that lists everything afresh
    pool_before = rig.apiserver.pool()
    assert rig.reconcile("pods/ns/web-0") is None
    rig.restart()
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.reconcile(f"reservations/ns/{HELD}") is None  # "wait": held until claimed

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [HELD]
    assert rig.apiserver.pool() == pool_before
    assert rig.apiserver.reasons() == ["Reserved"]


def test_a_pool_write_that_lost_a_race_is_redone_on_the_fresh_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    read = rig.apiserver.get_namespaced_custom_object

    def read_then_race(group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        found = read(group, version, namespace, plural, name)
        if plural == api.IPPOOLS and len(ippool.holders(found)) == 1:
            other, _ = ippool.allocate(found, "pod:other")  # the extender, meanwhile
            rig.apiserver.put(api.IPPOOLS, other)
        return found

    monkeypatch.setattr(rig.apiserver, "get_namespaced_custom_object", read_then_race)
    # the read-modify-write path (a single move is one conditional patch and needs no read)
    rig.controller.update_pool(
        "ns", "web", lambda p: ippool.transfer(p, f"pod:{OLD}", f"reservation:{HELD}")
    )

    holders = ippool.holders(rig.apiserver.pool())
    assert holders == {f"reservation:{HELD}": IP, "pod:other": "10.0.0.1"}


def test_a_reschedule_reservation_expires_after_the_wait() -> None:
    annotations = {**BOUND, api.FALLBACK: "reschedule", api.WAIT: "90s"}
    rig = cluster(("pods", pod(OLD, annotations=annotations)))
    rig.apiserver.delete_pod("web-0")

    rig.reconcile("pods/ns/web-0")

    [obj] = rig.apiserver.reservations()
    expires = api.Reservation.from_object(obj).expires_at
    assert expires is not None
    assert timedelta(seconds=85) < expires - datetime.now(UTC) <= timedelta(seconds=90)
    delay = rig.reconcile(f"reservations/ns/{HELD}")
    assert delay is not None and 85 < delay <= 90.1


def test_an_unbound_pod_leaves_without_a_reservation() -> None:
    rig = cluster(("pods", pod(OLD, node_name=None)))
    rig.apiserver.delete_pod("web-0")

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.get("pods", "web-0") is None
    assert rig.apiserver.pool()["status"]["allocations"] == {}


# --- 3. crashes -------------------------------------------------------------------------------


class Crash(Exception):
    """Raised at a crash point instead of ending the process."""


def _exit(code: int) -> NoReturn:
    raise Crash(code)


@pytest.mark.parametrize("step", ["reserved", "released", "claiming"])
def test_a_restart_after_a_crash_finishes_the_rebuild(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rebuild.controller.os._exit", _exit)
    monkeypatch.setenv(CRASH_ENV, step)
    rig = cluster(("pods", pod(OLD)))
    crashes: list[str] = []

    def reconcile(key: str) -> float | None:
        try:
            return rig.reconcile(key)
        except Crash:
            crashes.append(key)
            monkeypatch.delenv(CRASH_ENV)
            rig.restart()  # same apiserver state, empty caches
            return rig.reconcile(key)

    rig.apiserver.delete_pod("web-0")
    reconcile("pods/ns/web-0")
    reconcile("pods/ns/web-0")  # its DELETED event
    assert len(crashes) == (0 if step == "claiming" else 1)
    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [HELD]
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.get("pods", "web-0") is None

    # the extender binds the successor on the reserved node, with the reservation and the IP
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False)
    rig.apiserver.put("pods", successor)
    reconcile("pods/ns/web-0")
    reconcile("pods/ns/web-0")

    assert len(crashes) == 1
    assert rig.apiserver.reservations() == []
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.status("web-0")["action"] == "rebuilt"
    assert rig.apiserver.reasons().count("RebuildClaimed") == 1


# --- 4. the successor claims the reservation --------------------------------------------------


def test_the_successor_takes_the_ip_and_is_rebuilt_once_ready() -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False, ready=False)
    rig.apiserver.put("pods", successor)

    assert rig.reconcile("pods/ns/web-0") is None

    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.reservations() == []
    assert finalizers(rig) == [api.FINALIZER]
    assert rig.apiserver.status("web-0")["action"] == "claimed"
    claimed = rig.apiserver.events[-1]
    assert (claimed["reason"], claimed["involvedObject"]["uid"]) == ("RebuildClaimed", NEW)
    assert (
        claimed["message"] == "back on node n1 in place of web-0 with IP 10.0.0.2 and PVCs data-0"
    )

    for _ in range(2):  # not Ready yet: look again soon
        delay = rig.reconcile("pods/ns/web-0")
        assert delay is not None and delay > 0
    assert rig.apiserver.status("web-0")["action"] == "claimed"

    rig.apiserver.put("pods", {**rig.apiserver.pod("web-0"), "status": pod(NEW)["status"]})
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.apiserver.status("web-0")["action"] == "rebuilt"
    assert rig.reconcile("pods/ns/web-0") is None
    assert rig.apiserver.reasons() == ["Reserved", "RebuildClaimed"]  # "rebuilt" is no Event


def test_a_claim_is_finished_even_when_the_reservations_watch_lags() -> None:
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    successor = pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}, finalized=False)
    rig.apiserver.put("pods", successor)
    rig.sync()
    rig.controller.store.apply("reservations", "DELETED", rig.apiserver.reservations()[0])

    rig.controller.reconcile("pods/ns/web-0")  # the store has not seen the Reservation

    assert rig.apiserver.reservations() == []
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}
    assert rig.apiserver.status("web-0")["action"] == "claimed"


def test_a_successor_deleted_before_its_claim_was_finished_hands_the_ip_on() -> None:
    """Under load the claim's bookkeeping can trail the rollout: the next change deletes the
    successor while its pool entry still names the reservation it claimed."""
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    rig.reconcile("pods/ns/web-0")
    rig.apiserver.put("pods", pod(NEW, annotations={**BOUND, api.RESERVATION: HELD}))
    rig.apiserver.delete_pod("web-0")  # before any worker looked at the bound successor

    rig.reconcile("pods/ns/web-0")

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [
        api.reservation_name(NEW)
    ]
    assert ippool.holders(rig.apiserver.pool()) == {f"reservation:{api.reservation_name(NEW)}": IP}
    assert rig.apiserver.get("pods", "web-0") is None


def test_a_lagging_watch_replays_no_release_and_touches_no_namesake() -> None:
    """A StatefulSet's next pod has its predecessor's name: a watch that still shows the old pod
    terminating must neither reserve for it again (its room was claimed and dropped already)
    nor write to the new pod."""
    rig = cluster(("pods", pod(OLD)))
    rig.apiserver.delete_pod("web-0")
    stale = copy.deepcopy(rig.apiserver.pod("web-0"))
    rig.reconcile("pods/ns/web-0")  # reserved, released
    rig.apiserver.objects["reservations"].clear()  # claimed and dropped since
    rig.apiserver.put("pods", pod(NEW, node_name=None, finalized=False, annotations=OPTED))
    fresh = copy.deepcopy(rig.apiserver.pod("web-0"))
    rig.controller.store.replace("reservations", [])
    rig.controller.store.apply("pods", "MODIFIED", stale)  # what our watch still says

    rig.controller.reconcile("pods/ns/web-0")

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pod("web-0") == fresh


def test_writes_to_a_replaced_pod_are_dropped_not_retried() -> None:
    rig = cluster(("pods", pod(OLD, finalized=False)))
    rig.sync()
    rig.apiserver.objects["pods"].clear()
    rig.apiserver.put("pods", pod(NEW, finalized=False))  # same name, another pod

    rig.controller.reconcile("pods/ns/web-0")  # would add our finalizer to the old one

    assert finalizers(rig) == []


def test_an_unguarded_opted_in_pod_jumps_the_queue() -> None:
    rig = cluster()
    queue = rig.controller.queue
    queue.add("reservations/ns/other")
    rig.controller.store.apply("pods", "ADDED", pod(NEW, finalized=False))
    assert queue.get(timeout=0) == "pods/ns/web-0"


# --- 5. expiry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "state"),
    [
        ("node is cordoned", node(cordoned=True)),
        ("node is not Ready", node(ready=False)),
        ("node is gone", None),
    ],
)
def test_an_expired_reservation_lets_the_successor_go_elsewhere(
    trouble: str, state: SimpleNamespace | None
) -> None:
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=timedelta(seconds=-1))),
        ("pods", waiting),
        allocations={IP: f"reservation:{HELD}"},
    )
    if state is None:
        del rig.apiserver.nodes[NODE]
    else:
        rig.apiserver.nodes[NODE] = state

    assert rig.reconcile(f"reservations/ns/{HELD}") == EXPIRED_GRACE.total_seconds()

    [obj] = rig.apiserver.reservations()
    assert obj["status"]["phase"] == "Expired"
    [event] = rig.apiserver.events
    assert (event["reason"], event["type"]) == ("RebuildFallback", "Warning")
    assert event["involvedObject"]["uid"] == NEW
    assert f"({trouble})" in event["message"]
    assert "keeping IP 10.0.0.2" in event["message"]
    assert rig.apiserver.status("web-0")["action"] == "fallback"
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}

    # within the grace the successor may still claim its IP; nothing changes
    delay = rig.reconcile(f"reservations/ns/{HELD}")
    assert delay is not None and 0 < delay < EXPIRED_GRACE.total_seconds()
    assert len(rig.apiserver.reservations()) == 1
    assert len(rig.apiserver.events) == 1


def test_a_successor_placed_elsewhere_before_expiry_ran_still_gets_its_fallback_event() -> None:
    """The extender stops holding a room once it expires, so kube-scheduler may place the
    successor elsewhere before the controller's expire() runs; expire() then finds no pending
    successor to tell. The claim itself reports the fallback (seen in CI: no RebuildFallback)."""
    elsewhere = pod(
        NEW, node_name="n2", annotations={**BOUND, api.RESERVATION: HELD}, finalized=False
    )
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=timedelta(seconds=-1))),
        ("pods", elsewhere),
        allocations={IP: f"reservation:{HELD}"},
    )
    rig.apiserver.nodes[NODE] = node(cordoned=True)

    rig.reconcile("pods/ns/web-0")

    assert rig.apiserver.reasons() == ["RebuildFallback", "RebuildClaimed"]
    fallback, claimed = rig.apiserver.events
    assert "(node is cordoned): placed on node n2 instead" in fallback["message"]
    assert fallback["type"] == "Warning"
    assert claimed["message"].startswith("on node n2 (node n1 could not take it back)")
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}

    rig.reconcile(f"reservations/ns/{HELD}")  # expire() after the claim tells nobody again
    assert rig.apiserver.reasons() == ["RebuildFallback", "RebuildClaimed"]


def test_an_expired_reservation_past_its_grace_releases_the_ip_and_goes() -> None:
    past_grace = -EXPIRED_GRACE - timedelta(seconds=1)
    rig = cluster(
        ("reservations", held(fallback="reschedule", expires=past_grace, phase="Expired")),
        allocations={IP: f"reservation:{HELD}"},
    )

    assert rig.reconcile(f"reservations/ns/{HELD}") is None

    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pool()["status"]["allocations"] == {}


# --- 6. garbage collection ----------------------------------------------------------------


def test_an_address_of_a_missing_pod_is_released_on_the_second_sweep() -> None:
    live = pod(NEW, name="web-1")
    rig = cluster(("pods", live), allocations={IP: "pod:ghost", "10.0.0.3": f"pod:{NEW}"})

    rig.reconcile("sweep")
    assert ippool.holders(rig.apiserver.pool()) == {"pod:ghost": IP, f"pod:{NEW}": "10.0.0.3"}

    rig.reconcile("sweep")
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": "10.0.0.3"}


def test_a_holder_that_shows_up_between_sweeps_is_kept() -> None:
    rig = cluster(allocations={IP: f"pod:{NEW}"})
    rig.reconcile("sweep")
    rig.apiserver.put("pods", pod(NEW, annotations=OPTED))  # created and bound just now

    rig.reconcile("sweep")
    rig.reconcile("sweep")

    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}


def test_a_reservation_nobody_comes_back_for_is_dropped_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = cluster(("reservations", held()), allocations={IP: f"reservation:{HELD}"})

    rig.reconcile("sweep")
    rig.reconcile("sweep")  # two sweeps, but not ABANDON_SECONDS yet
    assert len(rig.apiserver.reservations()) == 1
    assert rig.apiserver.events == []

    monkeypatch.setattr(controller_module, "ABANDON_SECONDS", 0.0)
    rig.reconcile("sweep")
    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pool()["status"]["allocations"] == {}
    [event] = rig.apiserver.events
    assert event["reason"] == "RebuildAbandoned"
    assert event["involvedObject"]["kind"] == "Reservation"
    assert "released node n1 and IP 10.0.0.2" in event["message"]


def test_a_reservation_with_a_pending_successor_survives_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(controller_module, "ABANDON_SECONDS", 0.0)
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held()), ("pods", waiting), allocations={IP: f"reservation:{HELD}"}
    )

    for _ in range(3):
        rig.reconcile("sweep")

    assert len(rig.apiserver.reservations()) == 1
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.events == []


def test_a_reservation_survives_sweeps_while_its_predecessor_terminates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(controller_module, "ABANDON_SECONDS", 0.0)
    terminating = pod(OLD, finalized=False)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-27T08:00:00Z"
    rig = cluster(
        ("reservations", held()), ("pods", terminating), allocations={IP: f"reservation:{HELD}"}
    )

    rig.reconcile("sweep")
    rig.reconcile("sweep")

    assert len(rig.apiserver.reservations()) == 1


# --- 7. StatefulSets with OnDelete ----------------------------------------------------------


def app_container(image: str, env: str) -> Obj:
    return {
        "name": "app",
        "image": image,
        "env": [{"name": "MODE", "value": env}],
        "ports": [{"containerPort": 5432, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "1"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }


def statefulset(*, init: Obj | None = None) -> Obj:
    """StatefulSet db at revision db-1 (image db:1, env a), one claim template: data."""
    template: Obj = {"containers": [app_container("db:1", "a")]}
    if init is not None:
        template["initContainers"] = [init]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {
            "updateStrategy": {"type": "OnDelete"},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": template},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
        },
        "status": {"currentRevision": "db-1", "updateRevision": "db-1"},
    }


TOKEN_MOUNT = {
    "name": "kube-api-access-x7k2p",
    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    "readOnly": True,
}


def statefulset_pod(
    sts: Obj, *, annotations: Mapping[str, str] = OPTED, labels: Mapping[str, str] | None = None
) -> Obj:
    """Pod db-0 as the StatefulSet controller and admission make it from ``sts``."""
    spec = copy.deepcopy(sts["spec"]["template"]["spec"])
    for container in spec["containers"] + spec.get("initContainers", []):
        container["volumeMounts"] = [*container.get("volumeMounts", []), TOKEN_MOUNT]
    spec["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
        {"name": TOKEN_MOUNT["name"], "projected": {"sources": [{"serviceAccountToken": {}}]}},
    ]
    spec["nodeName"] = NODE
    revision = sts["status"]["updateRevision"]
    all_labels = {
        "app": "db",
        "controller-revision-hash": revision,
        "apps.kubernetes.io/pod-index": "0",
        **(labels or {}),
    }
    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "controller": True}
    meta = {
        "name": "db-0",
        "namespace": NS,
        "uid": OLD,
        "labels": all_labels,
        "annotations": dict(annotations),
        "ownerReferences": [owner],
        "finalizers": [api.FINALIZER],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {}}


def rolled(sts: Obj, *, image: str = "db:1", env: str = "a", cpu: str = "1") -> Obj:
    """``sts`` after a template change to revision db-2."""
    new = copy.deepcopy(sts)
    container = app_container(image, env)
    container["resources"]["requests"]["cpu"] = cpu
    new["spec"]["template"]["spec"]["containers"] = [container]
    new["status"]["updateRevision"] = "db-2"
    return new


def test_an_image_change_is_applied_in_place() -> None:
    before = statefulset()
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", rolled(before, image="db:2")))

    assert rig.reconcile("pods/ns/db-0") is None

    after = rig.apiserver.pod("db-0")
    assert after["metadata"]["uid"] == OLD
    assert after["spec"]["containers"][0]["image"] == "db:2"
    assert after["spec"]["containers"][0]["volumeMounts"][-1] == TOKEN_MOUNT
    assert after["metadata"]["labels"]["controller-revision-hash"] == "db-2"
    assert rig.apiserver.deleted_pods == []
    assert rig.apiserver.status("db-0")["action"] == "in-place"
    assert rig.apiserver.reasons() == ["RebuildInPlace"]

    assert rig.reconcile("pods/ns/db-0") is None  # up to date now
    assert rig.apiserver.reasons() == ["RebuildInPlace"]


@pytest.mark.parametrize("refusal", [0, 422])
def test_a_cpu_change_is_a_resize_unless_the_server_refuses(refusal: int) -> None:
    before = statefulset()
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", rolled(before, cpu="2")))
    rig.apiserver.resize_refusal = refusal

    assert rig.reconcile("pods/ns/db-0") is None

    if refusal:  # e.g. a server without in-place resize: a local recreate instead
        assert rig.apiserver.deleted_pods == ["ns/db-0"]
        assert rig.apiserver.status("db-0")["action"] == "recreating"
        return
    after = rig.apiserver.pod("db-0")
    assert rig.apiserver.resized == ["ns/db-0"] and rig.apiserver.deleted_pods == []
    assert after["metadata"]["uid"] == OLD
    assert after["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    assert after["metadata"]["labels"]["controller-revision-hash"] == "db-2"
    assert rig.apiserver.status("db-0")["reason"] == "cpu/memory updated in place to revision db-2"


def test_any_other_change_is_a_local_recreate() -> None:
    before = statefulset()
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", rolled(before, env="b")))

    assert rig.reconcile("pods/ns/db-0") is None

    assert rig.apiserver.deleted_pods == ["ns/db-0"]
    assert rig.apiserver.status("db-0")["action"] == "recreating"
    leaving = rig.apiserver.pod("db-0")  # the same pod, terminating, held by the finalizer
    assert leaving["metadata"]["deletionTimestamp"]
    assert leaving["spec"]["containers"][0]["image"] == "db:1"

    rig.reconcile("pods/ns/db-0")  # the deletion it caused: reserved for ordinal 0
    [obj] = rig.apiserver.reservations()
    assert api.Reservation.from_object(obj).key == "StatefulSet/ns/db/0"
    assert api.Reservation.from_object(obj).claims == ("data-db-0",)


def test_a_leader_is_not_rebuilt_until_it_steps_down() -> None:
    before = statefulset()
    leader = statefulset_pod(
        before, annotations={**OPTED, HOOKS: "leader-aware"}, labels={ROLE_LABEL: LEADER}
    )
    rig = cluster(("pods", leader), ("statefulsets", rolled(before, image="db:2")))

    assert rig.reconcile("pods/ns/db-0") == LEADER_RETRY_SECONDS

    after = rig.apiserver.pod("db-0")
    assert after["spec"] == leader["spec"]
    assert after["metadata"]["labels"] == leader["metadata"]["labels"]
    assert rig.apiserver.deleted_pods == []
    assert rig.apiserver.status("db-0")["action"] == "delayed"
    assert ROLE_LABEL in rig.apiserver.status("db-0")["reason"]


def test_an_image_change_is_in_place_with_init_containers_too() -> None:
    init = {"name": "init", "image": "busybox:1", "command": ["true"]}
    before = statefulset(init=init)
    rolled_sts = rolled(before, image="db:2")
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", rolled_sts))

    rig.reconcile("pods/ns/db-0")

    assert rig.apiserver.deleted_pods == []
    assert rig.apiserver.status("db-0")["action"] == "in-place"


def test_a_locally_rebuilt_pod_still_gets_later_image_changes() -> None:
    before = statefulset()
    rebuilt = statefulset_pod(before, annotations={**OPTED, api.RESERVATION: HELD})
    status = {"action": "rebuilt", "reason": "back on node n1", "time": "2026-11-27T08:00:00Z"}
    rebuilt["metadata"]["annotations"][api.STATUS] = orjson.dumps(status).decode()
    rig = cluster(("pods", rebuilt), ("statefulsets", rolled(before, image="db:2")))

    rig.reconcile("pods/ns/db-0")

    after = rig.apiserver.pod("db-0")
    assert after["spec"]["containers"][0]["image"] == "db:2"
