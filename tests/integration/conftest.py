"""A real control plane (kube-apiserver, etcd, controller-manager, kube-scheduler) with kwok nodes.

Every cluster a test starts is torn down by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr

pytestmark = pytest.mark.integration


@dataclass
class KwokCluster:
    name: str
    state: cluster.ClusterState
    api: Any


def _start(name: str, nodes: int, **kwargs: Any) -> KwokCluster:
    state = cluster.up(name, nodes=nodes, log=print, **kwargs)
    return KwokCluster(name, state, cluster.core_api(name))


@pytest.fixture(scope="module")
def kwok_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KwokCluster]:
    """10 nodes; the extender scores in prioritize (decideInFilter: false) and binds every pod
    (bindAll: true), so every verb runs."""
    name = f"it-{os.getpid()}"
    config = tmp_path_factory.mktemp("extender") / "extender.yaml"
    config.write_text("decideInFilter: false\nbindAll: true\n")  # Fulcrum binds every pod
    started = _start(name, nodes=10, extender_config=config)
    try:
        yield started
    finally:
        cluster.down(name, log=print)


def kit_in(started: KwokCluster, namespace: str) -> rr.Kit:
    """Clients and kubectl for a module's cluster, with the module's namespace created."""
    kit = rr.Kit.of(started.name)
    kit.kubectl("create", "namespace", namespace)
    return kit


@contextmanager
def validation_off(name: str) -> Iterator[None]:
    """As when Fulcrum's validating webhook is down (its failurePolicy is Ignore) or not
    installed: bad ``fulcrum.io/`` values reach the controller and the extender, which must
    refuse them themselves. Registered again afterwards."""
    state = cluster.load_state(name)
    kubectl = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(name))]
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "annotations": {"fulcrum.io/rebuild": "lcoal"}},
        "spec": {"containers": [{"name": "c", "image": "pause"}]},
    }

    def admitted() -> bool:
        dry_run = [*kubectl, "create", "--dry-run=server", "-n", "default", "-f", "-"]
        run = subprocess.run(dry_run, input=json.dumps(probe), capture_output=True, text=True)
        return run.returncode == 0

    delete = [*kubectl, "delete", "validatingwebhookconfiguration", "fulcrum.io"]
    try:
        subprocess.run(delete, check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while not admitted():  # the API server drops webhook configurations asynchronously
            assert time.monotonic() < deadline, "the validating webhook stayed registered"
            time.sleep(0.2)
        yield
    finally:
        cluster.register_webhooks(name, state.webhook_port or 0)
