"""``fulcrum node`` on real nodes: Fulcrum's GPU decisions inside the containers, a user's plugin
installed with pip, and node checks that reach ``fulcrum inspect``.

One cluster for the module: one real node with two fake GPUs of model T4 (``cluster up
--real-nodes 1 --node-gpu 2 --node-gpu-model T4``), its agent running the built-ins and the
example plugin (``examples/fulcrum-node-example``), pip-installed into a directory on the
agent's ``PYTHONPATH`` as a user installs it into the agent's image. Pods opt in by their
annotations or their GPU request alone; what a container sees is read from inside it.
"""

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

from fulcrum.harness import cluster, nodeagent, realnodes
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from kube import api
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

NS = "it-node"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fulcrum-node-example"
ENV_SCRIPT = (
    'echo "GPUS=${NVIDIA_VISIBLE_DEVICES:-none} SM=${CUDA_DEVICE_SM_LIMIT:-none} '
    'TEAM=${TEAM:-none}"; exec sleep 3600'
)


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, installed with pip (no dependencies: fulcrum is there already)."""
    target = tmp_path_factory.mktemp("node-plugins")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    return target


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 4 MiB tmpfs the example plugin's check watches, for the test to fill."""
    path = tmp_path_factory.mktemp("scratch")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture(scope="module")
def kit(plugins_dir: Path, scratch: Path) -> Iterator[rr.Kit]:
    require_real_nodes()
    name = f"it-node-{os.getpid()}"
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugins_dir), old) if p)
    agent = nodeagent.AgentOptions(
        gpus=2,
        gpu_model="T4",
        plugins="gpu,ipam,node-checks,annotation-env",
        plugin_options=(f"annotation-env.path={scratch}", "annotation-env.error=50"),
        check_interval=2,
    )
    try:
        cluster.up(name, nodes=0, real_nodes=1, node_agent=agent, log=print)
        kit = rr.Kit.of(name)
        kit.kubectl("create", "namespace", NS)
        yield kit
    finally:
        cluster.down(name, log=print)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def busybox(kit: rr.Kit) -> str:
    state = cluster.load_state(kit.name)
    refs = rb.push_app_images(f"127.0.0.1:{state.registry_port}", ("node",), say=print)
    return refs["node"]


