"""Golden request/response pairs in kube-scheduler's extender wire format (extender/v1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from extender.app import ExtenderSettings, create_app
from extender.cache import ClusterCache

GOLDEN = Path(__file__).parent / "golden"


def load(name: str) -> Any:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def cache_with_n1_busy() -> ClusterCache:
    cache = ClusterCache()
    for item in load("filter_full_request")["Nodes"]["items"]:
        cache.apply("nodes", "ADDED", item)
    cache.apply(
        "pods",
        "ADDED",
        {
            "metadata": {"uid": "busy", "namespace": "default", "name": "busy"},
            "spec": {"nodeName": "n1", "containers": [{"resources": {"requests": {"cpu": "3"}}}]},
            "status": {"phase": "Running"},
        },
    )
    return cache


@pytest.mark.parametrize(
    ("case", "with_cache"),
    [
        ("filter_cache", True),
        ("prioritize_cache", True),
        ("filter_full", False),
        ("prioritize_full", False),
    ],
)
def test_golden(case: str, with_cache: bool) -> None:
    app = create_app(ExtenderSettings(), cache_with_n1_busy() if with_cache else None)
    verb = case.split("_")[0]
    reply = TestClient(app).post(f"/{verb}", json=load(f"{case}_request"))
    assert reply.status_code == 200
    assert reply.json() == load(f"{case}_response")
