"""Inputs of the HTML report for its unit and browser tests: an inspection of objects from
``tests.builders``, and ``fulcrum simulate -o json`` documents of a tiny trace run in-process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fulcrum.inspect.inspection import Inspection, inspect
from fulcrum.lab import simulate
from kube import api
from tests import builders

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
FIGURES = {"heatmap", "histograms", "fragmentation", "reservations", "pools"}
SIMULATE_FIGURES = {"allocation", "fragmentation-curve"}
NODES_CSV = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"n{i},32000,131072,{[1, 2, 4, 8][i % 4]},{'T4' if i % 2 else 'V100'}\n" for i in range(12)
)
PODS_CSV = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + "".join(
    f"p{i},{[1000, 2000, 4000][i % 3]},1024,{[0, 1, 1, 2][i % 4]},{[0, 500, 1000, 1000][i % 4]},\n"
    for i in range(60)
)


def bound(uid: str, node: str, **kwargs: Any) -> dict[str, Any]:
    """A pod fulcrum-scheduler bound to ``node``."""
    pod = builders.pod(uid, node_name=node, **kwargs)
    pod["spec"]["schedulerName"] = api.SCHEDULER_NAME
    return pod


def held(node: str, name: str, age: timedelta, **kwargs: Any) -> dict[str, Any]:
    """A Reservation of ``node`` created ``age`` before NOW."""
    obj = builders.reservation(node, name=name, **kwargs)
    obj["metadata"]["creationTimestamp"] = (NOW - age).isoformat()
    return obj


def cluster(*, broken: bool = False) -> Inspection:
    """Six CPU and six GPU nodes, partly full (one GPU node with its cpu gone and its GPUs
    idle), GPU-sharing pods, two opted-in pods with addresses from a pool, two Reservations;
    ``broken``: a node over-committed and a Reservation left after it expired as well."""
    nodes = [builders.node(f"cpu-{i}", cpu="16", memory="64Gi") for i in range(6)]
    nodes += [
        builders.node(f"gpu-{i}", cpu="32", memory="256Gi", gpus=4, model="A100") for i in range(6)
    ]
    pods = [bound(f"c{i}", f"cpu-{i}", cpu=str(2 * i + 1), memory=f"{8 * i}Gi") for i in range(6)]
    pods += [
        bound(f"g{i}", f"gpu-{i}", cpu="4", memory="32Gi", requests={"nvidia.com/gpu": str(i % 4)})
        for i in range(1, 5)
    ]
    share = {"fulcrum.io/gpu-milli": "300"}
    pods += [bound(f"s{i}", "gpu-5", cpu="2", annotations=share) for i in range(3)]
    pods.append(bound("hog", "gpu-0", cpu="32"))  # cpu exhausted, GPUs idle: stranded
    for i, ip in enumerate(("10.0.0.2", "10.0.0.3")):
        options = {api.REBUILD: "local", api.IP_POOL: "web", api.ASSIGNED_IP: ip}
        pods.append(bound(f"web-{i}", "cpu-0", cpu="1", annotations=options))
    pool = {
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"cidr": "10.0.0.0/28"},
        "status": {"allocations": {"10.0.0.2": "pod:web-0", "10.0.0.3": "pod:web-1"}},
    }
    reservations = [
        held("cpu-0", "rb-1", timedelta(seconds=40)),
        held("gpu-1", "rb-2", timedelta(minutes=12)),
    ]
    if broken:
        pods.append(bound("over", "cpu-5", cpu="8"))
        expired = NOW - timedelta(minutes=10)
        reservations.append(held("cpu-1", "rb-3", timedelta(hours=1), expires=expired))
    return inspect(nodes, pods, reservations, [pool], NOW)


def simulate_json(directory: Path, policy: str, *extra: str) -> Path:
    """``fulcrum simulate -o json`` of ``policy`` on the tiny trace, seeds 1 and 2."""
    nodes, pods = directory / "nodes.csv", directory / "pods.csv"
    nodes.write_text(NODES_CSV)
    pods.write_text(PODS_CSV)
    out = directory / f"{policy}{''.join(extra)}.json"
    argv = ["--nodes", str(nodes), "--pods", str(pods), "--policy", policy, "-o", "json"]
    argv += ["--output-file", str(out)]
    assert simulate.main([*argv, "--seed", "1", "2", *extra]) == 0
    return out


def history(directory: Path, runs: int = 10) -> Path:
    """``runs`` synthetic ``fulcrum inspect --record`` records in ``directory``, a minute apart:
    six nodes, one lost at the fourth run and one NotReady at the seventh, pods and allocation
    growing, apiserver requests with a few 5xx, scheduling latency, and Errors at the end."""
    from fulcrum.inspect import history as history_

    for k in range(runs):
        names = [f"n{i}" for i in range(6) if not (k >= 3 and i == 5)]
        allocation = {
            n: {"cpu": min(1.0, 0.1 * i + 0.05 * k), "memory": 0.3 + 0.02 * k, "pods": 0.1}
            for i, n in enumerate(names)
        }
        errors = 2 if k >= 8 else 0
        record = {
            "version": history_.VERSION,
            "time": (NOW + timedelta(minutes=k)).isoformat(),
            "unread": None,
            "sections": [
                {"name": s, "summary": {"error": e, "alarm": k % 2, "warn": 1, "info": 30}}
                for s, e in (("etcd", errors), ("control-plane", 0), ("nodes", 0), ("fulcrum", 0))
            ],
            "checks": [
                {
                    "section": "etcd",
                    "target": "etcd http://127.0.0.1:2379",
                    "check": "etcd.health",
                    "severity": "Error",
                    "value": None,
                    "threshold": None,
                    "message": "/health did not answer: connection refused",
                }
            ]
            * (errors // 2),
            "nodes": {"count": len(names), "ready": len(names) - (1 if k >= 6 else 0)},
            "pods": 40 + 12 * k,
            "resources": {
                "cpu": {"allocatable": 32000 * len(names), "requested": 4000 * (k + 2)},
                "memory": {"allocatable": 2**37 * len(names), "requested": 2**34 * (k + 1)},
                "pods": {"allocatable": 110 * len(names), "requested": 40 + 12 * k},
                "gpus": {"allocatable": 0, "requested": 0},
            },
            "allocation": allocation,
            "api": {
                "window_s": 10.0,
                "codes": {"200": 500.0 + 40 * k, "201": 30.0 * k, "500": float(k % 3)},
                "p50_ms": 2.0 + 0.1 * k,
                "p99_ms": 40.0 + 3 * k,
            },
            "scheduling": {
                "attempts": 12.0 * k,
                "p50_ms": 1.5,
                "p99_ms": 8.0 + k,
                "pods": 12.0 * k,
                "pod_p50_ms": 3.0,
                "pod_p99_ms": 20.0 + 2 * k,
            },
        }
        history_.record(directory, record)
    return directory
