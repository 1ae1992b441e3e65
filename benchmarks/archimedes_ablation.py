"""Ablation of Archimedes' two additions to FGD on the openb workloads.

Variants (``ArchimedesArgs``): FGD itself; stranding only (sigma = 0);
scarcity only (lambda = 0); Archimedes; Archimedes with an exact
(untruncated) sigmoid. Prints mean allocation @100 / @130 per workload.

    .venv/bin/python benchmarks/archimedes_ablation.py --seeds 42-44 --jobs 2
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fulcrum.lab.traces import openb_dir
from policies.archimedes import Archimedes, ArchimedesArgs
from policies.fgd import FGD
from scheduler.policy import Policy
from scheduler.replay import replay, typical_workload
from scheduler.trace import load_nodes, load_pods

TRACES = openb_dir()
WORKLOADS = ("cpu050", "default", "gpushare40", "gpuspec33", "multigpu20")
VARIANTS: dict[str, ArchimedesArgs | None] = {
    "FGD": None,
    "stranding only (sigma=0, lambda=1)": ArchimedesArgs(scarcity_exponent=0.0),
    "scarcity only (sigma=1.5, lambda=0)": ArchimedesArgs(stranding_weight=0.0),
    "Archimedes (sigma=1.5, lambda=1)": ArchimedesArgs(),
    "Archimedes, exact sigmoid": ArchimedesArgs(truncate=False),
}


def run(workload: str, variant: str, seed: int) -> tuple[str, str, int, float, float]:
    nodes = load_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pods = load_pods(TRACES / f"openb_pod_list_{workload}.csv")
    target = typical_workload(pods)
    args = VARIANTS[variant]
    policy: Policy = FGD(target) if args is None else Archimedes(target, args)
    r = replay(nodes, pods, policy, seed=seed, workload=target)
    return workload, variant, seed, float(r.alloc_at_100 or 0), float(r.alloc_at_130 or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42-44")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    jobs = [(w, v, s) for w in WORKLOADS for v in VARIANTS for s in seeds]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, (w, v, s, a100, a130) in enumerate(pool.map(run, *zip(*jobs, strict=True)), 1):
            results.setdefault((w, v), []).append((a100, a130))
            print(f"[{i}/{len(jobs)}] {w} {v} seed {s}: {a100} / {a130}", file=sys.stderr)
    print(f"seeds {seeds[0]}-{seeds[-1]}; mean alloc @100 / @130\n")
    print("| variant | " + " | ".join(WORKLOADS) + " |")
    print("|---|" + "---|" * len(WORKLOADS))
    for v in VARIANTS:
        cells = []
        for w in WORKLOADS:
            a = np.array(results[(w, v)])
            cells.append(f"{a[:, 0].mean():.2f} / {a[:, 1].mean():.2f}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
