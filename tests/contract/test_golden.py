"""Golden request/response pairs in kube-scheduler's extender wire format (extender/v1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight

# MostAllocated keeps the golden arithmetic easy to check by hand.
SETTINGS = ExtenderSettings(
    prioritize=(PolicyWeight(policy="MostAllocated", weight=1),),
    decide_in_filter=False,
    bind_all=True,
)

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


# The pod asks for 2 cpu and 1Gi; n1 and n2 have 4 cpu and 8Gi, n3 1 cpu and 2Gi.
# filter, cache mode (3 cpu already on n1): n1 free 1000m < 2000m -> FailedNodes;
#   n3 allocatable 1000m < 2000m -> FailedAndUnresolvableNodes; n2 passes.
# prioritize, cache mode, MostAllocated (kube-scheduler's integer arithmetic):
#   n1 = (min(5000, 4000)*100/4000 + 1Gi*100/8Gi) / 2 = (100 + 12) / 2 = 56
#   n2 = (2000*100/4000 + 12) / 2 = 31; min-max to 0..10: n1 10, n2 0
# prioritize, full mode (no cache, nothing requested): n1 = n2 = 31 -> both 10
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
    app = create_app(SETTINGS, cache_with_n1_busy() if with_cache else None)
    verb = case.split("_")[0]
    reply = TestClient(app).post(f"/{verb}", json=load(f"{case}_request"))
    assert reply.status_code == 200
    assert reply.json() == load(f"{case}_response")


def test_decide_in_filter_passes_only_fulcrums_pick() -> None:
    settings = ExtenderSettings(prioritize=(PolicyWeight(policy="MostAllocated", weight=1),))
    app = create_app(settings, cache_with_n1_busy())
    request = load("filter_cache_request") | {"NodeNames": ["n2", "n1"]}
    request["Pod"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500m"
    reply = TestClient(app).post("/filter", json=request).json()
    # MostAllocated: n1 (3 of 4 cpu used) = (3500*100/4000 + 12) / 2 = 49 beats the empty
    # n2 = (500*100/4000 + 12) / 2 = 12; only n1 passes, so kube-scheduler skips scoring
    assert reply["NodeNames"] == ["n1"]
    assert "n2" not in reply["FailedNodes"]


def test_preempt_returns_the_fewest_victims_on_the_best_node() -> None:
    cache = cache_with_n1_busy()  # n1: pod "busy" with 3 cpu of 4
    cache.apply(
        "pods",
        "ADDED",
        {
            "metadata": {"uid": "small", "namespace": "default", "name": "small"},
            "spec": {"nodeName": "n1", "containers": [{"resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running"},
        },
    )
    request = {
        "Pod": load("filter_cache_request")["Pod"],  # 2 cpu
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            "n1": {"Pods": [{"UID": "busy"}, {"UID": "small"}], "NumPDBViolations": 0}
        },
    }
    reply = TestClient(create_app(SETTINGS, cache)).post("/preempt", json=request)
    # evicting "busy" (3 cpu) alone frees 3 of 4 cpu: "small" is reprieved
    assert reply.status_code == 200
    assert reply.json() == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "busy"}], "NumPDBViolations": 0}}
    }
