"""``fulcrum inspect``'s node checks section (``fulcrum.inspect.node_checks``): the table of
checks by severity over the nodes, the details worse than Info, the nodes without an agent
(kwok's in one line), and the exit status 1 for an Error or an Alarm."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fulcrum import cli
from fulcrum.inspect.inspection import inspect, render
from fulcrum.inspect.node_checks import node_checks, render_node_checks
from fulcrum.inspect.report import inspection_html
from node.check_report import ANNOTATION, annotation_value
from node.plugin import CheckResult, Severity
from tests import builders

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
HEALTHY = [
    CheckResult("disk.kubelet", Severity.INFO, "/var/lib/kubelet: 40.0% used", 40.0, 80.0),
    CheckResult("kubelet.health", Severity.INFO, "ok", 200),
]
FULL = CheckResult("disk.kubelet", Severity.ERROR, "/var/lib/kubelet: 93.2% used", 93.2, 90.0)
AHEAD = CheckResult("clock.offset", Severity.WARN, "0.200 s ahead of the reference", 0.2, 0.1)
HOT = CheckResult("load.per_cpu", Severity.ALARM, "load 9 on 4 CPUs", 2.25, 2.0)


def annotated(
    name: str, results: list[CheckResult], when: datetime = NOW, raw: str | None = None
) -> dict[str, Any]:
    node = builders.node(name, cpu="4", memory="8Gi")
    value = raw if raw is not None else annotation_value(results, agent="0.1.0", now=when)
    node["metadata"]["annotations"] = {ANNOTATION: value}
    return node


def kwok(name: str) -> dict[str, Any]:
    node = builders.node(name)
    node["metadata"]["annotations"] = {"kwok.x-k8s.io/node": "fake"}
    return node


def cluster(*worse: CheckResult) -> list[dict[str, Any]]:
    return [
        annotated("real-0", HEALTHY),
        annotated("real-1", [HEALTHY[1], *worse] if worse else HEALTHY),
        *(kwok(f"kwok-node-{i:05}") for i in range(1000)),
        builders.node("plain"),
    ]


def test_checks_are_counted_by_severity_over_the_nodes() -> None:
    section = node_checks(cluster(FULL, AHEAD), NOW)
    assert (section.nodes, section.reporting, section.kwok) == (1003, 2, 1000)
    assert section.counts["disk.kubelet"] == {"Error": 1, "Alarm": 0, "Warn": 0, "Info": 1}
    assert section.counts["kubelet.health"] == {"Error": 0, "Alarm": 0, "Warn": 0, "Info": 2}
    assert [(d["node"], d["check"], d["severity"]) for d in section.details] == [
        ("real-1", "disk.kubelet", "Error"),
        ("real-1", "clock.offset", "Warn"),
    ]
    assert section.failing == ["real-1"] and section.no_agent == ["plain"]


def test_the_text_counts_kwok_nodes_once_and_lists_every_result_worse_than_info() -> None:
    text = render(inspect(cluster(FULL, AHEAD), [], [], [], NOW))
    section = text[text.index("node checks:") :]
    lines = section.splitlines()
    assert lines[0] == (
        "node checks: 2 of 1003 nodes report; 1000 kwok nodes run no agent (kwok fakes them)"
    )
    assert lines[1].split() == ["check", "Error", "Alarm", "Warn", "Info"]
    assert lines[3].split() == ["disk.kubelet", "1", "0", "0", "1"]
    assert "NODE CHECKS FAILING on 1 node: 1 Error, 0 Alarm (real-1)" in lines
    detail = next(line for line in lines if "disk.kubelet  Error" in line)
    assert detail.split()[:5] == ["real-1", "disk.kubelet", "Error", "93.2", "90"]
    assert detail.endswith("/var/lib/kubelet: 93.2% used")
    assert "  no agent on 1 node: plain" in lines
    assert "kwok-node-00001" not in section


def test_json_carries_the_section_and_an_error_or_alarm_breaks_the_inspection() -> None:
    warned = inspect(cluster(AHEAD), [], [], [], NOW)
    assert not warned.broken
    document = json.loads(json.dumps(warned.to_json()))
    assert document["node_checks"]["details"][0]["check"] == "clock.offset"
    assert document["node_checks"]["kwok"] == 1000
    assert inspect(cluster(HOT), [], [], [], NOW).broken
    assert inspect(cluster(FULL), [], [], [], NOW).broken


def test_stale_and_unreadable_reports_are_named() -> None:
    nodes = [
        annotated("old", HEALTHY, when=NOW - timedelta(minutes=30)),
        annotated("forged", [], raw='{"time": 1}'),
        annotated(
            "half",
            [],
            raw=json.dumps({"time": "2026-12-07T09:00:00Z", "checks": [{"check": "x"}]}),
        ),
    ]
    section = node_checks(nodes, NOW)
    assert section.stale == ["old: last report 30 min ago"]
    assert section.unreadable == [
        "forged: fulcrum.io/node-checks: time 1 is not an ISO 8601 time",
        "half: fulcrum.io/node-checks: checks[0]: x: severity None is not one of Info, Warn, "
        "Alarm, Error",
    ]
    lines = render_node_checks(section)
    assert "  stale: old: last report 30 min ago" in lines
    assert any(line.startswith("  unreadable: forged") for line in lines)


def test_a_cluster_without_agents_says_so_in_one_line() -> None:
    lines = render_node_checks(node_checks([kwok("k0"), kwok("k1")], NOW))
    assert lines == [
        "node checks: no node reports (fulcrum node); 2 kwok nodes run no agent (kwok fakes them)"
    ]
    assert render_node_checks(node_checks([], NOW)) == ["node checks: no nodes"]


def test_the_html_report_has_the_section() -> None:
    page = inspection_html(inspect(cluster(FULL), [], [], [], NOW), source="t", now=NOW)
    assert 'data-node-checks="fail"' in page
    assert 'data-table="node-checks"' in page and 'data-table="node-check-details"' in page
    assert "1000 kwok nodes run no agent" in page


def test_the_command_exits_1_for_an_error_or_alarm_and_0_for_a_warn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fulcrum import inspect_cli

    nodes: list[Any] = cluster(AHEAD)
    monkeypatch.setattr(inspect_cli, "objects", lambda args: (nodes, [], [], []))
    monkeypatch.setattr(inspect_cli, "cluster_view", builders.cluster_view(None))  # no components
    argv = ["inspect", "--plan-seconds", "0"]
    assert cli.main([*argv, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["node_checks"]["failing"] == []
    nodes[:] = cluster(HOT)
    assert cli.main(argv) == 1
    assert "NODE CHECKS FAILING on 1 node: 0 Error, 1 Alarm" in capsys.readouterr().out
