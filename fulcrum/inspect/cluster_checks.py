"""``fulcrum inspect``'s cluster checks, as JDOS's inspection ran them: etcd, the control plane,
the nodes as the apiserver knows them, and Fulcrum's invariants, each result a target, a check,
a severity (Error, Alarm, Warn, Info), the value and the threshold it was judged against.

Pure functions of what ``fulcrum.inspect.probe`` read (a ``ClusterView``) and the nodes and
pods: every figure names whether it is over the window or since the process started.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fulcrum.inspect import metrics
from fulcrum.inspect.probe import ClusterView, Component
from fulcrum.inspect.thresholds import ClusterThresholds
from node.plugin import Severity

SECTIONS = ("etcd", "control-plane", "nodes", "fulcrum")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
LONG_VERBS = frozenset({"WATCH", "CONNECT"})  # as long as the client wants: no latency check
PRESSURES = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
INVARIANTS = (  # a violation's prefix (fulcrum.inspect.inspection) -> its check
    ("node ", "fulcrum.overcommit"),
    ("IP ", "fulcrum.ip_unique"),
    ("IPPool ", "fulcrum.ippool"),
    ("Reservation ", "fulcrum.reservations"),
    ("pod ", "fulcrum.opted_in"),
)


@dataclass(frozen=True)
class Result:
    section: str
    target: str
    check: str
    severity: Severity
    message: str
    value: float | str | None = None
    threshold: float | str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "target": self.target,
            "check": self.check,
            "severity": self.severity.label,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


class Judge:
    """Results of one section, judged against the thresholds."""

    def __init__(self, section: str, thresholds: ClusterThresholds) -> None:
        self.section, self.thresholds, self.results = section, thresholds, list[Result]()

    def level(self, target: str, check: str, value: float, message: str) -> None:
        severity, bound = self.thresholds.judge(check, value)
        self.results.append(
            Result(self.section, target, check, severity, message, round(value, 3), bound)
        )

    def fixed(
        self, target: str, check: str, severity: Severity, message: str, value: Any = None
    ) -> None:
        self.results.append(Result(self.section, target, check, severity, message, value))


def _p99_ms(scrape: metrics.Scrape, name: str) -> tuple[float | None, float]:
    """p99 in ms of histogram ``name`` (all series), and how many observations it holds."""
    rows = metrics.buckets(scrape, name).get("", [])
    p99 = metrics.quantile(0.99, rows)
    return (None if p99 is None else p99 * 1000), metrics.observed(rows)


def _unread(
    judge: Judge, target: str, checks: Sequence[str], component: Component, hint: str
) -> bool:
    """Info results saying why a component's checks were not run; True when they were not."""
    if component.endpoint is None:
        why = f"not inspected: {hint}"
    elif component.last is None:
        why = f"not inspected: {component.endpoint} did not answer ({component.error})"
    else:
        return False
    for check in checks:
        judge.fixed(target, check, Severity.INFO, why)
    return True


def _counted(
    judge: Judge,
    target: str,
    check: str,
    window: metrics.Scrape,
    last: metrics.Scrape,
    name: str,
    what: str,
) -> None:
    """A count of events judged over the window; with no window, the count since the process
    started is shown but not judged (etcd's first election is a leader change too)."""
    total = last.total(name)
    if total is None:
        return
    if window.window <= 0:
        judge.fixed(
            target,
            check,
            Severity.INFO,
            f"{total:g} {what} since the process started: no window, not judged (--window > 0)",
            total,
        )
        return
    count = window.total(name) or 0.0
    judge.level(target, check, count, f"{count:g} {what} {window.since} ({total:g} since start)")


def failed_health_checks(body: str) -> list[str]:
    """The apiserver's failing checks in a /readyz or /livez answer ("[-]etcd failed: ...")."""
    return [line[3:].split(" ")[0] for line in body.splitlines() if line.startswith("[-]")]


def _etcd_as_the_apiserver_sees_it(judge: Judge, target: str, api: Component) -> None:
    """An Error when the apiserver's own etcd check fails: etcd is down or unreachable from the
    apiserver, even when etcd's address is not known here (no --etcd-endpoint)."""
    for path in ("/readyz", "/livez"):
        status, body = api.health.get(path, (0, ""))
        failing = [c for c in failed_health_checks(body) if c.startswith("etcd")]
        if status != 200 and failing:
            judge.fixed(
                target,
                "etcd.apiserver_check",
                Severity.ERROR,
                f"the apiserver's {path} reports {', '.join(failing)} failing: it cannot reach "
                "etcd (is etcd running? its --etcd-servers?)",
            )
            return


