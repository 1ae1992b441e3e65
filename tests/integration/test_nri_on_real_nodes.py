"""node.nri against the real runtime: containerd 2.4.2 of a real node calls our plugin.

One cluster for the module (no kwok node, one real node). The plugin connects to the node's
``nri.sock`` from a thread of the test; it adds ``FULCRUM_NRI_TEST=<pod name>`` to every
container and refuses the containers of pods annotated ``nri-test/refuse: "yes"``. The last
test measures what a round trip through the plugin adds to a container's creation.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import binaries as binaries_module
from fulcrum.harness import cluster, processes, realnodes
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from node import nri
from node.plugin import Adjustment, Refuse
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

NS = "it-nri"
REFUSE = "nri-test/refuse"
BIG = "nri-test/big"  # a 20 kB adjustment: the reply takes mux frames of 4096 bytes and more
BIG_SIZE = 20000
EVENTS = {"CreateContainer", "PostStartContainer", "RemovePodSandbox"}


class Handler:
    def __init__(self) -> None:
        self.seen: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.events: list[tuple[str, str]] = []
        self.handler_seconds: list[float] = []

    async def create_container(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> Adjustment | None:
        started = time.perf_counter()
        view = nri.pod_view(pod)
        self.seen[view.name] = (dict(pod), dict(container))
        try:
            if view.annotations.get(REFUSE) == "yes":
                raise Refuse(f"refused by test: pod {view.key} carries {REFUSE}")
            big = {BIG: "x" * BIG_SIZE} if view.annotations.get(BIG) == "yes" else {}
            return Adjustment(env={"FULCRUM_NRI_TEST": view.name}, annotations=big)
        finally:
            self.handler_seconds.append(time.perf_counter() - started)

    async def event(
        self, event: str, pod: Mapping[str, Any], container: Mapping[str, Any] | None
    ) -> None:
        self.events.append((event, pod.get("name", "")))


class Timed(nri.NRIConnection):
    """Records each CreateContainer's time in the plugin: request decoded to reply encoded."""

    round_trips: list[float]

    async def _create_container(self, payload: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return await super()._create_container(payload)
        finally:
            self.round_trips.append(time.perf_counter() - started)


class PluginThread:
    """The plugin on its own event loop in a thread, started and stopped by the test."""

    def __init__(self, socket: Path, handler: Handler) -> None:
        self.connection = Timed(socket, "fulcrum-test", "50", handler, EVENTS)
        self.connection.round_trips = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: Future[None] | None = None

    def start(self, timeout: float = 20) -> None:
        if self.running is not None:
            return
        self.running = asyncio.run_coroutine_threadsafe(self.connection.run(), self.loop)
        ready = asyncio.run_coroutine_threadsafe(self.connection.ready.wait(), self.loop)
        ready.result(timeout)

    def stop(self) -> None:
        if self.running is not None:
            self.running.cancel()
            self.running = None
            time.sleep(0.2)  # the runtime notices the closed socket and drops the plugin

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[rr.Kit, Path, str]]:
    require_real_nodes()
    name = f"it-nri-{os.getpid()}"
    with pytest.MonkeyPatch.context() as patch:
        # No fulcrum node agent on the node: this test's plugin is the only one on its NRI.
        patch.setattr(realnodes.nodeagent, "start", lambda *_, **__: 0)
        cluster.up(name, nodes=0, real_nodes=1, log=print)
    try:
        kit = rr.Kit.of(name)
        kit.kubectl("create", "namespace", NS)
        state = cluster.load_state(name)
        refs = rb.push_app_images(f"127.0.0.1:{state.registry_port}", ("v1",), say=print)
        yield kit, cluster.state_dir(name) / "real" / "real-1", refs["v1"]
    finally:
        cluster.down(name, log=print)


@pytest.fixture(scope="module")
def plugin(node: tuple[rr.Kit, Path, str]) -> Iterator[PluginThread]:
    started = PluginThread(node[1] / "nri.sock", Handler())
    started.start()
    try:
        yield started
    finally:
        started.close()


def _pod(name: str, image: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "nri-test"},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "nodeSelector": {realnodes.NODE_LABEL: realnodes.NODE_VALUE},
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": ["sh", "-c", "echo $FULCRUM_NRI_TEST; sleep 3600"],
                }
            ],
        },
    }


def _status(kit: rr.Kit, name: str) -> dict[str, Any]:
    pod = kit.core.read_namespaced_pod(name, NS)
    return pod.to_dict()  # type: ignore[no-any-return]


