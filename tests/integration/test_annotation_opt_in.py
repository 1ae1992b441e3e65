"""The annotation is the whole opt-in: Fulcrum's admission webhooks on a real control plane.

The scenario of issue 12: a Deployment (6 replicas, maxSurge 0, maxUnavailable 1) and a
StatefulSet (3) on 20 nodes, annotated ``fulcrum.io/rebuild: local`` and nothing else; before
the webhooks, default-scheduler placed them and 2 of 9 successors came back on their node.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml

from fulcrum.harness import cluster, processes
from fulcrum.lab import rebuild_run as rr
from kube import api
from kube.resources import BIND
from tests.integration.conftest import KwokCluster, _start

pytestmark = pytest.mark.integration

NS = "it-admission"


@pytest.fixture(scope="module")
def kit() -> Iterator[rr.Kit]:
    name = "it-admission"
    started: KwokCluster = _start(name, nodes=20)
    try:
        kit = rr.Kit.of(started.name)
        kit.kubectl("create", "namespace", NS)
        yield kit
    finally:
        cluster.down(name, log=print)


def apply(kit: rr.Kit, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply`` as a user runs it: its exit status, stdout and stderr (warnings)."""
    state = cluster.load_state(kit.name)
    cmd = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(kit.name)), "apply"]
    return subprocess.run(
        [*cmd, "-f", "-"],
        input=yaml.safe_dump_all(objects),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def schedulers(kit: rr.Kit, app: str) -> set[str]:
    return {p["spec"].get("schedulerName", "") for p in rr.live_pods(kit, NS, app)}


def test_annotated_workloads_come_back_on_their_nodes_without_a_scheduler_name(
    kit: rr.Kit,
) -> None:
    """Beside them, a plain fulcrum-scheduler Deployment rolls too: kube-scheduler binds its
    pods itself (no fulcrum.io/bind mark), on Fulcrum's pick, and never into a held room."""
    deployment = rr.deployment(NS, "web", 6, scheduler=None, max_unavailable=1)
    statefulset = rr.statefulset(NS, "db", 3, scheduler=None)
    plain = rr.deployment(NS, "plain", 12, opted=False)
    assert "schedulerName" not in deployment["spec"]["template"]["spec"]
    rr.apply(kit, [*rr.volumes("it-adm-db", 3), deployment, statefulset, plain])
    apps = {"web": 6, "db": 3, "plain": 12}
    rr.wait_running(kit, NS, apps, timeout=180)
    rr.wait_guarded(kit, NS, {"web": 6, "db": 3})
    assert schedulers(kit, "web") == schedulers(kit, "db") == {api.SCHEDULER_NAME}
    for app, marked in (("web", True), ("db", True), ("plain", False)):
        for pod in rr.live_pods(kit, NS, app):  # Fulcrum's bind marks and records; not plain's
            limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
            assert (BIND in limits) is marked, pod["metadata"]["name"]
            assert (api.DECISION in pod["metadata"].get("annotations", {})) is marked

    def change() -> None:
        kit.kubectl(
            "set", "image", "deployment/web", "deployment/plain", f"main={rr.NEW_IMAGE}", "-n", NS
        )
        kit.kubectl("set", "env", "statefulset/db", "REVISION=2", "-n", NS)

    def updated(pod: dict[str, Any]) -> bool:
        name = pod["metadata"]["name"]
        return (rr.has_env("2") if name.startswith("db-") else rr.has_image(rr.NEW_IMAGE))(pod)

    rollouts = rr.roll(kit, NS, apps, change, updated, timeout=240)
    for rollout in rollouts.values():
        print(f"  {rollout}")
    kept = sum(rollouts[app].kept.node for app in ("web", "db"))
    assert kept == 9, [rollouts[app].kept.misses for app in ("web", "db")]


def test_an_annotated_pod_is_guarded_from_birth(kit: rr.Kit) -> None:
    """The webhook adds the rebuild finalizer as the pod is created: a server-side dry run (the
    API server calls the webhooks, stores nothing, and no controller sees the pod) shows it;
    a create-first pod, for which nothing is held, gets none."""

    def created(pod: dict[str, Any]) -> dict[str, Any]:
        out = kit.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=yaml.safe_dump(pod)
        )
        return dict(orjson.loads(out))

    opted = rr.bare_pod(NS, "guarded", "guarded")
    del opted["spec"]["schedulerName"]
    out = created(opted)
    assert out["metadata"].get("finalizers") == [api.FINALIZER]
    assert out["spec"]["schedulerName"] == api.SCHEDULER_NAME
    beside = rr.bare_pod(NS, "beside", "beside", annotations={api.ORDER: "create-first"})
    assert "finalizers" not in created(beside)["metadata"]


def test_a_pod_in_a_labelled_namespace_goes_to_fulcrum(kit: rr.Kit) -> None:
    kit.kubectl("create", "namespace", "it-labelled")
    kit.kubectl("label", "namespace", "it-labelled", "fulcrum.io/scheduling=enabled")
    pod = rr.bare_pod("it-labelled", "plain", "plain", opted=False)
    del pod["spec"]["schedulerName"]
    rr.apply(kit, [pod])
    found = kit.core.read_namespaced_pod("plain", "it-labelled")
    assert found.spec.scheduler_name == api.SCHEDULER_NAME


def test_a_bad_annotation_is_refused_by_kubectl_apply(kit: rr.Kit) -> None:
    bad = rr.deployment(NS, "typo", 1, opted=False, annotations={api.REBUILD: "lcoal"})
    result = apply(kit, [bad])
    assert result.returncode != 0
    assert 'annotation fulcrum.io/rebuild="lcoal" is not allowed; use one of: local' in (
        result.stderr
    )
    assert "spec.template.metadata.annotations[fulcrum.io/rebuild]" in result.stderr


def test_kubectl_prints_the_surge_warning(kit: rr.Kit) -> None:
    surge = rr.deployment(NS, "surge", 1, scheduler=None)
    surge["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": "25%", "maxUnavailable": 0}
    result = apply(kit, [surge])
    assert result.returncode == 0, result.stderr
    assert "Warning: maxSurge 25%" in result.stderr


def test_with_the_webhook_down_opted_in_pods_wait_and_plain_pods_do_not(kit: rr.Kit) -> None:
    state = cluster.load_state(kit.name)
    assert state.webhook_pid is not None and state.webhook_port is not None
    processes.stop_process(state.webhook_pid)
    try:
        opted = rr.bare_pod(NS, "opted-down", "opted-down", opted=True)
        del opted["spec"]["schedulerName"]
        result = apply(kit, [opted])
        assert result.returncode != 0
        assert 'failed calling webhook "pods.route.fulcrum.io"' in result.stderr
        plain = rr.bare_pod(NS, "plain-down", "plain-down", opted=False)
        del plain["spec"]["schedulerName"]
        result = apply(kit, [plain])
        assert result.returncode == 0, result.stderr
        rr.wait_running(kit, NS, {"plain-down": 1}, timeout=60)
        found = orjson.loads(
            kit.core.read_namespaced_pod("plain-down", NS, _preload_content=False).data
        )
        assert found["spec"]["schedulerName"] == "default-scheduler"
    finally:
        cluster.restart_webhook(kit.name)
    result = apply(kit, [opted])  # back up: the same pod is admitted and routed
    assert result.returncode == 0, result.stderr
    assert schedulers(kit, "opted-down") == {api.SCHEDULER_NAME}
