"""charts/fulcrum running for real: its pods on a real node, scheduling kwok pods.

test_helm_install.py checks the chart's objects on kwok, where no container runs. Here the
release's pods (fulcrum-scheduler: kube-scheduler and the extender; the rebuild controller; the
webhook) run on ``real-1``, a real node (``fulcrum cluster up --real-nodes 1``: a kubelet with
its own containerd, runc and CNI), beside three kwok nodes: the chart's nodeSelector puts them
there. The harness starts no fulcrum-scheduler and no extender of its own, so a pod that ends up
bound to a kwok node was bound by the installed ones. The API server reaches the installed
webhook and the ``/metrics`` of the extender and of the rebuild controller at their pods' IPs;
the pods reach the API server as in-cluster clients, through the ``kubernetes`` Service
(kube-proxy, and the cluster DNS for the extender's ``kubernetes.default.svc``).

Images come from the cluster's registry: kube-scheduler's is built from the harness's own
kube-scheduler binary (registry.k8s.io is not reachable from every test machine), the Fulcrum
image is ``make image``'s build of this checkout, reused while the sources are unchanged
(``FULCRUM_TEST_IMAGE`` names another); tests/chart_images.py. Needs root, buildah,
debootstrap and the real nodes' Debian packages.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.harness import chart, cluster, images, kubeproxy, realnodes
from fulcrum.harness.binaries import NODE_COMPONENTS, REPO_ROOT, ensure_binaries
from kube import api
from tests import chart_images
from tests.integration.test_helm_install import Tools

pytestmark = pytest.mark.integration

NAMESPACE = "fulcrum-system"
RELEASE = "fulcrum"
WORKLOADS = "real-it"
PART_OF = "app.kubernetes.io/part-of=fulcrum"
APPS = ("fulcrum-scheduler", "fulcrum-rebuild", "fulcrum-webhook")
NODE = "real-1"
CONTAINERS = 4  # kube-scheduler and the extender, the rebuild controller, the webhook
CHART_USER = 65532  # the chart's runAsUser


def _require_tools() -> None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    missing += [p for p, path in realnodes.PACKAGES.items() if not Path(path).exists()]
    if not images.DOCKER_REGISTRY.exists():
        missing.append("docker-registry")
    reason = f"needs apt-get install {' '.join(missing)}" if missing else ""
    if not reason and os.geteuid() != 0:
        reason = "needs root (real nodes, buildah, debootstrap)"
    if reason and os.environ.get("CI"):
        pytest.fail(reason)  # CI (.ci/run) installs them
    if reason:
        pytest.skip(reason)


def _scheduler_image() -> tuple[str, str]:
    """The chart's kube-scheduler image: its repository's last part, and its tag."""
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    image = values["scheduler"]["image"]
    return image["repository"].rsplit("/", 1)[-1], image["tag"]


def _values(fulcrum_image: str, scheduler_image: str, directory: Path) -> Path:
    repository, tag = fulcrum_image.rsplit(":", 1)
    scheduler_repository, scheduler_tag = scheduler_image.rsplit(":", 1)
    scheduler = {"repository": scheduler_repository, "tag": scheduler_tag}
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "scheduler": {"replicas": 1, "image": scheduler | {"pullPolicy": "IfNotPresent"}},
        "rebuild": {"replicas": 1},
        "webhook": {"replicas": 1},
        "metrics": {"expose": True},  # scraped below through the API server's Service proxy
        "nodeSelector": {realnodes.NODE_LABEL: realnodes.NODE_VALUE},
    }
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@dataclass
class Release:
    tools: Tools
    name: str  # the cluster's
    ctr: list[str]  # ctr on real-1's containerd, namespace k8s.io
    directory: Path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    _require_tools()
    binaries = ensure_binaries(print)
    ctr = ensure_binaries(print, components=NODE_COMPONENTS)["ctr"]
    built = chart_images.ensure_fulcrum_image(REPO_ROOT)  # before the cluster: minutes, once
    directory = tmp_path_factory.mktemp("chart")
    name = f"chart-{os.getpid()}"
    with ExitStack() as stack:  # undone in reverse: uninstall, the cluster
        stack.callback(cluster.down, name, log=print)
        state = cluster.up(
            name, nodes=3, real_nodes=1, extender=False, fulcrum_scheduler=False, log=print
        )
        registry = f"127.0.0.1:{state.registry_port}"
        started = time.monotonic()
        fulcrum_image = chart_images.push_fulcrum_image(built, registry)
        scheduler_image = chart_images.push_binary_image(
            binaries["kube-scheduler"], registry, *_scheduler_image()
        )
        print(f"images pushed in {time.monotonic() - started:.1f} s")
        tools = Tools(chart.helm(), state.kubectl, cluster.kubeconfig_path(name))
        tools.kubectl_ok("create", "namespace", NAMESPACE)
        tools.kubectl_ok(
            "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
        )
        tools.kubectl_ok("create", "namespace", WORKLOADS)
        tools.helm_ok(
            "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE,
            "--values", str(_values(fulcrum_image, scheduler_image, directory)),
        )  # fmt: skip
        stack.callback(_uninstall, tools)  # while the node runs: its kubelet stops the pods
        socket = cluster.state_dir(name) / "real" / NODE / "containerd.sock"
        yield Release(tools, name, [str(ctr), "--address", str(socket), "-n", "k8s.io"], directory)


def _uninstall(tools: Tools) -> None:
    if RELEASE in tools.helm_ok("list", "--namespace", NAMESPACE, "--short").split():
        tools.helm_ok("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "90s")


def _diagnostics(release: Release) -> str:
    """The pods, the last events, every release container's log tail, the kubelet's."""
    tools = release.tools
    parts = [tools.kubectl_ok("get", "pods", "-A", "-o", "wide")]
    parts.append(tools.kubectl_ok("get", "events", "-A")[-3000:])
    for pod in _release_pods(release):
        pod_name = pod["metadata"]["name"]
        logs = subprocess.run(
            [tools.kubectl, "--kubeconfig", str(tools.kubeconfig), "logs", "-n", NAMESPACE,
             pod_name, "--all-containers", "--prefix", "--tail=25"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        parts.append(f"--- {pod_name}\n{logs.stdout}{logs.stderr}")
    kubelet = cluster.state_dir(release.name) / "real" / NODE / "kubelet.log"
    if kubelet.exists():
        parts.append("--- kubelet\n" + "\n".join(kubelet.read_text().splitlines()[-30:]))
    return "\n".join(parts)


def _wait(what: str, check: Callable[[], Any], release: Release, timeout: float = 180) -> Any:
    """``check()``'s first truthy result; else fail with the pods', logs' and kubelet's state."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s\n{_diagnostics(release)}")
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


