"""One bare opted-in pod at a time replaced (kubectl replace --force) on a quiet 300-node
cluster whose fulcrum-scheduler has percentageOfNodesToScore 10: seconds until the successor
is Running, and where.

    flock /tmp/fulcrum-cluster.lock .venv/bin/python \
        benchmarks/results-bench/nodes-to-score/lone.py NAME 8

(``lone/before.txt``: 8126877, run with PYTHONPATH set to a worktree of it and stopped after
400 s on one pod; ``lone/after.txt``: the nomination.)
"""

import sys
import time

from fulcrum.registration import ExtenderRegistration

from fulcrum import cluster
from fulcrum import rebuild_run as rr

name, count = sys.argv[1], int(sys.argv[2])
NS = "lone"
reg = ExtenderRegistration(port=cluster.free_port(), nodes_to_score=10)
cluster.up(name, nodes=300, registration=reg, log=lambda m: None)
try:
    kit = rr.Kit.of(name)
    kit.kubectl("create", "namespace", NS)
    pods = [rr.bare_pod(NS, f"solo-{i}", "solo") for i in range(count)]
    rr.apply(kit, pods)
    rr.wait_running(kit, NS, {"solo": count}, timeout=120)
    rr.wait_guarded(kit, NS, {"solo": count})
    before = rr.members(kit, NS, "solo")
    times = []
    for i in range(count):
        started = time.monotonic()
        rr.replace_force(kit, [rr.bare_pod(NS, f"solo-{i}", "solo", env="2")])
        deleted = time.monotonic()
        while time.monotonic() - started < 400:
            p = kit.core.read_namespaced_pod(f"solo-{i}", NS)
            if p.status.phase == "Running" and p.spec.node_name:
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        node = p.spec.node_name
        nnn = p.status.nominated_node_name
        same = node == {m.name: m.node for m in before.values()}[f"solo-{i}"]
        times.append(took)
        print(
            f"solo-{i}: {took:6.1f} s (replace {deleted - started:.1f} s) on {node} "
            f"same={same} nominated={nnn}",
            flush=True,
        )
    times.sort()
    print(f"median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s, sum {sum(times):.1f} s")
finally:
    cluster.down(name, log=lambda m: None)
