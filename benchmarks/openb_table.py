"""Reproduce the FGD paper's table on the openb trace and put Archimedes next to it.

Runs every policy x workload x seed with ``scheduler.replay`` (the artifact's
protocol), appending one JSON line per run to ``<out>/runs.jsonl`` (re-runs
skip what is already there), then writes ``<out>/table.md``, ``<out>/table.csv``
and ``<out>/alloc_vs_arrived.png``.

    .venv/bin/python benchmarks/openb_table.py --seeds 42-51 --jobs 2   # -> benchmarks/out/openb
    .venv/bin/python benchmarks/openb_table.py --seeds 42-44 --policies FGD,Archimedes,BestFit \
        --random-ties --out benchmarks/out/openb-random-ties
    .venv/bin/python benchmarks/openb_table.py --seeds 42-51 --policies FGD,Archimedes --live \
        --jobs 2 --out benchmarks/out/openb-live   # learnt as pods arrive, not given

``benchmarks/out/`` is git-ignored: run outputs stay out of the tree (docs/benchmarks.md carries
the figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from fulcrum.lab.traces import openb_dir
from policies.registry import default_registry
from scheduler.fragmentation import TargetWorkload
from scheduler.policy import Policy, PolicyContext
from scheduler.replay import replay, typical_workload
from scheduler.trace import load_nodes, load_pods

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACES = openb_dir()
WORKLOADS = ("cpu050", "default", "gpushare40", "gpuspec33", "multigpu20")
PEERS = ("Random", "DotProduct", "GpuClustering", "GpuPacking", "BestFit", "FGD")
POLICIES = (*PEERS, "Archimedes", "LeastAllocated", "MostAllocated", "RequestedToCapacityRatio")
PAPER_NAME = {"DotProduct": "DotProd"}


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def run_one(
    traces: str,
    workload: str,
    policy: str,
    seed: int,
    random_ties: bool = False,
    live: bool = False,
) -> dict[str, object]:
    nodes = load_nodes(Path(traces) / "openb_node_list_gpu_node.csv")
    pods = load_pods(
        Path(traces) / f"openb_pod_list_{workload}.csv", known_models=frozenset(nodes.models)
    )
    target = typical_workload(pods)
    registry = default_registry(plugins=False)
    instance = registry.create(policy, PolicyContext(seed, target))

    def learn(learnt: TargetWorkload | None) -> Policy:
        return registry.create(policy, PolicyContext(seed, learnt))

    result = replay(
        nodes,
        pods,
        instance,
        seed=seed,
        workload=target,
        random_ties=random_ties,
        learn=learn if live else None,
    )
    row = result.to_json()
    row["workload"] = workload
    row["policy"] = policy
    return row


def load_paper(traces: Path) -> dict[tuple[str, str], tuple[float, float]]:
    paper: dict[tuple[str, str], tuple[float, float]] = {}
    with (traces / "paper_alloc_ratio.csv").open() as handle:
        for row in csv.DictReader(handle):
            workload = row["workload"].removeprefix("openb_pod_list_")
            paper[(workload, row["policy"])] = (
                float(row["alloc_pct_at_arrived_100"]),
                float(row["alloc_pct_at_arrived_130"]),
            )
    return paper


def summarise(runs: list[dict[str, object]], paper_dir: Path, out: Path) -> None:
    paper = load_paper(paper_dir)
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for run in runs:
        groups[(str(run["workload"]), str(run["policy"]))].append(run)
    workloads = [w for w in WORKLOADS if any(k[0] == w for k in groups)]
    policies = [p for p in POLICIES if any(k[1] == p for k in groups)]
    lines = [
        "| workload | policy | seeds | alloc@100 | alloc@130 | paper @100 / @130 | "
        "delta @100 / @130 | unalloc@130 | failed pods | nodes used / bound | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows_csv = []
    for w in workloads:
        for p in policies:
            rs = groups.get((w, p))
            if not rs:
                continue
            a100 = np.array([float(str(r["alloc_at_100"])) for r in rs])
            a130 = np.array([float(str(r["alloc_at_130"])) for r in rs])
            ref = paper.get((w, PAPER_NAME.get(p, p)))
            ref_txt = f"{ref[0]:.2f} / {ref[1]:.2f}" if ref else "-"
            delta = f"{a100.mean() - ref[0]:+.2f} / {a130.mean() - ref[1]:+.2f}" if ref else "-"
            failed = np.mean([float(str(r["pods_failed"])) for r in rs])
            used = np.mean([float(str(r["nodes_used"])) for r in rs])
            bound = np.mean([float(str(r["nodes_lower_bound"])) for r in rs])
            secs = np.mean([float(str(r["elapsed_s"])) for r in rs])
            sem130 = a130.std(ddof=1) / np.sqrt(len(a130)) if len(a130) > 1 else 0.0
            lines.append(
                f"| {w} | {p} | {len(rs)} | {a100.mean():.2f} | {a130.mean():.2f} ±{sem130:.2f} | "
                f"{ref_txt} | {delta} | {100 - a130.mean():.2f} | {failed:.0f} | "
                f"{used:.0f} / {bound:.0f} | {secs:.1f} |"
            )
            rows_csv.append(
                [
                    w,
                    p,
                    len(rs),
                    round(a100.mean(), 2),
                    round(a130.mean(), 2),
                    ref[0] if ref else "",
                    ref[1] if ref else "",
                ]
            )
    # Average unallocated share at 130 % over workloads, per policy.
    lines.append("")
    lines.append("| policy | mean alloc@100 | mean alloc@130 | mean unallocated GPU @130 |")
    lines.append("|---|---|---|---|")
    for p in policies:
        per_w = [groups[(w, p)] for w in workloads if (w, p) in groups]
        if len(per_w) != len(workloads):
            continue
        m100 = np.mean([np.mean([float(str(r["alloc_at_100"])) for r in rs]) for rs in per_w])
        m130 = np.mean([np.mean([float(str(r["alloc_at_130"])) for r in rs]) for rs in per_w])
        lines.append(f"| {p} | {m100:.2f} | {m130:.2f} | {100 - m130:.2f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "workload",
                "policy",
                "seeds",
                "alloc_at_100",
                "alloc_at_130",
                "paper_at_100",
                "paper_at_130",
            ]
        )
        writer.writerows(rows_csv)
    plot(groups, workloads, policies, out / "alloc_vs_arrived.png")


def plot(
    groups: dict[tuple[str, str], list[dict[str, object]]],
    workloads: list[str],
    policies: list[str],
    path: Path,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.6), sharey=True)
    axes_list = np.atleast_1d(axes)
    for ax, w in zip(axes_list, workloads, strict=True):
        for p in policies:
            rs = groups.get((w, p))
            if not rs or p in ("LeastAllocated", "MostAllocated", "RequestedToCapacityRatio"):
                continue
            curves = np.array(
                [[np.nan if v is None else float(v) for v in r["alloc_curve"]] for r in rs]  # type: ignore[attr-defined]
            )
            ax.plot(np.arange(curves.shape[1])[60:], np.nanmean(curves, axis=0)[60:], label=p)
        ax.set_title(w)
        ax.set_xlabel("arrived GPU workload (%)")
        ax.grid(alpha=0.3)
    axes_list[0].set_ylabel("GPU allocation (%)")
    axes_list[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "openb")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument(
        "--live",
        action="store_true",
        help="policies learn the workload as pods arrive (the extender's live model) instead "
        "of being given the trace's mix",
    )
    parser.add_argument(
        "--random-ties",
        action="store_true",
        help="break score ties at random per pod (as kube-scheduler does), not by node rank",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    runs: list[dict[str, object]] = []
    if log.exists():
        runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    done = {(r["workload"], r["policy"], r["seed"]) for r in runs}
    todo = [
        (w, p, s)
        for s in parse_seeds(args.seeds)
        for w in args.workloads.split(",")
        for p in args.policies.split(",")
        if (w, p, s) not in done
    ]
    if not args.summary_only and todo:
        started = time.time()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool, log.open("a") as sink:
            futures = [
                pool.submit(run_one, str(args.traces), w, p, s, args.random_ties, args.live)
                for w, p, s in todo
            ]
            for i, future in enumerate(as_completed(futures), 1):
                row = future.result()
                runs.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(
                    f"[{i}/{len(todo)} {time.time() - started:.0f}s] {row['workload']} "
                    f"{row['policy']} seed {row['seed']}: {row['alloc_at_100']} / "
                    f"{row['alloc_at_130']}",
                    file=sys.stderr,
                    flush=True,
                )
    summarise(runs, args.traces, args.out)
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
