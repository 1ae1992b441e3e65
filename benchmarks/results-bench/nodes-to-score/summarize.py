"""The table of fulcrum-scheduler's percentageOfNodesToScore, from the `fulcrum bench -o json`
runs beside it (one scheduler per run, run in the order of `order.txt`).

.venv/bin/python benchmarks/results-bench/nodes-to-score/summarize.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
COLUMNS = (
    "run",
    "percentageOfNodesToScore",
    "tie-break",
    "pods/s",
    "/ default-scheduler (mean of its runs)",
    "nodes used (lower bound)",
    "scheduler ms/pod",
    "extender ms/pod",
    "apiserver ms/pod",
    "machine ms/pod",
    "algorithm ms/attempt (Filter plugins)",
)


Phase = tuple[str, dict[str, Any], int, tuple[str, str]]


def load(here: Path) -> tuple[list[list[str]], dict[str, Phase]]:
    """The lines of ``here/order.txt`` split, and per run tag: its scheduler, its phase of the
    bench JSON, the lower bound, and the attempt and Filter milliseconds from its log."""
    runs = [line.split() for line in (here / "order.txt").read_text().splitlines() if line]
    phases = {}
    for tag, *_ in runs:
        doc = json.loads((here / f"{tag}.json").read_text())
        ((scheduler, (phase, *_)),) = doc["schedulers"].items()
        log = (here / f"{tag}.log").read_text()
        took = re.search(
            r"took ([\d.]+) ms per attempt, of which its own Filter plugins ([\d.]+)", log
        )
        phases[tag] = (scheduler, phase, doc["lower_bound"], took.groups() if took else ("-", "-"))
    return runs, phases


def main() -> None:
    runs, phases = load(HERE)
    default = [p["throughput"] for s, p, *_ in phases.values() if s == "default-scheduler"]
    mean = sum(default) / len(default)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for tag, percentage, tie in runs:
        scheduler, phase, bound, (algorithm, filters) = phases[tag]
        cpu = phase["cpu_ms_per_pod"]
        own = cpu["fulcrum-scheduler" if scheduler == "fulcrum-scheduler" else "kube-scheduler"]
        cells = [
            tag,
            percentage,
            tie,
            f"{phase['throughput']:.1f}",
            f"{phase['throughput'] / mean:.2f}",
            f"{phase['nodes_used']} ({bound})",
            f"{own:.2f}",
            f"{cpu.get('fulcrum serve', 0):.2f}" if "fulcrum serve" in cpu else "-",
            f"{cpu['kube-apiserver']:.2f}",
            f"{cpu['(machine)']:.2f}",
            f"{algorithm} ({filters})",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
