"""An inspection of a cluster as Fulcrum accounts for it: pure functions of its objects.

``inspect(objects, now)`` takes the nodes, pods, Reservations and IPPools (JSON, as the
apiserver sends them) and returns what ``fulcrum inspect`` prints: allocation per node and in
total, stranded resources, GPU fragmentation by the FGD measure against the workload running
now, Reservations and IP pools, opted-in pods, and the invariants that must never fail, each
failure naming what and where.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fulcrum.inspect.node_checks import NodeChecksSection, node_checks, render_node_checks
from kube import api, ippool
from kube.resources import assigned_devices, node_spec, pod_request
from scheduler.fragmentation import TargetWorkload, fragmentation
from scheduler.pod import GPU_MILLI
from scheduler.snapshot import CPU_COL, MEMORY_COL, PODS_COL, Snapshot

Obj = Mapping[str, Any]
# the figures' resources on /metrics: label, NodeRow's (used, allocatable) pair, its unit
RESOURCES = (
    ("cpu", "cpu", 1000),
    ("memory", "memory", 1),
    ("pods", "pods", 1),
    ("gpu", "gpus", GPU_MILLI),
)
EXHAUSTED = 0.05  # a resource with less than this share free is exhausted
IDLE = 0.5  # ... while another with more than this share free sits idle


@dataclass
class NodeRow:
    name: str
    cpu: tuple[int, int]  # used, allocatable (milli)
    memory: tuple[int, int]  # bytes
    pods: tuple[int, int]
    gpus: tuple[int, int]  # GPU milli used, GPU milli in all
    fragment_milli: float  # GPU milli the running workload's shapes cannot use (FGD)
    stranded: str = ""  # "cpu exhausted, 2000 GPU milli idle"


@dataclass
class Inspection:
    nodes: list[NodeRow]
    fragmentation_pct: float  # of the cluster's GPU milli
    reservations: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    opted_in: list[dict[str, str]]
    # the optimiser's answer (fulcrum[optimiser]): {"nodes": k, "moves": m, "used": n}
    emptiable: dict[str, int] | None = None
    violations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # objects Fulcrum cannot read
    # what the nodes' agents last reported (fulcrum.inspect.node_checks)
    node_checks: NodeChecksSection = field(default_factory=NodeChecksSection)

    @property
    def broken(self) -> bool:
        """An invariant broken or a node check in Error or Alarm: exit status 1."""
        return bool(self.violations or self.node_checks.failing)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _key(obj: Obj) -> str:
    return f"{_meta(obj).get('namespace', '')}/{_meta(obj).get('name', '')}"


def snapshot_of(nodes: Sequence[Obj], pods: Sequence[Obj], skipped: list[str]) -> Snapshot:
    """Every node and every bound pod, charged with no check: over-commitment shows as negative
    free capacity, which the invariants then name. What cannot be read goes to ``skipped``."""
    snapshot = Snapshot(capacity=max(len(nodes), 1))
    for node in nodes:
        try:
            snapshot.add_node(_meta(node)["name"], **node_spec(node))
        except (ValueError, KeyError) as exc:
            skipped.append(f"node {_meta(node).get('name')}: {exc}")
    for pod in pods:
        bound = str((pod.get("spec") or {}).get("nodeName") or "")
        if bound not in snapshot.names:
            continue
        try:
            request, devices = pod_request(pod), assigned_devices(pod)
            if devices is None and request.gpu_count:
                devices = snapshot.best_fit_devices(snapshot.index_of(bound), request)
            uid = str(_meta(pod).get("uid"))
            snapshot.assign(uid, request, bound, devices=devices, check=False)
        except ValueError as exc:  # devices the node has not, too: a forged gpu-devices
            skipped.append(f"pod {_key(pod)}: {exc}")
    return snapshot


def _overcommitted(snapshot: Snapshot) -> list[str]:
    found = []
    names = snapshot.resource_names
    for row, node in enumerate(snapshot.names):
        short = [names[c] for c in np.flatnonzero(snapshot.free[row] < 0)]
        devices = np.flatnonzero(snapshot.gpu_free[row, : snapshot.gpu_count[row]] < 0)
        short += [f"GPU {d}" for d in devices.tolist()]
        if short:
            found.append(f"node {node} is over-committed: {', '.join(short)}")
    return found


def _stranded(allocatable: np.ndarray, free: np.ndarray, gpus: tuple[int, int]) -> str:
    shares = {
        name: float(free[col]) / float(allocatable[col])
        for name, col in (("cpu", CPU_COL), ("memory", MEMORY_COL), ("pods", PODS_COL))
        if allocatable[col] > 0
    }
    if gpus[1]:
        shares["GPU"] = 1 - gpus[0] / gpus[1]
    exhausted = [n for n, share in shares.items() if share < EXHAUSTED]
    idle = [n for n, share in shares.items() if share > IDLE and n != "pods"]
    if not exhausted or not idle:
        return ""
    return f"{', '.join(exhausted)} exhausted, {', '.join(idle)} idle"


def allocation(snapshot: Snapshot) -> tuple[list[NodeRow], float]:
    """Each node's allocation, GPU fragments and stranded resources, and the cluster's GPU
    fragmentation in % of its GPU milli, against the workload running in ``snapshot``."""
    shapes = [p.pod for p in snapshot.pods().values()]
    running = TargetWorkload.from_pods(shapes) if shapes else None
    gpu_total = snapshot.gpu_count * GPU_MILLI
    gpu_used = gpu_total - np.clip(snapshot.gpu_free, 0, None).sum(axis=1)
    fragments = np.zeros(snapshot.num_nodes)
    if running is not None and len(running) and gpu_total.sum():
        fragments = fragmentation(
            snapshot.free[:, CPU_COL],
            np.clip(snapshot.gpu_free, 0, None),
            snapshot.gpu_model,
            running,
            snapshot.model_names,
        )
    rows = []
    for r, name in enumerate(snapshot.names):
        alloc, free = snapshot.allocatable[r], snapshot.free[r]
        used = alloc - free
        gpus = (int(gpu_used[r]), int(gpu_total[r]))
        rows.append(
            NodeRow(
                name,
                (int(used[CPU_COL]), int(alloc[CPU_COL])),
                (int(used[MEMORY_COL]), int(alloc[MEMORY_COL])),
                (int(used[PODS_COL]), int(alloc[PODS_COL])),
                gpus,
                round(float(fragments[r]), 1),
                _stranded(alloc, free, gpus),
            )
        )
    total = float(gpu_total.sum())
    return rows, round(100 * float(fragments.sum()) / total, 2) if total else 0.0


def emptiable(snapshot: Snapshot, budget_s: float) -> dict[str, int] | None:
    """How many of the used nodes the optimiser could empty, and with how many moves: the
    largest k for which ``plan_free_nodes`` finds a plan, by bisection within ``budget_s``.
    None without the optimiser installed or with no budget."""
    if budget_s <= 0:
        return None
    try:
        from scheduler.optimiser import plan_free_nodes
    except ImportError:
        return None
    used = sum(1 for name in snapshot.names if snapshot.pods_on(name))
    deadline = time.monotonic() + budget_s
    low, high, moves = 0, used - 1, 0
    while low < high and (left := deadline - time.monotonic()) > 0.2:
        k = (low + high + 1) // 2
        plan = plan_free_nodes(snapshot, k, deadline_s=min(2.0, left))
        if plan is None:
            high = k - 1
        else:
            low, moves = k, len(plan.moves)
    return {"nodes": low, "moves": moves, "used": used}


def _reservations(objs: Sequence[Obj], nodes: set[str], now: datetime, out: Inspection) -> None:
    for obj in objs:
        try:
            r = api.Reservation.from_object(obj)
        except ValueError as exc:
            out.skipped.append(str(exc))
            continue
        created = _meta(obj).get("creationTimestamp")
        age = (now - datetime.fromisoformat(created)).total_seconds() if created else None
        out.reservations.append(
            {"name": _key(obj), "node": r.node, "phase": r.phase, "ip": r.ip, "age_s": age}
        )
        if r.node not in nodes and r.phase == "Held":
            out.violations.append(f"Reservation {_key(obj)} holds node {r.node}, which is gone")
        if r.expires_at is not None and now > r.expires_at + api.EXPIRED_GRACE:
            out.violations.append(
                f"Reservation {_key(obj)} expired at {r.expires_at:%Y-%m-%d %H:%M:%S} UTC "
                "and is still there"
            )


def _pools(objs: Sequence[Obj], pods: Sequence[Obj], out: Inspection) -> None:
    for pool in objs:
        try:
            ippool.check_invariants(pool)
            used, size = len(ippool.holders(pool)), len(ippool.pool_addresses(pool))
        except ValueError as exc:
            out.violations.append(f"IPPool {_key(pool)}: {exc}")
            continue
        out.pools.append({"name": _key(pool), "used": used, "free": size - used})
    assigned = Counter(
        (_meta(p).get("namespace"), (_meta(p).get("annotations") or {}).get(api.ASSIGNED_IP))
        for p in pods
        if api.ASSIGNED_IP in (_meta(p).get("annotations") or {})
    )
    for (namespace, ip), count in sorted(assigned.items()):
        if count > 1:
            holders = [
                _key(p)
                for p in pods
                if _meta(p).get("namespace") == namespace
                and (_meta(p).get("annotations") or {}).get(api.ASSIGNED_IP) == ip
            ]
            out.violations.append(f"IP {ip} is held by {count} pods: {', '.join(holders)}")


def _opted_in(pods: Sequence[Obj], out: Inspection) -> None:
    for pod in pods:
        annotations = _meta(pod).get("annotations") or {}
        if not api.read_options(annotations).enabled:
            continue
        spec = pod.get("spec") or {}
        scheduler = spec.get("schedulerName") or "default-scheduler"
        status = annotations.get(api.STATUS, "")
        out.opted_in.append(
            {"pod": _key(pod), "node": spec.get("nodeName") or "", "status": status[:120]}
        )
        if spec.get("nodeName") and scheduler != api.SCHEDULER_NAME:
            out.violations.append(
                f"pod {_key(pod)} is opted in to local rebuild but was scheduled by {scheduler}"
            )


def inspect(
    nodes: Sequence[Obj],
    pods: Sequence[Obj],
    reservations: Sequence[Obj],
    pools: Sequence[Obj],
    now: datetime,
    *,
    plan_seconds: float = 0.0,
) -> Inspection:
    """The inspection of these objects at ``now`` (timezone-aware); pods: the active ones.
    ``plan_seconds``: the optimiser's budget for how many nodes could be emptied (0: skip)."""
    out = Inspection([], 0.0, [], [], [])
    snapshot = snapshot_of(nodes, pods, out.skipped)
    out.nodes, out.fragmentation_pct = allocation(snapshot)
    out.emptiable = emptiable(snapshot, plan_seconds)
    out.violations += _overcommitted(snapshot)
    _reservations(reservations, set(snapshot.names), now, out)
    _pools(pools, pods, out)
    _opted_in(pods, out)
    out.node_checks = node_checks(nodes, now)
    return out


