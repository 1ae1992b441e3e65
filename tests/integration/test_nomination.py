"""nominate: true on a real control plane: Fulcrum nominates its pick as a pod arrives,
kube-scheduler places the pod there, and a pod whose nominated node filled meanwhile still lands
on a node that fits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import cluster
from fulcrum.lab.workload import PodShape, ensure_namespace, pod_manifest

pytestmark = pytest.mark.integration

NAMESPACE = "it-nomination"


@pytest.fixture(scope="module")
def nominating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two kwok nodes of 32 cpu; the extender nominates."""
    name = f"it-nominate-{os.getpid()}"
    config: Path = tmp_path_factory.mktemp("extender") / "extender.yaml"
    config.write_text("nominate: true\n")
    cluster.up(name, nodes=2, extender_config=config, log=print)
    try:
        yield name
    finally:
        cluster.down(name, log=print)


def nominated(api: Any, pod: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = api.read_namespaced_pod_status(pod, NAMESPACE).status.nominated_node_name
        if node:
            return str(node)
        time.sleep(0.2)
    raise AssertionError(f"pod {pod} was not nominated within {timeout:g} s")


def bound(api: Any, pod: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = api.read_namespaced_pod(pod, NAMESPACE).spec.node_name
        if node:
            return str(node)
        time.sleep(0.2)
    raise AssertionError(f"pod {pod} was not bound within {timeout:g} s")


def test_a_pod_whose_nominated_node_filled_meanwhile_lands_on_one_that_fits(
    nominating: str,
) -> None:
    api = cluster.core_api(nominating)
    ensure_namespace(api, NAMESPACE)
    scheduler = cluster.scheduler_pid(nominating, cluster.FULCRUM_SCHEDULER)
    os.kill(scheduler, signal.SIGSTOP)  # Fulcrum nominates; kube-scheduler has not looked yet
    try:
        api.create_namespaced_pod(NAMESPACE, pod_manifest("big", PodShape("20", "1Gi")))
        first = nominated(api, "big")
        filler = pod_manifest("filler", PodShape("20", "1Gi"))
        filler["spec"]["nodeName"] = first  # bound by hand, past every scheduler
        api.create_namespaced_pod(NAMESPACE, filler)
        api.create_namespaced_pod(NAMESPACE, pod_manifest("small", PodShape("2", "1Gi")))
        small = nominated(api, "small")
    finally:
        os.kill(scheduler, signal.SIGCONT)

    other = ({f"kwok-node-{i:05d}" for i in range(2)} - {first}).pop()
    assert bound(api, "big") == other  # 12 cpu left on its nominated node: not there
    assert bound(api, "small") == small
