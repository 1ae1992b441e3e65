"""fulcrum/kwok_stages.yaml: a complete, well-formed set of kwok Stages with Fulcrum's changes.

Only the structure is checked here; the templates are rendered by kwok on a real cluster
(the integration tests) or offline with kwok's own stage test harness.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.harness.kwok_stages import STAGES_PATH

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete", "pod-delete"]
ASSIGNED_IP = "fulcrum.io/assigned-ip"


def _stages() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(STAGES_PATH.read_text()) if d is not None]
    return {d["metadata"]["name"]: d for d in docs}


STAGES = _stages()


def test_the_file_is_package_data() -> None:
    assert STAGES_PATH.is_file()
    assert STAGES_PATH.parent == ROOT / "fulcrum" / "harness"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["fulcrum"]
    assert f"harness/{STAGES_PATH.name}" in package_data


def test_every_stage_is_there_once() -> None:
    docs = [d for d in yaml.safe_load_all(STAGES_PATH.read_text()) if d is not None]
    assert [d["metadata"]["name"] for d in docs] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_is_a_kwok_stage(name: str) -> None:
    stage = STAGES[name]
    assert stage["apiVersion"] == "kwok.x-k8s.io/v1alpha1"
    assert stage["kind"] == "Stage"
    assert set(stage) == {"apiVersion", "kind", "metadata", "spec"}
    spec = stage["spec"]
    kind = "Node" if name.startswith("node-") else "Pod"
    assert spec["resourceRef"] == {"apiGroup": "v1", "kind": kind}
    assert spec["selector"]["matchExpressions"], "a Stage without a selector matches everything"
    for expression in spec["selector"]["matchExpressions"]:
        assert expression["key"].startswith(".")
        assert expression["operator"] in {"In", "NotIn", "Exists", "DoesNotExist"}
        if expression["operator"] in {"In", "NotIn"}:
            assert expression["values"] and all(isinstance(v, str) for v in expression["values"])
        else:
            assert "values" not in expression
    assert set(spec["next"]) <= {"statusTemplate", "delete"}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "pod-delete"])
def test_templates_close_every_block(name: str) -> None:
    """Every {{ if }}, {{ with }} and {{ range }} has its {{ end }}."""
    template = STAGES[name]["spec"]["next"]["statusTemplate"]
    actions = re.findall(r"\{\{-?\s*(\w+)", template)
    opened = sum(action in {"if", "with", "range"} for action in actions)
    assert opened == actions.count("end") > 0


def test_pod_delete_deletes_and_keeps_finalizers() -> None:
    stage = STAGES["pod-delete"]
    assert stage["spec"]["next"] == {"delete": True}  # no `finalizers:` clause
    (expression,) = stage["spec"]["selector"]["matchExpressions"]
    assert expression == {"key": ".metadata.deletionTimestamp", "operator": "Exists"}


def test_pod_ready_uses_the_assigned_ip_and_falls_back_to_kwoks_pool() -> None:
    template = STAGES["pod-ready"]["spec"]["next"]["statusTemplate"]
    assert f'"{ASSIGNED_IP}"' in template
    assert "PodIPsWith" in template
    # kwok's pool is only asked when there is no assigned IP: each call takes an address
    assigned, fallback = template.split("{{ if $assigned }}")[1].split("{{ else }}", 1)
    assert "podIP: {{ $assigned | Quote }}" in assigned
    assert "PodIPsWith" not in assigned
    assert "PodIPsWith" in fallback


def test_pods_being_deleted_are_neither_made_ready_nor_completed() -> None:
    for name in ("pod-ready", "pod-complete"):
        expressions = STAGES[name]["spec"]["selector"]["matchExpressions"]
        assert {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"} in expressions


def test_the_heartbeat_is_cheap_and_jittered() -> None:
    delay = STAGES["node-heartbeat-with-lease"]["spec"]["delay"]
    assert delay["durationMilliseconds"] >= 60_000
    assert delay["jitterDurationMilliseconds"] > delay["durationMilliseconds"]
