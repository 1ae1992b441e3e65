"""How node check results are published (``node/check_report.py``): the annotation under
32 KiB, the NodeCondition, the gauges, and the annotation's reader against anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from node.check_report import (
    ANNOTATION,
    CONDITION,
    MAX_BYTES,
    AnnotationError,
    CheckMetrics,
    annotation_patch,
    annotation_value,
    node_condition,
    read_annotation,
    status_patch,
    worst,
)
from node.plugin import CheckResult, Severity

NOW = datetime(2026, 12, 7, 9, 0, 5, tzinfo=UTC)
OK = CheckResult("kubelet.health", Severity.INFO, "ok", 200)
FULL = CheckResult("disk.kubelet", Severity.ERROR, "/var/lib/kubelet: 93.2% used", 93.2, 90.0)
HOT = CheckResult("load.per_cpu", Severity.ALARM, "load 9 on 4 CPUs", 2.25, 2.0)
OLD = CheckResult("kernel.version", Severity.WARN, "Linux 5.4", "5.4.0", "5.8")


def test_the_annotation_is_compact_json_that_reads_back() -> None:
    text = annotation_value([OK, FULL, OLD], agent="0.1.0", now=NOW)
    assert '":' in text and '": ' not in text and ", " not in text  # compact separators
    document = json.loads(text)
    assert document["time"] == "2026-12-07T09:00:05Z" and document["agent"] == "0.1.0"
    assert document["checks"][0] == {
        "check": "disk.kubelet",
        "severity": "Error",
        "value": 93.2,
        "threshold": 90.0,
        "message": "/var/lib/kubelet: 93.2% used",
    }  # the worst first
    read = read_annotation(text)
    assert read.time == NOW and read.skipped == []
    assert sorted(read.results, key=lambda r: r.check) == sorted(
        [OK, FULL, OLD], key=lambda r: r.check
    )
    patch = annotation_patch([OK], agent="0.1.0", now=NOW)
    assert list(patch["metadata"]["annotations"]) == [ANNOTATION]


def test_a_value_json_cannot_hold_goes_as_text() -> None:
    odd = CheckResult("load.per_cpu", Severity.WARN, "?", float("nan"), float("inf"))
    (read,) = read_annotation(annotation_value([odd], agent="0.1.0", now=NOW)).results
    assert (read.value, read.threshold) == ("nan", "inf")
    chatty = CheckResult("runtime.version", Severity.INFO, "x", "v" * 5000)
    (read,) = read_annotation(annotation_value([chatty], agent="0.1.0", now=NOW)).results
    assert isinstance(read.value, str) and len(read.value) == 200


def test_the_annotation_stays_under_32_kib_keeping_the_worst() -> None:
    many = [CheckResult(f"disk.x{i}", Severity.INFO, "i" * 2000, float(i)) for i in range(400)] + [
        CheckResult(f"err.{i}", Severity.ERROR, "e" * 2000, i) for i in range(100)
    ]
    text = annotation_value(many, agent="0.1.0", now=NOW)
    assert len(text.encode()) <= MAX_BYTES
    document = read_annotation(text)
    assert document.omitted == 400 and len(document.results) == 100
    assert all(len(r.message) <= 300 for r in document.results)
    flood = [CheckResult(f"err.{i}", Severity.ERROR, "e" * 500, i) for i in range(3000)]
    text = annotation_value(flood, agent="0.1.0", now=NOW)
    assert len(text.encode()) <= MAX_BYTES
    read = read_annotation(text)
    assert read.omitted + len(read.results) == 3000 and read.results


def test_the_condition_is_true_on_any_error_and_names_the_checks() -> None:
    failing = node_condition([OK, FULL, HOT], NOW)
    assert failing["type"] == CONDITION
    assert (failing["status"], failing["reason"]) == ("True", "CheckError")
    assert failing["message"].startswith("1 check(s) in Error: disk.kubelet (disk.kubelet: ")
    assert failing["message"].endswith("; in Alarm: load.per_cpu")
    passing = node_condition([OK, OLD], NOW)
    assert (passing["status"], passing["reason"]) == ("False", "ChecksPassed")
    later = NOW + timedelta(minutes=1)
    kept = node_condition([OK], later, previous=passing)  # same status: the transition stays
    assert kept["lastTransitionTime"] == "2026-12-07T09:00:05Z"
    assert kept["lastHeartbeatTime"] == "2026-12-07T09:01:05Z"
    flipped = node_condition([FULL], later, previous=passing)
    assert flipped["lastTransitionTime"] == "2026-12-07T09:01:05Z"
    kubelets = [{"type": "Ready", "status": "True"}, passing]
    body = status_patch([FULL], later, kubelets)
    assert body == {"status": {"conditions": [flipped]}}
    assert worst([OK, OLD, HOT]) is Severity.ALARM and worst([]) is Severity.INFO


def test_the_gauges_follow_each_round() -> None:
    registry = CollectorRegistry()
    metrics = CheckMetrics(registry)
    metrics.update([OK, FULL, OLD])

    def sample(name: str, check: str) -> float | None:
        return registry.get_sample_value(name, {"check": check})

    assert sample("fulcrum_node_check_severity", "disk.kubelet") == 3
    assert sample("fulcrum_node_check_value", "disk.kubelet") == 93.2
    assert sample("fulcrum_node_check_severity", "kernel.version") == 1
    assert sample("fulcrum_node_check_value", "kernel.version") is None  # not a number
    metrics.update([OK])  # disk.kubelet no longer reported: its series go
    assert sample("fulcrum_node_check_severity", "disk.kubelet") is None
    assert sample("fulcrum_node_check_value", "disk.kubelet") is None
    assert sample("fulcrum_node_check_value", "kubelet.health") == 200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "not JSON"),
        ("{nope", "not JSON"),
        ("[]", "expected a JSON object, got list"),
        ('"x"', "expected a JSON object, got str"),
        ('{"checks": []}', "time None is not an ISO 8601 time"),
        ('{"time": "yesterday", "checks": []}', "time 'yesterday' is not an ISO 8601 time"),
        ('{"time": "2026-12-07T09:00:00", "checks": []}', "has no zone"),
        ('{"time": "2026-12-07T09:00:00Z", "checks": {}}', "no list of checks"),
        ('{"time": "2026-12-07T09:00:00Z"}', "no list of checks"),
        ("x" * (5 * MAX_BYTES), "far over"),
    ],
)
def test_a_forged_annotation_is_named_never_a_crash(raw: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        read_annotation(raw)


def test_bad_entries_are_skipped_and_named() -> None:
    entries = [
        {"check": "disk.root", "severity": "Warn", "value": 81, "threshold": 80, "message": "m"},
        {"check": "x", "severity": "Fatal"},
        {"severity": "Info"},
        "disk.root",
        {"check": "y", "severity": "Info", "value": [1]},
        {"check": "z", "severity": "Info", "message": 5},
        {"check": "w", "severity": "Info", "value": True},
    ]
    raw = json.dumps({"time": "2026-12-07T09:00:00+00:00", "checks": entries, "omitted": "x"})
    document = read_annotation(raw)
    assert document.results == [CheckResult("disk.root", Severity.WARN, "m", 81, 80)]
    assert document.omitted == 0
    assert document.skipped == [
        "checks[1]: x: severity 'Fatal' is not one of Info, Warn, Alarm, Error",
        "checks[2]: no check name",
        "checks[3]: expected an object, got str",
        "checks[4]: y: value [1] is not a number, a string or null",
        "checks[5]: z: message is not a string",
        "checks[6]: w: value True is not a number, a string or null",
    ]
