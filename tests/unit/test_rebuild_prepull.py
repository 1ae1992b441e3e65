"""Pre-pull for local rebuild, the controller's side: the admission webhook's hold of an
opted-in Deployment's image change, the requests on its predecessors, the resume, the status;
and the image references a request may carry."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from admission.prepull import hold
from admission.review import mutate
from kube import api
from rebuild import release
from tests.unit.rebuild_fake import NS, OPTED, FakeApiserver, Obj, Rig, pod
from tests.unit.rebuild_fake import node as fake_node

OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "controller": True}
LABELS = {"app": "web", "pod-template-hash": "abc"}


def deployment(
    image: str = "app:2", *, paused: bool = False, held: str | None = None, opted: bool = True
) -> Obj:
    annotations = {api.PREPULL_HOLD: held} if held else {}
    template_annotations = {api.REBUILD: "local"} if opted else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "uid": "d", "annotations": annotations},
        "spec": {
            "replicas": 2,
            "paused": paused,
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": template_annotations},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def when(ago: float = 0.0) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rig_with(dep: Obj, nodes: tuple[str, ...] = ("n1", "n2")) -> Rig:
    apiserver = FakeApiserver()
    for i, node in enumerate(nodes):
        apiserver.nodes[node] = fake_node()
        apiserver.put(
            "pods",
            pod(f"u{i}", name=f"web-abc-{i}", node_name=node, labels=LABELS, owners=[OWNER]),
        )
    apiserver.put("deployments", dep)
    return Rig(apiserver)


def annotations(rig: Rig, name: str) -> dict[str, str]:
    found: dict[str, str] = rig.apiserver.pod(name)["metadata"].get("annotations") or {}
    return found


def answer(rig: Rig, name: str, *, error: str = "") -> None:
    """What the node's ``prepull`` plugin writes."""
    mine = annotations(rig, name)
    if error:
        mine[api.PREPULL_ERROR] = error
    else:
        mine[api.PREPULLED] = mine[api.PREPULL]


def spec(rig: Rig) -> dict[str, Any]:
    found = rig.apiserver.get("deployments", "web")
    assert found is not None
    return dict(found["spec"])


def held(rig: Rig) -> bool:
    found = rig.apiserver.get("deployments", "web")
    assert found is not None
    return api.PREPULL_HOLD in found["metadata"].get("annotations", {})


def status(rig: Rig, name: str) -> dict[str, str]:
    raw = annotations(rig, name).get(api.STATUS)
    return dict(orjson.loads(raw)) if raw else {}


# --- the controller -----------------------------------------------------------------------------


def test_a_held_rollout_asks_every_predecessor_node_and_waits() -> None:
    rig = rig_with(deployment(paused=True, held=when()))
    delay = rig.reconcile("deployments/ns/web")
    assert delay is not None and 0 < delay <= 5
    assert [annotations(rig, f"web-abc-{i}")[api.PREPULL] for i in (0, 1)] == ["app:2"] * 2
    assert spec(rig)["paused"] is True and held(rig)


def test_the_rollout_resumes_once_every_node_has_answered() -> None:
    rig = rig_with(deployment(paused=True, held=when()))
    rig.reconcile("deployments/ns/web")
    answer(rig, "web-abc-0")
    assert rig.reconcile("deployments/ns/web") is not None  # one node still pulling
    answer(rig, "web-abc-1")
    # the answer itself queues the Deployment (the pods' watch)
    rig.sync()
    assert "deployments/ns/web" in rig.controller.queue._dirty
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is False and not held(rig)
    for i, node in enumerate(("n1", "n2")):
        got = status(rig, f"web-abc-{i}")
        assert got["action"] == "pre-pulled"
        assert got["reason"].startswith(f"pre-pulled app:2 on {node} in ")
    # the resumed Deployment's next look reports nothing again
    events = len(rig.apiserver.events)
    assert rig.reconcile("deployments/ns/web") is None
    assert len(rig.apiserver.events) == events


def test_a_hold_ends_at_its_bound_and_says_so() -> None:
    rig = rig_with(deployment(paused=True, held=when(ago=61)))
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is False and not held(rig)
    assert status(rig, "web-abc-0") == {
        "action": "pre-pull-failed",
        "reason": "pre-pull timed out after 60 s on n1; rolling on",
        "time": status(rig, "web-abc-0")["time"],
    }
    assert "RebuildPrePullFailed" in rig.apiserver.reasons()


def test_a_node_error_is_an_answer_and_the_status_quotes_it() -> None:
    rig = rig_with(deployment(paused=True, held=when()))
    rig.reconcile("deployments/ns/web")
    answer(rig, "web-abc-0")
    answer(rig, "web-abc-1", error="pulling app:2 on n2: manifest unknown")
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is False
    assert status(rig, "web-abc-1")["reason"] == (
        "pre-pull failed on n2: pulling app:2 on n2: manifest unknown; rolling on"
    )


def test_a_users_pause_is_never_undone() -> None:
    rig = rig_with(deployment(paused=True))
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is True
    assert annotations(rig, "web-abc-0")[api.PREPULL] == "app:2"  # asked all the same


def test_a_user_who_resumes_a_held_rollout_ends_the_hold() -> None:
    rig = rig_with(deployment(paused=False, held=when()))
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is False and not held(rig)


def test_without_a_hold_the_predecessors_are_asked_at_once() -> None:
    """Design B: no webhook hold; later batches find the image on their node."""
    rig = rig_with(deployment())
    assert rig.reconcile("deployments/ns/web") is None
    assert annotations(rig, "web-abc-1")[api.PREPULL] == "app:2"
    answer(rig, "web-abc-1")
    rig.reconcile("deployments/ns/web")
    assert status(rig, "web-abc-1")["action"] == "pre-pulled"
    assert api.STATUS not in annotations(rig, "web-abc-0")


