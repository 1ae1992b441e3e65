"""``fulcrum bench`` end to end, small: 20 nodes, 200 configmaps, 300 pods, a roll of 20.

It runs as a user runs it, a subprocess with JSON on stdout; it starts and removes its own
clusters (one per scheduler, one at a time), and leaves none behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from fulcrum.harness import cluster

pytestmark = pytest.mark.integration

SCHEDULERS = ("fulcrum-scheduler", "default-scheduler")
MARGIN = 1  # nodes over the lower bound Fulcrum may use (it uses the bound at 1,000 nodes)


def test_bench_reports_both_schedulers_and_the_rebuild_roll() -> None:
    """Both schedulers place every pod, Fulcrum on fewer nodes; the local rebuild keeps every
    local pod's node and IP."""
    name = f"it-bench-{os.getpid()}"
    cmd = [sys.executable, "-m", "fulcrum.cli", "bench", "--name", name]
    cmd += [
        "--nodes",
        "20",
        "--pods",
        "300",
        "--configmaps",
        "200",
        "--rebuild",
        "20",
        "-o",
        "json",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    print(run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not [c for c in cluster.cluster_names() if c.startswith(name)]
    document = orjson.loads(run.stdout)

    bound = document["lower_bound"]
    assert bound == 7  # cpu: 300 pods of the mix, 195 cpu on 32-cpu nodes
    assert set(document["schedulers"]) == {"default-scheduler", "fulcrum-scheduler"}
    for scheduler, [phase] in document["schedulers"].items():
        assert phase["bound"] == phase["pods"] == 300, scheduler
        assert bound <= phase["nodes_used"] <= 20
        assert phase["throughput"] > 0
        assert phase["apiserver_qps"] > 0
        for kind in ("sli", "attempt"):
            assert set(phase["latency"][kind]) == {"p50", "p90", "p99"}
            assert all(v is not None and v > 0 for v in phase["latency"][kind].values())
        assert phase["cpu_ms_per_pod"]["kube-apiserver"] > 0
        assert phase["rss_mib"]["kube-apiserver"] > 0
        assert phase["cpu_ms_per_pod"][scheduler.replace("default-", "kube-")] > 0
    # Fulcrum packs: fewer nodes than default-scheduler, which spreads, and within MARGIN
    # of the lower bound
    [fulcrum], [default] = (document["schedulers"][s] for s in SCHEDULERS)
    assert fulcrum["nodes_used"] < default["nodes_used"]
    assert fulcrum["nodes_used"] <= bound + MARGIN
    rebuild = document["rebuild"]
    local, plain = rebuild["local"], rebuild["plain"]
    assert local["same_node"] == local["total"] == 20
    assert local["same_ip"] == local["ip_pool"] == 20  # every local pod has an IP pool
    assert local["with_pvcs"] == plain["with_pvcs"] == 0  # nothing to keep: not counted
    assert plain["pods"] == 20
    assert plain["ip_pool"] == plain["same_ip"] == 0  # no IP pool: no IP figure
    assert rebuild["ratio"] > 0
