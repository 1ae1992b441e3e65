"""Admission refuses the annotations only Fulcrum writes from anyone but Fulcrum's own service
accounts, on CREATE and on an UPDATE that adds or changes one, and never an UPDATE that leaves
them alone; hostile quantities and values get a refusal naming the field, never a 500."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient

from admission.app import create_app
from admission.config import webhook_configurations
from admission.review import mutate, validate
from fulcrum.harness.certs import make_serving_cert
from fulcrum.harness.webhooks import kubeconfig_user
from kube import api
from tests import builders

EXTENDER = "system:serviceaccount:fulcrum-system:fulcrum-extender"
REBUILD = "system:serviceaccount:fulcrum-system:fulcrum-rebuild"
TRUSTED = frozenset({EXTENDER, REBUILD})
USER = "alice"
WRITTEN = {
    api.GPU_DEVICES: "",
    api.ASSIGNED_IP: "10.0.0.2",
    api.RESERVATION: "rb-1",
    api.DECISION: '{"policy": "fgd"}',
    api.STATUS: '{"action": "claimed"}',
}


def review(obj: Any, *, user: str = USER, old: Any = None, kind: str = "Pod") -> dict[str, Any]:
    out = {
        "uid": "r1",
        "kind": {"kind": kind},
        "operation": "CREATE" if old is None else "UPDATE",
        "object": obj,
        "userInfo": {"username": user, "groups": ["system:authenticated"]},
    }
    if old is not None:
        out["oldObject"] = old
    return out


def pod(annotations: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    return builders.pod("u", annotations=annotations, **kwargs)


@pytest.mark.parametrize("key", api.WRITTEN_BY_FULCRUM)
def test_a_fulcrum_written_annotation_is_refused_from_anyone_else(key: str) -> None:
    decision = validate(review(pod({key: WRITTEN[key]})), trusted=TRUSTED)
    assert not decision.allowed
    assert (
        key in decision.message and "alice is not one of its service accounts" in decision.message
    )

    assert validate(review(pod({key: WRITTEN[key]}), user=REBUILD), trusted=TRUSTED).allowed


def test_nobody_is_trusted_by_default() -> None:
    assert not validate(review(pod(WRITTEN), user=REBUILD)).allowed
    assert not validate(review(pod(WRITTEN), user=""), trusted=TRUSTED).allowed


@pytest.mark.parametrize("key", api.WRITTEN_BY_FULCRUM)
def test_an_update_may_not_add_or_change_one(key: str) -> None:
    before = pod({api.REBUILD: "local"})
    added = pod({api.REBUILD: "local", key: WRITTEN[key]})
    assert not validate(review(added, old=before), trusted=TRUSTED).allowed
    changed = pod({api.REBUILD: "local", key: WRITTEN[key] + "0"})
    assert not validate(review(changed, old=added), trusted=TRUSTED).allowed
    assert validate(review(changed, old=added, user=REBUILD), trusted=TRUSTED).allowed
    # removing it, or leaving it as it was, is no forgery
    assert validate(review(before, old=added), trusted=TRUSTED).allowed
    same = copy.deepcopy(added)
    same["metadata"]["labels"] = {"touched": "yes"}
    assert validate(review(same, old=added), trusted=TRUSTED).allowed


def test_an_update_of_a_pod_already_bad_is_allowed_unless_it_changes_a_bad_value() -> None:
    bad = pod({api.REBUILD: "local", api.GPU_DEVICES: "x", "fulcrum.io/rebuild-wait": "soon"})
    finalized = copy.deepcopy(bad)
    finalized["metadata"]["finalizers"] = []  # e.g. a finalizer removed: nothing Fulcrum reads
    assert validate(review(finalized, old=bad), trusted=TRUSTED).allowed
    worse = pod({api.REBUILD: "local", api.GPU_DEVICES: "x", "fulcrum.io/rebuild-wait": "later"})
    decision = validate(review(worse, old=bad), trusted=TRUSTED)
    assert not decision.allowed and "rebuild-wait" in decision.message
    assert "gpu-devices" not in decision.message  # judged: only what the update changed


def test_a_workload_template_may_not_carry_one() -> None:
    template = pod({api.ASSIGNED_IP: "10.0.0.2"})
    deployment = {"metadata": {"name": "web"}, "spec": {"template": template}}
    decision = validate(review(deployment, kind="Deployment"), trusted=TRUSTED)
    assert not decision.allowed and "spec.template.metadata.annotations" in decision.message


def test_a_trusted_user_still_gets_bad_values_refused_on_create() -> None:
    no_gpu = pod({api.GPU_DEVICES: "0"})
    decision = validate(review(no_gpu, user=REBUILD), trusted=TRUSTED)
    assert not decision.allowed and "takes 0 GPUs" in decision.message


@pytest.mark.parametrize("value", ["NaN", "sNaN", "1e999999"])
def test_hostile_quantities_are_refused_by_both_webhooks_over_http(value: str) -> None:
    client = TestClient(create_app(trusted_users=TRUSTED))
    body = pod({api.REBUILD: "local"}, cpu=value)
    for path in ("/validate", "/mutate"):
        answer = client.post(path, content=orjson.dumps({"request": review(body)}))
        assert answer.status_code == 200, answer.text
    answer = client.post("/validate", content=orjson.dumps({"request": review(body)}))
    out = answer.json()["response"]
    assert not out["allowed"] and "resources.requests.cpu" in out["status"]["message"]
    assert mutate(review(body)).allowed  # routing leaves a bad request to validation


def test_a_huge_gpu_model_is_refused_with_a_short_message() -> None:
    decision = validate(review(pod({"fulcrum.io/gpu-model": "A" * 200_000})))
    assert not decision.allowed
    assert "not a node label value" in decision.message and len(decision.message) < 500


def test_the_pods_webhook_sees_updates_but_no_subresource() -> None:
    _, validating = webhook_configurations({"url": "https://127.0.0.1:9443"})
    [pods] = [w for w in validating["webhooks"] if w["name"] == "pods.validate.fulcrum.io"]
    assert pods["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert [c["name"] for c in pods["matchConditions"]] == ["uses-fulcrum"]  # plain pods: never


def test_the_chart_trusts_its_own_two_service_accounts() -> None:
    rendered = list(yaml.safe_load_all(Path("deploy/webhook.yaml").read_text()))
    [deployment] = [o for o in rendered if o and o["kind"] == "Deployment"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    trusted = [c.split("=", 1)[1] for c in command if c.startswith("--trusted-user=")]
    assert trusted == [EXTENDER, REBUILD]


def test_the_harness_trusts_its_kubeconfig_user(tmp_path: Path) -> None:
    make_serving_cert(tmp_path, ["127.0.0.1"])  # any certificate will do: its CN is the user
    kubeconfig = tmp_path / "kubeconfig.yaml"
    config = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"user": "u", "cluster": "k"}}],
        "users": [{"name": "u", "user": {"client-certificate": "tls.crt"}}],
    }
    kubeconfig.write_text(yaml.safe_dump(config))
    assert kubeconfig_user(kubeconfig) == "127.0.0.1"
