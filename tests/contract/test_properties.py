"""Properties of the wire contract over generated clusters: filter's result is a subset of its
input, every input node is accounted for exactly once, scores stay in 0..10."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from tests import builders

MODELS = ["A100", "V100", "T4"]


def node(i: int, cpu: int, mem_gi: int, gpus: int, model: int) -> dict[str, Any]:
    return builders.node(
        f"n{i}",
        cpu=str(cpu),
        memory=f"{mem_gi}Gi",
        gpus=gpus,
        model=MODELS[model] if gpus else None,
    )


def pod(cpu_m: int, mem_mi: int, gpus: int, share: int, model: int | None) -> dict[str, Any]:
    requests: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if gpus and share < 1000:
        annotations["fulcrum.io/gpu-milli"] = str(share)
    elif gpus:
        requests["nvidia.com/gpu"] = str(gpus)
    if gpus and model is not None:
        annotations["fulcrum.io/gpu-model"] = MODELS[model]
    return builders.pod(
        "p",
        cpu=f"{cpu_m}m",
        memory=f"{mem_mi}Mi",
        requests=requests,
        annotations=annotations,
    )


nodes_strategy = st.lists(
    st.tuples(
        st.integers(1, 64),
        st.integers(1, 512),
        st.sampled_from([0, 0, 1, 2, 4, 8]),
        st.integers(0, 2),
    ),
    max_size=40,
)
pod_strategy = st.tuples(
    st.integers(0, 70_000),
    st.integers(0, 600_000),
    st.sampled_from([0, 1, 2, 8]),
    st.integers(1, 1000),
    st.one_of(st.none(), st.integers(0, 2)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes_strategy, pod_strategy, st.booleans(), st.booleans())
def test_filter_and_prioritize_contract(
    nodes: list[tuple[int, int, int, int]],
    shape: tuple[int, int, int, int, int | None],
    cache_mode: bool,
    decide: bool,
) -> None:
    items = [node(i, *n) for i, n in enumerate(nodes)]
    body_pod = pod(*shape)
    settings_ = ExtenderSettings(
        prioritize=(
            PolicyWeight(policy="Archimedes", weight=2),
            PolicyWeight(policy="MostAllocated", weight=1),
        ),
        decide_in_filter=decide,
        bind_all=not decide,
    )
    cache = None
    if cache_mode:
        cache = ClusterCache()
        for item in items:
            cache.apply("nodes", "ADDED", item)
    client = TestClient(create_app(settings_, cache))
    names = [item["metadata"]["name"] for item in items]
    request: dict[str, Any] = {"Pod": body_pod}
    request |= {"NodeNames": names} if cache_mode else {"Nodes": {"items": items}}

    reply = client.post("/filter", json=request)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    passed = (
        result["NodeNames"]
        if cache_mode
        else [n["metadata"]["name"] for n in (result.get("Nodes") or {}).get("items", [])]
    )
    failed, hopeless = result["FailedNodes"], result["FailedAndUnresolvableNodes"]
    assert set(passed) <= set(names)
    assert not set(passed) & set(failed) and not set(passed) & set(hopeless)
    assert not set(failed) & set(hopeless)
    if decide:
        assert len(passed) <= 1
    else:
        assert set(passed) | set(failed) | set(hopeless) == set(names)

    scores = client.post("/prioritize", json=request)
    assert scores.status_code == 200
    assert [s["Host"] for s in scores.json()] == names
    assert all(isinstance(s["Score"], int) and 0 <= s["Score"] <= 10 for s in scores.json())


def test_five_thousand_nodes_and_empty_inputs() -> None:
    items = [node(i, 32, 256, 8 if i % 4 == 0 else 0, i % 3) for i in range(5000)]
    cache = ClusterCache()
    for item in items:
        cache.apply("nodes", "ADDED", item)
    client = TestClient(create_app(ExtenderSettings(), cache))
    names = [item["metadata"]["name"] for item in items]
    body = {"Pod": pod(4000, 8192, 1, 1000, None), "NodeNames": names}
    result = client.post("/filter", json=body).json()
    assert len(result["NodeNames"]) == 1 and result["NodeNames"][0] in names
    assert not result.get("FailedNodes") and not result.get("FailedAndUnresolvableNodes")
    every = TestClient(create_app(ExtenderSettings(decide_in_filter=False, bind_all=True), cache))
    passing = every.post("/filter", json=body).json()
    assert len(passing["FailedAndUnresolvableNodes"]) == 3750  # the nodes without GPUs
    assert len(passing["NodeNames"]) == 1250
    scores = client.post("/prioritize", json=body).json()
    assert len(scores) == 5000 and all(0 <= s["Score"] <= 10 for s in scores)

    empty = {"Pod": pod(100, 100, 0, 1000, None), "NodeNames": []}
    assert client.post("/filter", json=empty).json()["NodeNames"] == []
    assert client.post("/prioritize", json=empty).json() == []
