"""``fulcrum inspect --record DIR`` and ``fulcrum report DIR`` (``fulcrum.inspect.history``,
``fulcrum.inspect.history_report``), and ``fulcrum inspect`` against an apiserver whose etcd is
down: the apiserver answers its lists with a 5xx, which is a finding (exit status 1), not a
failed inspection (2)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fulcrum import cli
from fulcrum.inspect import history, probe
from fulcrum.inspect.probe import Component
from tests import builders
from tests.unit.report_inputs import history as synthetic_history
from tests.unit.test_inspect_cluster_checks import component, lease, ready_node, view

READYZ_ETCD_DOWN = (
    "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]informer-sync ok\n"
    "readyz check failed"
)


def etcd_down_view(now: datetime) -> Any:
    """etcd killed: its endpoint refuses, the apiserver's /readyz names etcd, Leases unread."""
    etcd = Component("http://127.0.0.1:2379", error="[Errno 111] Connection refused")
    api = component(
        "apiserver.metrics", {"/livez": (200, "ok"), "/readyz": (500, READYZ_ETCD_DOWN)}
    )
    return view(
        etcd=etcd,
        apiserver=api,
        leases={},
        node_leases={},
        leases_error="kube-system Leases: the apiserver answered 500",
    )


def test_only_5xx_and_429_are_findings() -> None:
    class Exc:
        def __init__(self, status: int) -> None:
            self.status = status

    assert [probe.answered_but_failing(Exc(s)) for s in (500, 503, 504, 429, 403, 401, 404)] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_a_read_timeout_is_told_from_an_unreachable_apiserver() -> None:
    import urllib3

    timeout = urllib3.exceptions.ReadTimeoutError(None, "/metrics", "read timed out")  # type: ignore[arg-type]
    refused = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    assert probe.timed_out(timeout)
    assert probe.timed_out(urllib3.exceptions.MaxRetryError(None, "/metrics", timeout))  # type: ignore[arg-type]
    assert not probe.timed_out(refused)
    assert not probe.timed_out(urllib3.exceptions.MaxRetryError(None, "/", refused))  # type: ignore[arg-type]


