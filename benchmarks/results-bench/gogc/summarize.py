"""The table of fulcrum-scheduler's GOGC, from the `fulcrum bench -o json` runs beside it (one
scheduler per run, in the order of `order.txt`: tag, the scheduler's GOGC (and GOMEMLIMIT),
kube-scheduler's `parallelism` where it was set).

.venv/bin/python benchmarks/results-bench/gogc/summarize.py
"""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).parent
COLUMNS = (
    "run",
    "GOGC",
    "pods/s",
    "/ default-scheduler (mean of its GOGC=100 runs)",
    "nodes used (lower bound)",
    "scheduler ms/pod",
    "extender ms/pod",
    "apiserver ms/pod",
    "machine ms/pod",
    "algorithm ms/attempt (Filter plugins)",
    "scheduler RSS MiB",
)


# the runs are read as the percentageOfNodesToScore table's are
load = runpy.run_path(str(HERE.parent / "nodes-to-score" / "summarize.py"))["load"]


def main() -> None:
    runs, phases = load(HERE)
    default = [
        p["throughput"]
        for (s, p, *_), (_, gogc, *_) in zip(phases.values(), runs, strict=True)
        if s == "default-scheduler" and gogc == "100"
    ]
    mean = sum(default) / len(default)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for tag, gogc, *rest in runs:
        scheduler, phase, bound, (algorithm, filters) = phases[tag]
        cpu, rss = phase["cpu_ms_per_pod"], phase["rss_mib"]
        own = "fulcrum-scheduler" if scheduler == "fulcrum-scheduler" else "kube-scheduler"
        cells = [
            tag,
            gogc.replace("+", ", GOMEMLIMIT ") + (f", parallelism {rest[0]}" if rest else ""),
            f"{phase['throughput']:.1f}",
            f"{phase['throughput'] / mean:.2f}",
            f"{phase['nodes_used']} ({bound})",
            f"{cpu[own]:.2f}",
            f"{cpu['fulcrum serve']:.2f}" if "fulcrum serve" in cpu else "-",
            f"{cpu['kube-apiserver']:.2f}",
            f"{cpu['(machine)']:.2f}",
            f"{algorithm} ({filters})",
            f"{rss[own]:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
