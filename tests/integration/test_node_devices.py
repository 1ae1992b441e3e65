"""node.deviceplugin and node.cri on a real node: a kubelet v1.34 and containerd 2.

One cluster for the module: one kwok node and one real node (``--real-nodes 1``). The device
plugin runs in this test process and registers with real-1's kubelet through that kubelet's
own ``<root-dir>/plugins_registry`` (not the host-wide ``/var/lib/kubelet/device-plugins``,
which every kubelet on the host shares). The CRI client talks to real-1's containerd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.harness import cluster, images, processes, realnodes
from fulcrum.lab import rebuild_run as rr
from node import cri
from node import deviceplugin as dp
from node.plugin import Adjustment
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

NS = "it-devices"
NODE = "real-1"
GPU = "nvidia.com/gpu"
ENV = "FULCRUM_FAKE_GPUS"
# the env Allocate gave, and the service account token the kubelet mounted (its volumes reach
# the container)
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SCRIPT = f'echo "{ENV}=${ENV}"; echo "namespace=$(cat {TOKEN_DIR}/namespace)"'


@pytest.fixture(scope="module")
def name() -> Iterator[str]:
    require_real_nodes()
    name = f"it-dev-{os.getpid()}"
    cluster.up(name, nodes=1, real_nodes=1, log=print)
    try:
        yield name
    finally:
        cluster.down(name, log=print)


@pytest.fixture(scope="module")
def kit(name: str) -> rr.Kit:
    kit = rr.Kit.of(name)
    kit.kubectl("create", "namespace", NS)
    return kit


def _node_dir(name: str) -> Path:
    return cluster.state_dir(name) / "real" / NODE


def _registry(name: str) -> str:
    return f"127.0.0.1:{cluster.load_state(name).registry_port}"


def _push(name: str, tag: str, pad_mb: int = 0) -> str:
    """busybox (padded by ``pad_mb`` MiB, so a pull takes measurable time) in the registry."""
    image = images.busybox_image()
    if pad_mb:
        image = images.padded_image(image, pad_mb, seed=tag)
    with images.build(image) as built:
        images.push(built, _registry(name), "fulcrum/busybox", tag)
    return f"{_registry(name)}/fulcrum/busybox:{tag}"


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)


def _gpus(kit: rr.Kit) -> tuple[str | None, str | None]:
    """real-1's (capacity, allocatable) of nvidia.com/gpu."""
    status = kit.core.read_node(NODE).status
    return (status.capacity or {}).get(GPU), (status.allocatable or {}).get(GPU)


class FakeGPUs:
    """Four devices; Allocate answers each container with the IDs it got in ``ENV``."""

    def __init__(self) -> None:
        self.health = {str(i): True for i in range(4)}
        self.allocated: list[list[str]] = []

    def devices(self) -> list[tuple[str, bool]]:
        return list(self.health.items())

    def allocate(self, requests: list[list[str]]) -> list[Adjustment]:
        self.allocated += requests
        return [
            Adjustment(
                env={ENV: ",".join(ids)}, annotations={"fulcrum.io/fake-gpus": ",".join(ids)}
            )
            for ids in requests
        ]


def _restart_kubelet(directory: Path) -> None:
    """Stop real-1's kubelet and start it again with the same command line, in the same mount
    namespace (kept open here meanwhile), as after a kubelet upgrade or crash: its plugin
    watcher must find the plugin's socket again."""
    (pid,) = processes.processes_under(directory / "kubelet.yaml")
    cmd = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    path = next(e.decode()[5:] for e in environ if e.startswith(b"PATH="))
    port = yaml.safe_load((directory / "kubelet.yaml").read_text())["healthzPort"]
    namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        processes.terminate([pid])
        enter = ["nsenter", f"--mount=/proc/{os.getpid()}/fd/{namespace}", *cmd]
        processes.start_process(
            directory, "kubelet", enter, f"http://127.0.0.1:{port}/healthz", {"PATH": path}
        )
    finally:
        os.close(namespace)


