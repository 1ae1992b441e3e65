"""A real kube-apiserver accepts the chart's node agent (node.enabled), in the namespace the
chart creates for it, and its RBAC grants exactly what the agent does.

`kubectl apply --dry-run=server` runs the DaemonSet through the apiserver's validation (a
privileged container, hostNetwork with its hostPort, mountPropagation) and Pod Security
admission; the RBAC is applied for real and checked with `kubectl auth can-i` as the agent's
ServiceAccount. kwok runs no containers: the agent itself is not started here.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fulcrum.harness import chart, cluster
from tests.integration.test_deploy_dryrun import Kubectl
from tests.unit.test_chart import helm

__all__ = ["helm"]  # the fixture

pytestmark = pytest.mark.integration

NAMESPACE = "fulcrum-node-it"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:fulcrum-node"


@pytest.fixture(scope="module")
def kubectl() -> Iterator[Kubectl]:
    name = f"chartnode-{os.getpid()}"
    try:
        state = cluster.up(name, nodes=1, log=print)
        yield Kubectl(state.kubectl, cluster.kubeconfig_path(name))
    finally:
        cluster.down(name, log=print)


def _rendered(
    helm: Path, tmp_path: Path, *sets: str, namespace: str = NAMESPACE
) -> dict[str, Path]:
    """The chart's documents with node.enabled, one file per template."""
    text = chart.template(
        helm,
        namespace=namespace,
        set_values=["node.enabled=true", "webhook.certificate.source=secret", *sets],
    )
    files = {}
    for source, body in chart.split_sources(text).items():
        path = tmp_path / Path(source).name
        path.write_text(body)
        files[Path(source).name] = path
    return files


def _apply_dry_run(kubectl: Kubectl, *paths: Path) -> subprocess.CompletedProcess[str]:
    args = [arg for p in paths for arg in ("-f", str(p))]
    return kubectl.run("apply", "--dry-run=server", *args)


def test_the_apiserver_accepts_the_agent_in_the_namespace_the_chart_makes(
    kubectl: Kubectl, helm: Path, tmp_path: Path
) -> None:
    files = _rendered(helm, tmp_path, "namespace.create=true", "node.fakeGpus=2")
    namespace = yaml.safe_load(files["namespace.yaml"].read_text())
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    kubectl.ok("apply", "-f", str(files["namespace.yaml"]))
    result = _apply_dry_run(kubectl, files["node-rbac.yaml"], files["node.yaml"])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "PodSecurity" not in result.stderr, result.stderr
    for kind in (
        "serviceaccount/fulcrum-node",
        "clusterrole.rbac.authorization.k8s.io/fulcrum-node",
        "clusterrolebinding.rbac.authorization.k8s.io/fulcrum-node",
        "daemonset.apps/fulcrum-node",
    ):
        assert kind in result.stdout, result.stdout


def test_a_restricted_namespace_is_warned_of_the_agent(
    kubectl: Kubectl, helm: Path, tmp_path: Path
) -> None:
    """Why the chart makes its namespace privileged: "restricted" refuses the agent's pods."""
    restricted = "restricted-node-it"
    files = _rendered(helm, tmp_path, namespace=restricted)
    kubectl.ok("create", "namespace", restricted)
    kubectl.ok("label", "namespace", restricted, "pod-security.kubernetes.io/enforce=restricted")
    result = _apply_dry_run(kubectl, files["node.yaml"])
    assert "violate PodSecurity" in result.stderr, result.stderr
    for reason in ("privileged", "host namespaces", "hostPath", "hostPort"):
        assert reason in result.stderr, result.stderr


def test_the_agent_may_do_exactly_what_it_does(
    kubectl: Kubectl, helm: Path, tmp_path: Path
) -> None:
    files = _rendered(helm, tmp_path, "namespace.create=true")
    kubectl.ok("apply", "-f", str(files["namespace.yaml"]), "-f", str(files["node-rbac.yaml"]))
    deadline = time.monotonic() + 30  # the RBAC authorizer learns new bindings from a watch
    while not kubectl.can("list", "pods", "--all-namespaces", account=ACCOUNT):
        assert time.monotonic() < deadline, "the binding never took effect"
        time.sleep(0.5)
    allowed = [
        ("list", "pods", "--all-namespaces"),
        ("watch", "pods", "--all-namespaces"),
        ("patch", "pods", "-n", "default"),
        ("get", "nodes"),
        ("patch", "nodes"),
        ("patch", "nodes", "--subresource=status"),
        ("create", "events", "-n", "default"),
    ]
    denied = [
        ("get", "pods", "-n", "default"),  # the informer lists; nothing reads one pod
        ("update", "pods", "-n", "default"),
        ("delete", "pods", "-n", "default"),
        ("create", "pods", "-n", "default"),
        ("list", "nodes"),
        ("update", "nodes", "--subresource=status"),
        ("delete", "nodes"),
        ("get", "secrets", "-n", NAMESPACE),
        ("create", "pods", "--subresource=eviction", "-n", "default"),
    ]
    for verb, resource, *args in allowed:
        assert kubectl.can(verb, resource, *args, account=ACCOUNT), (verb, resource, args)
    for verb, resource, *args in denied:
        assert not kubectl.can(verb, resource, *args, account=ACCOUNT), (verb, resource, args)
