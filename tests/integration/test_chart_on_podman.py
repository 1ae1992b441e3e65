"""charts/fulcrum running for real: its pods on a podman node, scheduling kwok pods.

test_helm_install.py checks the chart's objects on kwok, where no container runs. Here the
release's pods (fulcrum-scheduler: kube-scheduler and the extender; the rebuild controller; the
webhook) run in podman on one real node, ``podman-node`` (tests/podman_node.py), beside three
kwok nodes: the chart's nodeSelector and tolerations put them there. The harness starts no
fulcrum-scheduler and no extender of its own, so a pod that ends up bound to a kwok node was
bound by the installed ones, and the API server reaches the installed webhook and the
``/metrics`` of the extender and of the rebuild controller at their pods' IPs.

Images: kube-scheduler's is built from the harness's own kube-scheduler binary with buildah
(registry.k8s.io is not reachable from every test machine), under the name the chart uses; the
Fulcrum image is ``make image``'s build of this checkout, reused while the sources are unchanged
(``FULCRUM_TEST_IMAGE`` names another). Needs root, podman, buildah and debootstrap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.harness import chart, cluster
from fulcrum.harness.binaries import REPO_ROOT, ensure_binaries
from kube import api
from tests import podman_node
from tests.integration.test_helm_install import Tools

pytestmark = pytest.mark.integration

NAMESPACE = "fulcrum-system"
RELEASE = "fulcrum"
WORKLOADS = "podman-it"
PART_OF = "app.kubernetes.io/part-of=fulcrum"
APPS = ("fulcrum-scheduler", "fulcrum-rebuild", "fulcrum-webhook")


def _require_tools() -> None:
    missing = [t for t in ("podman", "buildah", "debootstrap") if shutil.which(t) is None]
    reason = ""
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install podman buildah debootstrap)"
    elif os.geteuid() != 0:
        reason = "needs root (podman's bridge network, buildah, debootstrap)"
    if reason and os.environ.get("CI"):
        pytest.fail(reason)  # CI (.ci/run) installs them
    if reason:
        pytest.skip(reason)


def _scheduler_image() -> str:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    image = values["scheduler"]["image"]
    return f"{image['repository']}:{image['tag']}"


def _values(fulcrum_image: str, directory: Path) -> Path:
    repository, tag = fulcrum_image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "scheduler": {"replicas": 1, "image": {"pullPolicy": "Never"}},
        "rebuild": {"replicas": 1},
        "webhook": {"replicas": 1},
        "metrics": {"expose": True},  # scraped below through the API server's Service proxy
        "nodeSelector": {podman_node.NODE_KEY: "true"},
        "tolerations": [
            {"key": podman_node.NODE_KEY, "operator": "Exists", "effect": "NoSchedule"}
        ],
    }
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@dataclass
class Release:
    tools: Tools
    node: podman_node.PodmanNode
    directory: Path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    _require_tools()
    binaries = ensure_binaries(print)
    podman_node.ensure_binary_image(_scheduler_image(), binaries["kube-scheduler"])
    fulcrum_image = podman_node.ensure_fulcrum_image(REPO_ROOT)
    directory = tmp_path_factory.mktemp("podman")
    name = f"podman-{os.getpid()}"
    with ExitStack() as stack:  # undone in reverse: uninstall, the node's pods, the cluster
        stack.callback(cluster.down, name, log=print)
        state = cluster.up(name, nodes=3, extender=False, fulcrum_scheduler=False, log=print)
        tools = Tools(chart.helm(), state.kubectl, cluster.kubeconfig_path(name))
        node = stack.enter_context(podman_node.running_node(tools.kubeconfig, directory / "node"))
        tools.kubectl_ok("create", "namespace", NAMESPACE)
        tools.kubectl_ok(
            "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
        )
        tools.kubectl_ok("create", "namespace", WORKLOADS)
        tools.helm_ok(
            "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE,
            "--values", str(_values(fulcrum_image, directory)),
        )  # fmt: skip
        stack.callback(_uninstall, tools)  # before the node stops: its pods go as a kubelet's
        yield Release(tools, node, directory)


def _uninstall(tools: Tools) -> None:
    if RELEASE in tools.helm_ok("list", "--namespace", NAMESPACE, "--short").split():
        tools.helm_ok("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s")


def _wait(what: str, check: Callable[[], Any], release: Release, timeout: float = 120) -> Any:
    """``check()``'s first truthy result; else fail with the agent's and the pods' state."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pods = release.tools.kubectl_ok("get", "pods", "-A", "-o", "wide")
            events = release.tools.kubectl_ok("get", "events", "-A")[-3000:]
            raise AssertionError(
                f"{what}: not after {timeout:.0f} s\n{pods}\n{events}\n{release.node.diagnostics()}"
            )
        time.sleep(1)


def _release_pods(release: Release) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = release.tools.get("pods", "-n", NAMESPACE, "-l", PART_OF)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def _all_ready(release: Release) -> list[dict[str, Any]] | None:
    pods = _release_pods(release)
    apps = sorted(p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods)
    return pods if apps == sorted(APPS) and all(_ready(p) for p in pods) else None