def test_device_plugin_advertises_allocates_and_goes_unhealthy(name: str, kit: rr.Kit) -> None:
    gpus = FakeGPUs()
    root = _node_dir(name) / "kubelet"
    plugin = dp.DevicePlugin(
        GPU, root, devices=gpus.devices, allocate=gpus.allocate, poll_interval=0.5
    )
    image = _push(name, "devices")
    with plugin:
        started = time.monotonic()
        assert plugin.wait_registered(60).registered
        _wait("capacity and allocatable 4", lambda: _gpus(kit) == ("4", "4"))
        print(f"registered and advertised in {time.monotonic() - started:.1f} s")

        gpus.health["3"] = False  # a health change is re-sent: allocatable drops, not capacity
        _wait("allocatable 3 of 4", lambda: _gpus(kit) == ("4", "3"))
        gpus.health["3"] = True
        _wait("allocatable 4 again", lambda: _gpus(kit) == ("4", "4"))

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gpu", "namespace": NS},
            "spec": {
                "nodeSelector": {realnodes.NODE_LABEL: realnodes.NODE_VALUE},
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "command": ["sh", "-c", SCRIPT],
                        "resources": {"limits": {GPU: "2"}},
                    }
                ],
            },
        }
        rr.apply(kit, [pod])  # the default scheduler places it by real-1's allocatable
        phase = _wait(
            "the gpu pod to finish",
            lambda: (
                kit.core.read_namespaced_pod("gpu", NS).status.phase in ("Succeeded", "Failed")
                and kit.core.read_namespaced_pod("gpu", NS).status.phase
            ),
            timeout=120,
        )
        assert phase == "Succeeded"
        (ids,) = gpus.allocated
        assert len(ids) == 2 and set(ids) <= {"0", "1", "2", "3"}
        log = kit.core.read_namespaced_pod_log("gpu", NS)
        assert f"{ENV}={','.join(ids)}" in log, log
        assert f"namespace={NS}" in log, log

        registrations = plugin.registrations
        restarted = time.monotonic()
        _restart_kubelet(_node_dir(name))
        _wait("the restarted kubelet's registration", lambda: plugin.registrations > registrations)
        _wait("its ListAndWatch", lambda: plugin.streams == 1)
        _wait("allocatable 4 after the restart", lambda: _gpus(kit) == ("4", "4"))
        print(f"re-registered after a kubelet restart in {time.monotonic() - restarted:.1f} s")

    # stopped: the kubelet's stream ends, all devices turn unhealthy; capacity stays until
    # the kubelet's endpointStopGracePeriod (5 minutes) has passed, then it goes to 0
    stopped = time.monotonic()
    _wait("allocatable 0 after the plugin stopped", lambda: _gpus(kit) == ("4", "0"))
    print(f"allocatable 0 {time.monotonic() - stopped:.1f} s after the plugin stopped")
    assert not plugin.socket.exists()
    kubelet_log = (_node_dir(name) / "kubelet.log").read_text(errors="replace").splitlines()
    for line in kubelet_log:
        if "plugin" in line.lower() and GPU in line:
            print("  kubelet:", line[:240])


def test_cri_pulls_into_the_real_nodes_containerd(name: str) -> None:
    image = _push(name, "cri", pad_mb=16)
    with cri.CRIClient(_node_dir(name) / "containerd.sock") as client:
        version = client.version()
        assert (version.runtime_name, version.runtime_version) == ("containerd", "v2.4.2")
        assert client.image_status(image) is None
        pulled = client.pull_image(image, timeout=120)
        print(f"pulled {image} in {pulled.seconds:.2f} s")
        status = client.image_status(image)
        assert status is not None
        assert status.id == pulled.image_ref
        assert image in status.repo_tags
        assert status.size > 16 << 20
        assert status.id in {i.id for i in client.list_images()}
        again = client.pull_image(image)  # present: the runtime resolves, fetches nothing
        print(f"pulled again (present) in {again.seconds:.2f} s")
        client.remove_image(image)
        assert client.image_status(image) is None
        with pytest.raises(cri.ImageNotFound, match="nothing-here"):
            client.pull_image(f"{_registry(name)}/fulcrum/nothing-here:v1", timeout=60)