def _pct(used: int, total: int) -> str:
    return f"{100 * used / total:5.1f}%" if total else "    -"


def render(report: Inspection) -> str:
    """The inspection as text: tables, then the invariants."""
    lines = [f"{'node':24} {'cpu':>6} {'memory':>6} {'pods':>6} {'GPU':>6} {'frag':>7}  stranded"]
    for n in report.nodes:
        lines.append(
            f"{n.name:24} {_pct(*n.cpu)} {_pct(*n.memory)} {_pct(*n.pods)} {_pct(*n.gpus)} "
            f"{n.fragment_milli:7.0f}  {n.stranded}"
        )
    totals = [
        (
            label,
            sum(getattr(n, attr)[0] for n in report.nodes),
            sum(getattr(n, attr)[1] for n in report.nodes),
        )
        for label, attr in (("cpu", "cpu"), ("memory", "memory"), ("pods", "pods"), ("GPU", "gpus"))
    ]
    lines.append(
        "cluster: "
        + ", ".join(f"{label} {_pct(u, t).strip()}" for label, u, t in totals)
        + f"; GPU fragmentation {report.fragmentation_pct:.2f}% (FGD, against the running pods)"
        + f"; {sum(1 for n in report.nodes if n.stranded)} nodes with stranded resources"
    )
    if report.emptiable is not None:
        e = report.emptiable
        lines.append(
            f"the optimiser could empty {e['nodes']} of the {e['used']} used nodes "
            f"with {e['moves']} pod moves"
        )
    lines.append(f"reservations: {len(report.reservations)}")
    lines += [
        f"  {r['name']} on {r['node']} {r['phase']}"
        + (f", IP {r['ip']}" if r["ip"] else "")
        + (f", {r['age_s']:.0f} s old" if r["age_s"] is not None else "")
        for r in report.reservations
    ]
    lines.append(
        "IP pools: "
        + (
            ", ".join(f"{p['name']} {p['used']} used, {p['free']} free" for p in report.pools)
            or "none"
        )
    )
    lines.append(f"pods opted in to local rebuild: {len(report.opted_in)}")
    lines += [f"skipped (Fulcrum cannot read it): {s}" for s in report.skipped]
    if report.violations:
        lines.append(f"INVARIANTS BROKEN: {len(report.violations)}")
        lines += [f"  {v}" for v in report.violations]
    else:
        lines.append(
            "invariants: all hold (no over-commitment, no IP held twice, no stale "
            "Reservation, no opted-in pod placed by another scheduler)"
        )
    lines += render_node_checks(report.node_checks)
    return "\n".join(lines)


