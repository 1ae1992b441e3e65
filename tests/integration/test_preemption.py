"""Preemption on the real kube-scheduler: it asks Fulcrum, which keeps the victims minimal."""

from __future__ import annotations

import os
import time

import pytest

from fulcrum.harness import cluster
from fulcrum.lab.workload import PodShape, ensure_namespace, extender_calls, pod_manifest

pytestmark = pytest.mark.integration


def test_a_high_priority_pod_preempts_only_what_it_needs() -> None:
    name = f"it-preempt-{os.getpid()}"
    state = cluster.up(name, nodes=2, shape=cluster.NodeShape(cpu="4", memory="16Gi"), log=print)
    try:
        api = cluster.core_api(name)
        from kubernetes import client

        scheduling = client.SchedulingV1Api(api.api_client)
        scheduling.create_priority_class(
            {
                "metadata": {"name": "urgent"},
                "value": 1000,
                "preemptionPolicy": "PreemptLowerPriority",
            }
        )
        ensure_namespace(api, "preempt")
        # fill both nodes: a 3-cpu and a 1-cpu pod on each
        for i, cpu in enumerate(["3", "1", "3", "1"]):
            api.create_namespaced_pod("preempt", pod_manifest(f"low-{i}", PodShape(cpu, "1Gi")))
            while not api.read_namespaced_pod(f"low-{i}", "preempt").spec.node_name:
                time.sleep(0.2)
        before = extender_calls(state.extender_port or 0).get("preempt", 0)

        urgent = pod_manifest("urgent", PodShape("3", "1Gi"))
        urgent["spec"]["priorityClassName"] = "urgent"
        api.create_namespaced_pod("preempt", urgent)
        deadline = time.monotonic() + 90
        while not api.read_namespaced_pod("urgent", "preempt").spec.node_name:
            assert time.monotonic() < deadline, "the urgent pod was never bound"
            time.sleep(0.5)

        survivors = {p.metadata.name for p in api.list_namespaced_pod("preempt").items}
        low = {n for n in survivors if n.startswith("low-")}
        # one 3-cpu pod is enough to make room; the 1-cpu pods stay
        assert len(low) == 3 and {"low-1", "low-3"} <= low
        assert extender_calls(state.extender_port or 0).get("preempt", 0) > before
    finally:
        cluster.down(name, log=print)
