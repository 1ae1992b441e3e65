from __future__ import annotations

import functools

import pytest

from extender.cache import ClusterCache
from kube.resources import pod_request
from scheduler.pod import PodRequest
from scheduler.snapshot import CPU_COL
from tests import builders

node = functools.partial(builders.node, memory="8Gi")
pod = functools.partial(builders.pod, phase="Running")


def request_of(cpu: str) -> PodRequest:
    return pod_request(builders.pod("x", cpu=cpu))


def used_cpu(cache: ClusterCache, node: str) -> int:
    row = cache.snapshot.index_of(node)
    return int(cache.snapshot.allocatable[row, CPU_COL] - cache.snapshot.free[row, CPU_COL])


def test_bound_pods_are_charged_to_their_node_and_released_on_delete() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("a", node_name="n1"))
    cache.apply("pods", "ADDED", pod("b", node_name="n1", cpu="500m"))
    assert used_cpu(cache, "n1") == 1500

    cache.apply("pods", "DELETED", pod("a", node_name="n1"))
    assert used_cpu(cache, "n1") == 500


def test_pending_and_finished_pods_use_nothing() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("pending"))
    cache.apply("pods", "ADDED", pod("done", node_name="n1", phase="Succeeded"))
    assert used_cpu(cache, "n1") == 0


def test_a_pod_seen_before_its_node_is_charged_when_the_node_arrives() -> None:
    cache = ClusterCache()
    cache.apply("pods", "ADDED", pod("a", node_name="n1"))
    cache.apply("nodes", "ADDED", node("n1"))
    assert used_cpu(cache, "n1") == 1000


def test_relist_drops_what_disappeared_while_the_watch_was_down() -> None:
    cache = ClusterCache()
    cache.replace("nodes", [node("n1"), node("n2")])
    cache.replace("pods", [pod("a", node_name="n1"), pod("b", node_name="n2")])

    cache.replace("nodes", [node("n1")])
    cache.replace("pods", [pod("a", node_name="n1")])

    assert cache.node_names() == ["n1"]
    assert cache.pod_count() == 1
    assert used_cpu(cache, "n1") == 1000


def test_gpu_pods_take_devices_and_shares_from_annotations() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("g1", gpus=2, model="V100"))
    whole = pod(
        "whole",
        node_name="g1",
        requests={"nvidia.com/gpu": "1"},
        annotations={"fulcrum.io/gpu-devices": "1"},
    )
    shared = pod("shared", node_name="g1", annotations={"fulcrum.io/gpu-milli": "300"})
    cache.apply("pods", "ADDED", whole)
    cache.apply("pods", "ADDED", shared)
    # device 1 taken whole (as annotated); the 300-milli share best-fits on device 0
    assert cache.snapshot.gpu_free[0, :2].tolist() == [700, 0]


def test_a_malformed_annotation_is_recorded_not_raised() -> None:
    cache = ClusterCache()
    bad = pod("bad", annotations={"fulcrum.io/gpu-milli": "lots"})
    cache.apply("pods", "ADDED", bad)
    assert "fulcrum.io/gpu-milli" in cache.bad_objects["pod/ns/bad"]


def test_reservations_are_not_the_caches_to_keep() -> None:
    with pytest.raises(ValueError, match="not reservations"):
        ClusterCache().apply("reservations", "ADDED", {"metadata": {"name": "r"}})


def test_a_placeholder_is_charged_until_released_and_outlives_a_pods_relist() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    request = request_of("2")
    cache.charge_placeholder("hold:x", request, "n1", None)
    cache.replace("pods", [pod("a", node_name="n1")])
    assert used_cpu(cache, "n1") == 3000
    assert not cache.fits(request_of("3"), "n1")
    assert cache.fits(request_of("3"), "n1", lifting="hold:x")
    assert used_cpu(cache, "n1") == 3000  # lifting only asks
    cache.release_placeholder("hold:x")
    assert used_cpu(cache, "n1") == 1000
