"""``fulcrum explain NS/POD``: why a pod is where it is, or why it is still Pending.

For a bound pod: where, placed by whom, its GPU devices, the Reservation it claimed, its IP and
rebuild status. For a pending pod: what each node lacks now, aggregated as kube-scheduler's
FailedScheduling message is ("7 node(s) had Insufficient cpu: ..."), with Fulcrum's own reasons
(GPU devices and models, room held by a Reservation for another pod, a node held for this one,
an exhausted IP pool) and, when the optimiser is installed, the fewest pod moves after which it
would fit. Pure over the objects, like ``fulcrum.inspect.inspection``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from fulcrum.inspect.inspection import snapshot_of
from kube import api, ippool
from kube.resources import BIND, GPU_DEVICES_ANNOTATION, marked_for_bind, pod_request
from scheduler.pod import PodRequest
from scheduler.reasons import explain as reasons_per_node
from scheduler.snapshot import Snapshot

Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _held_rooms(
    snapshot: Snapshot, reservations: Sequence[Obj], pods: Sequence[Obj], now: datetime
) -> list[api.Reservation]:
    """Charge the rooms the extender holds (active Reservations whose predecessor has gone)."""
    live = {str(_meta(p).get("uid")) for p in pods}
    held = []
    for obj in reservations:
        try:
            r = api.Reservation.from_object(obj)
        except ValueError:
            continue
        if not r.active(now) or r.predecessor_uid in live or r.node not in snapshot.names:
            continue
        snapshot.assign(
            f"reservation:{r.name}", pod_request(r.template), r.node, devices=r.devices, check=False
        )
        held.append(r)
    return held


def _bound(pod: Obj) -> list[str]:
    meta, spec = _meta(pod), pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    lines = [
        f"on node {spec['nodeName']}, placed by {spec.get('schedulerName') or 'default-scheduler'}"
    ]
    if api.DECISION in annotations:
        lines += _decision(annotations[api.DECISION])
    elif spec.get("schedulerName") == api.SCHEDULER_NAME and not (
        marked_for_bind(pod)  # or written by Fulcrum's bind:
        or {GPU_DEVICES_ANNOTATION, api.ASSIGNED_IP, api.RESERVATION} & set(annotations)
    ):
        lines.append(
            "no decision record: kube-scheduler bound this pod itself on Fulcrum's pick "
            f"(Fulcrum records why on the pods it binds, those marked {BIND}; "
            "extender bindAll: true records every pod)"
        )
    if GPU_DEVICES_ANNOTATION in annotations:
        lines.append(f"GPU devices {annotations[GPU_DEVICES_ANNOTATION]}")
    if api.RESERVATION in annotations:
        lines.append(f"claimed Reservation {annotations[api.RESERVATION]} (local rebuild)")
    if api.ASSIGNED_IP in annotations:
        lines.append(
            f"IP {annotations[api.ASSIGNED_IP]} from pool {annotations.get(api.IP_POOL, '?')}"
        )
    if api.STATUS in annotations:
        lines.append(f"rebuild status: {annotations[api.STATUS]}")
    return lines


def _decision(raw: str) -> list[str]:
    """The decision record Fulcrum wrote with the binding (``extender.record``), for a person."""
    try:
        record = orjson.loads(raw)
        why = [
            f"chosen by {record['policy']}" + (f" ({record['rule']})" if "rule" in record else "")
        ]
        if "score" in record:
            why[0] += f": score {record['score']} of 100"
        if "runnerUp" in record:
            why[0] += f"; runner-up {record['runnerUp']['node']} at {record['runnerUp']['score']}"
        failed = ", ".join(f"{n} {reason}" for reason, n in record.get("failed", {}).items())
        why.append(
            f"{record['feasible']}/{record['nodes']} nodes could take it"
            + (f"; the others: {failed}" if failed else "")
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return [f"decision record (unreadable): {raw[:200]}"]
    return why


def _pending(
    pod: Obj,
    request: PodRequest,
    snapshot: Snapshot,
    held: list[api.Reservation],
    pools: Sequence[Obj],
) -> list[str]:
    annotations = _meta(pod).get("annotations") or {}
    lines = []
    key = api.successor_key(pod) if api.read_options(annotations).enabled else None
    mine = [r for r in held if key is not None and r.key == key]
    if mine:
        lines.append(
            f"local rebuild: node {mine[0].node} is held for it; Fulcrum passes only that node"
        )
    rows = np.arange(snapshot.num_nodes, dtype=np.intp)
    fits = snapshot.feasible(request)
    counts: Counter[str] = Counter()
    if (~fits).any():
        reasons, _ = reasons_per_node(snapshot, rows[~fits], request)
        counts.update(reasons)
    others = len(held) - len(mine)
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    lines.append(
        f"{int(fits.sum())}/{snapshot.num_nodes} nodes can take it now"
        + (f"; {summary}" if summary else "")
    )
    if others:
        lines.append(f"{others} node room(s) are held by Reservations for other pods' successors")
    pool = api.read_options(annotations).pool
    for obj in pools:
        meta = _meta(obj)
        if (
            pool
            and meta.get("name") == pool
            and meta.get("namespace") == _meta(pod).get("namespace")
        ):
            free = len(ippool.pool_addresses(obj)) - len(ippool.holders(obj))
            if free <= 0:
                lines.append(f"IPPool {meta['namespace']}/{pool} has no free address")
    if not fits.any():
        lines += _plan(snapshot, request)
    return lines


def _plan(snapshot: Snapshot, request: PodRequest) -> list[str]:
    try:
        from scheduler.optimiser import plan_room_for
    except ImportError:
        return ["(install fulcrum[optimiser] for the fewest moves that would make room)"]
    plan = plan_room_for(snapshot, request, deadline_s=5.0)
    if plan is None:
        return ["no moves of running pods would make room for it"]
    moves = "; ".join(f"{m.pod} from {m.source} to {m.target}" for m in plan.moves)
    return [f"room on node {plan.target} after {len(plan.moves)} move(s): {moves}"]


def explain(
    target: str,
    nodes: Sequence[Obj],
    pods: Sequence[Obj],
    reservations: Sequence[Obj],
    pools: Sequence[Obj],
    now: datetime,
) -> list[str]:
    """Lines explaining pod ``target`` ("namespace/name"); ValueError if there is no such pod."""
    namespace, _, name = target.partition("/")
    found = [
        p for p in pods if _meta(p).get("namespace") == namespace and _meta(p).get("name") == name
    ]
    if not found:
        raise ValueError(
            f"no active pod {target!r}: give NAMESPACE/NAME of a pending or running pod"
        )
    pod = found[0]
    if (pod.get("spec") or {}).get("nodeName"):
        return [f"pod {target}", *_bound(pod)]
    request = pod_request(pod)
    snapshot = snapshot_of(nodes, pods, skipped=[])
    held = _held_rooms(snapshot, reservations, pods, now)
    return [f"pod {target} is Pending", *_pending(pod, request, snapshot, held, pools)]
