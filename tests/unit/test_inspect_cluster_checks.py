"""``fulcrum inspect``'s cluster checks (``fulcrum.inspect.cluster_checks``) and their report
form (``fulcrum.inspect.brief``), on recorded etcd and apiserver metrics: thresholds crossing
severities, the brief, the verdicts, the JSON and the exit status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fulcrum import cli
from fulcrum.inspect import brief, cluster_checks, metrics
from fulcrum.inspect.probe import ClusterView, Component
from fulcrum.inspect.thresholds import ClusterThresholds, ThresholdError
from node.plugin import Severity
from tests import builders

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DEFAULTS = ClusterThresholds.load()


def stamp(age_s: float, now: datetime = NOW) -> str:
    return (now - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(
    age_s: float, duration: int = 15, holder: str = "me", now: datetime = NOW
) -> dict[str, Any]:
    renewed = stamp(age_s, now)
    spec = {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": duration}
    return {"spec": spec}


def component(name: str, health: dict[str, tuple[int, str]] | None = None) -> Component:
    scrape = metrics.parse((DATA / name).read_text())
    return Component(name, health or {}, window=scrape, last=scrape)


def view(**changes: Any) -> ClusterView:
    """A healthy kwokctl cluster as read once (no window): etcd and the apiserver recorded."""
    fields: dict[str, Any] = {
        "window": 0.0,
        "etcd": component("etcd.metrics", {"/health": (200, '{"health":"true","reason":""}')}),
        "apiserver": component(
            "apiserver.metrics", {"/livez": (200, "ok"), "/readyz": (200, "ok")}
        ),
        "scheduler": Component(),
        "controller_manager": Component(),
        "leases": {"kube-scheduler": lease(1), "kube-controller-manager": lease(2)},
        "node_leases": {"n1": lease(10, duration=40)},
        "server_version": "v1.34.4",
    }
    fields.update(changes)
    return ClusterView(**fields)


def ready_node(name: str = "n1", kubelet: str = "v1.33.1", **conditions: str) -> dict[str, Any]:
    node = builders.node(name)
    node["status"]["conditions"] = [
        {"type": t, "status": s} for t, s in {"Ready": "True", **conditions}.items()
    ]
    node["status"]["nodeInfo"] = {"kubeletVersion": kubelet}
    return node


def run(
    v: ClusterView,
    nodes: list[Any] | None = None,
    pods: list[Any] | None = None,
    thresholds: ClusterThresholds = DEFAULTS,
) -> list[cluster_checks.Result]:
    return cluster_checks.component_checks(
        v, [ready_node()] if nodes is None else nodes, pods or [], NOW, thresholds
    )


def by_check(results: list[cluster_checks.Result]) -> dict[str, list[cluster_checks.Result]]:
    out: dict[str, list[cluster_checks.Result]] = {}
    for r in results:
        out.setdefault(r.check, []).append(r)
    return out


def test_a_healthy_cluster_is_all_info() -> None:
    results = run(view())
    # the one result worse than Info: etcd's startup commits, since it started (recorded so)
    assert [(r.check, r.severity) for r in results if r.severity > Severity.INFO] == [
        ("etcd.backend_commit_p99_ms", Severity.WARN)
    ]
    found = by_check(results)
    db = found["etcd.db_size_pct"][0]
    assert db.threshold == 60 and 0 < float(db.value or 0) < 1 and "MiB of a 8192 MiB" in db.message
    assert "since the process started" in found["etcd.wal_fsync_p99_ms"][0].message
    assert found["etcd.grpc_open_streams"][0].target == "etcd etcd.metrics"
    assert {r.target for r in found["apiserver.request_p99_ms"]} >= {
        "apiserver GET",
        "apiserver PUT",
    }
    assert "apiserver WATCH" not in {r.target for r in found["apiserver.request_p99_ms"]}
    # one scrape: no rate is judged, and it says so
    assert "no window" in found["apiserver.5xx_per_s"][0].message
    attempts = found["scheduler.attempt_p99_ms"][0].message
    assert "scheduling attempts; give --scheduler-url" in attempts
    assert found["node.kubelet_skew"][0].value == 1


def test_without_an_etcd_endpoint_the_section_says_so_as_info() -> None:
    results = run(view(etcd=Component()))
    etcd = [r for r in results if r.section == "etcd"]
    assert [(r.check, r.severity) for r in etcd] == [("etcd.metrics", Severity.INFO)]
    assert etcd[0].message == "not inspected: give --etcd-endpoint"
    text = brief.render(brief.sections(etcd), window="over 10 s")
    assert "  etcd: errors: none, alarms: none, warnings: none" in text
    assert "  etcd: not inspected: give --etcd-endpoint" in text  # said, though Info


def test_an_unhealthy_etcd_and_apiserver_are_errors() -> None:
    etcd = component("etcd.metrics", {"/health": (503, '{"health":"false","reason":"NOSPACE"}')})
    assert etcd.last is not None
    etcd.last.samples["etcd_server_has_leader"] = {(): 0.0}
    api = component(
        "apiserver.metrics", {"/livez": (200, "ok"), "/readyz": (500, "[-]etcd failed")}
    )
    found = by_check(run(view(etcd=etcd, apiserver=api)))
    assert found["etcd.health"][0].severity == Severity.ERROR
    assert found["etcd.leader"][0].severity == Severity.ERROR
    assert found["apiserver.readyz"][0].severity == Severity.ERROR
    assert "[-]etcd failed" in found["apiserver.readyz"][0].message


def test_a_threshold_file_moves_values_across_severities(tmp_path: Path) -> None:
    mine = tmp_path / "levels.yaml"
    mine.write_text(
        "etcd.db_size_pct: {warn: 0.001, alarm: 0.002, error: 1}\n"
        "apiserver.request_p99_ms: {error: 0}\n"
    )
    found = by_check(run(view(), thresholds=ClusterThresholds.load(mine)))
    assert found["etcd.db_size_pct"][0].severity == Severity.ALARM  # 0.005 % of the quota
    assert found["etcd.db_size_pct"][0].threshold == 0.002
    assert all(r.severity == Severity.ERROR for r in found["apiserver.request_p99_ms"])
    assert found["etcd.open_fds_pct"][0].severity == Severity.INFO  # the defaults stay


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("etcd.db_size: {warn: 1}\n", "etcd.db_size: unknown check; the checks with levels are"),
        ("etcd.health: {warn: 1}\n", "etcd.health: this check has no levels"),
        ("etcd.db_size_pct: {error: 50, warn: 80}\n", "warn 80.0 is beyond error 50.0"),
        ("apiserver.inflight: {warn: lots}\n", "apiserver.inflight.warn: 'lots' is not a number"),
    ],
)
def test_every_mistake_in_a_threshold_file_names_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    mine = tmp_path / "levels.yaml"
    mine.write_text(text)
    with pytest.raises(ThresholdError, match=error.replace(".", r"\.").replace("(", r"\(")):
        ClusterThresholds.load(mine)


def test_windowed_rates_are_judged() -> None:
    before = metrics.parse(
        'apiserver_request_total{code="500",verb="GET"} 0\n'
        'apiserver_request_total{code="429",verb="GET"} 0\n'
    )
    after = metrics.parse(
        'apiserver_request_total{code="500",verb="GET"} 20\n'
        'apiserver_request_total{code="429",verb="GET"} 5\n'
    )
    api = Component(
        "apiserver",
        {"/livez": (200, "ok"), "/readyz": (200, "ok")},
        window=metrics.delta(before, after, 10.0),
        last=after,
    )
    found = by_check(run(view(apiserver=api, window=10.0)))
    five = found["apiserver.5xx_per_s"][0]
    assert (five.severity, five.value) == (Severity.ALARM, 2.0)
    assert "20 of 25 responses 5xx over 10 s (2.00/s)" in five.message
    assert found["apiserver.429_per_s"][0].severity == Severity.INFO  # 0.5/s under 1


def test_leases_nodes_and_pending_pods() -> None:
    nodes = [
        ready_node("n1"),
        ready_node("n2", kubelet="v1.35.0", MemoryPressure="True"),
        ready_node("n3", kubelet="v1.30.2", Ready="False"),
    ]
    leases = {"kube-scheduler": lease(40), "kube-controller-manager": lease(0, holder="")}
    node_leases = {"n1": lease(10, duration=40), "n2": lease(45, duration=40)}
    pending = builders.pod("p", cpu="1")
    pending["metadata"]["creationTimestamp"] = stamp(400)
    pending["status"] = {"phase": "Pending"}
    found = by_check(run(view(leases=leases, node_leases=node_leases), nodes, [pending]))
    assert found["scheduler.leader"][0].severity == Severity.ERROR
    assert "expired" in found["scheduler.leader"][0].message
    assert found["controller-manager.leader"][0].message == "no holder: no instance leads"
    severities = {
        (r.target, r.check): r.severity for r in found["node.ready"] + found["node.pressure"]
    }
    assert severities[("n3", "node.ready")] == Severity.ERROR
    assert severities[("n2", "node.pressure")] == Severity.ALARM
    assert found["node.kubelet_version"][0].target == "n2"  # newer than the apiserver
    assert found["node.kubelet_version"][0].severity == Severity.ERROR
    skew = {r.target: r.severity for r in found["node.kubelet_skew"]}
    assert skew == {"n1": Severity.INFO, "n3": Severity.ALARM}  # 4 minors behind
    lease_age = {r.target: r.severity for r in found["node.lease_age_pct"]}
    assert lease_age == {"n1": Severity.INFO, "n2": Severity.ALARM, "n3": Severity.WARN}
    age = found["pods.pending_age_s"][0]
    assert (
        age.severity == Severity.WARN and "1 pending (<1m 0, 1-5m 0, 5-60m 1, >1h 0)" in age.message
    )


def test_the_brief_verdicts_and_json() -> None:
    results = [
        cluster_checks.Result(
            "etcd", "etcd a", "etcd.db_size_pct", Severity.WARN, "big", 70.0, 60.0
        ),
        cluster_checks.Result("etcd", "etcd a", "etcd.leader", Severity.INFO, "a leader", 1.0),
        cluster_checks.Result("nodes", "n1", "node.ready", Severity.ERROR, "Ready is False"),
        cluster_checks.Result("nodes", "n2", "node.ready", Severity.INFO, "Ready"),
        *cluster_checks.fulcrum_checks(["IP 10.0.0.1 is held by 2 pods: a, b"], []),
    ]
    sections = brief.sections(results)
    assert [s.name for s in sections] == ["etcd", "control-plane", "nodes", "fulcrum"]
    assert [s.verdict for s in sections] == [
        "etcd: errors: none, alarms: none, warnings: 1",
        "control-plane: errors: none, alarms: none, warnings: none",
        "nodes: errors: 1, alarms: none, warnings: none",
        "fulcrum: errors: 1, alarms: none, warnings: none",
    ]
    assert [s.failing for s in sections] == [False, False, True, True]
    nodes = sections[2]
    assert nodes.table == {"node.ready": {"Error": 1, "Alarm": 0, "Warn": 0, "Info": 1}}
    document = nodes.to_json()
    assert document["summary"] == {"error": 1, "alarm": 0, "warn": 0, "info": 1}
    assert document["checks"][0] == {
        "section": "nodes",
        "target": "n1",
        "check": "node.ready",
        "severity": "Error",
        "value": None,
        "threshold": None,
        "message": "Ready is False",
    }
    text = "\n".join(brief.render(sections, window="over 10 s"))
    assert "cluster checks (over 10 s):\n  etcd: errors: none, alarms: none, warnings: 1" in text
    assert "  Warn      etcd a  etcd.db_size_pct  70     60         big" in text
    assert "a leader" not in text  # Info results only in the table
    assert "fulcrum.ip_unique" in text and "IP 10.0.0.1 is held by 2 pods" in text
    page = brief.to_html(sections, window="over 10 s")
    assert 'data-verdict="nodes"' in page and 'data-table="details-fulcrum"' in page


def test_the_command_exits_1_for_an_error_and_carries_the_sections(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fulcrum import inspect_cli

    monkeypatch.setattr(inspect_cli, "objects", lambda args: ([ready_node()], [], [], []))
    now = datetime.now(UTC)  # the command's clock
    fresh = {"kube-scheduler": lease(1, now=now), "kube-controller-manager": lease(1, now=now)}
    monkeypatch.setattr(
        inspect_cli,
        "cluster_view",
        builders.cluster_view(view(leases=fresh, node_leases={"n1": lease(5, 40, now=now)})),
    )
    argv = ["inspect", "--plan-seconds", "0", "--window", "0"]
    assert cli.main([*argv, "-o", "json"]) == 0  # a Warn is not a failure
    document = json.loads(capsys.readouterr().out)
    assert document["window_s"] == 0
    assert [s["summary"]["error"] for s in document["sections"]] == [0, 0, 0, 0]
    assert {"section", "target", "check", "severity", "value", "threshold", "message"} == set(
        document["checks"][0]
    )
    assert "violations" in document and "node_checks" in document  # as before
    levels = tmp_path / "levels.yaml"
    levels.write_text("etcd.db_size_pct: {error: 0}\n")
    assert cli.main([*argv, "--thresholds", str(levels)]) == 1
    assert "etcd: errors: 1, alarms: none, warnings: 1" in capsys.readouterr().out
    levels.write_text("etcd.db_size_pct: {eror: 0}\n")
    assert cli.main([*argv, "--thresholds", str(levels)]) == 2
    assert "etcd.db_size_pct.eror: unknown level" in capsys.readouterr().err
    html = tmp_path / "i.html"
    pytest.importorskip("matplotlib")
    assert cli.main([*argv, "--html", str(html)]) in (0, 1)
    assert 'data-verdict="etcd"' in html.read_text()