def unread_checks(reason: str) -> list[Result]:
    """The apiserver answered but could not list the nodes and pods (a 5xx: etcd down): an Error
    in the control plane, and the sections that need those lists say they were not read."""
    return [
        Result("control-plane", "apiserver", "apiserver.lists", Severity.ERROR, reason),
        Result("nodes", "cluster", "nodes.readable", Severity.WARN, f"not read: {reason}"),
        Result("fulcrum", "cluster", "fulcrum.readable", Severity.WARN, f"not read: {reason}"),
    ]


def etcd_checks(view: ClusterView, thresholds: ClusterThresholds) -> list[Result]:
    judge, etcd = Judge("etcd", thresholds), view.etcd
    target = f"etcd {etcd.endpoint}" if etcd.endpoint else "etcd"
    if etcd.endpoint is not None and "/health" in etcd.health:
        status, body = etcd.health["/health"]
        healthy = status == 200 and '"health":"true"' in body.replace(" ", "")
        judge.fixed(
            target,
            "etcd.health",
            Severity.INFO if healthy else Severity.ERROR,
            f"/health answered {status}: {body.strip()[:200]}",
        )
    elif etcd.endpoint is not None:
        judge.fixed(target, "etcd.health", Severity.ERROR, f"/health did not answer: {etcd.error}")
    _etcd_as_the_apiserver_sees_it(judge, target, view.apiserver)
    if _unread(judge, target, ("etcd.metrics",), etcd, view.etcd_hint):
        return judge.results
    last, window = etcd.last, etcd.window
    assert last is not None and window is not None
    leader = last.total("etcd_server_has_leader")
    if leader is not None:
        judge.fixed(
            target,
            "etcd.leader",
            Severity.INFO if leader >= 1 else Severity.ERROR,
            "a leader" if leader >= 1 else "no leader: etcd refuses every request",
            leader,
        )
    _counted(
        judge,
        target,
        "etcd.leader_changes",
        window,
        last,
        "etcd_server_leader_changes_seen_total",
        "leader changes",
    )
    size, quota = (
        last.total("etcd_mvcc_db_total_size_in_bytes"),
        last.total("etcd_server_quota_backend_bytes"),
    )
    if size is not None and quota:
        judge.level(
            target,
            "etcd.db_size_pct",
            100 * size / quota,
            f"database {size / 2**20:.1f} MiB of a {quota / 2**20:.0f} MiB quota",
        )
    for check, name in (
        ("etcd.wal_fsync_p99_ms", "etcd_disk_wal_fsync_duration_seconds"),
        ("etcd.backend_commit_p99_ms", "etcd_disk_backend_commit_duration_seconds"),
    ):
        p99, n = _p99_ms(window, name)
        since = window.since
        if p99 is None:  # nothing written in the window: since start
            p99, n = _p99_ms(last, name)
            since = "since the process started (none in the window)"
        if p99 is not None:
            judge.level(target, check, p99, f"p99 {p99:.1f} ms of {n:g} {since}")
    _counted(
        judge,
        target,
        "etcd.proposals_failed",
        window,
        last,
        "etcd_server_proposals_failed_total",
        "proposals failed",
    )
    started, handled = (
        last.total("grpc_server_started_total"),
        last.total("grpc_server_handled_total"),
    )
    if started is not None and handled is not None:
        judge.level(
            target,
            "etcd.grpc_open_streams",
            started - handled,
            f"{started - handled:g} gRPC calls open (grpc_server_started_total - "
            "grpc_server_handled_total: watches and other streams)",
        )
    fds, limit = last.total("process_open_fds"), last.total("process_max_fds")
    if fds is not None and limit:
        judge.level(
            target,
            "etcd.open_fds_pct",
            100 * fds / limit,
            f"{fds:g} of {limit:g} file descriptors open",
        )
    return judge.results


def _lease(judge: Judge, view: ClusterView, name: str, check: str, now: datetime) -> None:
    lease = view.leases.get(name)
    target = f"kube-system/{name}"
    if lease is None and view.leases_error:
        judge.fixed(target, check, Severity.WARN, f"not read: {view.leases_error}")
        return
    if lease is None:
        judge.fixed(target, check, Severity.ERROR, "no Lease: the component never took its lead")
        return
    spec = lease.get("spec") or {}
    holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
    if not holder or not renewed:
        judge.fixed(target, check, Severity.ERROR, "no holder: no instance leads")
        return
    age = (now - datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))).total_seconds()
    duration = float(spec.get("leaseDurationSeconds") or 15)
    ok = age <= duration
    judge.fixed(
        target,
        check,
        Severity.INFO if ok else Severity.ERROR,
        f"held by {holder}, renewed {age:.0f} s ago (lease {duration:g} s)"
        + ("" if ok else ": expired, no instance leads"),
        round(age, 1),
    )


