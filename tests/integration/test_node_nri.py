"""node.nri against the real runtime: containerd 2.4.2 of a real node calls our plugin.

One cluster for the module (no kwok node, one real node). The plugin connects to the node's
``nri.sock`` from a thread of the test; it adds ``FULCRUM_NRI_TEST=<pod name>`` to every
container and refuses the containers of pods annotated ``nri-test/refuse: "yes"``. The last
test measures what a round trip through the plugin adds to a container's creation.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from test_real_nodes import _require_host

from fulcrum.harness import binaries as binaries_module
from fulcrum.harness import cluster, processes, realnodes
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from node import nri
from node.plugin import Adjustment, Refuse

pytestmark = pytest.mark.integration

NS = "it-nri"
REFUSE = "nri-test/refuse"
BIG = "nri-test/big"  # a 20 kB adjustment: the reply takes mux frames of 4096 bytes and more
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
            big = {BIG: "x" * 20000} if view.annotations.get(BIG) == "yes" else {}
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
    _require_host()
    name = f"it-nri-{os.getpid()}"
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


def test_the_plugin_adjusts_env_and_sees_the_pod(
    node: tuple[rr.Kit, Path, str], plugin: PluginThread
) -> None:
    kit, _, image = node
    assert plugin.connection.runtime.startswith("containerd")
    rr.apply(kit, [_pod("env-pod", image, {"fulcrum.io/gpu-milli": "250", BIG: "yes"})])
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
    assert view.annotations.get("fulcrum.io/gpu-milli") == "250"
    assert view.gpu_milli == 250
    assert not any(k.startswith("io.kubernetes.cri.") for k in view.annotations)
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
    """Pod created -> container running, with and without the plugin, alternated; and the
    plugin-side time of each CreateContainer. Numbers are printed for the record."""
    kit, _, image = node
    rounds = int(os.environ.get("NRI_LATENCY_ROUNDS", "4"))
    timings: dict[bool, list[float]] = {True: [], False: []}
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
