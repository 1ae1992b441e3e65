"""kube-scheduler's percentageOfNodesToScore window, simulated, with the extender choosing in it.

kube-scheduler runs its Filter from where the last pod's search ended and stops once it has
found its share of feasible nodes (adaptive: 50 - nodes/125 %, at least 5 % and 100 nodes);
the extender then picks one of those. This replays the bench's pod mix on equal nodes, one pod
at a time, and prints the nodes used and the nodes Filter visited per pod, for a tie-break
among equal scores: the window's lowest row (Fulcrum before 60c00a2) or the fullest node.
It reproduced the live runs' 581 (adaptive) and 901 (10 %) nodes for the lowest row.

python3 benchmarks/results-bench/nodes-to-score/window_sim.py 1000 25000 10 fullest 1
"""

from __future__ import annotations

import random
import sys

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


if __name__ == "__main__":
    n, p, pct, tie, seed = sys.argv[1:6]
    main(int(n), int(p), int(pct), tie, int(seed))
