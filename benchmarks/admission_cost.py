"""What Fulcrum's admission webhooks cost pod creation: pods/s with and without them, same run.

    .venv/bin/python benchmarks/admission_cost.py [--pods 400] [--rounds 3] [--threads 8]

On one kwok cluster (``fulcrum cluster up``, webhooks registered), each round creates pods in
four phases, alternating with the webhook configurations registered and deleted: pods with a
``fulcrum.io/`` annotation (the API server calls both webhooks for each) and plain pods (the
webhooks' ``matchConditions`` keep them away). Pods name a scheduler that does not exist, so
nothing schedules them and creation alone is timed; each phase's pods are deleted before the
next. Prints pods/s per phase and the ratios; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr

NS = "bench-admission"


def pod(name: str, annotated: bool) -> dict[str, Any]:
    out = rr.bare_pod(NS, name, "bench", opted=False)
    out["spec"]["schedulerName"] = "nobody"  # never scheduled: creation alone is timed
    if annotated:  # reaches both webhooks, changes nothing Fulcrum does
        out["metadata"]["annotations"] = {"fulcrum.io/accept-data-loss": "false"}
    return out


def create(kit: rr.Kit, count: int, annotated: bool, threads: int, tag: str) -> float:
    """Pods per second creating ``count`` pods from ``threads`` clients."""
    pods = [pod(f"{tag}-{i}", annotated) for i in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(lambda p: kit.core.create_namespaced_pod(NS, p), pods))
    rate = count / (time.perf_counter() - started)
    kit.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
    rr.wait_for("pods deleted", lambda: not kit.core.list_namespaced_pod(NS).items, timeout=120)
    return rate


def register(kit: rr.Kit, registered: bool, port: int) -> None:
    if registered:
        cluster.register_webhooks(kit.name, port)
    else:
        kit.kubectl(
            "delete",
            "mutatingwebhookconfiguration/fulcrum.io",
            "validatingwebhookconfiguration/fulcrum.io",
            "--ignore-not-found",
        )
    time.sleep(2)  # the API server picks up webhook configurations asynchronously


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=400, help="pods per phase (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of four phases")
    parser.add_argument("--threads", type=int, default=8, help="concurrent API clients")
    parser.add_argument("--name", default="bench-admission", help="cluster name")
    args = parser.parse_args()
    state = cluster.up(args.name, nodes=1)
    rates: dict[str, list[float]] = {}
    try:
        kit = rr.Kit.of(args.name)
        kit.kubectl("create", "namespace", NS)
        for r in range(args.rounds):
            for registered in (r % 2 == 0, r % 2 == 1):
                register(kit, registered, state.webhook_port or 0)
                for annotated in (True, False):
                    key = f"{'annotated' if annotated else 'plain'} pods, webhooks " + (
                        "on" if registered else "off"
                    )
                    tag = f"r{r}{int(registered)}{int(annotated)}"
                    rate = create(kit, args.pods, annotated, args.threads, tag)
                    rates.setdefault(key, []).append(rate)
                    print(f"round {r + 1}: {key}: {rate:7.1f} pods/s", flush=True)
    finally:
        cluster.down(args.name)
    print("\nmedian pods/s over rounds:")
    median = {k: statistics.median(v) for k, v in rates.items()}
    for key, value in sorted(median.items()):
        print(f"  {key}: {value:7.1f}")
    for kind in ("annotated", "plain"):
        ratio = median[f"{kind} pods, webhooks on"] / median[f"{kind} pods, webhooks off"]
        print(f"  {kind} pods: with/without webhooks {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
