"""A real control plane (kube-apiserver, etcd, controller-manager, kube-scheduler) with kwok nodes.

Every cluster a test starts is torn down by the fixture that started it.
"""

from __future__ import annotations

import os
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
        cluster.down(name, log=print)
