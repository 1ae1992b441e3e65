"""What ``fulcrum inspect`` costs on a big kwok cluster (a benchmark: it asserts nothing, but
says whether issue 33's bounds held: within 30 s, and no more than 5 % on the apiserver's
request rate while it runs).

A fresh cluster ``--name`` of ``--nodes`` nodes (``fulcrum bench``'s 32 cpu / 256Gi / 110
pods) and ``--pods`` pods of the bench's mix, created with default-scheduler paused and released
at once, as ``fulcrum bench`` does. Then ``--runs`` times: ``fulcrum inspect --name NAME -o
json`` (every section, its default --window and --plan-seconds, a process of its own, as a user
runs it), timed; the apiserver's requests (``apiserver_request_total``, by verb and resource)
and kube-apiserver's CPU seconds over it, against the windows of the same length before and
after it without it (the baseline). The inspection's own requests are those beyond the
baseline's rate that only it makes (LISTs, /metrics, /readyz...); the rate during it against
the baseline's is printed too, but a cluster's own swing dwarfs an inspection's dozen
requests. ``--profile FILE`` also runs one inspection under cProfile. The cluster is torn down
at the end, whatever happens.

    CI=true flock /tmp/fulcrum-cluster.lock .venv/bin/python benchmarks/inspect_cost.py \\
        [--nodes 1000] [--pods 25000] [--runs 3] [--profile /tmp/inspect.prof] [-o json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))
from fulcrum.harness import cluster
from fulcrum.harness import processes as cluster_processes
from fulcrum.inspect import api_requests, metrics
from fulcrum.lab import DEFAULT_MIX, bench, openb
from fulcrum.lab.workload import pod_manifest

SECONDS, RATE = 30.0, 0.05  # the bounds
FIRST_BASELINE = 25.0  # seconds of the baseline before the first inspection
APISERVER = "kube-apiserver"


@dataclass
class Window:
    seconds: float
    requests: float  # apiserver_request_total's increase
    apiserver_cpu: float  # kube-apiserver's CPU seconds
    requested: dict[str, float]  # "VERB resource" -> count

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def added(during: Window, baseline: Window) -> float:
    """What the inspection added to the apiserver's request rate, a share of the baseline's."""
    return (during.rate - baseline.rate) / baseline.rate


def measure(client: Any, processes: dict[int, str], action: Callable[[], object]) -> Window:
    """The apiserver's requests and CPU while ``action`` runs."""
    pids = {pid: label for pid, label in processes.items() if label == APISERVER}
    before, cpu = api_requests.scrape(client), cluster_processes.cpu_seconds(pids)
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    after, cpu_after = api_requests.scrape(client), cluster_processes.cpu_seconds(pids)
    window = metrics.delta(before, after, seconds)
    return Window(
        seconds,
        window.total("apiserver_request_total") or 0.0,
        cpu_after[APISERVER] - cpu[APISERVER],
        {f"{r.verb} {r.resource}": r.count for r in api_requests.analyse(window)},
    )


def more(during: Window, baseline: Window) -> dict[str, float]:
    """The requests of the inspection's window beyond the baseline's rate, by verb and
    resource."""
    scale = during.seconds / baseline.seconds
    excess = {k: n - scale * baseline.requested.get(k, 0.0) for k, n in during.requested.items()}
    return {k: round(v, 1) for k, v in sorted(excess.items(), key=lambda kv: -kv[1]) if v >= 0.5}


def own(during: Window, baseline: Window) -> float:
    """The inspection's own requests beyond the baseline: its LISTs and its GETs of
    non-resource paths (/metrics, /readyz, /livez, /version); the rest of a window's excess
    is the cluster's own swing."""
    return sum(n for k, n in more(during, baseline).items() if k.startswith("LIST ") or " /" in k)


def own_share(during: Window, baseline: Window) -> float:
    """The inspection's own requests per second, a share of the baseline's rate."""
    return own(during, baseline) / during.seconds / baseline.rate


def merged(a: Window, b: Window) -> Window:
    """Two windows as one (the baselines before and after an inspection)."""
    keys = set(a.requested) | set(b.requested)
    return Window(
        a.seconds + b.seconds,
        a.requests + b.requests,
        a.apiserver_cpu + b.apiserver_cpu,
        {k: a.requested.get(k, 0.0) + b.requested.get(k, 0.0) for k in keys},
    )


