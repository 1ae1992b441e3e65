"""The main job: a kwok cluster with Fulcrum beside kube-scheduler, a workload placed and rebuilt.

The same pods are placed by the plain default-scheduler and then by fulcrum-scheduler (the
real kube-scheduler calling Fulcrum's extender), on the same nodes in the same run, and the
nodes each one used are shown against the lower bound. Then, on two real nodes where the host
can run them (root, the Debian packages), Deployments opted in to local rebuild and not, and an
opted-in StatefulSet with local volumes, get the same image change: where their successors
went, the address each answers on, the data each read back, and the time against the plain
rollout (``real_rebuild.demo``); elsewhere two Deployments on the kwok nodes get an env change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from fulcrum.harness import cluster, realnodes
from fulcrum.lab import real_rebuild
from fulcrum.lab import rebuild_run as rr
from fulcrum.lab.workload import (
    DEFAULT_SHAPES,
    create_pods,
    ensure_namespace,
    extender_calls,
    node_usage,
    wait_bound,
)

NODE = cluster.NodeShape(cpu="32", memory="128Gi")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _lower_bound(pods: int) -> int:
    shapes = [DEFAULT_SHAPES[i % len(DEFAULT_SHAPES)] for i in range(pods)]
    cpu = sum(float(parse_quantity(s.cpu)) for s in shapes) / float(parse_quantity(NODE.cpu))
    memory = sum(float(parse_quantity(s.memory)) for s in shapes)
    return max(math.ceil(cpu), math.ceil(memory / float(parse_quantity(NODE.memory))))


def _place(api: Any, scheduler: str, pods: int) -> dict[str, tuple[float, float]]:
    namespace = f"demo-{scheduler}"
    ensure_namespace(api, namespace)
    started = time.monotonic()
    create_pods(api, namespace, pods, scheduler=scheduler)
    wait_bound(api, namespace, pods)
    _say(f"{scheduler}: {pods} pods bound in {time.monotonic() - started:.1f} s")
    usage = {n: u for n, u in node_usage(api).items() if u[0] > 0 or u[1] > 0}
    api.delete_namespace(namespace)
    while api.list_namespaced_pod(namespace, limit=1).items:
        time.sleep(0.5)
    return usage


def _show(usage: dict[str, tuple[float, float]]) -> None:
    _say(f"  {'node':18} {'cpu':>6} {'memory':>7}")
    for node, (cpu, mem) in sorted(usage.items()):
        _say(f"  {node:18} {cpu:6.0%} {mem:7.0%}")


def pool_cidr(replicas: int) -> str:
    """An IP pool in 10.64.0.0/16 with room for ``replicas`` pods and their successors."""
    bits = max(8, (2 * replicas + 2).bit_length())
    return f"10.64.0.0/{32 - min(bits, 16)}"


def deploy_pair(kit: rr.Kit, namespace: str, replicas: int) -> dict[str, int]:
    """``rebuild_pair``'s Deployments, in a new ``namespace``, Running and (local) guarded by the
    rebuild finalizer; their pod counts by app."""
    kit.kubectl("create", "namespace", namespace)
    apps = {"local": replicas, "plain": replicas}
    rr.apply(
        kit,
        [
            rr.ip_pool(namespace, "local", pool_cidr(replicas)),
            rr.deployment(namespace, "local", replicas, pool="local", scheduler=None),
            rr.deployment(namespace, "plain", replicas, opted=False),
        ],
    )
    rr.wait_running(kit, namespace, apps)
    rr.wait_guarded(kit, namespace, {"local": replicas})
    return apps


def rebuild_pair(
    name: str, replicas: int, *, namespace: str = "demo-rebuild", say: Callable[[str], None]
) -> dict[str, rr.Rollout]:
    """Deployments 'local' (opted in to local rebuild, with an IP pool, routed to
    fulcrum-scheduler by the admission webhook) and 'plain', ``replicas`` pods each, in a new
    ``namespace`` of cluster ``name``; the same `kubectl set env` on both at once; each one's
    rollout (``rebuild_run.roll``)."""
    kit, ns = rr.Kit.of(name), namespace
    apps = deploy_pair(kit, ns, replicas)
    say(
        "\nlocal rebuild: Deployments 'local' (annotated fulcrum.io/rebuild: local and an IP "
        f"pool, no schedulerName: the admission webhook routes them to "
        f"{cluster.FULCRUM_SCHEDULER}) and 'plain' ({replicas} pods each); `kubectl set env` on "
        "both at once"
    )
    return rr.roll(
        kit,
        ns,
        apps,
        lambda: kit.kubectl(
            "set", "env", "deployment/local", "deployment/plain", "REVISION=2", "-n", ns
        ),
        rr.has_env("2"),
        say=say,
    )


def _rebuild(name: str, replicas: int) -> None:
    for result in rebuild_pair(name, replicas, say=_say).values():
        _say(f"  {result}")


def _real_nodes(name: str) -> int:
    """2 real nodes for the local-rebuild part where this host can run them, else 0 (said)."""
    try:
        realnodes.check_host(name)
    except realnodes.RealNodeError as exc:
        _say(f"no real nodes here ({exc}); local rebuild is shown on kwok nodes")
        return 0
    return 2


def run_demo(*, name: str, nodes: int, pods: int, keep: bool) -> int:
    real = _real_nodes(name)
    state = cluster.up(name, nodes=nodes, shape=NODE, real_nodes=real, log=_say)
    try:
        api = cluster.core_api(name)
        shapes = ", ".join(f"{s.cpu} cpu/{s.memory}" for s in DEFAULT_SHAPES)
        _say(
            f"\nthe workload: {pods} pods of shapes {shapes}, on {nodes} nodes of "
            f"{NODE.cpu} cpu/{NODE.memory}\n"
        )
        baseline = _place(api, "default-scheduler", pods)
        _show(baseline)
        ours = _place(api, cluster.FULCRUM_SCHEDULER, pods)
        _show(ours)
        assert state.extender_port is not None
        calls = extender_calls(state.extender_port)
        _say(
            f"\nnodes used: default-scheduler {len(baseline)}, fulcrum-scheduler {len(ours)} "
            f"(lower bound {_lower_bound(pods)}, of {nodes} nodes)"
        )
        _say(
            "Fulcrum's extender was called: "
            + ", ".join(f"{verb} {count:.0f}" for verb, count in sorted(calls.items()))
        )
        if real:
            real_rebuild.demo(rr.Kit.of(name), f"127.0.0.1:{state.registry_port}", say=_say)
        else:
            _rebuild(name, replicas=20)
    finally:
        if keep:
            _say(
                f'cluster kept: eval "$(fulcrum cluster env --name {name})"; '
                f"remove it with `fulcrum cluster down --name {name}`"
            )
        else:
            cluster.down(name, log=_say)
    return 0
