"""What attributes (node labels, pod labels and owners) cost the extender per pod.

One process, four extender set-ups over the same cluster (openb's GPU node list repeated to
N nodes, half filled with pods of the default workload), each with its own cluster cache:

- ``Archimedes``: the cache keeps nothing beyond resources (no policy reads anything);
- ``Archimedes, attributes kept``: the same policy, but the cache keeps the zone, tenant and
  instance-type labels and every pod's attributes (what a second, label-reading policy
  would make it keep): what keeping them costs a policy that reads none;
- ``+ TenantAffinity:10``: a policy reading a node label and the pod's labels;
- ``+ ZoneSpread:10``: a policy reading zones and the pods of each owner per node.

Each filter call is what kube-scheduler's one call per pod costs Fulcrum: parse the pod, fit
and score every node, choose one (``Decider.filter(choose=True)``), then charge the pod to
the cache. The set-ups take turns, a batch of pods each, over several rounds, so the
machine's noise falls on all of them alike; the table gives the median ms per pod and the
ratio to the first.

    .venv/bin/python benchmarks/attribute_cost.py [--nodes 1000 5000] [--rounds 5] [--pods 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from extender.cache import ClusterCache
from extender.decide import Decider, WeightedPolicy, declared_reads
from fulcrum.lab.traces import openb_dir
from kube.resources import pod_request
from policies.registry import BUILTIN, Registry
from scheduler.attributes import INSTANCE_TYPE, ZONE, Reads
from scheduler.pod import MIB
from scheduler.trace import load_nodes, load_pods

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path[:0] = [
    str(EXAMPLES / e / "src") for e in ("fulcrum-tenant-affinity", "fulcrum-zone-spread")
]
from fulcrum_tenant_affinity.policy import NODE_LABEL, TenantAffinity  # noqa: E402
from fulcrum_zone_spread.policy import ZoneSpread  # noqa: E402

KEEP_ALL = Reads(labels=frozenset({ZONE, NODE_LABEL, INSTANCE_TYPE}), pod=True)
SETUPS: dict[str, tuple[dict[str, float], Reads | None]] = {
    "Archimedes": ({"Archimedes": 1}, None),
    "Archimedes, attributes kept": ({"Archimedes": 1}, KEEP_ALL),
    "+ TenantAffinity:10": ({"Archimedes": 1, "TenantAffinity": 10}, None),
    "+ ZoneSpread:10": ({"Archimedes": 1, "ZoneSpread": 10}, None),
}
REGISTRY = Registry(
    dict(BUILTIN)
    | {"TenantAffinity": lambda c: TenantAffinity(), "ZoneSpread": lambda c: ZoneSpread()}
)


def raw_node(i: int, cpu: int, memory_mib: int, gpus: int, model: str) -> dict[str, Any]:
    allocatable = {"cpu": f"{cpu}m", "memory": f"{memory_mib}Mi", "pods": "1000"}
    labels = {ZONE: f"zone-{i % 3}", INSTANCE_TYPE: f"{model or 'cpu'}-{gpus}"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.product"] = model
    if i % 2:
        labels[NODE_LABEL] = f"t{i % 8}"
    return {
        "metadata": {"name": f"node-{i:05d}", "labels": labels},
        "status": {"allocatable": allocatable},
    }


def raw_pod(uid: str, request: Any, rng: np.random.Generator, node: str = "") -> dict[str, Any]:
    wanted = {"cpu": f"{request.cpu_milli}m", "memory": f"{request.memory // MIB}Mi"}
    annotations = {}
    if request.gpu_count:
        wanted["nvidia.com/gpu"] = str(request.gpu_count)
        if request.is_gpu_sharing:
            annotations["fulcrum.io/gpu-milli"] = str(request.gpu_milli)
    owner = int(rng.integers(50))
    meta = {
        "uid": uid,
        "name": uid,
        "namespace": "bench",
        "labels": {"tenant": f"t{owner % 8}", "app": f"app-{owner}"},
        "annotations": annotations,
        "ownerReferences": [
            {"kind": "ReplicaSet", "name": f"rs-{owner}", "uid": f"rs-{owner}", "controller": True}
        ],
    }
    spec = {"containers": [{"name": "c", "resources": {"requests": wanted}}], "nodeName": node}
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if node else "Pending"}}


def cluster(nodes: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """Raw nodes, raw bound pods (half the GPUs taken) and the pod trace."""
    traces = openb_dir()
    node_trace = load_nodes(traces / "openb_node_list_gpu_node.csv")
    pod_trace = load_pods(traces / "openb_pod_list_default.csv")
    raw_nodes = []
    for i in range(nodes):
        j = i % len(node_trace)
        gpus = int(node_trace.gpu_count[j])
        cpu, memory = int(node_trace.cpu_milli[j]), int(node_trace.memory_mib[j])
        raw_nodes.append(raw_node(i, cpu, memory, gpus, node_trace.models[j] if gpus else ""))
    probe = ClusterCache()
    for raw in raw_nodes:
        probe.upsert_node(raw)
    snapshot, rng, bound = probe.snapshot, np.random.default_rng(seed), []
    target, taken = 0.5 * snapshot.gpu_count.sum() * 1000, 0
    while taken < target:
        request = pod_trace.request(int(rng.integers(len(pod_trace))))
        rows = np.flatnonzero(snapshot.feasible(request))
        if rows.size:
            node = snapshot.names[int(rng.choice(rows))]
            snapshot.assign(f"warm-{len(bound)}", request, node)
            bound.append(raw_pod(f"warm-{len(bound)}", request, rng, node))
            taken += request.gpu_total_milli or 100
    return raw_nodes, bound, pod_trace


def decider(
    weights: dict[str, float], keep: Reads | None, nodes: list[Any], pods: list[Any]
) -> Decider:
    reads = declared_reads(REGISTRY, weights) | (keep or Reads())
    cache = ClusterCache(reads)
    for raw in nodes:
        cache.upsert_node(raw)
    for raw in pods:
        cache.upsert_pod(raw)
    return Decider(cache, REGISTRY, [WeightedPolicy(n, w) for n, w in weights.items()])


def place_batch(d: Decider, batch: list[dict[str, Any]], names: list[str]) -> float:
    """Seconds per pod to decide and charge ``batch``."""
    assert d.cache is not None
    start = time.perf_counter()
    for raw in batch:
        request = pod_request(raw, d.cache.reads)
        out = d.filter(d.cache.snapshot, request, names, choose=True)
        if out.passed:
            raw["spec"]["nodeName"] = out.passed[0]
            raw["status"]["phase"] = "Running"
            d.cache.upsert_pod(raw)
    return (time.perf_counter() - start) / len(batch)


def measure(
    nodes: int, rounds: int, per_batch: int, say: Callable[[str], None]
) -> dict[str, list[float]]:
    say(f"{nodes} nodes: building the cluster")
    raw_nodes, bound, pod_trace = cluster(nodes, seed=1)
    names = [n["metadata"]["name"] for n in raw_nodes]
    deciders = {label: decider(w, keep, raw_nodes, bound) for label, (w, keep) in SETUPS.items()}
    say(f"{nodes} nodes: {len(bound)} pods bound; {rounds} rounds of {per_batch} pods per set-up")
    rng = np.random.default_rng(2)
    times: dict[str, list[float]] = {label: [] for label in SETUPS}
    for r in range(rounds):
        requests = [pod_trace.request(int(rng.integers(len(pod_trace)))) for _ in range(per_batch)]
        state = rng.bit_generator.state
        order = list(SETUPS) if r % 2 == 0 else list(reversed(SETUPS))
        for label in order:
            rng.bit_generator.state = state  # the same pods, labels and owners for every set-up
            batch = [raw_pod(f"r{r}-{i}", q, rng) for i, q in enumerate(requests)]
            times[label].append(place_batch(deciders[label], batch, names))
        say(f"  round {r + 1}/{rounds} done")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pods", type=int, default=100, help="pods per set-up per round")
    args = parser.parse_args()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for n in args.nodes:
        times = measure(n, args.rounds, args.pods, say)
        base = statistics.median(times["Archimedes"])
        for label, values in times.items():
            ms = statistics.median(values) * 1000
            rows.append(f"| {n:,} | {label} | {ms:.2f} | {statistics.median(values) / base:.2f} |")
    print("| nodes | set-up | ms per pod (median of rounds) | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
