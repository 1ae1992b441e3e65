"""Hostile and malformed input gets a 4xx with a message, never a 500."""

from __future__ import annotations

import functools
import threading
import time

import pytest
from fastapi.testclient import TestClient

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from tests.builders import node, pod


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(ExtenderSettings(max_body_bytes=10_000)))


def test_oversized_body_is_413(client: TestClient) -> None:
    reply = client.post("/filter", content=b"{" + b" " * 20_000 + b"}")
    assert reply.status_code == 413
    assert "limit" in reply.json()["Error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not JSON"),
        (b"[1, 2]", 422, "ExtenderArgs"),
        (b'{"Pod": "x", "NodeNames": []}', 422, "Pod"),
        (b'{"Pod": {}}', 422, "Nodes or NodeNames"),
        (b'{"Pod": {}, "NodeNames": ["n1"]}', 400, "--kubeconfig"),
    ],
)
@pytest.mark.parametrize("verb", ["filter", "prioritize"])
def test_malformed_requests_are_4xx_with_a_message(
    client: TestClient, verb: str, body: bytes, status: int, message: str
) -> None:
    reply = client.post(f"/{verb}", content=body)
    assert reply.status_code == status
    assert message in reply.json()["Error"]


BAD_POD = {
    "metadata": {"annotations": {"fulcrum.io/gpu-milli": "abc"}},
    "spec": {"containers": [{"resources": {"requests": {"cpu": "x"}}}]},
}


def test_a_pod_whose_own_request_is_malformed_is_unresolvable_everywhere(
    client: TestClient,
) -> None:
    """kube-scheduler's event shows the extender's node reasons but not an error's text: the
    user must see which annotation or quantity is wrong (a 422 showed only 'code 422')."""
    nodes = {"items": [node("n0"), node("n1")]}
    reply = client.post("/filter", json={"Pod": BAD_POD, "Nodes": nodes})
    assert reply.status_code == 200
    body = reply.json()
    assert body["Nodes"]["items"] == []
    assert set(body["FailedAndUnresolvableNodes"]) == {"n0", "n1"}
    assert "cpu: 'x' is not a Kubernetes quantity" in body["FailedAndUnresolvableNodes"]["n0"]
    assert client.post("/prioritize", json={"Pod": BAD_POD, "Nodes": nodes}).status_code == 422


def test_errors_are_counted_per_verb(client: TestClient) -> None:
    client.post("/filter", content=b"nope")
    metrics = client.get("/metrics").text
    assert (
        'fulcrum_extender_errors_total{code="400",reason="bad_request",verb="filter"} 1.0'
        in metrics
    )


def test_cordoned_and_unknown_nodes_fail_with_their_reason() -> None:
    cache = ClusterCache()
    for i, cordoned in enumerate([False, True, False]):
        cache.apply("nodes", "ADDED", node(f"n{i}", memory="4Gi", pods="10", cordoned=cordoned))
    app = create_app(ExtenderSettings(decide_in_filter=False, bind_all=True), cache)
    reply = TestClient(app).post(
        "/filter", json={"Pod": pod("x"), "NodeNames": ["n0", "n1", "n2", "zz"]}
    )
    assert reply.json()["NodeNames"] == ["n0", "n2"]
    assert reply.json()["FailedNodes"] == {
        "zz": "node not in Fulcrum's cache yet",
        "n1": "node is cordoned (spec.unschedulable)",
    }


def test_a_preemptor_is_filtered_after_the_cache_sees_its_victims_go() -> None:
    """kube-scheduler retries a preemptor as soon as its own cache loses the victim; the
    extender's watch may be a few milliseconds behind. Answering from the stale cache would fail
    the freed node and make kube-scheduler preempt a second pod elsewhere (seen in CI)."""
    cache = ClusterCache()
    for name in ("n0", "n1"):
        cache.apply("nodes", "ADDED", node(name, memory="16Gi", pods="10"))
    on = functools.partial(pod, namespace="p")
    full = [("big0", "3", "n0"), ("small0", "1", "n0"), ("big1", "3", "n1"), ("small1", "1", "n1")]
    for uid, cpu, where in full:
        cache.apply("pods", "ADDED", on(uid, cpu=cpu, node_name=where))
    client = TestClient(create_app(ExtenderSettings(decide_in_filter=True), cache))
    urgent = on("urgent", cpu="3", phase="Pending")
    victims = {"n0": {"Pods": [{"UID": "big0"}]}, "n1": {"Pods": [{"UID": "big1"}]}}
    reply = client.post("/preempt", json={"Pod": urgent, "NodeNameToMetaVictims": victims})
    chosen = reply.json()["NodeNameToMetaVictims"]
    ((freed, answer),) = chosen.items()
    victim = answer["Pods"][0]["UID"]

    # a node the victims are not on is not waited for
    other = "n1" if freed == "n0" else "n0"
    started = time.monotonic()
    reply = client.post("/filter", json={"Pod": urgent, "NodeNames": [other]})
    assert other in reply.json()["FailedNodes"]
    assert time.monotonic() - started < 0.3  # SETTLE_SECONDS is 0.5

    # kube-scheduler's cache lost the victim, ours 50 ms later: the filter waits for it
    gone = on(victim, cpu="3", node_name=freed)
    threading.Timer(0.05, cache.apply, ("pods", "DELETED", gone)).start()
    started = time.monotonic()
    reply = client.post("/filter", json={"Pod": urgent, "NodeNames": [freed]})
    assert reply.json()["NodeNames"] == [freed]
    assert 0.04 < time.monotonic() - started < 0.4


def test_a_gpu_node_without_a_model_label_is_a_node_like_any_other(client: TestClient) -> None:
    """Full-node mode answered 422 for every pod once one such node was in the request."""
    nodes = {"items": [node("plain"), node("odd-gpu", gpus=2)]}
    share = pod("s", annotations={"fulcrum.io/gpu-milli": "300"})
    for p, want in ((pod("c"), "plain"), (share, "odd-gpu")):  # decideInFilter: one node
        reply = client.post("/filter", json={"Pod": p, "Nodes": nodes})
        assert reply.status_code == 200, reply.text
        assert [n["metadata"]["name"] for n in reply.json()["Nodes"]["items"]] == [want]


def test_decide_in_filter_keeps_filling_the_fullest_node_of_the_window() -> None:
    """kube-scheduler with percentageOfNodesToScore below 100 sends a window of the nodes, one
    that moves on with each pod. Nodes without GPUs score alike, so the pick among them is the
    most allocated (best fit), not the window's first node, which would open a node per window."""
    cache = ClusterCache()
    for name in ("n0", "n1", "n2", "n3"):
        cache.apply("nodes", "ADDED", node(name, memory="16Gi", pods="10"))
    cache.apply("pods", "ADDED", pod("a", cpu="1", node_name="n2"))
    cache.apply("pods", "ADDED", pod("b", cpu="2", node_name="n3"))
    client = TestClient(create_app(ExtenderSettings(decide_in_filter=True), cache))
    for window, want in (
        (["n0", "n1", "n2"], "n2"),
        (["n1", "n3", "n2"], "n3"),
        (["n0", "n1"], "n0"),
    ):
        reply = client.post("/filter", json={"Pod": pod("new", cpu="1"), "NodeNames": window})
        assert reply.json()["NodeNames"] == [want], window