def test_etcd_down_is_an_error_naming_it_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fulcrum import inspect_cli

    def unanswered(args: Any) -> Any:
        raise inspect_cli.Unanswered(
            "the apiserver answered 500 listing nodes: etcdserver: timeout"
        )

    monkeypatch.setattr(inspect_cli, "objects", unanswered)
    monkeypatch.setattr(
        inspect_cli, "cluster_view", builders.cluster_view(etcd_down_view(datetime.now(UTC)))
    )
    argv = ["inspect", "--plan-seconds", "0", "--window", "0", "--record", str(tmp_path / "h")]
    assert cli.main([*argv, "-o", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    errors = {(c["check"], c["target"]) for c in document["checks"] if c["severity"] == "Error"}
    assert ("etcd.health", "etcd http://127.0.0.1:2379") in errors
    assert ("etcd.apiserver_check", "etcd http://127.0.0.1:2379") in errors
    assert ("apiserver.readyz", "apiserver") in errors
    assert ("apiserver.lists", "apiserver") in errors
    by_section = {s["name"]: s for s in document["sections"]}
    assert by_section["etcd"]["summary"]["error"] == 2
    unread = [c for c in document["checks"] if c["check"] in ("nodes.readable", "fulcrum.readable")]
    assert {c["severity"] for c in unread} == {"Warn"} and len(unread) == 2
    assert all("listing nodes" in c["message"] for c in unread)
    leader = next(c for c in document["checks"] if c["check"] == "scheduler.leader")
    assert leader["severity"] == "Warn" and leader["message"].startswith("not read:")
    assert document["unread"].startswith("the apiserver answered 500")
    # the run was recorded, with its Errors
    (recorded,) = history.load(tmp_path / "h")
    assert recorded["unread"] == document["unread"]
    assert history.severity_counts(recorded)["error"] == 4
    assert recorded["nodes"] == {"count": 0, "ready": 0}
    # as text: the first line says what could not be read, and the verdicts name the errors
    assert cli.main(argv) == 1
    text = capsys.readouterr().out
    assert text.startswith("not read: the apiserver answered 500 listing nodes")
    assert "etcd: errors: 2" in text and "[-]etcd failed" in text


def test_explain_with_etcd_down_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fulcrum import inspect_cli

    def unanswered(args: Any) -> Any:
        raise inspect_cli.Unanswered("the apiserver is not ready (/readyz answered 500)")

    monkeypatch.setattr(inspect_cli, "objects", unanswered)
    assert cli.main(["explain", "default/p"]) == 2
    err = capsys.readouterr().err
    assert err == "fulcrum explain: error: the apiserver is not ready (/readyz answered 500)\n"


def test_a_healthy_run_is_recorded_with_its_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fulcrum import inspect_cli

    node = ready_node()
    pod = builders.pod("p1", node_name="n1")
    monkeypatch.setattr(inspect_cli, "objects", lambda args: ([node], [pod], [], []))
    now = datetime.now(UTC)
    fresh = {"kube-scheduler": lease(1, now=now), "kube-controller-manager": lease(1, now=now)}
    monkeypatch.setattr(
        inspect_cli,
        "cluster_view",
        builders.cluster_view(view(leases=fresh, node_leases={"n1": lease(5, 40, now=now)})),
    )
    directory = tmp_path / "h"
    for _ in range(2):
        assert cli.main(["inspect", "--plan-seconds", "0", "--record", str(directory)]) == 0
    capsys.readouterr()
    records = history.load(directory)
    assert len(records) == 2 and len(list(directory.iterdir())) == 2
    last = records[-1]
    assert last["nodes"] == {"count": 1, "ready": 1} and last["pods"] == 1
    assert last["resources"]["cpu"]["allocatable"] > 0
    assert set(last["allocation"]) == {"n1"} and "cpu" in last["allocation"]["n1"]
    assert last["api"]["codes"] and last["api"]["p99_ms"] is not None
    assert last["scheduling"] is None  # kube-scheduler's /metrics not read
    assert all(c["severity"] != "Info" for c in last["checks"])


def figures(page: str) -> set[str]:
    return set(re.findall(r'data-figure="([^"]+)"><svg', page))


def test_the_history_report_draws_every_trend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    from fulcrum.inspect.history_report import HISTORY_FIGURES

    directory = synthetic_history(tmp_path / "h")
    assert len(history.load(directory)) == 10
    page = tmp_path / "history.html"
    assert cli.main(["report", str(directory), "--output-file", str(page)]) == 0
    html = page.read_text()
    assert figures(html) == HISTORY_FIGURES
    assert "10 runs, 2026-12-02T08:00:00+00:00 to 2026-12-02T08:09:00+00:00" in html
    assert "code 500" in html and "Ready nodes" in html
    assert "/health did not answer: connection refused" in html  # the latest run's details
    # the same records give the same page
    assert cli.main(["report", str(directory), "--output-file", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text() == html


def test_a_history_with_nothing_drawn_says_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fulcrum.inspect.history_report import HISTORY_FIGURES, history_html

    bare = {
        "version": 1,
        "time": "2026-12-07T09:00:00+00:00",
        "sections": [],
        "checks": [],
        "nodes": {"count": 0, "ready": 0},
        "pods": 0,
        "resources": {},
        "allocation": {},
        "api": None,
        "scheduling": None,
    }
    page = history_html([bare], source="bare")
    assert figures(page) == HISTORY_FIGURES
    assert "no scheduling latency recorded" in page and "no nodes recorded" in page


def test_a_directory_that_is_not_a_history_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.html")
    assert cli.main(["report", str(tmp_path), "--output-file", out]) == 2
    assert "holds no *.inspection.json: run fulcrum inspect --record" in capsys.readouterr().err
    (tmp_path / "1.inspection.json").write_text('{"version": 9}')
    assert cli.main(["report", str(tmp_path), "--output-file", out]) == 2
    assert "not a record of fulcrum inspect --record" in capsys.readouterr().err
