"""Extender latency per verb at 1,000 and 5,000 nodes (a benchmark: it reports, it asserts nothing).

Nodes are drawn from the openb trace (with replacement, renamed), filled with openb pods to about
half their GPUs through the cache, then filter and prioritize are called over HTTP (in-process
ASGI, so JSON decoding and validation count) with ``NodeNames`` for every node, as
kube-scheduler does with ``nodeCacheCapable: true`` and ``percentageOfNodesToScore: 100``: a
real uvicorn server on loopback, one keep-alive connection, like kube-scheduler's client.

    .venv/bin/python benchmarks/extender_latency.py [--nodes 1000 5000] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import httpx
import numpy as np
import uvicorn

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from extender.rebuild_gate import RebuildGate
from fulcrum.harness.cluster import free_port
from fulcrum.lab import traces
from fulcrum.lab.openb import node_manifest, pod_manifest
from kube.resources import pod_request
from scheduler.trace import load_nodes, load_pods


def build_cache(
    n_nodes: int, seed: int
) -> tuple[ClusterCache, RebuildGate, list[dict[str, object]]]:
    nodes = load_nodes(traces.node_list("all_node"))
    pods = load_pods(traces.pod_list("default"))
    rng = np.random.default_rng(seed)
    cache = ClusterCache()
    gate = RebuildGate(cache)  # as fulcrum serve wires it
    for i, row in enumerate(rng.integers(0, len(nodes), n_nodes).tolist()):
        manifest = node_manifest(nodes, row)
        manifest["metadata"]["name"] = f"node-{i:05d}"  # type: ignore[index]
        cache.apply("nodes", "ADDED", manifest)
    probes: list[dict[str, object]] = []
    names = cache.node_names()
    gpu_goal = 0.5 * float(cache.snapshot.gpu_count.sum()) * 1000
    placed_gpu = 0.0
    for n, row in enumerate(rng.permutation(len(pods)).tolist() * 4):
        manifest = pod_manifest(pods, row, "fulcrum-scheduler")
        manifest["metadata"].update({"uid": f"uid-{n}", "namespace": "bench", "name": f"p{n}"})
        if len(probes) < 50:
            probes.append(manifest)
            continue
        request = pod_request(manifest)
        fits = np.flatnonzero(cache.snapshot.feasible(request))
        if fits.size == 0:
            continue
        manifest["spec"]["nodeName"] = names[int(rng.choice(fits))]
        manifest["status"] = {"phase": "Running"}
        cache.apply("pods", "ADDED", manifest)
        placed_gpu += request.gpu_total_milli
        if placed_gpu >= gpu_goal:
            break
    return cache, gate, probes


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--policy", default="Archimedes")
    args = parser.parse_args(argv)
    settings = ExtenderSettings(prioritize=(PolicyWeight(policy=args.policy, weight=1),))
    print(f"policy {args.policy}; {args.calls} calls per verb; milliseconds")
    print(f"{'nodes':>6} {'pods':>6} {'verb':>10} {'p50':>8} {'p99':>8} {'mean':>8}")
    for n_nodes in args.nodes:
        started = time.monotonic()
        cache, gate, probes = build_cache(n_nodes, seed=1)
        print(
            f"  (cache of {n_nodes} nodes built in {time.monotonic() - started:.1f} s)",
            file=sys.stderr,
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings, cache, gate=gate), port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        names = cache.node_names()
        for verb in ("filter", "prioritize"):
            times: list[float] = []
            for i in range(args.calls):
                body = {"Pod": probes[i % len(probes)], "NodeNames": names}
                t0 = time.perf_counter()
                reply = client.post(f"/{verb}", json=body)
                times.append((time.perf_counter() - t0) * 1000)
                assert reply.status_code == 200, reply.text
            print(
                f"{n_nodes:>6} {cache.pod_count():>6} {verb:>10} {percentile(times, 50):>8.2f} "
                f"{percentile(times, 99):>8.2f} {statistics.fmean(times):>8.2f}"
            )
        client.close()
        server.should_exit = True
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
