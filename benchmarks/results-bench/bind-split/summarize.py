"""The before/after table of the bind split, from the `fulcrum bench -o json` runs beside it.

.venv/bin/python benchmarks/results-bench/bind-split/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = (
    "run",
    "fulcrum/default",
    "default pods/s",
    "fulcrum pods/s",
    "extender ms/pod",
    "fulcrum-scheduler ms/pod",
    "kube-scheduler (default phase) ms/pod",
    "apiserver ms/pod fulcrum/default",
    "machine ms/pod fulcrum/default",
    "nodes (lower bound)",
)


def row(path: Path) -> list[str]:
    run = json.loads(path.read_text())
    default = run["schedulers"]["default-scheduler"][0]
    fulcrum = run["schedulers"]["fulcrum-scheduler"][0]
    ours, theirs = fulcrum["cpu_ms_per_pod"], default["cpu_ms_per_pod"]
    return [
        path.stem,
        f"{fulcrum['throughput'] / default['throughput']:.2f}",
        f"{default['throughput']:.1f}",
        f"{fulcrum['throughput']:.1f}",
        f"{ours.get('fulcrum serve', 0):.2f}",
        f"{ours['fulcrum-scheduler']:.2f}",
        f"{theirs['kube-scheduler']:.2f}",
        f"{ours['kube-apiserver']:.2f} / {theirs['kube-apiserver']:.2f}",
        f"{ours['(machine)']:.2f} / {theirs['(machine)']:.2f}",
        f"{fulcrum['nodes_used']} ({run['lower_bound']})",
    ]


def main() -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for path in sorted(Path(__file__).parent.glob("*.json")):
        print("| " + " | ".join(row(path)) + " |")


if __name__ == "__main__":
    main()
