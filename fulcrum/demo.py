"""The main job: a kwok cluster with Fulcrum in front of kube-scheduler, a workload placed."""

from __future__ import annotations

import math
import sys
import time

from fulcrum import cluster
from fulcrum.workload import (
    DEFAULT_SHAPES,
    create_pods,
    ensure_namespace,
    extender_calls,
    node_usage,
    wait_bound,
)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(*, name: str, nodes: int, pods: int, keep: bool) -> int:
    shape = cluster.NodeShape(cpu="32", memory="128Gi")
    state = cluster.up(name, nodes=nodes, shape=shape, log=_say)
    try:
        api = cluster.core_api(name)
        ensure_namespace(api, "demo")
        _say(
            f"creating {pods} pods of shapes "
            + ", ".join(f"{s.cpu} cpu/{s.memory}" for s in DEFAULT_SHAPES)
        )
        started = time.monotonic()
        create_pods(api, "demo", pods)
        placement = wait_bound(api, "demo", pods, log=_say)
        elapsed = time.monotonic() - started
        usage = node_usage(api)
        used = {n: u for n, u in usage.items() if u[0] > 0 or u[1] > 0}
        cpu_total = sum(float(s.cpu) for s in (DEFAULT_SHAPES * pods)[:pods])
        mem_total = sum(int(s.memory[:-2]) for s in (DEFAULT_SHAPES * pods)[:pods])
        bound = max(math.ceil(cpu_total / 32), math.ceil(mem_total / 128))
        _say(
            f"\nall {len(placement)} pods bound in {elapsed:.1f} s by kube-scheduler "
            "with Fulcrum's extender"
        )
        _say(f"{'node':18} {'cpu':>6} {'memory':>7}")
        for node, (cpu, mem) in sorted(used.items()):
            _say(f"{node:18} {cpu:6.0%} {mem:7.0%}")
        _say(f"nodes used: {len(used)} of {nodes} (lower bound {bound})")
        assert state.extender_port is not None
        calls = extender_calls(state.extender_port)
        _say(
            f"extender calls: filter {calls.get('filter', 0):.0f}, "
            f"prioritize {calls.get('prioritize', 0):.0f}"
        )
    finally:
        if keep:
            _say(
                f'cluster kept: eval "$(fulcrum cluster env --name {name})"; '
                f"remove with `fulcrum cluster down --name {name}`"
            )
        else:
            cluster.down(name, log=_say)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(name="fulcrum-demo", nodes=20, pods=60, keep=False))
