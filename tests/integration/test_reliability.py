"""Regressions of the fault and hostile-input probe (issue 13), on a real control plane.

Each test puts the cluster in the state the probe found and checks what a user sees: where the
pod went, its Events and status, what the apiserver refused.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests.integration.conftest import KwokCluster, kit_in, validation_off

pytestmark = pytest.mark.integration

NS = "it-reliability"


@pytest.fixture(scope="module")
def kit(kwok_cluster: KwokCluster) -> rr.Kit:
    return kit_in(kwok_cluster, NS)


def pod_json(kit: rr.Kit, name: str) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(
        kit.core.read_namespaced_pod(name, NS, _preload_content=False).data
    )
    return found


def messages(kit: rr.Kit, name: str) -> list[str]:
    found = kit.core.list_namespaced_event(
        NS, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    return [f"{e['reason']}: {e['message']}" for e in orjson.loads(found.data)["items"]]


def fulcrum_pod(name: str, *, annotations: dict[str, str], node: str = "") -> dict[str, Any]:
    pod = rr.bare_pod(NS, name, name, opted=False, annotations=annotations)
    pod["spec"]["schedulerName"] = cluster.FULCRUM_SCHEDULER
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    if node:
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return pod


def test_a_gpu_node_without_a_model_label_takes_pods(kit: rr.Kit) -> None:
    """It was dropped from the cache: a pod pinned to it got a false reason (cpu) and waited."""
    node = cluster.node_manifest("odd-gpu", cluster.NodeShape(gpu=2))
    assert "nvidia.com/gpu.product" not in node["metadata"]["labels"]
    rr.apply(kit, [node])
    rr.wait_for(
        "node odd-gpu Ready",
        lambda: any(
            c.type == "Ready" and c.status == "True"
            for c in kit.core.read_node("odd-gpu").status.conditions or []
        ),
        timeout=60,
    )
    share = {"fulcrum.io/gpu-milli": "300"}
    rr.apply(
        kit,
        [
            fulcrum_pod("pinned-cpu", annotations={}, node="odd-gpu"),
            fulcrum_pod("pinned-share", annotations=share, node="odd-gpu"),
        ],
    )
    for name in ("pinned-cpu", "pinned-share"):
        rr.wait_for(
            f"{name} bound to odd-gpu",
            lambda name=name: pod_json(kit, name)["spec"].get("nodeName") == "odd-gpu",
            timeout=60,
        )
    assert "fulcrum.io/gpu-devices" in pod_json(kit, "pinned-share")["metadata"]["annotations"]


def test_a_bad_gpu_share_is_named_in_the_pods_events(kit: rr.Kit) -> None:
    """kube-scheduler showed only 'failed filter with extender ..., code 422'."""
    with validation_off(kit.name):  # admission refuses it first; past it, the extender
        rr.apply(kit, [fulcrum_pod("bad-share", annotations={"fulcrum.io/gpu-milli": "abc"})])
    rr.wait_for(
        "a FailedScheduling event naming the annotation",
        lambda: any(
            m.startswith("FailedScheduling") and "fulcrum.io/gpu-milli" in m
            for m in messages(kit, "bad-share")
        ),
        timeout=60,
    )
    assert not pod_json(kit, "bad-share")["spec"].get("nodeName")


def test_a_refusal_of_a_huge_value_still_reaches_the_pod(kit: rr.Kit) -> None:
    """A 200 KB fulcrum.io/rebuild-hooks value made the status write fail: no Event, nothing."""
    huge = {api.REBUILD: "local", "fulcrum.io/rebuild-hooks": "x" * 200_000}
    pod = rr.bare_pod(NS, "huge", "huge", opted=False, annotations=huge)
    with validation_off(kit.name):  # admission refuses it first; past it, the controller
        kit.kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))  # apply would double it
    rr.wait_for(
        "the refusal's status",
        lambda: api.STATUS in pod_json(kit, "huge")["metadata"].get("annotations", {}),
        timeout=60,
    )
    meta = pod_json(kit, "huge")["metadata"]
    status = orjson.loads(meta["annotations"][api.STATUS])
    assert status["action"] == "refused"
    assert "200000 characters" in status["reason"]
    assert api.FINALIZER not in (meta.get("finalizers") or [])
    rr.wait_for(
        "a RebuildRefused event",
        lambda: any(m.startswith("RebuildRefused") for m in messages(kit, "huge")),
        timeout=30,
    )


def test_an_ippool_too_large_is_refused_at_apply(kit: rr.Kit) -> None:
    with pytest.raises(RuntimeError, match="too large for a pool"):
        rr.apply(kit, [rr.ip_pool(NS, "huge", "10.0.0.0/8")])
    with pytest.raises(RuntimeError, match="host bits set"):
        rr.apply(kit, [rr.ip_pool(NS, "sloppy", "10.0.0.5/24")])


def test_a_wait_on_a_deleted_node_ends_with_the_successor_elsewhere_keeping_its_ip(
    kit: rr.Kit,
) -> None:
    """fallback: wait on a deleted node held the pod Pending, its Reservation and IP forever."""
    rr.apply(
        kit, [rr.ip_pool(NS, "lone", "10.66.0.0/28"), rr.bare_pod(NS, "lone", "lone", pool="lone")]
    )
    rr.wait_running(kit, NS, {"lone": 1}, timeout=90)
    rr.wait_guarded(kit, NS, {"lone": 1})
    before = pod_json(kit, "lone")
    node, ip = before["spec"]["nodeName"], before["metadata"]["annotations"][api.ASSIGNED_IP]

    kit.kubectl("delete", "node", node)
    kit.kubectl("delete", "pod", "lone", "-n", NS, "--grace-period=0", "--force")
    rr.apply(kit, [rr.bare_pod(NS, "lone", "lone", pool="lone")])

    rr.wait_running(kit, NS, {"lone": 1}, timeout=90)
    after = pod_json(kit, "lone")
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["spec"]["nodeName"] != node
    assert after["metadata"]["annotations"][api.ASSIGNED_IP] == ip
    rr.wait_for(
        "its Reservation gone",
        lambda: (
            not kit.custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, NS, api.RESERVATIONS
            )["items"]
        ),
        timeout=60,
    )
    assert any(f"node {node} is gone" in m for m in messages(kit, "lone")), messages(kit, "lone")
