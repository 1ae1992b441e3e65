"""``fulcrum.inspect.metrics`` and ``fulcrum.inspect.api_requests`` on metrics text recorded
from a kwokctl cluster's etcd 3.6 and kube-apiserver 1.34 (tests/unit/data, trimmed to the
families the checks read): parsing, windows, quantiles from buckets, the request analysis."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from fulcrum.inspect import api_requests, metrics, probe

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]


def recorded(name: str) -> metrics.Scrape:
    return metrics.parse((DATA / name).read_text())


def test_parse_reads_counters_gauges_and_buckets() -> None:
    etcd = recorded("etcd.metrics")
    assert etcd.total("etcd_server_has_leader") == 1
    assert etcd.total("etcd_server_quota_backend_bytes") == 8 * 2**30
    assert etcd.total("etcd_server_leader_changes_seen_total") == 1
    assert etcd.total("no_such_metric") is None
    rows = metrics.buckets(etcd, "etcd_disk_wal_fsync_duration_seconds")[""]
    assert rows[-1][0] == math.inf and rows == sorted(rows)
    assert metrics.observed(rows) == etcd.total("etcd_disk_wal_fsync_duration_seconds_count")


def test_parse_names_text_that_is_not_metrics() -> None:
    with pytest.raises(metrics.MetricsError, match="not Prometheus metrics text"):
        metrics.parse("this is {not metrics\n")


def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    cumulative = [(0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (math.inf, 100.0)]
    assert metrics.quantile(0.5, cumulative) == pytest.approx(0.1)
    assert metrics.quantile(0.7, cumulative) == pytest.approx(0.15)
    assert metrics.quantile(0.99, cumulative) == pytest.approx(0.2 + 0.2 * 9 / 10)
    assert metrics.quantile(0.25, cumulative) == pytest.approx(0.05)  # from 0 in the first
    assert metrics.quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None  # nothing observed
    # in +Inf's bucket: the highest finite bound, as histogram_quantile answers
    assert metrics.quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == pytest.approx(0.1)


def test_a_window_is_the_difference_of_two_scrapes() -> None:
    before = metrics.parse('x_total{a="1"} 10\nx_total{a="2"} 5\n')
    after = metrics.parse('x_total{a="1"} 25\nx_total{a="2"} 2\nx_total{a="3"} 4\n')
    window = metrics.delta(before, after, 5.0)
    assert window.total("x_total", a="1") == 15
    assert window.total("x_total", a="2") == 2  # went down: the process restarted, from 0
    assert window.total("x_total", a="3") == 4  # new: whole
    assert window.since == "over 5 s" and after.since == "since the process started"


def test_the_request_analysis_sorts_by_count_and_names_the_leader() -> None:
    scrape = recorded("apiserver.metrics")
    rows = api_requests.analyse(scrape)
    assert [(r.resource, r.verb) for r in rows[:2]] == [
        ("leases.coordination.k8s.io", "PUT"),
        ("leases.coordination.k8s.io", "GET"),
    ]
    assert [r.count for r in rows] == sorted((r.count for r in rows), reverse=True)
    put = rows[0]
    assert put.count == 74 and put.codes == {"200": 74} and put.rate is None  # no window
    assert put.p50_ms is not None and put.p99_ms is not None and put.p50_ms <= put.p99_ms
    get = rows[1]
    assert get.codes == {"200": 21, "404": 4}
    doc = api_requests.document(scrape)
    assert doc["dominant"][0]["resource"] == "leases.coordination.k8s.io"
    assert doc["dominant"][0]["share"] == pytest.approx(116 / 152, abs=1e-4)
    assert set(doc["api_requests"][0]) == {
        "resource",
        "verb",
        "count",
        "rate",
        "p50_ms",
        "p99_ms",
        "codes",
    }
    text = api_requests.render(doc)
    assert "leases.coordination.k8s.io made 76.3 % of them (116)" in text


def test_rates_over_a_window_and_non_resource_paths() -> None:
    text = (
        'apiserver_request_total{code="201",resource="configmaps",subresource="",verb="POST"} 0\n'
        'apiserver_request_total{code="200",resource="",subresource="/healthz",verb="GET"} 1\n'
    )
    later = text.replace("} 0\n", "} 300\n").replace("} 1\n", "} 3\n")
    window = metrics.delta(metrics.parse(text), metrics.parse(later), 10.0)
    rows = api_requests.analyse(window)
    assert [(r.resource, r.count, r.rate) for r in rows] == [
        ("configmaps", 300, 30.0),
        ("/healthz", 2, 0.2),
    ]
    assert rows[0].p99_ms is None  # no buckets served


def test_only_the_families_named_are_parsed() -> None:
    text = (DATA / "apiserver.metrics").read_text()
    whole = metrics.parse(text)
    some = metrics.parse(text, ("apiserver_request_total", "apiserver_request_duration_seconds"))
    assert set(some.samples) == {
        "apiserver_request_total",
        "apiserver_request_duration_seconds_bucket",
        "apiserver_request_duration_seconds_sum",
        "apiserver_request_duration_seconds_count",
    }
    assert some.samples["apiserver_request_total"] == whole.samples["apiserver_request_total"]


def test_every_apiserver_family_the_inspection_reads_is_parsed() -> None:
    """The apiserver's /metrics is parsed for probe.APISERVER_FAMILIES only: a check that reads
    another family must add it there, or it would read nothing."""
    source = " ".join(p.read_text() for p in (ROOT / "fulcrum" / "inspect").glob("*.py"))
    read = set(re.findall(r"\"(apiserver_[a-z_]+)\"", source))
    assert read and read <= set(probe.APISERVER_FAMILIES)
