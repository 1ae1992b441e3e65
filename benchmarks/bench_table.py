"""A table of ``fulcrum bench -o json`` runs: one row per scheduler phase (it reports, it asserts
nothing).

Run ``fulcrum bench`` as often as the comparison needs, alternating what is compared, each run's
JSON and progress log side by side, then tabulate them in the order given:

    out=benchmarks/out/bench; mkdir -p $out
    .venv/bin/fulcrum bench -o json > $out/run-1.json 2> $out/run-1.log
    .venv/bin/python benchmarks/bench_table.py $out/run-*.json

Columns: pods/s, and as a ratio to the mean of the default-scheduler phases among the files;
nodes used (the lower bound); CPU milliseconds per bound pod of the phase's kube-scheduler, the
extender (``fulcrum serve``), kube-apiserver and the whole machine; kube-scheduler's scheduling
algorithm in milliseconds per attempt and, of that, its own Filter plugins (read from the
``.log`` beside the JSON, when there is one); the scheduler's resident memory; and, for a run
with a local-rebuild roll, the local/plain time.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

DEFAULT = "default-scheduler"
COLUMNS = (
    "run",
    "scheduler",
    "pods/s",
    "/ default-scheduler (mean)",
    "nodes used (lower bound)",
    "scheduler ms/pod",
    "extender ms/pod",
    "apiserver ms/pod",
    "machine ms/pod",
    "algorithm ms/attempt (Filter plugins)",
    "scheduler RSS MiB",
    "roll local/plain",
)
# one line per phase in the progress log (fulcrum.lab.openb.place_paused)
ALGORITHM = re.compile(
    r"(\S+): its scheduling algorithm took ([\d.]+) ms per attempt, "
    r"of which its own Filter plugins ([\d.]+)"
)


def algorithm_times(log: Path) -> dict[str, list[tuple[str, str]]]:
    """Per scheduler, the (algorithm, Filter) milliseconds per attempt of each of its phases."""
    times: dict[str, list[tuple[str, str]]] = {}
    if log.is_file():
        for scheduler, algorithm, filters in ALGORITHM.findall(log.read_text()):
            times.setdefault(scheduler, []).append((algorithm, filters))
    return times


def rows(paths: list[Path]) -> list[list[str]]:
    runs: list[tuple[Path, dict[str, Any]]] = [(p, json.loads(p.read_text())) for p in paths]
    default = [
        phase["throughput"]
        for _, run in runs
        for phase in run["schedulers"].get(DEFAULT, [])
        if phase["throughput"]
    ]
    mean = sum(default) / len(default) if default else None
    out = []
    for path, run in runs:
        times = algorithm_times(path.with_suffix(".log"))
        rebuild = run.get("rebuild")
        roll = f"{rebuild['ratio']:.2f}" if rebuild and "ratio" in rebuild else "-"
        for scheduler, phases in run["schedulers"].items():
            for i, phase in enumerate(phases):
                cpu, rss = phase["cpu_ms_per_pod"], phase["rss_mib"]
                # default-scheduler's phase runs the cluster's own kube-scheduler
                own = "kube-scheduler" if scheduler == DEFAULT else "fulcrum-scheduler"
                found = times.get(scheduler, [])
                algorithm, filters = found[i] if i < len(found) else ("-", "-")
                ratio = f"{phase['throughput'] / mean:.2f}" if mean else "-"
                out.append(
                    [
                        path.stem + (f" round {i + 1}" if len(phases) > 1 else ""),
                        scheduler,
                        f"{phase['throughput']:.1f}",
                        ratio,
                        f"{phase['nodes_used']} ({run['lower_bound']})",
                        f"{cpu.get(own, 0):.2f}",
                        f"{cpu['fulcrum serve']:.2f}" if "fulcrum serve" in cpu else "-",
                        f"{cpu.get('kube-apiserver', 0):.2f}",
                        f"{cpu.get('(machine)', 0):.2f}",
                        f"{algorithm} ({filters})",
                        f"{rss.get(own, 0):.0f}",
                        roll,
                    ]
                )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="fulcrum bench -o json files")
    args = parser.parse_args(argv)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows(args.runs):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