def _running(kit: rr.Kit, name: str) -> bool:
    statuses = _status(kit, name)["status"].get("container_statuses") or []
    return bool(statuses) and bool(statuses[0]["state"].get("running"))


def _wait(what: str, check: Any, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def _stamp(line: str) -> datetime:
    """containerd's ``time="2026-12-07T08:51:00.123456789Z"``, to the microsecond."""
    raw = re.search(r'time="([^"]+)"', line)
    assert raw, line
    whole, _, frac = raw.group(1).rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}")


def _cri_seconds(log: Path, pod: str) -> tuple[float, float] | None:
    """From containerd's log: how long its CRI CreateContainer took for the pod's container
    (the NRI round trip included), and RunPodSandbox's start to StartContainer's return (the
    pod's start inside the runtime, without the kubelet's 1 s status relist); None when the
    lines are not there."""
    lines = log.read_text(errors="replace").splitlines()
    runs = [ln for ln in lines if f'RunPodSandbox for name:\\"{pod}\\"' in ln]
    found = [re.search(r'returns sandbox id \\"(\w+)\\"', ln) for ln in runs]
    sandbox = next((m.group(1) for m in found if m), None)
    if sandbox is None:
        return None
    creates = [ln for ln in lines if f'CreateContainer within sandbox \\"{sandbox}\\"' in ln]
    created = [re.search(r'returns container id \\"(\w+)\\"', ln) for ln in creates]
    container = next((m.group(1) for m in created if m), None)
    started = [
        ln
        for ln in lines
        if container and f'StartContainer for \\"{container}\\" returns successfully' in ln
    ]
    if container is None or not started:
        return None
    create_end = next(ln for ln in creates if "returns container id" in ln)
    return (
        (_stamp(create_end) - _stamp(creates[0])).total_seconds(),
        (_stamp(started[0]) - _stamp(runs[0])).total_seconds(),
    )


def test_the_plugin_adjusts_env_and_sees_the_pod(
    node: tuple[rr.Kit, Path, str], plugin: PluginThread
) -> None:
    kit, _, image = node
    assert plugin.connection.runtime.startswith("containerd")
    rr.apply(kit, [_pod("env-pod", image, {"nri-test/note": "kept", BIG: "yes"})])
    _wait("env-pod running", lambda: _running(kit, "env-pod"), 120)
    _wait("env-pod's log", lambda: kit.kubectl("logs", "-n", NS, "env-pod").strip(), 30)
    assert kit.kubectl("logs", "-n", NS, "env-pod").strip() == "env-pod"
    exec_env = kit.kubectl("exec", "-n", NS, "env-pod", "--", "sh", "-c", "echo $FULCRUM_NRI_TEST")
    assert exec_env.strip() == "env-pod"
    assert plugin.connection.connections == 1  # the big reply did not break the connection

    raw_pod, raw_container = plugin.connection.handler.seen["env-pod"]  # type: ignore[attr-defined]
    print("NRI PodSandbox:", raw_pod)
    print("NRI Container:", {k: v for k, v in raw_container.items() if k != "env"})
    view = nri.pod_view(raw_pod)
    uid = _status(kit, "env-pod")["metadata"]["uid"]
    assert (view.namespace, view.name, view.uid) == (NS, "env-pod", uid)
    assert view.labels == {"app": "nri-test"}
    assert view.annotations.get("nri-test/note") == "kept"
    api_annotations = _status(kit, "env-pod")["metadata"]["annotations"]
    assert view.annotations == api_annotations  # the pod's own, nothing the node added
    container = nri.container_view(raw_container)
    assert container.name == "main"
    assert container.image.endswith(image.split("/", 1)[1])
    assert container.env.get("PATH")
    _wait(
        "PostStartContainer",
        lambda: ("PostStartContainer", "env-pod") in plugin.connection.handler.events,  # type: ignore[attr-defined]
        10,
    )
    kit.kubectl("delete", "pod", "-n", NS, "env-pod", "--wait=true")
    _wait(
        "RemovePodSandbox",
        lambda: ("RemovePodSandbox", "env-pod") in plugin.connection.handler.events,  # type: ignore[attr-defined]
        60,
    )


