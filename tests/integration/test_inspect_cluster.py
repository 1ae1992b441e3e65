"""``fulcrum inspect``'s cluster checks on a real control plane with kwok nodes: a healthy
cluster gives no Error; a threshold file that puts etcd's database and the apiserver's latency
over Error gives Errors naming them and exit status 1; an unreachable apiserver exit status 2 in
one line; and ``--api`` names configmaps as the leading resource while 3,000 are created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import bench
from tests.integration.conftest import KwokCluster, _start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kwok3() -> Iterator[KwokCluster]:
    name = f"it-insp-{os.getpid()}"
    started = _start(name, nodes=3)
    try:
        yield started
    finally:
        cluster.down(name, log=print)


def fulcrum(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fulcrum.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def checks(document: dict[str, Any], severity: str) -> list[dict[str, Any]]:
    return [c for c in document["checks"] if c["severity"] == severity]


def test_a_healthy_cluster_gives_no_error(kwok3: KwokCluster) -> None:
    result = fulcrum("inspect", "--name", kwok3.name, "--window", "5", "--plan-seconds", "0")
    print(result.stdout, result.stderr)
    assert "etcd: errors: none" in result.stdout
    assert "control-plane: errors: none" in result.stdout
    assert "nodes: errors: none" in result.stdout
    as_json = fulcrum(
        "inspect", "--name", kwok3.name, "--window", "5", "--plan-seconds", "0", "-o", "json"
    )
    document = json.loads(as_json.stdout)
    assert checks(document, "Error") == []
    ran = {c["check"] for c in document["checks"]}
    # etcd was found through kwok.yaml and read, with its metrics
    assert {"etcd.health", "etcd.leader", "etcd.db_size_pct", "etcd.wal_fsync_p99_ms"} <= ran
    assert {"apiserver.livez", "apiserver.request_p99_ms", "scheduler.leader"} <= ran
    assert [s["name"] for s in document["sections"]] == [
        "etcd",
        "control-plane",
        "nodes",
        "fulcrum",
    ]
    assert all(
        set(s["summary"]) == {"error", "alarm", "warn", "info"} for s in document["sections"]
    )
    alarms = checks(document, "Alarm")
    assert as_json.returncode == (1 if alarms else 0), alarms


def test_a_threshold_over_error_is_named_and_exits_1(kwok3: KwokCluster, tmp_path: Path) -> None:
    levels = tmp_path / "levels.yaml"
    levels.write_text("etcd.db_size_pct: {error: 0}\napiserver.request_p99_ms: {error: 0}\n")
    args = ["--window", "3", "--plan-seconds", "0", "--thresholds", str(levels)]
    result = fulcrum("inspect", "--name", kwok3.name, *args, "-o", "json")
    assert result.returncode == 1, result.stderr
    errors = {c["check"] for c in checks(json.loads(result.stdout), "Error")}
    assert {"etcd.db_size_pct", "apiserver.request_p99_ms"} <= errors
    text = fulcrum("inspect", "--name", kwok3.name, *args)
    print(text.stdout)
    assert text.returncode == 1
    assert "etcd: errors: 1, alarms: none" in text.stdout
    assert "Error     etcd http://127.0.0.1:" in text.stdout and "etcd.db_size_pct" in text.stdout


def test_an_unreachable_apiserver_exits_2_in_one_line(tmp_path: Path) -> None:
    closed = tmp_path / "closed.kubeconfig"
    closed.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    for extra in ([], ["--api"]):
        result = fulcrum("inspect", "--kubeconfig", str(closed), *extra)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [
            "fulcrum: error: cannot reach the apiserver at 127.0.0.1:1: connection refused"
        ]


def test_the_api_analysis_names_configmaps_after_3000_are_created(kwok3: KwokCluster) -> None:
    cmd = [sys.executable, "-m", "fulcrum.cli", "inspect", "--name", kwok3.name, "--api"]
    watching = subprocess.Popen(
        [*cmd, "--window", "30", "-o", "json"], stdout=subprocess.PIPE, text=True
    )
    time.sleep(3)  # its first scrape
    bench.create_configmaps(kwok3.api, 3000, log=print)
    out, _ = watching.communicate(timeout=120)
    assert watching.returncode == 0
    document = json.loads(out)
    leading = document["dominant"][0]
    print(leading, document["api_requests"][:3])
    assert leading["resource"] == "configmaps"
    assert leading["share"] > 0.5
    top = document["api_requests"][0]
    assert (top["resource"], top["verb"]) == ("configmaps", "POST")
    assert top["count"] >= 3000 and top["codes"] == {"201": top["count"]}
    assert top["rate"] > 0 and 0 < top["p50_ms"] <= top["p99_ms"]
    text = subprocess.run([*cmd, "--window", "0"], capture_output=True, text=True, check=True)
    assert "configmaps made" in text.stdout.splitlines()[1]
