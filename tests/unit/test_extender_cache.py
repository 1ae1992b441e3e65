from __future__ import annotations

from typing import Any

from extender.cache import ClusterCache
from scheduler.snapshot import CPU_COL


def used_cpu(cache: ClusterCache, node: str) -> int:
    row = cache.snapshot.index_of(node)
    return int(cache.snapshot.allocatable[row, CPU_COL] - cache.snapshot.free[row, CPU_COL])


def node(name: str, cpu: str = "4", memory: str = "8Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}},
    }


def pod(uid: str, node_name: str = "", cpu: str = "1", phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": "ns", "name": uid},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": {"cpu": cpu}}}]},
        "status": {"phase": phase},
    }


def test_bound_pods_are_charged_to_their_node_and_released_on_delete() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("a", "n1"))
    cache.apply("pods", "ADDED", pod("b", "n1", cpu="500m"))
    assert used_cpu(cache, "n1") == 1500

    cache.apply("pods", "DELETED", pod("a", "n1"))
    assert used_cpu(cache, "n1") == 500


def test_pending_and_finished_pods_use_nothing() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("pending"))
    cache.apply("pods", "ADDED", pod("done", "n1", phase="Succeeded"))
    assert used_cpu(cache, "n1") == 0


def test_a_pod_seen_before_its_node_is_charged_when_the_node_arrives() -> None:
    cache = ClusterCache()
    cache.apply("pods", "ADDED", pod("a", "n1"))
    cache.apply("nodes", "ADDED", node("n1"))
    assert used_cpu(cache, "n1") == 1000


def test_relist_drops_what_disappeared_while_the_watch_was_down() -> None:
    cache = ClusterCache()
    cache.replace("nodes", [node("n1"), node("n2")])
    cache.replace("pods", [pod("a", "n1"), pod("b", "n2")])

    cache.replace("nodes", [node("n1")])
    cache.replace("pods", [pod("a", "n1")])

    assert cache.node_names() == ["n1"]
    assert cache.pod_count() == 1
    assert used_cpu(cache, "n1") == 1000


def test_gpu_pods_take_devices_and_shares_from_annotations() -> None:
    cache = ClusterCache()
    gpu_node = node("g1")
    gpu_node["status"]["allocatable"]["nvidia.com/gpu"] = "2"
    gpu_node["metadata"]["labels"] = {"nvidia.com/gpu.product": "V100"}
    cache.apply("nodes", "ADDED", gpu_node)
    whole = pod("whole", "g1")
    whole["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    whole["metadata"]["annotations"] = {"fulcrum.io/gpu-devices": "1"}
    shared = pod("shared", "g1")
    shared["metadata"]["annotations"] = {"fulcrum.io/gpu-milli": "300"}
    cache.apply("pods", "ADDED", whole)
    cache.apply("pods", "ADDED", shared)
    # device 1 taken whole (as annotated); the 300-milli share best-fits on device 0
    assert cache.snapshot.gpu_free[0, :2].tolist() == [700, 0]


def test_a_malformed_annotation_is_recorded_not_raised() -> None:
    cache = ClusterCache()
    bad = pod("bad")
    bad["metadata"]["annotations"] = {"fulcrum.io/gpu-milli": "lots"}
    cache.apply("pods", "ADDED", bad)
    assert "fulcrum.io/gpu-milli" in cache.bad_objects["pod/ns/bad"]