def _tasks(release: Release) -> dict[str, tuple[int, str]]:
    """real-1's containerd tasks (containers and sandboxes): id -> (pid, status)."""
    listed = subprocess.run(
        [*release.ctr, "tasks", "ls"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    return {t: (int(pid), status) for t, pid, status in (line.split() for line in listed)}


def _process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_every_pod_of_the_release_runs_on_the_real_node(release: Release) -> None:
    pods = _wait("every pod of the release Running and Ready", lambda: _all_ready(release), release)
    tasks = _tasks(release)
    slice_ = ipaddress.ip_network(f"10.244.{NODE.rsplit('-', 1)[1]}.0/24")
    containers = []
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE
        # an address of the node's own slice on the bridge, not one of kwok's made-up ones
        assert ipaddress.ip_address(pod["status"]["podIP"]) in slice_, pod["status"]
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and "running" in status["state"], status
            runtime, _, cid = status["containerID"].partition("://")
            assert runtime == "containerd" and tasks.get(cid, (0, ""))[1] == "RUNNING", (
                status,
                tasks,
            )
            containers.append(cid)
    assert len(containers) == CONTAINERS
    sandboxes = set(tasks) - set(containers)
    assert len(sandboxes) == len(pods), tasks  # one pause per pod, and nothing else runs
    assert all(status == "RUNNING" for _, status in tasks.values()), tasks
    # Pod Security "restricted", as the kernel sees each container's process: the chart's
    # user, no capability, no privilege escalation
    for cid in containers:
        process = _process_status(tasks[cid][0])
        assert process["Uid"].split()[:2] == [str(CHART_USER)] * 2, (cid, process["Uid"])
        assert int(process["CapEff"], 16) == 0, (cid, process["CapEff"])
        assert process["NoNewPrivs"] == "1", (cid, process["NoNewPrivs"])


def test_the_pods_reach_the_api_server_through_the_kubernetes_service(release: Release) -> None:
    """kube-scheduler and the rebuild controller (in-cluster config: the ClusterIP) lead their
    Leases; the extender (``kubernetes.default.svc``, by the cluster DNS) is Ready only once
    its informers have synced from the API server."""
    pods = _wait("every pod of the release Ready", lambda: _all_ready(release), release)
    by_app = {p["metadata"]["labels"]["app.kubernetes.io/name"]: p for p in pods}
    service = release.tools.get("service", "-n", "default", "kubernetes")
    ip = service["spec"]["clusterIP"]
    assert kubeproxy.resolve(realnodes.GATEWAY, kubeproxy.KUBERNETES_NAME) == ip
    for app in ("fulcrum-scheduler", "fulcrum-rebuild"):

        def holder(lease: str = app) -> str:
            got = release.tools.get("lease", "-n", NAMESPACE, lease)
            return str(got["spec"].get("holderIdentity") or "")

        held = _wait(f"the Lease {app} held", holder, release, timeout=60)
        assert held.startswith(by_app[app]["metadata"]["name"]), (app, held)


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": WORKLOADS, "annotations": spec.pop("annotations", {})}
    container = {"name": "app", "image": "pause", "resources": {"requests": {"cpu": "1"}}}
    # on the kwok nodes: real-1 would have to run it
    placement = {"nodeSelector": {cluster.NODE_LABEL: "true"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container], **placement, **spec},
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
    """The pre-delete hook runs on the node too (a Job of the Fulcrum image), then every pod
    goes and its containers and sandbox stop."""
    _uninstall(release.tools)

    def gone() -> bool:  # terminating ones too: the kubelet deletes them once stopped
        return not release.tools.get("pods", "-n", NAMESPACE)["items"]

    _wait("the release's pods deleted", gone, release, timeout=90)

    def stopped() -> bool:
        return not [t for t, (_, status) in _tasks(release).items() if status == "RUNNING"]

    _wait("every task on real-1 stopped", stopped, release, timeout=60)
