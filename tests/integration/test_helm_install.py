"""`helm install` of charts/fulcrum onto a kwok cluster: every pod of the release Running, an
upgrade that keeps the generated webhook certificate, and an uninstall that leaves nothing.

The cluster runs the real kube-apiserver, controller-manager and default kube-scheduler, without
Fulcrum's own processes (``extender=False``: no webhook configurations of the harness to clash
with the chart's). kwok runs no containers: its pod stages mark a pod on a kwok node Running and
Ready once it is scheduled (fulcrum/kwok_stages.yaml), so "Running" here means every object was
accepted by the apiserver (Pod Security "restricted" included), the Deployments made their pods
and the default scheduler placed them (the scheduler's anti-affinity needs two nodes).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import chart, cluster

pytestmark = pytest.mark.integration

NAMESPACE = "fulcrum-system"
RELEASE = "fulcrum"
PART_OF = "app.kubernetes.io/part-of=fulcrum"


@dataclass
class Tools:
    helm: Path
    kubectl: str
    kubeconfig: Path

    def _run(self, cmd: list[str], timeout: float) -> str:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, (
            f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def helm_ok(self, *args: str, timeout: float = 300) -> str:
        return self._run([str(self.helm), *args], timeout)

    def kubectl_ok(self, *args: str, timeout: float = 120) -> str:
        return self._run([self.kubectl, *args], timeout)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl_ok("get", *args, "-o", "json"))


@pytest.fixture(scope="module")
def tools() -> Iterator[Tools]:
    name = f"helm-{os.getpid()}"
    try:
        state = cluster.up(name, nodes=3, extender=False, log=print)
        yield Tools(chart.helm(), state.kubectl, cluster.kubeconfig_path(name))
    finally:
        cluster.down(name, log=print)


def _pods(tools: Tools) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = tools.get("pods", "-n", NAMESPACE, "-l", PART_OF)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _wait_running(tools: Tools, expected: dict[str, int], timeout: float = 180) -> None:
    """Until the release has exactly ``expected`` pods per app name, all Running."""
    deadline = time.monotonic() + timeout
    while True:
        pods = _pods(tools)
        running: dict[str, int] = {}
        for pod in pods:
            if pod["status"].get("phase") == "Running":
                app = pod["metadata"]["labels"]["app.kubernetes.io/name"]
                running[app] = running.get(app, 0) + 1
        if running == expected and len(pods) == sum(expected.values()):
            return
        if time.monotonic() > deadline:
            phases = {p["metadata"]["name"]: p["status"].get("phase") for p in pods}
            events = tools.kubectl_ok("get", "events", "-n", NAMESPACE)
            raise AssertionError(f"want {expected} Running, have {phases}\n{events[-3000:]}")
        time.sleep(1)


def _webhook_secret(tools: Tools) -> dict[str, str]:
    data: dict[str, str] = tools.get("secret", "-n", NAMESPACE, "fulcrum-webhook-tls")["data"]
    return data


def test_install_runs_every_pod_of_the_release(tools: Tools) -> None:
    # The namespace as deploy/ makes it: Pod Security "restricted", so the apiserver refuses
    # any pod of the chart that asks for more.
    tools.kubectl_ok("create", "namespace", NAMESPACE)
    tools.kubectl_ok(
        "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    tools.helm_ok("install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE)
    _wait_running(tools, {"fulcrum-scheduler": 2, "fulcrum-rebuild": 2, "fulcrum-webhook": 2})

    nodes = {p["spec"]["nodeName"] for p in _pods(tools) if "scheduler" in p["metadata"]["name"]}
    assert len(nodes) == 2, "the scheduler's replicas must be on different nodes"
    secret = _webhook_secret(tools)
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        config = tools.get(kind, "fulcrum.io")
        assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {secret["ca.crt"]}
    assert b"BEGIN CERTIFICATE" in base64.b64decode(secret["tls.crt"])
    status = json.loads(tools.helm_ok("status", RELEASE, "-n", NAMESPACE, "-o", "json"))
    assert status["info"]["status"] == "deployed"


def test_upgrade_keeps_the_generated_certificate(tools: Tools) -> None:
    before = _webhook_secret(tools)
    tools.helm_ok(
        "upgrade",
        RELEASE,
        str(chart.CHART),
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "rebuild.replicas=1",
    )
    _wait_running(tools, {"fulcrum-scheduler": 2, "fulcrum-rebuild": 1, "fulcrum-webhook": 2})
    assert _webhook_secret(tools) == before


def test_uninstall_leaves_no_object_of_the_release(tools: Tools) -> None:
    tools.helm_ok("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    deadline = time.monotonic() + 120
    while _pods(tools) or tools.get("deployments", "-n", NAMESPACE)["items"]:
        assert time.monotonic() < deadline, "the release's pods or Deployments stayed"
        time.sleep(1)
    for kind in (
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "priorityclasses",
        "clusterroles",
        "clusterrolebindings",
    ):
        left = [
            o["metadata"]["name"]
            for o in tools.get(kind, "-l", PART_OF)["items"]
            if o["metadata"]["name"].startswith("fulcrum")
        ]
        assert not left, f"{kind} left behind: {left}"
    assert not tools.get("secrets", "-n", NAMESPACE, "-l", PART_OF)["items"]
    # Helm never deletes the CRDs of crds/ (nor, so, anyone's Reservations and IPPools).
    tools.kubectl_ok("get", "crd", "reservations.fulcrum.io", "ippools.fulcrum.io")
