"""The controller's store keeps whole only the pods it has work for."""

from __future__ import annotations

from kube import api
from rebuild.store import Store
from rebuild.workqueue import WorkQueue
from tests import builders


def test_a_pod_without_fulcrum_annotations_is_kept_slim_and_forgotten_when_deleted() -> None:
    store = Store(WorkQueue())
    plain = builders.pod("plain", node_name="n1", labels={"app": "x"}, annotations={"a": "b"})
    opted = builders.pod("opted", node_name="n1", annotations={api.REBUILD: "local"})
    store.replace("pods", [plain, opted])

    assert store.get("pods", "ns/plain") == {
        "metadata": {"name": "plain", "namespace": "ns", "uid": "plain"},
        "spec": {"nodeName": "n1"},
    }
    assert store.get("pods", "ns/opted") == opted  # whole: the controller reconciles it

    store.apply("pods", "DELETED", plain)
    store.apply("pods", "DELETED", opted)
    assert store.take_gone("ns/plain") is None  # nothing to release for it
    assert store.take_gone("ns/opted") == opted
