"""Local rebuild at scale (a benchmark: it reports, it asserts nothing).

A kwok cluster of N nodes with Fulcrum; a Deployment of P opted-in pods (with an IP pool) and,
in the same namespace and the same run, a plain Deployment of P pods without the annotation.
Both get the same env change at the same moment; for each: time until all successors are
Running, throughput, per-pod latency (predecessor terminating -> its successor Ready, p50/p99)
and how many successors kept their node, IP and volumes.

    .venv/bin/python benchmarks/rebuild_bench.py [--nodes 1000] [--pods 1000] [--out FILE]

The results are also written as JSON to ``--out`` (default ``benchmarks/out/rebuild_bench.json``;
``benchmarks/out/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import orjson

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from kube import api

OUT = Path(__file__).resolve().parent / "out" / "rebuild_bench.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=1000, help="pods per Deployment")
    parser.add_argument("--cpu", default="10", help="cpu per pod (nodes have 32)")
    parser.add_argument("--max-unavailable", default="25%")
    parser.add_argument("--name", default="fulcrum-rebuild-bench")
    parser.add_argument(
        "--out", type=Path, default=OUT, help="write the results as JSON here (default %(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    cluster.up(args.name, nodes=args.nodes, log=say)
    try:
        kit = rr.Kit.of(args.name)
        ns = "bench"
        kit.kubectl("create", "namespace", ns)
        prefix = 32 - max(args.pods + 2, 4).bit_length()
        apps = {"opted": args.pods, "plain": args.pods}
        objects = [rr.ip_pool(ns, "opted", f"10.96.0.0/{prefix}")]
        for app in apps:
            opted = app == "opted"
            deployment = rr.deployment(ns, app, args.pods, opted=opted, pool=app if opted else None)
            spec = deployment["spec"]
            spec["strategy"]["rollingUpdate"]["maxUnavailable"] = args.max_unavailable
            resources = spec["template"]["spec"]["containers"][0]["resources"]
            resources["requests"]["cpu"] = resources["limits"]["cpu"] = args.cpu
            objects.append(deployment)
        say(f"creating 2 Deployments of {args.pods} pods ({args.cpu} cpu each)")
        rr.apply(kit, objects)
        rr.wait_running(kit, ns, apps, timeout=1200)
        waited = rr.wait_guarded(kit, ns, {"opted": args.pods}, timeout=600)
        say(f"all opted-in pods guarded by the rebuild finalizer ({waited:.1f} s after Running)")
        say("env change on both Deployments")
        results = rr.roll(
            kit,
            ns,
            apps,
            lambda: kit.kubectl(
                "set", "env", "deployment/opted", "deployment/plain", "REVISION=2", "-n", ns
            ),
            rr.has_env("2"),
            timeout=1800,
            say=say,
        )
        print(f"\n{args.nodes} nodes; maxUnavailable {args.max_unavailable}; one run")
        for result in results.values():
            print(result)
        opted, plain = results["opted"], results["plain"]
        print(
            f"time ratio opted/plain {opted.seconds / plain.seconds:.2f}; "
            f"total {time.monotonic() - started:.0f} s"
        )
        reasons = Counter(
            e["reason"]
            for e in orjson.loads(kit.core.list_namespaced_event(ns, _preload_content=False).data)[
                "items"
            ]
            if e["reason"].startswith(("Rebuild", "Reserved"))
        )
        print("rebuild events: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
        time.sleep(5)  # the controller may still be finishing claims: a snapshot
        left = kit.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.RESERVATIONS
        )
        pool = kit.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.IPPOOLS, "opted"
        )
        holders = Counter(
            h.split(":")[0] for h in (pool.get("status") or {}).get("allocations", {}).values()
        )
        print(f"reservations left: {len(left['items'])}; pool holders: {dict(holders)}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rr.write_json(args.out, {app: asdict(r) for app, r in results.items()})
    finally:
        if not args.keep:
            cluster.down(args.name, log=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
