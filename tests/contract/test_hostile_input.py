"""Hostile input to the full-node verbs (nodeCacheCapable: false, no cluster): whatever the
quantities, annotations and node objects, never a 5xx, and the next valid request is answered."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.app import create_app
from extender.config import ExtenderSettings
from tests import builders

QUANTITIES = st.one_of(
    st.sampled_from(["1e18", "1e309", "-1", "99999999999999999999999999", "1Ei", "0", "abc", ""]),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
ANNOTATION_VALUES = st.one_of(
    st.sampled_from(["-5", "abc", "100000", "300", "", " | ", "A100|", "0"]), st.text(max_size=8)
)
ANNOTATIONS = st.dictionaries(
    st.sampled_from(
        [
            "fulcrum.io/gpu-milli",
            "fulcrum.io/gpu-model",
            "fulcrum.io/gpu-devices",
            "fulcrum.io/rebuild",
            "fulcrum.io/ip-pool",
        ]
    ),
    ANNOTATION_VALUES,
)
RESOURCES = st.dictionaries(
    st.sampled_from(["cpu", "memory", "pods", "nvidia.com/gpu", "ephemeral-storage", "x.io/y"]),
    QUANTITIES,
    max_size=4,
)
LABELS = st.dictionaries(
    st.sampled_from(["nvidia.com/gpu.product", "zone"]), st.text(max_size=6), max_size=2
)


@st.composite
def hostile_node(draw: st.DrawFn, i: int = 0) -> Any:
    return draw(
        st.one_of(
            st.builds(
                lambda alloc, labels: {
                    "metadata": {"name": f"n{i}", "labels": labels},
                    "status": {"allocatable": alloc},
                },
                RESOURCES,
                LABELS,
            ),
            st.just({"metadata": {"name": f"n{i}"}}),
            st.just({"metadata": {"name": f"n{i}"}, "status": None}),
            st.just({"metadata": {"name": f"n{i}"}, "status": {"allocatable": "lots"}}),
        )
    )


ODD = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2))


@st.composite
def hostile_pod(draw: st.DrawFn) -> Any:
    annotations = draw(
        st.one_of(ANNOTATIONS, st.dictionaries(st.just("fulcrum.io/gpu-milli"), ODD))
    )
    pod = {
        "metadata": {"uid": "u", "name": "p", "namespace": "ns", "annotations": annotations},
        "spec": {"containers": [{"resources": {"requests": draw(RESOURCES)}}]},
    }
    broken = draw(st.sampled_from(["", "metadata", "spec", "containers", "resources"]))
    if broken == "metadata":
        pod["metadata"] = draw(ODD)
    elif broken == "spec":
        pod["spec"] = draw(ODD)
    elif broken == "containers":
        pod["spec"]["containers"] = draw(st.one_of(ODD, st.lists(ODD, max_size=2)))
    elif broken == "resources":
        pod["spec"]["containers"][0]["resources"] = draw(ODD)
    return pod


VERBS = ["filter", "prioritize"]
CLIENT = TestClient(create_app(ExtenderSettings()), raise_server_exceptions=False)
VALID = {"Pod": builders.pod("ok"), "Nodes": {"items": [builders.node("good")]}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile_pod(), st.lists(hostile_node(), max_size=3), st.sampled_from(["filter", "prioritize"])
)
def test_never_a_5xx_and_the_next_request_is_answered(
    pod: Any, nodes: list[Any], verb: str
) -> None:
    for i, n in enumerate(nodes):
        n["metadata"]["name"] = f"n{i}"
    reply = CLIENT.post(f"/{verb}", json={"Pod": pod, "Nodes": {"items": nodes}})
    assert reply.status_code < 500, reply.text
    assert reply.status_code == 200 or reply.json()["Error"]
    after = CLIENT.post("/filter", json=VALID)
    assert after.status_code == 200
    assert [n["metadata"]["name"] for n in after.json()["Nodes"]["items"]] == ["good"]
