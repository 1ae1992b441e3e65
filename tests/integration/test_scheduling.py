"""kube-scheduler really calls Fulcrum over HTTP, and every pod lands on a fitting node."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.harness import cluster, processes
from fulcrum.lab.workload import create_pods, ensure_namespace, extender_calls, wait_bound

pytestmark = pytest.mark.integration


def test_every_pod_is_filtered_scored_and_bound_by_the_extender(kwok_cluster) -> None:  # type: ignore[no-untyped-def]
    api, port = kwok_cluster.api, kwok_cluster.state.extender_port
    before = extender_calls(port)
    ensure_namespace(api, "it-scheduling")

    create_pods(api, "it-scheduling", 50)
    placement = wait_bound(api, "it-scheduling", 50, timeout=180)

    assert len(placement) == 50
    assert set(placement.values()) <= {f"kwok-node-{i:05d}" for i in range(10)}
    after = extender_calls(port)
    assert after["filter"] - before.get("filter", 0) >= 50
    assert after["prioritize"] - before.get("prioritize", 0) >= 50
    assert after["bind"] - before.get("bind", 0) == 50


def test_down_leaves_no_process_port_or_file() -> None:
    name = "it-teardown"
    state = cluster.up(name, nodes=1, log=print)
    directory = cluster.state_dir(name)
    assert list(processes.processes_under(directory))
    assert state.extender_port is not None

    cluster.down(name, log=print)

    assert not list(processes.processes_under(directory))
    assert not directory.exists()
    assert not cluster.port_in_use(state.extender_port)
    assert not Path(cluster.kubeconfig_path(name)).exists()
