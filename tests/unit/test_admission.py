"""Admission (``admission.review``, ``admission.app``, ``admission.config``) without a cluster."""

from __future__ import annotations

import base64
import copy
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from admission.app import create_app
from admission.config import webhook_configurations
from admission.review import mutate, response, validate
from fulcrum.cli import main
from fulcrum.harness.certs import install_commands, make_serving_cert
from fulcrum.harness.cluster import free_port
from kube import api
from kube.resources import BIND, GPU_MODEL_ANNOTATION
from tests import builders


def request(obj: Any, *, kind: str = "Pod", operation: str = "CREATE") -> dict[str, Any]:
    return {"uid": "r1", "kind": {"kind": kind}, "operation": operation, "object": obj}


def pod(annotations: dict[str, str], scheduler: str | None = None) -> dict[str, Any]:
    out = builders.pod("u", annotations=annotations)
    if scheduler is not None:
        out["spec"]["schedulerName"] = scheduler
    return out


def deployment(
    annotations: dict[str, str], *, own: dict[str, str] | None = None, surge: Any = 0
) -> dict[str, Any]:
    template = builders.pod("t", annotations=annotations)
    return {
        "metadata": {"name": "web", "annotations": own or {}},
        "spec": {
            "strategy": {"rollingUpdate": {"maxSurge": surge, "maxUnavailable": 1}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def patched(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """``obj`` after a JSON patch of "add" operations (RFC 6902, as the API server applies it)."""
    out = copy.deepcopy(obj)
    for op in patch:
        assert op["op"] == "add"
        *parents, last = [
            t.replace("~1", "/").replace("~0", "~") for t in op["path"][1:].split("/")
        ]
        target = out
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if last == "-":
            target.append(op["value"])
        else:
            target[last] = op["value"]
    return out


def bind_marks(obj: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """(request, limit) of fulcrum.io/bind per container."""
    return [
        (
            c.get("resources", {}).get("requests", {}).get(BIND),
            c.get("resources", {}).get("limits", {}).get(BIND),
        )
        for c in obj["spec"]["containers"]
    ]


@pytest.mark.parametrize("scheduler", [None, "", "default-scheduler"])
def test_a_pod_that_uses_fulcrum_is_sent_to_fulcrum_scheduler(scheduler: str | None) -> None:
    decision = mutate(request(pod({GPU_MODEL_ANNOTATION: "A100"}, scheduler)))
    assert decision.patch == [
        {"op": "add", "path": "/spec/schedulerName", "value": "fulcrum-scheduler"}
    ]
    assert decision.warnings == []


def test_pods_only_fulcrum_can_bind_are_marked_for_its_bind() -> None:
    """GPUs, an IP pool, local rebuild: the resource fulcrum.io/bind sends them to Fulcrum's
    bind (kube-scheduler's managedResources); every other pod kube-scheduler binds itself."""
    opted_in = pod({api.REBUILD: "local"})
    out = patched(opted_in, mutate(request(opted_in)).patch)
    assert out["spec"]["schedulerName"] == "fulcrum-scheduler"
    assert bind_marks(out) == [("1", "1")]
    assert out["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"  # kept
    gpu = builders.pod("g", requests={"nvidia.com/gpu": "1"})
    gpu["spec"]["schedulerName"] = "fulcrum-scheduler"
    assert bind_marks(patched(gpu, mutate(request(gpu)).patch)) == [("1", "1")]
    pooled = pod({api.IP_POOL: "web"}, "fulcrum-scheduler")
    del pooled["spec"]["containers"][0]["resources"]  # no resources at all
    assert bind_marks(patched(pooled, mutate(request(pooled)).patch)) == [("1", "1")]
    marked = patched(pooled, mutate(request(pooled)).patch)
    assert mutate(request(marked)).patch == []  # marked already
    plain = pod({GPU_MODEL_ANNOTATION: "A100"}, "fulcrum-scheduler")  # no GPU asked: plain
    assert mutate(request(plain)).patch == []


def test_pods_the_controller_will_hold_a_room_for_are_guarded_from_birth() -> None:
    """The rebuild finalizer comes with the pod, so the controller needs no write of its own
    before the pod may go; only pods it will hold a room for get it (its one rule)."""

    def finalizers(obj: dict[str, Any]) -> list[str] | None:
        return patched(obj, mutate(request(obj)).patch)["metadata"].get("finalizers")

    assert finalizers(pod({api.REBUILD: "local"})) == [api.FINALIZER]
    other = pod({api.REBUILD: "local"})
    other["metadata"]["finalizers"] = ["example.com/keep"]
    assert finalizers(other) == ["example.com/keep", api.FINALIZER]
    guarded = pod({api.REBUILD: "local"})
    guarded["metadata"]["finalizers"] = [api.FINALIZER]
    assert finalizers(guarded) == [api.FINALIZER]
    assert finalizers(pod({api.REBUILD: "local", api.ORDER: "create-first"})) is None
    assert finalizers(pod({api.IP_POOL: "web"})) is None
    scratch = builders.pod(
        "s", annotations={api.REBUILD: "local"}, volumes=[{"name": "tmp", "emptyDir": {}}]
    )
    assert finalizers(scratch) is None  # refused: its emptyDir would be lost


def test_a_pod_naming_another_scheduler_is_left_alone_with_a_warning() -> None:
    decision = mutate(request(pod({api.REBUILD: "local"}, "volcano")))
    assert decision.patch == []
    [warning] = decision.warnings
    assert "'volcano'" in warning and "fulcrum.io/rebuild" in warning
    assert len(warning) < 256  # the API server may truncate longer warnings


def test_a_second_release_routes_to_its_own_scheduler_name() -> None:
    """The chart passes its schedulerName (--scheduler-name): a release named fulcrum-canary
    sends opted-in pods there, and calls a pod on the first release's scheduler another's."""
    opted_in = pod({api.REBUILD: "local"})
    decision = mutate(request(opted_in), scheduler_name="fulcrum-canary")
    assert decision.patch[0] == {
        "op": "add",
        "path": "/spec/schedulerName",
        "value": "fulcrum-canary",
    }
    other = mutate(request(pod({api.REBUILD: "local"}, "fulcrum-scheduler")), scheduler_name="x")
    assert other.patch == [] and "use x or remove the field" in other.warnings[0]


@pytest.mark.parametrize(
    ("service", "configuration"),
    [
        ("fulcrum-webhook", "fulcrum.io"),
        ("canary-webhook", "canary.fulcrum.io"),
        ("hook", "fulcrum.io"),
    ],
)
def test_webhook_cert_patches_the_configurations_the_chart_names(
    tmp_path: Path, service: str, configuration: str
) -> None:
    commands = install_commands(
        make_serving_cert(tmp_path, [f"{service}.ns.svc"]), namespace="ns", service=service
    )
    patches = [line.split()[:4] for line in commands.splitlines() if " patch " in line]
    assert patches == [
        ["kubectl", "patch", kind, configuration]
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
    ]
    assert f"create secret tls {service}-tls" in commands


def test_a_pod_already_on_fulcrum_and_updates_are_untouched() -> None:
    assert mutate(request(pod({}, "fulcrum-scheduler"))).patch == []
    assert mutate(request(pod({api.REBUILD: "local"}), operation="UPDATE")).patch == []


def test_a_bad_opt_in_is_denied_naming_the_annotation_and_the_allowed_value() -> None:
    decision = validate(request(pod({api.REBUILD: "lcoal"})))
    assert not decision.allowed
    assert decision.message == (
        "metadata.annotations[fulcrum.io/rebuild]: "
        'annotation fulcrum.io/rebuild="lcoal" is not allowed; use one of: local'
    )


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "ReplicaSet"])
def test_a_workloads_template_is_checked_with_the_field_path(kind: str) -> None:
    obj = deployment({api.REBUILD: "local", "fulcrum.io/gpu-milli": "-5"})
    decision = validate(request(obj, kind=kind))
    assert not decision.allowed
    assert decision.message.startswith("spec.template.metadata: annotation fulcrum.io/gpu-milli")


def test_every_problem_is_named_at_once() -> None:
    annotations = {api.REBUILD: "local", api.FALLBACK: "never", "fulcrum.io/rebuild-hooks": "no pe"}
    decision = validate(request(pod(annotations)))
    assert "fulcrum.io/rebuild-fallback" in decision.message
    assert "'no pe' is not a hook name" in decision.message


def test_an_empty_gpu_model_is_denied() -> None:
    decision = validate(request(pod({"fulcrum.io/gpu-model": ""})))
    assert "names no model" in decision.message


@pytest.mark.parametrize(("surge", "warned"), [(0, False), ("0%", False), (1, True), (None, True)])
def test_a_surge_rollout_of_an_opted_in_deployment_is_warned(surge: Any, warned: bool) -> None:
    obj = deployment({api.REBUILD: "local"}, surge=surge)
    if surge is None:  # not set: Kubernetes' default, 25%
        del obj["spec"]["strategy"]
    decision = validate(request(obj, kind="Deployment"))
    assert decision.allowed
    assert any("maxSurge" in w for w in decision.warnings) is warned


def test_the_opt_in_on_the_workloads_own_metadata_is_warned() -> None:
    obj = deployment({}, own={api.REBUILD: "local"})
    decision = validate(request(obj, kind="StatefulSet"))
    assert decision.allowed
    [warning] = decision.warnings
    assert "fulcrum.io/rebuild on the StatefulSet's own metadata does nothing" in warning


def test_volumes_that_lose_their_data_are_warned() -> None:
    obj = pod({api.REBUILD: "local"})
    obj["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    decision = validate(request(obj))
    assert decision.allowed
    assert "scratch" in decision.warnings[0]


def test_the_response_carries_the_uid_patch_and_status() -> None:
    allowed = response(request({}), mutate(request(pod({api.REBUILD: "local"}))))["response"]
    assert allowed["uid"] == "r1" and allowed["allowed"]
    assert allowed["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(allowed["patch"]))[0]["value"] == "fulcrum-scheduler"
    denied = response(request({}), validate(request(pod({api.REBUILD: "x"}))))["response"]
    assert not denied["allowed"]
    assert denied["status"]["code"] == 422
    assert "fulcrum.io/rebuild" in denied["status"]["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"nope", 400), (b"[]", 400), (b'{"request": 1}', 400), (b"{" + b" " * 9_000_000 + b"}", 413)],
)
def test_a_malformed_review_is_a_4xx_with_a_message(body: bytes, status: int) -> None:
    client = TestClient(create_app())
    for path in ("/mutate", "/validate"):
        reply = client.post(path, content=body)
        assert reply.status_code == status
        assert reply.json()["message"]


def test_the_app_answers_reviews() -> None:
    client = TestClient(create_app())
    review = {"request": request(pod({api.REBUILD: "lcoal"}))}
    reply = client.post("/validate", json=review)
    assert reply.status_code == 200
    assert reply.json()["response"]["allowed"] is False


def test_only_routing_fails_closed_and_every_webhook_is_narrowed() -> None:
    mutating, validating = webhook_configurations({"url": "https://127.0.0.1:9443"})
    policies = {
        w["name"]: w["failurePolicy"] for c in (mutating, validating) for w in c["webhooks"]
    }
    assert policies == {
        "pods.route.fulcrum.io": "Fail",
        "namespace-pods.route.fulcrum.io": "Fail",
        "deployments.prepull.fulcrum.io": "Ignore",  # a rollout never waits for Fulcrum down
        "pods.validate.fulcrum.io": "Ignore",
        "workloads.validate.fulcrum.io": "Ignore",
        "ippools.validate.fulcrum.io": "Fail",  # one address in two pools: two pods, one IP
    }
    for config in (mutating, validating):
        for webhook in config["webhooks"]:
            assert webhook["matchConditions"], webhook["name"]
            assert webhook["clientConfig"]["url"].startswith("https://127.0.0.1:9443/")
    assert mutating["webhooks"][1]["namespaceSelector"]["matchLabels"] == {
        "fulcrum.io/scheduling": "enabled"
    }


@pytest.mark.parametrize(
    ("client_config", "exempt"),
    [
        ({"url": "https://127.0.0.1:9443"}, ["kube-system"]),
        ({"service": {"namespace": "fulcrum-system", "name": "fulcrum-webhook"}}, None),
        ({"service": {"namespace": "kube-system", "name": "fulcrum-webhook"}}, ["kube-system"]),
    ],
    ids=["local", "release-namespace", "release-in-kube-system"],
)
def test_no_webhook_sees_kube_system_or_its_own_namespace(
    client_config: dict[str, Any], exempt: list[str] | None
) -> None:
    want = exempt or ["kube-system", "fulcrum-system"]
    for config in webhook_configurations(client_config):
        for webhook in config["webhooks"]:
            rule = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": want}
            assert rule in webhook["namespaceSelector"]["matchExpressions"], webhook["name"]


def test_the_webhook_serves_https_that_its_ca_vouches_for(tmp_path: Path) -> None:
    certs = make_serving_cert(tmp_path, ["127.0.0.1", "localhost"])
    port = free_port()
    cmd = [sys.executable, "-m", "fulcrum.cli", "webhook", "--port", str(port)]
    server = subprocess.Popen([*cmd, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)])
    context = ssl.create_default_context(cafile=str(certs.ca))
    review = orjson.dumps({"request": request(pod({api.REBUILD: "local"}))})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                call = urllib.request.Request(f"https://127.0.0.1:{port}/mutate", data=review)
                with urllib.request.urlopen(call, context=context, timeout=2) as reply:
                    answer = orjson.loads(reply.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the webhook did not answer"
                time.sleep(0.2)
        assert answer["response"]["patchType"] == "JSONPatch"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        server.terminate()
        server.wait(10)


def test_the_webhook_without_its_certificate_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    assert main(["webhook", "--tls-cert", str(missing), "--tls-key", str(missing)]) == 1
