"""``fulcrum inspect`` with the cluster's etcd stopped: the apiserver still answers, with 5xx and
a failing /readyz, so the inspection reports an etcd Error naming it and exits 1 (a finding),
not 2 (a failed inspection); then ``--record`` keeps the run and ``fulcrum report DIR`` draws it.
The cluster is its own (etcd does not come back) and is torn down even with etcd killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulcrum.harness import cluster
from fulcrum.harness.processes import pid_alive, processes_under
from tests.integration.conftest import KwokCluster, _start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kwok2() -> Iterator[KwokCluster]:
    name = f"it-etcd-{os.getpid()}"
    started = _start(name, nodes=2)
    try:
        yield started
    finally:
        cluster.down(name, log=print)
        assert list(processes_under(cluster.state_dir(name))) == []  # nothing left running


def fulcrum(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fulcrum.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def etcd_pid(name: str) -> int:
    """The cluster's etcd: kwokctl's binary runtime runs it as a process named etcd whose
    command line names the cluster's state directory."""
    found = [
        pid
        for pid in processes_under(cluster.state_dir(name))
        if Path(f"/proc/{pid}/comm").read_text().strip() == "etcd"
    ]
    assert len(found) == 1, f"expected one etcd process of {name}, found {found}"
    return found[0]


def test_stopping_etcd_gives_an_error_naming_it_and_exit_1(
    kwok2: KwokCluster, tmp_path: Path
) -> None:
    args = ["inspect", "--name", kwok2.name, "--window", "2", "--plan-seconds", "0"]
    records = tmp_path / "history"
    healthy = fulcrum(*args, "-o", "json", "--record", str(records))
    assert healthy.returncode in (0, 1), healthy.stderr  # 1 only for an Alarm; no Error
    assert not [c for c in json.loads(healthy.stdout)["checks"] if c["severity"] == "Error"]

    pid = etcd_pid(kwok2.name)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid)

    started = time.monotonic()
    down = fulcrum(*args, "-o", "json", "--record", str(records))
    took = time.monotonic() - started
    print(down.stderr, f"took {took:.0f} s")
    assert down.returncode == 1, down.stderr
    assert took < 60  # /readyz first: no list waits for the apiserver's 60 s timeout
    assert "Traceback" not in down.stderr
    document = json.loads(down.stdout)
    errors = [c for c in document["checks"] if c["severity"] == "Error"]
    etcd_errors = [c for c in errors if c["section"] == "etcd"]
    assert etcd_errors, errors
    # named: the member's endpoint, found in the cluster's kwok.yaml
    assert {c["check"] for c in etcd_errors} >= {"etcd.health"}
    assert all(c["target"].startswith("etcd http") for c in etcd_errors), etcd_errors
    assert {c["check"] for c in errors} >= {"apiserver.readyz", "apiserver.lists"}
    assert document["unread"].startswith("the apiserver is not ready (/readyz answered 500")
    assert "etcd" in document["unread"]
    etcd = next(s for s in document["sections"] if s["name"] == "etcd")
    assert etcd["summary"]["error"] >= 1 and etcd["verdict"].startswith("etcd: errors: ")

    # the history holds both runs and its report draws them
    report = tmp_path / "history.html"
    drawn = fulcrum("report", str(records), "--output-file", str(report))
    assert drawn.returncode == 0, drawn.stderr
    assert "2 runs" in report.read_text()
    from fulcrum.inspect import history

    first, second = history.load(records)
    assert first["nodes"] == {"count": 2, "ready": 2} and first["unread"] is None
    assert first["api"]["codes"] and first["scheduling"] is not None  # found through kwok.yaml
    assert second["unread"] == document["unread"] and second["nodes"]["count"] == 0
