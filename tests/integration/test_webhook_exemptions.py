"""No Fulcrum webhook sees ``kube-system``: with the webhook down, an opted-in pod created
there is admitted, while the same pod elsewhere waits for the webhook (``admission.config``);
back up, the webhook answers the API server again.

A real control plane with two kwok nodes; the pods are server-side dry runs (the API server
calls the webhooks and stores nothing).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fulcrum.harness import cluster, processes
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests.integration.conftest import _start

pytestmark = pytest.mark.integration

NAME = "it-webhook-exempt"


@pytest.fixture(scope="module")
def kit() -> Iterator[rr.Kit]:
    _start(NAME, nodes=2)
    try:
        kit = rr.Kit.of(NAME)
        kit.kubectl("create", "namespace", "it-plain")
        yield kit
    finally:
        cluster.down(NAME, log=print)


def dry_run(kit: rr.Kit, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    state = cluster.load_state(kit.name)
    cmd = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(kit.name)), "create"]
    return subprocess.run(
        [*cmd, "--dry-run=server", "-o", "yaml", "-f", "-"],
        input=yaml.safe_dump(obj),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_with_the_webhook_down_kube_system_pods_are_still_admitted(kit: rr.Kit) -> None:
    state = cluster.load_state(kit.name)
    assert state.webhook_pid is not None
    processes.stop_process(state.webhook_pid)
    try:
        elsewhere = dry_run(kit, rr.bare_pod("it-plain", "opted", "opted", opted=True))
        assert elsewhere.returncode != 0, "the webhook is down: routing fails closed elsewhere"
        assert 'failed calling webhook "pods.route.fulcrum.io"' in elsewhere.stderr
        system = dry_run(kit, rr.bare_pod("kube-system", "opted", "opted", opted=True))
        assert system.returncode == 0, system.stderr
        admitted = yaml.safe_load(system.stdout)
        assert any(k.startswith("fulcrum.io/") for k in admitted["metadata"]["annotations"])
    finally:
        cluster.restart_webhook(kit.name)
    # up again (serving TLS from its reloading context): the API server's calls are answered
    opted = rr.bare_pod("it-plain", "opted", "opted", opted=True)
    del opted["spec"]["schedulerName"]
    deadline = time.monotonic() + 30
    while (result := dry_run(kit, opted)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.5)
    assert yaml.safe_load(result.stdout)["spec"]["schedulerName"] == api.SCHEDULER_NAME
