"""A real kube-apiserver accepts deploy/, and its RBAC grants each component what it needs.

`kubectl apply --dry-run=server -k deploy/` runs every object through the apiserver's decoding,
validation and admission without persisting it. The RBAC is then applied for real and checked
with `kubectl auth can-i` as each ServiceAccount (the scheduler's, the rebuild controller's).
kwok runs no containers, so the pods themselves are not started here.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fulcrum.harness import cluster

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICE_ACCOUNT = "system:serviceaccount:fulcrum-system:fulcrum-scheduler"
EXTENDER_ACCOUNT = "system:serviceaccount:fulcrum-system:fulcrum-extender"
REBUILD_ACCOUNT = "system:serviceaccount:fulcrum-system:fulcrum-rebuild"


@dataclass
class Kubectl:
    path: str
    kubeconfig: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *args],
            env=dict(os.environ, KUBECONFIG=str(self.kubeconfig)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (
            f"kubectl {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def can(self, verb: str, resource: str, *args: str, account: str = SERVICE_ACCOUNT) -> bool:
        result = self.run("auth", "can-i", verb, resource, f"--as={account}", *args)
        if result.returncode not in (0, 1):
            raise AssertionError(f"kubectl auth can-i failed: {result.stderr}")
        return result.returncode == 0


@pytest.fixture(scope="module")
def kubectl() -> Iterator[Kubectl]:
    name = f"deploy-{os.getpid()}"
    try:
        state = cluster.up(name, nodes=1, log=print)
        yield Kubectl(state.kubectl, cluster.kubeconfig_path(name))
    finally:
        cluster.down(name, log=print)


def test_the_apiserver_accepts_every_manifest(kubectl: Kubectl) -> None:
    # A server-side dry run persists nothing, so namespaced objects would fail with "namespace
    # not found": create the namespace for real first.
    kubectl.ok("apply", "-f", str(DEPLOY / "namespace.yaml"))
    result = kubectl.run("apply", "--dry-run=server", "-k", str(DEPLOY))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # The namespace enforces Pod Security "restricted"; the apiserver warns about a Deployment
    # whose pods would be rejected.
    assert "PodSecurity" not in result.stderr, result.stderr
    out = result.stdout
    for kind in (
        "namespace/fulcrum-system",
        "customresourcedefinition.apiextensions.k8s.io/reservations.fulcrum.io",
        "customresourcedefinition.apiextensions.k8s.io/ippools.fulcrum.io",
        "priorityclass.scheduling.k8s.io/fulcrum-scheduler",
        "serviceaccount/fulcrum-scheduler",
        "serviceaccount/fulcrum-extender",
        "secret/fulcrum-extender-token",
        "clusterrole.rbac.authorization.k8s.io/fulcrum-extender",
        "configmap/fulcrum-config",
        "deployment.apps/fulcrum-scheduler",
        "poddisruptionbudget.policy/fulcrum-scheduler",
        # the rebuild controller
        "serviceaccount/fulcrum-rebuild",
        "clusterrole.rbac.authorization.k8s.io/fulcrum-rebuild",
        "clusterrolebinding.rbac.authorization.k8s.io/fulcrum-rebuild",
        "role.rbac.authorization.k8s.io/fulcrum-rebuild-leader-election",
        "rolebinding.rbac.authorization.k8s.io/fulcrum-rebuild-leader-election",
        "deployment.apps/fulcrum-rebuild",
        # the webhook: a list of IPPools, nothing else
        "clusterrole.rbac.authorization.k8s.io/fulcrum-webhook",
        "clusterrolebinding.rbac.authorization.k8s.io/fulcrum-webhook",
    ):
        assert kind in out, out


def test_the_service_account_may_do_what_each_container_does(kubectl: Kubectl) -> None:
    kubectl.ok("apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "rbac.yaml"))
    deadline = time.monotonic() + 30  # the RBAC authorizer learns new bindings from a watch
    while not (
        kubectl.can("list", "nodes") and kubectl.can("list", "nodes", account=EXTENDER_ACCOUNT)
    ):
        assert time.monotonic() < deadline, "the bindings never took effect"
        time.sleep(0.5)

    extender_allowed = [
        ("list", "nodes"),
        ("watch", "nodes"),
        ("get", "pods", "--all-namespaces"),
        ("list", "pods", "--all-namespaces"),
        ("watch", "pods", "--all-namespaces"),
        ("create", "pods", "--subresource=binding", "-n", "default"),
        ("patch", "pods", "--subresource=status", "-n", "default"),
        ("create", "events", "-n", "default"),
        # no pod is trapped: a stopped controller's finalizers let go (rebuild/release.py)
        ("patch", "pods", "-n", "default"),
        ("get", "leases.coordination.k8s.io/fulcrum-rebuild", "-n", "fulcrum-system"),
    ]
    extender_denied = [
        ("get", "nodes"),
        ("update", "pods", "-n", "default"),
        ("delete", "pods", "-n", "default"),
        ("get", "leases.coordination.k8s.io/someone-else", "-n", "fulcrum-system"),
        ("patch", "events.events.k8s.io", "-n", "default"),
        ("list", "poddisruptionbudgets.policy", "--all-namespaces"),  # kube-scheduler's
        ("create", "leases.coordination.k8s.io", "-n", "fulcrum-system"),
        ("create", "subjectaccessreviews.authorization.k8s.io"),
        ("get", "secrets", "-n", "fulcrum-system"),
    ]
    scheduler_allowed = [
        # kube-scheduler (system:kube-scheduler, system:volume-scheduler, its Lease, auth reader)
        ("list", "nodes"),
        ("patch", "pods", "--subresource=status", "-n", "default"),
        ("create", "pods", "--subresource=binding", "-n", "default"),
        ("list", "poddisruptionbudgets.policy", "--all-namespaces"),
        ("update", "persistentvolumeclaims", "-n", "default"),
        ("create", "leases.coordination.k8s.io", "-n", "fulcrum-system"),
        ("get", "leases.coordination.k8s.io/fulcrum-scheduler", "-n", "fulcrum-system"),
        ("update", "leases.coordination.k8s.io/fulcrum-scheduler", "-n", "fulcrum-system"),
        (
            "get",
            "configmaps/extension-apiserver-authentication",
            "-n",
            "kube-system",
        ),
        ("create", "subjectaccessreviews.authorization.k8s.io"),
    ]
    scheduler_denied = [
        ("update", "leases.coordination.k8s.io/someone-else", "-n", "fulcrum-system"),
        ("update", "pods", "-n", "default"),
        ("delete", "nodes"),
        ("get", "secrets", "-n", "kube-system"),
        ("create", "pods", "-n", "default"),
        ("update", "ippools.fulcrum.io", "-n", "default"),  # the extender's, not kube-scheduler's
    ]
    wrong = []
    for account, allowed, denied in (
        (EXTENDER_ACCOUNT, extender_allowed, extender_denied),
        (SERVICE_ACCOUNT, scheduler_allowed, scheduler_denied),
    ):
        wrong += [
            f"{account} {' '.join(a)}" for a in allowed if not kubectl.can(*a, account=account)
        ]
        wrong += [
            f"{account} NOT {' '.join(a)}" for a in denied if kubectl.can(*a, account=account)
        ]
    assert not wrong, f"unexpected answers: {wrong}"


def test_the_rebuild_account_may_do_what_the_controller_does(kubectl: Kubectl) -> None:
    crds = DEPLOY / "crds"
    kubectl.ok("apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(crds))
    kubectl.ok("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    kubectl.ok("apply", "-f", str(DEPLOY / "rebuild-rbac.yaml"))

    def can(*args: str) -> bool:
        return kubectl.can(*args, account=REBUILD_ACCOUNT)

    deadline = time.monotonic() + 30  # the RBAC authorizer learns new bindings from a watch
    while not (
        can("list", "pods", "--all-namespaces")
        and can("create", "leases.coordination.k8s.io", "-n", "fulcrum-system")
    ):
        assert time.monotonic() < deadline, "the rebuild bindings never took effect"
        time.sleep(0.5)

    lease = "leases.coordination.k8s.io/fulcrum-rebuild"
    allowed = [
        # informers: pods, Reservations, IPPools, StatefulSets of every namespace
        ("list", "pods", "--all-namespaces"),
        ("watch", "pods", "--all-namespaces"),
        ("list", "reservations.fulcrum.io", "--all-namespaces"),
        ("watch", "reservations.fulcrum.io", "--all-namespaces"),
        ("list", "ippools.fulcrum.io", "--all-namespaces"),
        ("watch", "ippools.fulcrum.io", "--all-namespaces"),
        ("list", "statefulsets.apps", "--all-namespaces"),
        ("watch", "statefulsets.apps", "--all-namespaces"),
        # finalizer and status annotation (patch); OnDelete recreate (eviction); a pod read again
        ("get", "pods", "-n", "default"),
        ("patch", "pods", "-n", "default"),
        ("create", "pods", "--subresource=eviction", "-n", "default"),
        # Reservations, and compare-and-swap updates of IPPools
        ("create", "reservations.fulcrum.io", "-n", "default"),
        ("update", "reservations.fulcrum.io", "-n", "default"),
        ("delete", "reservations.fulcrum.io", "-n", "default"),
        ("get", "ippools.fulcrum.io", "-n", "default"),
        ("update", "ippools.fulcrum.io", "-n", "default"),
        ("create", "events", "-n", "default"),
        ("get", "nodes"),  # why a reservation expired
        ("list", "nodes"),  # the nodes whose agent pre-pulls (their label)
        # pre-pull: the Deployment informer, and resuming a rollout held for a pre-pull
        ("list", "deployments.apps", "--all-namespaces"),
        ("watch", "deployments.apps", "--all-namespaces"),
        ("patch", "deployments.apps", "-n", "default"),
        # leader election, in fulcrum-system only
        ("create", "leases.coordination.k8s.io", "-n", "fulcrum-system"),
        ("get", lease, "-n", "fulcrum-system"),
        ("update", lease, "-n", "fulcrum-system"),
    ]
    denied = [
        ("delete", "pods", "-n", "default"),  # an eviction honours PodDisruptionBudgets
        ("get", lease, "-n", "kube-system"),
        ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
        ("update", "leases.coordination.k8s.io/fulcrum-scheduler", "-n", "fulcrum-system"),
        ("create", "pods", "-n", "default"),
        ("create", "pods", "--subresource=binding", "-n", "default"),  # only the extender binds
        ("update", "nodes"),
        ("get", "secrets", "-n", "kube-system"),
        # trimmed to what the controller calls
        ("update", "pods", "-n", "default"),
        ("get", "deployments.apps", "-n", "default"),
        ("list", "replicasets.apps", "--all-namespaces"),
        ("get", "statefulsets.apps", "-n", "default"),
        ("patch", "events.events.k8s.io", "-n", "default"),
        ("create", "ippools.fulcrum.io", "-n", "default"),
    ]
    wrong = [" ".join(a) for a in allowed if not can(*a)]
    wrong += [f"NOT {' '.join(a)}" for a in denied if can(*a)]
    assert not wrong, f"{REBUILD_ACCOUNT}: unexpected answers: {wrong}"


def test_the_webhook_account_may_only_list_ippools(kubectl: Kubectl) -> None:
    crds = DEPLOY / "crds"
    kubectl.ok("apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(crds))
    kubectl.ok("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    kubectl.ok("apply", "-f", str(DEPLOY / "webhook-rbac.yaml"))
    account = "system:serviceaccount:fulcrum-system:fulcrum-webhook"
    deadline = time.monotonic() + 30  # the RBAC authorizer learns new bindings from a watch
    while not kubectl.can("list", "ippools.fulcrum.io", "--all-namespaces", account=account):
        assert time.monotonic() < deadline, "the webhook's binding never took effect"
        time.sleep(0.5)
    denied = [
        ("get", "ippools.fulcrum.io", "-n", "default"),
        ("update", "ippools.fulcrum.io", "-n", "default"),
        ("list", "pods", "--all-namespaces"),
        ("get", "secrets", "-n", "fulcrum-system"),
    ]
    wrong = [" ".join(a) for a in denied if kubectl.can(*a, account=account)]
    assert not wrong, f"{account} may: {wrong}"
