"""The extender's own CPU per pod on `fulcrum compare`'s pods (a benchmark: it asserts nothing).

The same openb sample as `fulcrum compare --nodes 200 --pods 2000` (seed 42): each pod is marked
as the admission webhook marks it (``fulcrum.io/bind`` for the pods only Fulcrum's bind can bind:
here the GPU pods), added to the cache as the pod watch would, filtered over every node with
decideInFilter, bound on the node chosen (through Fulcrum's bind if marked, else by
kube-scheduler, which costs the extender nothing), and its bound state applied as the watch
would. Verbs go through the app's ASGI entry, so body decoding, validation, the decision, the
bind's reservation and the reply's encoding count; HTTP (uvicorn), the apiserver call (a binder
that only returns) and reading the watch do not. Set against the extender's CPU per pod in
`fulcrum compare`'s CPU table, the difference is what serving it over HTTP on a busy machine
costs.

    .venv/bin/python benchmarks/extender_cpu.py [--nodes 200] [--pods 2000] [--seed 42]
    .venv/bin/python benchmarks/extender_cpu.py --record-cost 3   # the decision record's cost
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

from extender.app import ExtenderApp, create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.rebuild_gate import RebuildGate
from fulcrum.lab import traces
from fulcrum.lab.openb import node_manifest, pod_manifest, sample
from kube.eligibility import bind_reason
from kube.resources import BIND, pod_request
from scheduler.trace import load_nodes, load_pods


class ReturningBinder:
    """A binder whose apiserver call succeeds at once (``extender.bind.Binder``)."""

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        return None

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        return "", ""

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        raise ValueError("no IP pools in this benchmark")


def mark_for_bind(pod: dict[str, Any]) -> bool:
    """Mark the pod as the admission webhook does (``admission.review.bind_mark``) if only
    Fulcrum's bind can bind it; whether it was marked."""
    if not bind_reason(pod["metadata"].get("annotations") or {}, pod_request(pod)):
        return False
    resources = pod["spec"]["containers"][0].setdefault("resources", {})
    for part in ("requests", "limits"):
        resources.setdefault(part, {})[BIND] = "1"
    return True


async def call(app: ExtenderApp, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One POST through the app's ASGI entry; the decoded JSON reply."""
    messages = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]
    replies: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        replies.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    reply: dict[str, Any] = orjson.loads(replies[1]["body"])
    return reply


async def replay(n_nodes: int, n_pods: int, seed: int, *, record: bool = True) -> float:
    """Replay the sample; CPU ms per bound pod, all verbs."""
    nodes = load_nodes(traces.node_list("all_node"))
    pods = load_pods(traces.pod_list("default"))
    picked = sample(nodes, pods, n_nodes, n_pods, seed=seed)
    cache = ClusterCache()
    gate = RebuildGate(cache)  # as fulcrum serve wires it
    for row in picked.nodes:
        cache.apply("nodes", "ADDED", node_manifest(nodes, row))
    settings = ExtenderSettings(decide_in_filter=True, decision_record=record)
    app = create_app(settings, cache, ReturningBinder(), gate=gate)
    names = cache.node_names()
    spent = {"filter": 0.0, "bind": 0.0, "watch": 0.0}
    bound = by_fulcrum = 0
    for i, row in enumerate(picked.pods):
        pod = pod_manifest(pods, row, "fulcrum-scheduler")
        marked = mark_for_bind(pod)
        meta = pod["metadata"]
        meta.update(namespace="bench", uid=f"uid-{i}", resourceVersion="1")
        pod["status"] = {"phase": "Pending"}
        cache.apply("pods", "ADDED", pod)
        t0 = time.process_time()
        chosen = (await call(app, "/filter", {"Pod": pod, "NodeNames": names})).get("NodeNames")
        t1 = time.process_time()
        spent["filter"] += t1 - t0
        if not chosen:
            continue
        if marked:  # Fulcrum's bind; kube-scheduler binds the others itself
            binding = {
                "PodName": meta["name"],
                "PodNamespace": "bench",
                "PodUID": meta["uid"],
                "Node": chosen[0],
            }
            error = (await call(app, "/bind", binding)).get("Error")
            if error:
                raise SystemExit(f"bind {meta['name']}: {error}")
            by_fulcrum += 1
        t2 = time.process_time()
        placed = copy.deepcopy(pod)
        placed["spec"]["nodeName"] = chosen[0]
        placed["status"] = {"phase": "Running"}
        cache.apply("pods", "MODIFIED", placed)
        spent["watch"] += time.process_time() - t2
        spent["bind"] += t2 - t1
        bound += 1
        if bound % 250 == 0:
            print(f"  {bound} pods bound", file=sys.stderr)
    per_pod = {verb: seconds / max(bound, 1) * 1000 for verb, seconds in spent.items()}
    print(
        f"{n_nodes} nodes, {bound}/{len(picked.pods)} pods bound ({by_fulcrum} by Fulcrum's "
        "bind); CPU ms per bound pod:"
    )
    for verb, ms in per_pod.items():
        print(f"  {verb:8} {ms:6.3f}")
    print(f"  {'total':8} {sum(per_pod.values()):6.3f}")
    return sum(per_pod.values())


def record_cost(n_nodes: int, n_pods: int, seed: int, pairs: int) -> None:
    """The decision record's share: replays with it off and on, alternated, medians compared."""
    off, on = [], []
    for i in range(pairs):
        print(f"pair {i + 1}/{pairs}: record off, then on", file=sys.stderr)
        off.append(asyncio.run(replay(n_nodes, n_pods, seed, record=False)))
        on.append(asyncio.run(replay(n_nodes, n_pods, seed, record=True)))
    low, high = statistics.median(off), statistics.median(on)
    print(
        f"decision record: CPU ms per pod {low:.3f} off, {high:.3f} on (medians of {pairs}); "
        f"on/off {high / low:.3f}; per pair: "
        + ", ".join(f"{b / a:.3f}" for a, b in zip(off, on, strict=True))
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--record-cost",
        type=int,
        default=0,
        metavar="PAIRS",
        help="compare the decision record off and on over this many alternated pairs",
    )
    args = parser.parse_args(argv)
    if args.record_cost:
        record_cost(args.nodes, args.pods, args.seed, args.record_cost)
    else:
        asyncio.run(replay(args.nodes, args.pods, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
