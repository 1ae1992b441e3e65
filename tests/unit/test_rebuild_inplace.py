"""StatefulSets with OnDelete: images and cpu/memory in place, anything else a local recreate."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import orjson
import pytest

from kube import api
from kube.hooks import ANNOTATION as HOOKS
from kube.hooks import LEADER, LEADER_RETRY_SECONDS, ROLE_LABEL
from kube.resources import BIND
from rebuild import inplace
from rebuild.errors import TemporaryError
from tests.unit.rebuild_fake import HELD, NODE, NS, OLD, OPTED, Obj, Rig, cluster


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
    template: Obj = {
        "schedulerName": api.SCHEDULER_NAME,
        "containers": [app_container("db:1", "a")],
    }
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
    resources = spec["containers"][0].setdefault("resources", {})  # marked by Fulcrum's webhook
    resources.setdefault("requests", {})[BIND] = "1"
    resources.setdefault("limits", {})[BIND] = "1"
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


def pre_pulled(rig: Rig, name: str = "db-0") -> None:
    """The controller asks db-0's node for the new image and waits; the node answers (as
    ``node.prepull`` does); the controller goes on."""
    assert rig.reconcile(f"pods/ns/{name}") is not None
    assert rig.apiserver.evicted == []
    assert rig.apiserver.status(name) == {
        "action": "waiting",
        "reason": "pre-pulling db:2 on n1",
        "time": rig.apiserver.status(name)["time"],
    }
    annotations = rig.apiserver.pod(name)["metadata"]["annotations"]
    annotations[api.PREPULLED] = annotations[api.PREPULL]
    assert rig.reconcile(f"pods/ns/{name}") is None


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("securityContext", {"runAsNonRoot": True}),
        ("readinessProbe", {"tcpSocket": {"port": 5432}}),
        ("livenessProbe", {"exec": {"command": ["true"]}}),
        ("imagePullPolicy", "Always"),
    ],
)
def test_an_image_change_with_any_other_container_change_is_a_recreate(
    field: str, value: object
) -> None:
    """The whole difference must be images and cpu/memory; the rest is not silently dropped."""
    before = statefulset()
    after = rolled(before, image="db:2")
    after["spec"]["template"]["spec"]["containers"][0][field] = value
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", after))

    pre_pulled(rig)

    assert rig.apiserver.evicted == ["ns/db-0"]
    assert rig.apiserver.status("db-0")["action"] == "recreating"
    assert rig.apiserver.status("db-0")["reason"].startswith(
        f"local recreate for revision db-2: spec.containers[0].{field} differs; "
        "pre-pulled db:2 on n1 in "
    )
    assert rig.apiserver.pod("db-0")["spec"]["containers"][0]["image"] == "db:1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serviceAccountName", "db-admin"),
        ("securityContext", {"runAsUser": 1000}),
        ("nodeSelector", {"disk": "ssd"}),
        ("tolerations", [{"key": "dedicated", "operator": "Exists"}]),
        ("enableServiceLinks", False),
    ],
)
def test_an_image_change_with_a_pod_level_change_is_a_recreate(field: str, value: object) -> None:
    before = statefulset()
    after = rolled(before, image="db:2")
    after["spec"]["template"]["spec"][field] = value
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", after))

    pre_pulled(rig)

    assert rig.apiserver.evicted == ["ns/db-0"]
    assert rig.apiserver.status("db-0")["action"] == "recreating"
    assert f": spec.{field} differs; pre-pulled db:2" in rig.apiserver.status("db-0")["reason"]


def test_what_admission_adds_to_a_pod_is_no_difference() -> None:
    """The service account ``default``, default tolerations, priority and the ordinal's
    hostname are written into the pod, not its template: an image change stays in place."""
    before = statefulset()
    admitted = statefulset_pod(before)
    admitted["spec"].update(
        enableServiceLinks=True,  # defaulted on pods, not on templates (seen on a real cluster)
        serviceAccountName="default",
        serviceAccount="default",
        priority=0,
        preemptionPolicy="PreemptLowerPriority",
        hostname="db-0",
        subdomain="db",
        tolerations=[
            {
                "key": f"node.kubernetes.io/{taint}",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            for taint in ("not-ready", "unreachable")
        ],
    )
    rig = cluster(("pods", admitted), ("statefulsets", rolled(before, image="db:2")))

    rig.reconcile("pods/ns/db-0")

    assert rig.apiserver.deleted_pods == []
    assert rig.apiserver.status("db-0")["action"] == "in-place"


def replicas(sts: Obj, n: int) -> list[Obj]:
    """Pods db-0 .. db-<n-1> of ``sts`` (n replicas), all Ready."""
    sts["spec"]["replicas"] = n
    out = []
    for i in range(n):
        member = statefulset_pod(sts)
        member["metadata"].update(name=f"db-{i}", uid=f"uid-{i}")
        member["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
        out.append(member)
    return out


def test_an_on_delete_statefulset_is_recreated_one_pod_at_a_time() -> None:
    before = statefulset()
    members = replicas(before, 3)
    after = rolled(before, env="b")
    after["spec"]["replicas"] = 3
    rig = cluster(*[("pods", m) for m in members], ("statefulsets", after))

    assert rig.reconcile("pods/ns/db-0") is None
    # db-0 is terminating now: db-1 and db-2 wait until its successor is Ready
    assert rig.reconcile("pods/ns/db-1") == inplace.PACE_RETRY_SECONDS
    assert rig.reconcile("pods/ns/db-2") == inplace.PACE_RETRY_SECONDS
    assert rig.apiserver.evicted == ["ns/db-0"]
    assert rig.apiserver.status("db-1") == {
        **rig.apiserver.status("db-1"),
        "action": "waiting",
        "reason": "revision db-2 waits: replica db-0 is being replaced",
    }

    # its successor, at the new revision but not Ready yet: still one down
    rig.apiserver.delete_pod("db-0")
    successor = copy.deepcopy(members[0])
    successor["metadata"].update(uid="uid-0b", finalizers=[])
    successor["metadata"]["labels"]["controller-revision-hash"] = "db-2"
    successor["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    rig.apiserver.put("pods", successor)
    assert rig.reconcile("pods/ns/db-1") == inplace.PACE_RETRY_SECONDS
    assert "replica db-0 is not Ready" in rig.apiserver.status("db-1")["reason"]

    successor["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    rig.apiserver.put("pods", successor)
    assert rig.reconcile("pods/ns/db-1") is None
    assert rig.apiserver.evicted == ["ns/db-0", "ns/db-1"]


def test_replicas_numbered_from_ordinals_start_are_paced_too() -> None:
    """spec.ordinals.start: 5 names the replicas db-5 and db-6; none is missing."""
    before = statefulset()
    members = replicas(before, 2)
    for i, member in enumerate(members):
        member["metadata"].update(name=f"db-{5 + i}", uid=f"uid-{5 + i}")
    after = rolled(before, env="b")
    after["spec"].update(replicas=2, ordinals={"start": 5})
    rig = cluster(*[("pods", m) for m in members], ("statefulsets", after))

    assert rig.reconcile("pods/ns/db-5") is None
    assert rig.apiserver.evicted == ["ns/db-5"]
    assert rig.reconcile("pods/ns/db-6") == inplace.PACE_RETRY_SECONDS
    assert "replica db-5 is being replaced" in rig.apiserver.status("db-6")["reason"]


def test_an_update_just_made_counts_before_the_watch_shows_it() -> None:
    """Two workers, one StatefulSet: the second sees db-0 as it was before its eviction."""
    before = statefulset()
    members = replicas(before, 2)
    after = rolled(before, env="b")
    after["spec"]["replicas"] = 2
    rig = cluster(*[("pods", m) for m in members], ("statefulsets", after))
    rig.reconcile("pods/ns/db-0")
    stale = copy.deepcopy(members[0])
    rig.controller.store.apply("pods", "MODIFIED", stale)  # the watch lags the eviction

    with pytest.raises(TemporaryError):
        rig.controller.reconcile("pods/ns/db-1")
    assert rig.apiserver.evicted == ["ns/db-0"]


def test_an_eviction_a_disruption_budget_refuses_is_retried_later() -> None:
    before = statefulset()
    rig = cluster(("pods", statefulset_pod(before)), ("statefulsets", rolled(before, env="b")))
    rig.apiserver.eviction_refusal = 429

    assert rig.reconcile("pods/ns/db-0") == inplace.EVICTION_RETRY_SECONDS

    assert rig.apiserver.deleted_pods == []
    assert not rig.apiserver.pod("db-0")["metadata"].get("deletionTimestamp")
    assert rig.apiserver.status("db-0")["action"] == "waiting"
    assert "PodDisruptionBudget" in rig.apiserver.status("db-0")["reason"]

    rig.apiserver.eviction_refusal = 0
    assert rig.reconcile("pods/ns/db-0") is None
    assert rig.apiserver.evicted == ["ns/db-0"]
