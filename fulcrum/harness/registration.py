"""How the harness's fulcrum-scheduler calls the extender: its KubeSchedulerConfiguration.

``deploy/`` and the chart carry the same configuration; ``tests/unit/test_deploy_manifests.py``
keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube import api
from kube.resources import BIND

FULCRUM_SCHEDULER = api.SCHEDULER_NAME


@dataclass(frozen=True)
class ExtenderRegistration:
    """How kube-scheduler calls the extender (fields of KubeSchedulerConfiguration.extenders[],
    and its percentageOfNodesToScore, which decides how many nodes each call names)."""

    port: int
    weight: int = 5
    node_cache_capable: bool = True
    ignorable: bool = False
    http_timeout: str = "5s"
    bind_all: bool = False  # the extender's bindAll: one entry that binds every pod
    # percentageOfNodesToScore: 100 sends the extender every feasible node; less (0: adaptive,
    # 50 - nodes/125 %, at least 5 % and 100 nodes) stops kube-scheduler's Filter once that many
    # are found, from where the last pod's search ended: cheaper per pod, but Fulcrum chooses
    # from a window of the cluster (the price in nodes: docs/benchmarks.md)
    nodes_to_score: int = 100

    def to_config(self) -> list[dict[str, Any]]:
        """The ``extenders[]`` entries: filter and the rest for every pod, and (unless
        ``bind_all``) bind only for pods marked with the resource fulcrum.io/bind, so
        kube-scheduler binds the others itself (``extender.config.ExtenderSettings.bind_all``)."""
        url = f"http://127.0.0.1:{self.port}"
        common = {
            "urlPrefix": url,
            "nodeCacheCapable": self.node_cache_capable,
            "enableHTTPS": False,
            "httpTimeout": self.http_timeout,
            "ignorable": self.ignorable,
        }
        verbs = {"filterVerb": "filter", "prioritizeVerb": "prioritize", "preemptVerb": "preempt"}
        every = {**common, **verbs, "weight": self.weight}
        if self.bind_all:
            return [{**every, "bindVerb": "bind"}]
        managed = [{"name": BIND, "ignoredByScheduler": True}]
        return [every, {**common, "bindVerb": "bind", "managedResources": managed}]


MAX_BACKOFF_SECONDS = 2

# fulcrum-scheduler's Go garbage collector: it collects when its heap has grown by GOGC %
# since the last collection (Go's default 100), and as often as it must to keep the heap under
# GOMEMLIMIT. Filtering every node for every pod allocates fast: at 100 a third of its CPU
# went to collecting. At 800 it collects an eighth as often, for a larger heap, capped below
# the chart's 2Gi memory limit (docs/benchmarks.md, "Memory").
SCHEDULER_GC = {"GOGC": "800", "GOMEMLIMIT": "1800MiB"}


def scheduler_config(extender: ExtenderRegistration, kubeconfig: Path) -> dict[str, Any]:
    """KubeSchedulerConfiguration of the ``fulcrum-scheduler`` kube-scheduler."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        # The default 50 QPS would make the scheduler, not the extender, the bottleneck.
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 5000, "burst": 10000},
        "leaderElection": {"leaderElect": False},
        "percentageOfNodesToScore": extender.nodes_to_score,
        # a pod the extender asks to wait (a local-rebuild successor whose Reservation is on its
        # way, or whose workload's holds are promised to others) is retried after its back-off,
        # which doubles per retry: capped at 2 s, not the default 10
        "podMaxBackoffSeconds": MAX_BACKOFF_SECONDS,
        "profiles": [
            {
                "schedulerName": FULCRUM_SCHEDULER,
                # Fulcrum decides placement: in-tree scorers that spread pods would fight it.
                "plugins": {"score": {"disabled": [{"name": "NodeResourcesBalancedAllocation"}]}},
                "pluginConfig": [
                    {
                        "name": "NodeResourcesFit",
                        # the mark of pods Fulcrum binds: no node has it (kube.resources.BIND)
                        "args": {
                            "scoringStrategy": {"type": "MostAllocated"},
                            "ignoredResources": [BIND],
                        },
                    },
                    {
                        "name": "PodTopologySpread",
                        "args": {"defaultingType": "List", "defaultConstraints": []},
                    },
                ],
            }
        ],
        "extenders": extender.to_config(),
    }