class ClusterCollector(Collector):
    """The inspection's cluster figures on ``/metrics``, computed at most every ``max_age``
    seconds from a copy of a snapshot (``snapshot``: the extender's cache gives one, copied
    under its lock) and cached between: a scrape within ``max_age`` of the last computation
    only reads the cached figures, so scrapes, however frequent, never hold up the filter for
    more than one copy per ``max_age``. Allocation per resource, in the cluster and on each node,
    allocatable and available resources, bound pods, GPU fragmentation, nodes with stranded
    resources."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        max_age: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.snapshot = snapshot
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()  # one computation at a time; never the cache's lock
        self._families: list[GaugeMetricFamily] = []
        self._computed_at: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = self.clock()
            if self._computed_at is None or now - self._computed_at >= self.max_age:
                self._families = list(self._compute(self.snapshot()))
                self._computed_at = now
            families = self._families
        yield from families

    @staticmethod
    def _compute(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
        rows, fragmentation_pct = allocation(snapshot)
        allocated = GaugeMetricFamily(
            "fulcrum_cluster_allocated_ratio",
            "Requested over allocatable in the whole cluster, by resource (gpu: GPU milli)",
            labels=["resource"],
        )
        allocatable = GaugeMetricFamily(
            "fulcrum_cluster_allocatable",
            "Allocatable in the whole cluster, by resource (cpu in cores, memory in bytes, pods, "
            "gpu in GPUs)",
            labels=["resource"],
        )
        available = GaugeMetricFamily(
            "fulcrum_cluster_available",
            "Allocatable minus requested in the whole cluster, by resource (units as "
            "fulcrum_cluster_allocatable)",
            labels=["resource"],
        )
        per_node = GaugeMetricFamily(
            "fulcrum_cluster_node_allocated_ratio",
            "Requested over allocatable on each node, by resource (gpu: GPU milli); one series "
            "per node and resource",
            labels=["node", "resource"],
        )
        for resource, attr, unit in RESOURCES:
            used = sum(getattr(n, attr)[0] for n in rows)
            total = sum(getattr(n, attr)[1] for n in rows)
            allocated.add_metric([resource], used / total if total else 0.0)
            allocatable.add_metric([resource], total / unit)
            available.add_metric([resource], (total - used) / unit)
            for n in rows:
                node_used, node_total = getattr(n, attr)
                if node_total:
                    per_node.add_metric([n.name, resource], node_used / node_total)
        yield from (allocated, allocatable, available, per_node)
        yield GaugeMetricFamily(
            "fulcrum_cluster_pods",
            "Pods bound to the cluster's nodes and not finished",
            value=sum(n.pods[0] for n in rows),
        )
        yield GaugeMetricFamily(
            "fulcrum_cluster_gpu_fragmentation_ratio",
            "GPU milli the running pods' shapes cannot use (FGD), over all GPU milli",
            value=fragmentation_pct / 100,
        )
        yield GaugeMetricFamily(
            "fulcrum_cluster_stranded_nodes",
            f"Nodes with a resource exhausted (under {EXHAUSTED:.0%} free) while another sits "
            f"idle (over {IDLE:.0%} free)",
            value=sum(1 for n in rows if n.stranded),
        )
        yield GaugeMetricFamily(
            "fulcrum_cluster_nodes_used",
            "Nodes running at least one pod",
            value=sum(1 for n in rows if n.pods[0]),
        )