def _apiserver(judge: Judge, api: Component) -> None:
    for path in ("/livez", "/readyz"):
        status, body = api.health.get(path, (0, "not read"))
        judge.fixed(
            "apiserver",
            f"apiserver.{path[1:]}",
            Severity.INFO if status == 200 else Severity.ERROR,
            f"{path} answered {status}" + ("" if status == 200 else f": {body.strip()[-300:]}"),
        )
    if api.window is None or api.last is None:
        judge.fixed(
            "apiserver", "apiserver.metrics", Severity.WARN, f"/metrics not read: {api.error}"
        )
        return
    window = api.window
    per_verb = metrics.buckets(
        window,
        "apiserver_request_duration_seconds",
        lambda labels: None if labels.get("verb") in LONG_VERBS else labels.get("verb"),
    )
    for verb, rows in sorted(per_verb.items()):
        p99 = metrics.quantile(0.99, rows)
        if p99 is not None:
            judge.level(
                f"apiserver {verb}",
                "apiserver.request_p99_ms",
                p99 * 1000,
                f"p99 {p99 * 1000:.0f} ms of {metrics.observed(rows):g} {verb} requests "
                f"{window.since}",
            )
    seconds = window.window or None
    codes = metrics.group_sum(
        window, "apiserver_request_total", lambda labels: labels.get("code", "")
    )
    total = sum(codes.values())
    for check, label in (("apiserver.5xx_per_s", "5xx"), ("apiserver.429_per_s", "429")):
        n = sum(
            v for c, v in codes.items() if (c.startswith("5") if label == "5xx" else c == label)
        )
        rate = n / seconds if seconds else 0.0
        message = f"{n:g} of {total:g} responses {label} {window.since}" + (
            f" ({rate:.2f}/s)" if seconds else ": no window, the rate is not judged (--window > 0)"
        )
        if seconds:
            judge.level("apiserver", check, rate, message)
        else:
            judge.fixed("apiserver", check, Severity.INFO, message, n)
    inflight = api.last.total("apiserver_current_inflight_requests")
    if inflight is not None:
        judge.level("apiserver", "apiserver.inflight", inflight, f"{inflight:g} requests in flight")


def _scheduler(judge: Judge, view: ClusterView) -> None:
    for component, prefix, hint in (
        (view.scheduler, "scheduler", "give --scheduler-url"),
        (view.controller_manager, "controller-manager", "give --controller-manager-url"),
    ):
        status, body = component.health.get("/healthz", (0, ""))
        if component.endpoint is None:
            judge.fixed(
                prefix,
                f"{prefix}.health",
                Severity.INFO,
                f"not inspected: {hint} (its Lease is checked)",
            )
        elif status == 0:
            judge.fixed(
                prefix,
                f"{prefix}.health",
                Severity.ERROR,
                f"{component.endpoint} did not answer: {component.error}",
            )
        else:
            judge.fixed(
                prefix,
                f"{prefix}.health",
                Severity.INFO if status == 200 else Severity.ERROR,
                f"/healthz answered {status}"
                + ("" if status == 200 else f": {body.strip()[-300:]}"),
            )
    scheduler = view.scheduler
    if scheduler.window is None:
        why = (
            "give --scheduler-url" if scheduler.endpoint is None else f"/metrics: {scheduler.error}"
        )
        judge.fixed(
            "scheduler",
            "scheduler.attempt_p99_ms",
            Severity.INFO,
            f"not inspected: the apiserver does not see scheduling attempts; {why}",
        )
        return
    p99, n = _p99_ms(scheduler.window, "scheduler_scheduling_attempt_duration_seconds")
    if p99 is None:
        judge.fixed(
            "scheduler",
            "scheduler.attempt_p99_ms",
            Severity.INFO,
            f"no scheduling attempts {scheduler.window.since}",
        )
    else:
        judge.level(
            "scheduler",
            "scheduler.attempt_p99_ms",
            p99,
            f"p99 {p99:.1f} ms of {n:g} attempts {scheduler.window.since}",
        )


def _created(obj: Mapping[str, Any]) -> datetime | None:
    raw = (obj.get("metadata") or {}).get("creationTimestamp")
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None


def _pending(judge: Judge, pods: Sequence[Mapping[str, Any]], now: datetime) -> None:
    ages = sorted(
        (
            (now - created).total_seconds()
            for p in pods
            if (p.get("status") or {}).get("phase") == "Pending"
            and (created := _created(p)) is not None
        ),
        reverse=True,
    )
    bands = {"<1m": 0, "1-5m": 0, "5-60m": 0, ">1h": 0}
    for age in ages:
        bands["<1m" if age < 60 else "1-5m" if age < 300 else "5-60m" if age < 3600 else ">1h"] += 1
    counts = ", ".join(f"{k} {v}" for k, v in bands.items())
    judge.level(
        "pods",
        "pods.pending_age_s",
        ages[0] if ages else 0.0,
        f"{len(ages)} pending ({counts})" + (f"; the oldest {ages[0]:.0f} s" if ages else ""),
    )


