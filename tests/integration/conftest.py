"""A real control plane (kube-apiserver, etcd, controller-manager, kube-scheduler) with kwok nodes.

Every cluster a test starts is torn down by the fixture that started it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fulcrum import cluster

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
    """10 nodes; the extender scores in prioritize (decideInFilter: false), so every verb runs."""
    name = f"it-{os.getpid()}"
    config = tmp_path_factory.mktemp("extender") / "extender.yaml"
    config.write_text("decideInFilter: false\n")
    started = _start(name, nodes=10, extender_config=config)
    try:
        yield started
    finally:
        keep_logs(name)
        cluster.down(name, log=print)


def keep_logs(name: str) -> None:
    """With FULCRUM_KEEP_LOGS=DIR, copy the cluster's logs (Fulcrum's and the control plane's)
    to DIR/<cluster> before teardown, for diagnosing a failed run."""
    into = os.environ.get("FULCRUM_KEEP_LOGS")
    if into:
        shutil.copytree(
            cluster.state_dir(name),
            os.path.join(into, name),
            ignore=lambda _, names: [n for n in names if n in ("bin", "etcd", "pki")],
            dirs_exist_ok=True,
        )