def test_every_pod_of_the_release_runs_in_podman(release: Release) -> None:
    pods = _wait("every pod of the release Running and Ready", lambda: _all_ready(release), release)
    states = release.node.podman_states()
    for pod in pods:
        assert pod["spec"]["nodeName"] == podman_node.NODE
        # the IP of its podman pod on the bridge, not one of kwok's made-up ones
        assert pod["status"]["podIP"] == release.node.pods[pod["metadata"]["uid"]].ip
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and "running" in status["state"], status
            running = [n for n, s in states.items() if n.endswith(f"-{status['name']}")]
            assert running and all(states[n] == "running" for n in running), (status, states)
    assert len(states) == 4 + len(pods)  # 4 containers, and each podman pod's infra container


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": WORKLOADS, "annotations": spec.pop("annotations", {})}
    container = {"name": "app", "image": "pause", "resources": {"requests": {"cpu": "1"}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container], **spec},
    }


def _bound(release: Release, pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` created, once bound to a node: what the API server has then."""
    name = pod["metadata"]["name"]
    manifest = release.directory / f"{name}.json"
    manifest.write_text(json.dumps(pod))
    release.tools.kubectl_ok("create", "-f", str(manifest))

    def bound() -> dict[str, Any] | None:
        got: dict[str, Any] = release.tools.get("pod", "-n", WORKLOADS, name)
        return got if got["spec"].get("nodeName") else None

    found: dict[str, Any] = _wait(f"pod {name} bound", bound, release, timeout=60)
    return found


def _scrape(release: Release, service: str) -> str:
    path = f"/api/v1/namespaces/{NAMESPACE}/services/{service}:metrics/proxy/metrics"
    return release.tools.kubectl_ok("get", "--raw", path)


def _sample(text: str, metric: str) -> float | None:
    """The first sample of ``metric`` (its labels part of the name: ``x{a="b"}``) in ``text``."""
    match = re.search(rf"^{re.escape(metric)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def _filter_calls(release: Release) -> float:
    scraped = _scrape(release, "fulcrum-scheduler-metrics")
    calls = _sample(scraped, 'fulcrum_extender_requests_total{verb="filter"}')
    assert calls is not None, scraped[:2000]
    return calls


def _assert_placed_by_the_installed_scheduler(release: Release, pod: dict[str, Any]) -> None:
    """Bound to a kwok node by fulcrum-scheduler: the harness runs none, so the chart's did."""
    name = pod["metadata"]["name"]
    assert pod["spec"]["schedulerName"] == api.SCHEDULER_NAME
    assert pod["spec"]["nodeName"].startswith("kwok-node-"), pod["spec"]["nodeName"]
    events = release.tools.get(
        "events", "-n", WORKLOADS, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert scheduled, events
    assert {e.get("reportingComponent") for e in scheduled} == {api.SCHEDULER_NAME}, scheduled


def test_a_pod_naming_fulcrum_scheduler_is_placed_by_the_installed_scheduler(
    release: Release,
) -> None:
    _wait("every pod of the release Ready", lambda: _all_ready(release), release)
    calls = _filter_calls(release)
    pod = _bound(release, _pod("named", schedulerName=api.SCHEDULER_NAME))
    _assert_placed_by_the_installed_scheduler(release, pod)
    assert _filter_calls(release) > calls  # kube-scheduler asked the extender beside it


def test_an_annotated_pod_is_routed_by_the_webhook_and_bound_by_the_extender(
    release: Release,
) -> None:
    _wait("every pod of the release Ready", lambda: _all_ready(release), release)
    # No schedulerName: the installed mutating webhook sets it, as for any fulcrum.io/ pod.
    pod = _bound(release, _pod("annotated", annotations={api.REBUILD: "local"}))
    _assert_placed_by_the_installed_scheduler(release, pod)
    # Fulcrum binds the pods whose node it must keep, and records why it chose that node.
    assert api.DECISION in pod["metadata"].get("annotations", {}), pod["metadata"]


def test_metrics_are_scraped_through_the_services(release: Release) -> None:
    _wait("every pod of the release Ready", lambda: _all_ready(release), release)
    extender = _scrape(release, "fulcrum-scheduler-metrics")
    used = _sample(extender, "fulcrum_cluster_nodes_used")
    assert used is not None, extender[:2000]
    rebuild = _scrape(release, "fulcrum-rebuild-metrics")
    assert _sample(rebuild, "fulcrum_rebuild_queue_depth") is not None, rebuild[:2000]
    assert 'fulcrum_build_info{component="rebuild"' in rebuild


def test_uninstall_stops_every_container(release: Release) -> None:
    _uninstall(release.tools)

    def gone() -> bool:  # terminating ones too: the agent deletes them once their containers are
        return not release.tools.get("pods", "-n", NAMESPACE, "-l", PART_OF)["items"]

    _wait("the release's pods deleted", gone, release, timeout=60)
    assert not release.node.podman_states(), release.node.podman_states()
    assert not release.node.errors, release.node.errors