def test_a_new_request_clears_the_old_answer() -> None:
    rig = rig_with(deployment(paused=True, held=when()))
    rig.reconcile("deployments/ns/web")
    answer(rig, "web-abc-0", error="earlier trouble")
    rig.apiserver.put("deployments", deployment("app:3", paused=True, held=when()))
    rig.reconcile("deployments/ns/web")
    mine = annotations(rig, "web-abc-0")
    assert mine[api.PREPULL] == "app:3" and api.PREPULL_ERROR not in mine


def test_a_terminating_predecessor_is_asked_too() -> None:
    """Without a hold the rollout's first batch is terminating by the time the controller sees
    the template: its node still gets the request, and pulls while the pod stops."""
    rig = rig_with(deployment())
    rig.apiserver.delete_pod("web-abc-0")
    rig.reconcile("deployments/ns/web")
    assert annotations(rig, "web-abc-0")[api.PREPULL] == "app:2"


def test_pods_already_on_the_new_images_are_not_asked() -> None:
    rig = rig_with(deployment("app:1", paused=True, held=when()))
    assert rig.reconcile("deployments/ns/web") is None  # nothing to pull: resumed at once
    assert spec(rig)["paused"] is False
    assert api.PREPULL not in annotations(rig, "web-abc-0")


def test_a_node_without_the_prepull_agent_is_not_asked_nor_waited_for() -> None:
    """kwok's nodes, or a node whose agent runs without the plugin: no label, no request."""
    rig = rig_with(deployment(paused=True, held=when()))
    rig.apiserver.nodes["n2"] = fake_node(labels={})
    rig.reconcile("deployments/ns/web")
    assert api.PREPULL not in annotations(rig, "web-abc-1")
    answer(rig, "web-abc-0")
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is False


def test_a_deployment_not_opted_in_is_left_alone() -> None:
    rig = rig_with(deployment(paused=True, held=when(), opted=False))
    assert rig.reconcile("deployments/ns/web") is None
    assert spec(rig)["paused"] is True and held(rig)
    assert api.PREPULL not in annotations(rig, "web-abc-0")


def test_uninstalling_resumes_what_fulcrum_held() -> None:
    """``fulcrum rebuild --release-all``: no controller will end the hold after it."""
    rig = rig_with(deployment(paused=True, held=when()))
    rig.apiserver.put(
        "deployments",
        {
            **deployment(paused=True),
            "metadata": {"name": "users", "namespace": NS, "uid": "e", "annotations": {}},
        },
    )
    release.release_all(rig.controller.writes)
    assert spec(rig)["paused"] is False and not held(rig)
    users = rig.apiserver.get("deployments", "users")
    assert users is not None and users["spec"]["paused"] is True


# --- the admission webhook's hold ----------------------------------------------------------------


def update(old: Obj, new: Obj) -> Obj:
    return {
        "uid": "r",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "operation": "UPDATE",
        "object": new,
        "oldObject": old,
    }


NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def test_an_image_change_arrives_paused_and_marked() -> None:
    patch = hold(update(deployment("app:1"), deployment("app:2")), NOW)
    key = api.PREPULL_HOLD.replace("/", "~1")
    assert patch == [
        {"op": "add", "path": "/spec/paused", "value": True},
        {
            "op": "add",
            "path": f"/metadata/annotations/{key}",
            "value": "2026-12-07T09:00:00.000000Z",
        },
    ]
    assert mutate(update(deployment("app:1"), deployment("app:2"))).patch[0]["path"] == (
        "/spec/paused"
    )


def test_a_deployment_without_annotations_gets_the_map() -> None:
    new = deployment("app:2")
    del new["metadata"]["annotations"]
    patch = hold(update(deployment("app:1"), new), NOW)
    assert patch[1] == {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {api.PREPULL_HOLD: "2026-12-07T09:00:00.000000Z"},
    }


def test_what_is_not_held() -> None:
    old = deployment("app:1")
    env = copy.deepcopy(old)
    env["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    users = deployment("app:2", paused=True)
    zero = deployment("app:2")
    zero["spec"]["replicas"] = 0
    for new in (env, users, zero, deployment("app:2", opted=False)):
        assert hold(update(old, new), NOW) == []
    # held already: the hold keeps its start
    assert hold(update(old, deployment("app:3", paused=True, held="then")), NOW) == []
    create = {**update(old, deployment("app:2")), "operation": "CREATE"}
    assert hold(create, NOW) == []


# --- the images a request may carry ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "nginx",
        "127.0.0.1:5000/app:r0-local",
        "registry.example.com/team/app:1.4,localhost/side@sha256:" + "a" * 64,
        "reg:5000/a/b",
    ],
)
def test_image_references(value: str) -> None:
    assert api.parse_images(value) == tuple(value.split(","))


@pytest.mark.parametrize(
    "value", ["", "a,,b", "App", "a b", "../x", ":1", "a:" + "t" * 200, ",".join(["a"] * 17)]
)
def test_what_is_not_an_image_reference(value: str) -> None:
    with pytest.raises(api.OptionError, match=r"fulcrum\.io/prepull"):
        api.parse_images(value)


def test_opted_in_images_of_a_template() -> None:
    dep = deployment("app:2")
    dep["spec"]["template"]["spec"]["initContainers"] = [{"name": "i", "image": "init:1"}]
    assert api.template_images(dep) == ["init:1", "app:2"]
    assert api.template_opted_in(dep) and not api.template_opted_in(deployment(opted=False))
    assert OPTED[api.REBUILD] == "local"