def control_plane_checks(
    view: ClusterView,
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    thresholds: ClusterThresholds,
) -> list[Result]:
    judge = Judge("control-plane", thresholds)
    _apiserver(judge, view.apiserver)
    _lease(judge, view, "kube-scheduler", "scheduler.leader", now)
    _lease(judge, view, "kube-controller-manager", "controller-manager.leader", now)
    _scheduler(judge, view)
    _pending(judge, pods, now)
    return judge.results


def minor(version: str) -> tuple[int, int] | None:
    """``v1.34.4`` -> (1, 34); None when it is not a Kubernetes version."""
    found = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _node(judge: Judge, node: Mapping[str, Any], view: ClusterView, now: datetime) -> None:
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    name = str(meta.get("name", ""))
    kwok = (meta.get("annotations") or {}).get(KWOK_ANNOTATION) == "fake"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {}).get("status", "Unknown")
    judge.fixed(
        name,
        "node.ready",
        Severity.INFO if ready == "True" else Severity.ERROR,
        "Ready"
        if ready == "True"
        else f"Ready is {ready}: {conditions.get('Ready', {}).get('message', 'no condition')}",
    )
    under = [t for t in PRESSURES if conditions.get(t, {}).get("status") == "True"]
    judge.fixed(
        name,
        "node.pressure",
        Severity.ALARM if under else Severity.INFO,
        ", ".join(under) if under else "no pressure",
    )
    kubelet = str((status.get("nodeInfo") or {}).get("kubeletVersion", ""))
    mine, theirs = minor(kubelet), minor(view.server_version)
    if mine is None or theirs is None:
        judge.fixed(
            name,
            "node.kubelet_version",
            Severity.INFO if kwok else Severity.WARN,
            f"kubelet {kubelet!r} is not a Kubernetes version"
            + (" (kwok fakes the node)" if kwok else ""),
        )
    elif mine > theirs:
        judge.fixed(
            name,
            "node.kubelet_version",
            Severity.ERROR,
            f"kubelet {kubelet} is newer than the apiserver {view.server_version}: unsupported",
        )
    else:
        skew = theirs[1] - mine[1] if mine[0] == theirs[0] else 99
        judge.level(
            name,
            "node.kubelet_skew",
            float(skew),
            f"kubelet {kubelet}, apiserver {view.server_version}",
        )
    lease = (view.node_leases.get(name) or {}).get("spec") or {}
    if not lease.get("renewTime") and view.leases_error:
        judge.fixed(name, "node.lease_age_pct", Severity.WARN, f"not read: {view.leases_error}")
        return
    if not lease.get("renewTime"):
        judge.fixed(
            name,
            "node.lease_age_pct",
            Severity.WARN,
            "no Lease in kube-node-lease: the kubelet does not heartbeat",
        )
        return
    renewed = datetime.fromisoformat(str(lease["renewTime"]).replace("Z", "+00:00"))
    age, duration = (now - renewed).total_seconds(), float(lease.get("leaseDurationSeconds") or 40)
    judge.level(
        name,
        "node.lease_age_pct",
        100 * max(age, 0) / duration,
        f"Lease renewed {age:.0f} s ago, its duration {duration:g} s",
    )


def node_api_checks(
    nodes: Sequence[Mapping[str, Any]],
    view: ClusterView,
    now: datetime,
    thresholds: ClusterThresholds,
) -> list[Result]:
    judge = Judge("nodes", thresholds)
    for node in nodes:
        _node(judge, node, view, now)
    return judge.results


def component_checks(
    view: ClusterView | None,
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    thresholds: ClusterThresholds,
) -> list[Result]:
    """etcd's, the control plane's and the nodes' checks; none when ``view`` is None."""
    if view is None:
        return []
    return [
        *etcd_checks(view, thresholds),
        *control_plane_checks(view, pods, now, thresholds),
        *node_api_checks(nodes, view, now, thresholds),
    ]


def fulcrum_checks(violations: Sequence[str], skipped: Sequence[str]) -> list[Result]:
    """Each invariant an Info when it holds, an Error per violation; an object Fulcrum cannot
    read a Warn."""
    results = []
    for prefix, check in INVARIANTS:
        broken = [v for v in violations if v.startswith(prefix)]
        results += [Result("fulcrum", v.split(" ")[1], check, Severity.ERROR, v) for v in broken]
        if not broken:
            results.append(Result("fulcrum", "cluster", check, Severity.INFO, "holds"))
    results += [
        Result("fulcrum", s.split(":")[0], "fulcrum.readable", Severity.WARN, f"skipped: {s}")
        for s in skipped
    ]
    return results