def inspect_command(name: str, profile: Path | None = None) -> list[str]:
    run = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [sys.executable, *run, "-m", "fulcrum", "inspect", "--name", name, "-o", "json"]


def inspect(name: str, profile: Path | None = None) -> None:
    """One inspection as a user runs it; exit status 0 or 1 (a finding) are both a run."""
    done = subprocess.run(inspect_command(name, profile), capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"fulcrum inspect exited {done.returncode}: {done.stderr[-2000:]}")


def populate(name: str, pods: int, say: Callable[[str], None]) -> int:
    """``pods`` pods of the bench's mix, bound by default-scheduler; how many were bound."""
    manifests = [
        pod_manifest(f"cost-{i:06d}", shape, scheduler=bench.DEFAULT)
        for i, shape in enumerate(bench.pod_shapes(DEFAULT_MIX, pods))
    ]
    timeout = max(600.0, pods / 10)
    placed = openb.place_paused(
        name, "inspect-cost", manifests, bench.DEFAULT, timeout=timeout, log=say
    )
    return len(placed.placed)


def run(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    cluster.up(args.name, nodes=args.nodes, shape=bench.NODE, log=say)
    try:
        bound = populate(args.name, args.pods, say)
        say(f"{bound}/{args.pods} pods bound; settling {args.settle:g} s")
        time.sleep(args.settle)
        client = cluster.core_api(args.name).api_client
        processes = cluster.process_labels(args.name)
        pause = functools.partial(time.sleep, FIRST_BASELINE)
        before = measure(client, processes, pause)
        runs: list[tuple[Window, Window]] = []  # (inspect, the baselines before and after it)
        for i in range(args.runs):
            during = measure(client, processes, lambda: inspect(args.name))
            after = measure(client, processes, functools.partial(time.sleep, during.seconds))
            baseline, before = merged(before, after), after
            say(
                f"run {i + 1}: inspect {during.seconds:.1f} s; apiserver {during.rate:.1f} req/s "
                f"during it, {baseline.rate:.1f} in the windows before and after "
                f"({100 * added(during, baseline):+.1f} %); its own requests "
                f"{own(during, baseline):.0f} ({100 * own_share(during, baseline):.2f} % of the "
                f"rate); kube-apiserver CPU {during.apiserver_cpu:.1f} s against "
                f"{baseline.apiserver_cpu * during.seconds / baseline.seconds:.1f} s; beyond "
                f"the baseline: {more(during, baseline)}"
            )
            runs.append((during, baseline))
        if args.profile:
            inspect(args.name, args.profile)
            say(f"profile of one inspection: {args.profile}")
    finally:
        cluster.down(args.name, log=say)
    seconds = [during.seconds for during, _ in runs]
    shares = [added(during, baseline) for during, baseline in runs]
    owns = [own_share(during, baseline) for during, baseline in runs]
    return {
        "command": " ".join(inspect_command(args.name)),
        "nodes": args.nodes,
        "pods": args.pods,
        "bound": bound,
        "runs": [
            {
                "inspect": asdict(d),
                "baseline": asdict(b),
                "added": added(d, b),
                "own": own(d, b),
                "own_share": own_share(d, b),
                "more": more(d, b),
            }
            for d, b in runs
        ],
        "seconds_median": statistics.median(seconds),
        "seconds_max": max(seconds),
        "added_median": statistics.median(shares),
        "added_max": max(shares),
        "own_share_max": max(owns),
        "within_bounds": max(seconds) <= SECONDS and max(owns) <= RATE,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=25000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="seconds after binding, for kwok to mark the pods Running (25,000 status updates)",
    )
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE")
    parser.add_argument("--name", default="fulcrum-inspect-cost")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args()
    result = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.nodes} nodes, {result['bound']} pods: fulcrum inspect took "
            f"{result['seconds_median']:.1f} s (median of {args.runs}, max "
            f"{result['seconds_max']:.1f}); its own requests at most "
            f"{100 * result['own_share_max']:.2f} % of the apiserver's request rate (the rate "
            f"during it against the windows around it: {100 * result['added_median']:+.1f} %, "
            f"median); within {SECONDS:g} s and "
            f"{100 * RATE:g} %: {'yes' if result['within_bounds'] else 'no'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