def _pod(
    name: str,
    image: str,
    *,
    annotations: dict[str, str] | None = None,
    gpus: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "command": ["sh", "-c", ENV_SCRIPT],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
    if gpus:
        container["resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
        "spec": {
            "nodeSelector": {realnodes.NODE_LABEL: realnodes.NODE_VALUE},
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": False,
            "containers": [container],
        },
    }


def _seen(kit: rr.Kit, pod: str, timeout: float = 90) -> dict[str, str]:
    """What the pod's container printed: NAME=value pairs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = kit.kubectl("logs", "-n", NS, pod).strip()
        except RuntimeError:
            line = ""
        if line:
            return dict(part.split("=", 1) for part in line.split())
        if time.monotonic() > deadline:
            raise AssertionError(f"{pod} printed nothing in {timeout} s: {_events(kit, pod)}")
        time.sleep(1)


def _events(kit: rr.Kit, pod: str) -> list[str]:
    found = kit.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}")
    return [f"{e.reason}: {e.message}" for e in found.items]


def test_the_agent_advertises_its_fake_gpus_and_their_model(kit: rr.Kit) -> None:
    deadline = time.monotonic() + 60
    while True:
        node = kit.core.read_node("real-1")
        if (node.status.capacity or {}).get("nvidia.com/gpu") == "2":
            break
        assert time.monotonic() < deadline, node.status.capacity
        time.sleep(1)
    assert node.status.allocatable["nvidia.com/gpu"] == "2"
    assert node.metadata.labels["nvidia.com/gpu.product"] == "T4"


def test_containers_see_exactly_the_gpus_fulcrum_chose(kit: rr.Kit, busybox: str) -> None:
    share = {"fulcrum.io/gpu-milli": "400"}
    rr.apply(
        kit,
        [
            _pod("share-a", busybox, annotations=share),
            _pod("share-b", busybox, annotations=share),
            _pod("whole", busybox, annotations={"fulcrum.io/gpu-model": "T4"}, gpus=1),
        ],
    )
    chosen: dict[str, str] = {}
    for name in ("share-a", "share-b", "whole"):
        seen = _seen(kit, name)
        pod = kit.core.read_namespaced_pod(name, NS)
        assert pod.spec.scheduler_name == "fulcrum-scheduler", name
        chosen[name] = pod.metadata.annotations[api.GPU_DEVICES]
        assert seen["GPUS"] == chosen[name], (name, seen)
        assert seen["SM"] == ("40" if name.startswith("share") else "none")
    assert chosen["whole"] not in (chosen["share-a"], chosen["share-b"])
    kit.kubectl("delete", "pod", "-n", NS, "share-a", "share-b", "whole", "--wait=true")


def test_a_container_asking_for_other_gpus_is_refused_with_an_event(
    kit: rr.Kit, busybox: str
) -> None:
    rr.apply(
        kit,
        [
            _pod(
                "greedy",
                busybox,
                annotations={"fulcrum.io/gpu-milli": "300"},
                env={"NVIDIA_VISIBLE_DEVICES": "all"},
            )
        ],
    )
    deadline = time.monotonic() + 90
    while not any(e.startswith("FulcrumRefused") for e in _events(kit, "greedy")):
        assert time.monotonic() < deadline, _events(kit, "greedy")
        time.sleep(1)
    refused = next(e for e in _events(kit, "greedy") if e.startswith("FulcrumRefused"))
    assert "asks for GPU all in NVIDIA_VISIBLE_DEVICES; Fulcrum chose" in refused
    status = kit.core.read_namespaced_pod("greedy", NS).status
    waiting = status.container_statuses[0].state.waiting
    assert waiting is not None and waiting.reason == "CreateContainerError", status
    assert "Fulcrum chose" in (waiting.message or "")


def test_a_users_plugin_installed_with_pip_runs_on_the_node(
    kit: rr.Kit, busybox: str, plugins_dir: Path
) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "fulcrum", "node", "--list-plugins", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(plugins_dir)},
    )
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["annotation-env"]["source"].startswith("fulcrum-node-example 0.1.0")
    rr.apply(kit, [_pod("team", busybox, annotations={"example.fulcrum.io/env": "TEAM=payments"})])
    assert _seen(kit, "team")["TEAM"] == "payments"


def _node_checks(kit: rr.Kit) -> dict[str, str]:
    raw = kit.core.read_node("real-1").metadata.annotations.get("fulcrum.io/node-checks", "{}")
    return {c["check"]: c["severity"] for c in json.loads(raw).get("checks", [])}


def _inspect(kit: rr.Kit) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fulcrum",
            "inspect",
            "--kubeconfig",
            str(cluster.kubeconfig_path(kit.name)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def _wait_check(kit: rr.Kit, check: str, severity: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _node_checks(kit).get(check) != severity:
        assert time.monotonic() < deadline, _node_checks(kit)
        time.sleep(1)


def test_node_checks_reach_inspect_and_a_full_disk_turns_to_error(
    kit: rr.Kit, scratch: Path
) -> None:
    _wait_check(kit, "example.scratch", "Info")
    checks = _node_checks(kit)
    for check in ("gpu.allocation", "ipam.agreement", "example.scratch"):
        assert checks[check] in ("Info", "Warn"), checks
    assert len(checks) >= 10, checks  # the host checks: kubelet, runtime, disk, load, memory...
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={scratch}/fill", "bs=1M", "count=3"],
        check=True,
        capture_output=True,
    )
    try:
        _wait_check(kit, "example.scratch", "Error")
        conditions = {c.type: c for c in kit.core.read_node("real-1").status.conditions}
        assert conditions["FulcrumNodeChecks"].status == "True"
        assert "example.scratch" in conditions["FulcrumNodeChecks"].message
        result = _inspect(kit)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "example.scratch" in result.stdout
    finally:
        (scratch / "fill").unlink()
    _wait_check(kit, "example.scratch", "Info")
    assert kit.core.read_node("real-1").status.conditions  # still there, now False
    conditions = {c.type: c for c in kit.core.read_node("real-1").status.conditions}
    assert conditions["FulcrumNodeChecks"].status == "False"
