from __future__ import annotations

from typing import Any

from extender.cache import ClusterCache


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
    assert cache.node("n1").requested["cpu"] == 1500  # type: ignore[union-attr]

    cache.apply("pods", "DELETED", pod("a", "n1"))
    assert cache.node("n1").requested["cpu"] == 500  # type: ignore[union-attr]


def test_pending_and_finished_pods_use_nothing() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("pending"))
    cache.apply("pods", "ADDED", pod("done", "n1", phase="Succeeded"))
    assert cache.node("n1").requested.get("cpu", 0) == 0  # type: ignore[union-attr]


def test_a_pod_seen_before_its_node_is_charged_when_the_node_arrives() -> None:
    cache = ClusterCache()
    cache.apply("pods", "ADDED", pod("a", "n1"))
    cache.apply("nodes", "ADDED", node("n1"))
    assert cache.node("n1").requested["cpu"] == 1000  # type: ignore[union-attr]


def test_relist_drops_what_disappeared_while_the_watch_was_down() -> None:
    cache = ClusterCache()
    cache.replace("nodes", [node("n1"), node("n2")])
    cache.replace("pods", [pod("a", "n1"), pod("b", "n2")])

    cache.replace("nodes", [node("n1")])
    cache.replace("pods", [pod("a", "n1")])

    assert cache.node_names() == ["n1"]
    assert cache.pod_count() == 1
    assert cache.node("n1").requested["cpu"] == 1000  # type: ignore[union-attr]


def test_readers_get_copies() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    view = cache.node("n1")
    assert view is not None
    view.requested["cpu"] = 99
    assert cache.node("n1").requested.get("cpu", 0) == 0  # type: ignore[union-attr]