def test_a_refused_container_fails_with_our_message(
    node: tuple[rr.Kit, Path, str], plugin: PluginThread
) -> None:
    kit, _, image = node
    rr.apply(kit, [_pod("refused-pod", image, {REFUSE: "yes"})])

    def waiting() -> dict[str, Any] | None:
        statuses = _status(kit, "refused-pod")["status"].get("container_statuses") or []
        state = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and state.get("message") else None

    _wait("refused-pod's waiting reason", lambda: waiting() is not None, 120, 0.5)
    state = waiting()
    assert state is not None
    print("waiting:", state)
    assert state["reason"] == "CreateContainerError"
    assert "refused by test: pod it-nri/refused-pod carries nri-test/refuse" in state["message"]
    events = kit.core.list_namespaced_event(NS, field_selector="involvedObject.name=refused-pod")
    failed = [e.message for e in events.items if e.reason == "Failed"]
    print("events:", failed)
    assert any("refused by test" in m for m in failed)
    assert not _running(kit, "refused-pod")
    kit.kubectl("delete", "pod", "-n", NS, "refused-pod", "--wait=true")


def test_latency_of_a_round_trip_through_the_plugin(
    node: tuple[rr.Kit, Path, str], plugin: PluginThread
) -> None:
    """Pod created -> container running, with and without the plugin, alternated; containerd's
    own times from its log; and the plugin-side time of each CreateContainer. Numbers are
    printed for the record. The API's view (created -> running) moves in steps of the kubelet's
    1 s relist, so containerd's log is the finer measure."""
    kit, directory, image = node
    rounds = int(os.environ.get("NRI_LATENCY_ROUNDS", "4"))
    timings: dict[bool, list[float]] = {True: [], False: []}
    cri: dict[bool, list[float]] = {True: [], False: []}
    runtime_start: dict[bool, list[float]] = {True: [], False: []}
    for index in range(rounds * 2):
        connected = index % 2 == 0
        if connected:
            plugin.start()
        else:
            plugin.stop()
        name = f"lat-{index}"
        started = time.monotonic()
        rr.apply(kit, [_pod(name, image)])
        _wait(f"{name} running", lambda n=name: _running(kit, n), 120)  # type: ignore[misc]
        timings[connected].append(time.monotonic() - started)
        seconds = _cri_seconds(directory / "containerd.log", name)
        if seconds is not None:
            cri[connected].append(seconds[0])
            runtime_start[connected].append(seconds[1])
        kit.kubectl("delete", "pod", "-n", NS, name, "--wait=true")
    plugin.start()
    trips = plugin.connection.round_trips
    handler = plugin.connection.handler.handler_seconds  # type: ignore[attr-defined]
    ms = [t * 1000 for t in trips]
    print(
        f"plugin-side CreateContainer (n={len(ms)}): median {statistics.median(ms):.2f} ms, "
        f"max {max(ms):.2f} ms; handler median {statistics.median(handler) * 1000:.3f} ms"
    )
    for connected, values in timings.items():
        print(
            f"pod create -> running {'with' if connected else 'without'} plugin: "
            + ", ".join(f"{v:.2f}" for v in values)
            + f" s (median {statistics.median(values):.2f})"
        )
    for what, measured in (("CreateContainer", cri), ("RunPodSandbox->started", runtime_start)):
        for connected, values in measured.items():
            print(
                f"containerd {what} {'with' if connected else 'without'} plugin: "
                + ", ".join(f"{v * 1000:.1f}" for v in values)
                + (f" ms (median {statistics.median(values) * 1000:.1f})" if values else " -")
            )
    assert all(t < 0.5 for t in trips)


def test_the_plugin_reconnects_after_containerd_restarts(
    node: tuple[rr.Kit, Path, str], plugin: PluginThread
) -> None:
    """containerd stopped and started again (its shims and containers live on): the plugin
    registers again by itself and adjusts the next container."""
    kit, directory, image = node
    before = plugin.connection.connections
    (pid,) = processes.processes_under(directory / "containerd.toml")
    processes.terminate([pid])
    _wait("the plugin to notice", lambda: not plugin.connection.ready.is_set(), 10)
    binaries = binaries_module.ensure_binaries(print, components=binaries_module.NODE_COMPONENTS)
    restarted = time.monotonic()
    realnodes._start_containerd(directory, binaries)
    _wait("the plugin to register again", lambda: plugin.connection.ready.is_set(), 30)
    print(f"re-registered {time.monotonic() - restarted:.2f} s after containerd restarted")
    assert plugin.connection.connections == before + 1
    rr.apply(kit, [_pod("after-restart", image)])
    _wait("after-restart running", lambda: _running(kit, "after-restart"), 120)
    _wait("its log", lambda: kit.kubectl("logs", "-n", NS, "after-restart").strip(), 30)
    assert kit.kubectl("logs", "-n", NS, "after-restart").strip() == "after-restart"
    kit.kubectl("delete", "pod", "-n", NS, "after-restart", "--wait=true")
