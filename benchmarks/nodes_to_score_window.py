"""kube-scheduler's percentageOfNodesToScore window, simulated, with the extender choosing in it.

kube-scheduler runs its Filter from where the last pod's search ended and stops once it has
found its share of feasible nodes (adaptive: 50 - nodes/125 %, at least 5 % and 100 nodes);
the extender then picks one of those. This replays ``fulcrum bench``'s pod mix on equal nodes,
one pod at a time, and prints the nodes used and the nodes Filter visited per pod, for a
tie-break among equal scores: the window's lowest row (Fulcrum's earlier tie-break) or the
fullest node (Fulcrum's now). No cluster; about a second per run.

    .venv/bin/python benchmarks/nodes_to_score_window.py [--nodes 1000] [--pods 25000] \
        [--percentage 10] [--tie fullest|lowest] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import random

SHAPES = [(250, 512)] * 40 + [(500, 1024)] * 30 + [(1000, 2048)] * 20 + [(2000, 4096)] * 10
NODE = (32000, 256 * 1024, 110)  # cpu milli, memory Mi, pods


def main(nodes: int, pods: int, percentage: int, tie: str, seed: int) -> None:
    rng = random.Random(seed)
    free = [list(NODE) for _ in range(nodes)]
    if percentage == 0:
        percentage = max(50 - nodes // 125, 5)
    wanted = nodes if nodes < 100 else max(nodes * percentage // 100, 100)
    start = visited = 0
    for _ in range(pods):
        cpu, memory = rng.choice(SHAPES)
        window: list[int] = []
        seen = 0
        for i in range(nodes):
            node, seen = (start + i) % nodes, seen + 1
            if free[node][0] >= cpu and free[node][1] >= memory and free[node][2] >= 1:
                window.append(node)
                if len(window) == wanted:
                    break
        start, visited = (start + seen) % nodes, visited + seen
        if tie == "lowest":
            best = min(window)
        else:  # fullest: least free cpu + memory share, then the lowest row
            best = min(window, key=lambda n: (free[n][0] / NODE[0] + free[n][1] / NODE[1], n))
        free[best][0] -= cpu
        free[best][1] -= memory
        free[best][2] -= 1
    used = sum(1 for f in free if f[2] < NODE[2])
    print(
        f"{nodes} nodes, {pods} pods, {percentage} %, tie {tie}, seed {seed}: "
        f"{used} nodes used, Filter visited {visited / pods:.0f} nodes per pod"
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=25000)
    parser.add_argument(
        "--percentage", type=int, default=10, help="percentageOfNodesToScore; 0: adaptive"
    )
    parser.add_argument("--tie", choices=("fullest", "lowest"), default="fullest")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        main(args.nodes, args.pods, args.percentage, args.tie, seed)


if __name__ == "__main__":
    cli()
