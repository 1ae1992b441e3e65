"""The extender failing, hanging or restarting never makes scheduling wrong, only slower.

kube-scheduler (the real one) calls a port where a fault server answers 500, garbage or nothing
in time; then the real extender takes the port over and every pod schedules.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity

from fulcrum.harness import cluster, processes
from fulcrum.lab.workload import PodShape, create_pods, ensure_namespace, pod_manifest, wait_bound

pytestmark = pytest.mark.integration


class FaultServer:
    """Answers every extender verb badly, in the current ``mode``."""

    def __init__(self, port: int) -> None:
        self.mode = "500"
        self.calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.calls += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if server.mode == "hang":
                    time.sleep(3)  # past the registration's 1 s httpTimeout
                    return
                body = b"<html>not json" if server.mode == "garbage" else b"boom"
                self.send_response(200 if server.mode == "garbage" else 500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def pending_with_events(api: Any, namespace: str) -> tuple[list[str], list[str]]:
    pods = api.list_namespaced_pod(namespace).items
    half_bound = [p.metadata.name for p in pods if p.spec.node_name]
    events = api.list_namespaced_event(namespace, field_selector="reason=FailedScheduling").items
    return half_bound, [e.message for e in events]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def strict_cluster() -> Iterator[tuple[str, int]]:
    """A cluster whose fulcrum-scheduler calls a not-yet-started extender, ignorable: false."""
    name = f"it-faults-{os.getpid()}"
    port = cluster.free_port()
    registration = cluster.ExtenderRegistration(port=port, ignorable=False, http_timeout="1s")
    cluster.up(name, nodes=10, extender=False, registration=registration, log=print)
    try:
        yield name, port
    finally:
        cluster.down(name, log=print)


@pytest.mark.parametrize("mode", ["500", "garbage", "hang"])
def test_a_failing_extender_leaves_pods_pending_then_they_schedule(
    strict_cluster: tuple[str, int], mode: str
) -> None:
    name, port = strict_cluster
    api = cluster.core_api(name)
    namespace = f"faults-{mode}"
    ensure_namespace(api, namespace)
    faults = FaultServer(port)
    faults.mode = mode
    try:
        create_pods(api, namespace, 5)
        # kube-scheduler v1.34 names the extender's URL, except for an undecodable reply,
        # where it reports only the JSON decoder's error
        needle = "invalid character" if mode == "garbage" else f"127.0.0.1:{port}"
        wait_for(
            lambda: any(needle in m for m in pending_with_events(api, namespace)[1]),
            60,
            f"a FailedScheduling event saying {needle!r}",
        )
        half_bound, _ = pending_with_events(api, namespace)
        assert half_bound == []
        assert faults.calls > 0

        # the cluster's own pods use default-scheduler and do not wait for Fulcrum
        ensure_namespace(api, f"{namespace}-system")
        api.create_namespaced_pod(
            f"{namespace}-system",
            pod_manifest("system", PodShape("100m", "64Mi"), scheduler="default-scheduler"),
        )
        wait_bound(api, f"{namespace}-system", 1, timeout=60)
    finally:
        faults.close()

    pid = cluster.start_extender(name, port)
    try:
        assert len(wait_bound(api, namespace, 5, timeout=120)) == 5
    finally:
        processes.stop_process(pid)


def test_an_ignorable_extender_that_fails_is_skipped() -> None:
    name = f"it-ignorable-{os.getpid()}"
    port = cluster.free_port()
    registration = cluster.ExtenderRegistration(port=port, ignorable=True, http_timeout="1s")
    cluster.up(name, nodes=3, extender=False, registration=registration, log=print)
    faults = FaultServer(port)
    try:
        api = cluster.core_api(name)
        ensure_namespace(api, "ignorable")
        create_pods(api, "ignorable", 5)
        assert len(wait_bound(api, "ignorable", 5, timeout=60)) == 5
        assert faults.calls > 0
    finally:
        faults.close()
        cluster.down(name, log=print)


def test_an_extender_killed_mid_run_loses_and_double_binds_nothing(
    strict_cluster: tuple[str, int],
) -> None:
    name, port = strict_cluster
    api = cluster.core_api(name)
    ensure_namespace(api, "restart")
    pid = cluster.start_extender(name, port)
    shapes = [PodShape("500m", "1Gi"), PodShape("1500m", "2Gi")]
    creator = threading.Thread(target=create_pods, args=(api, "restart", 120, shapes))
    creator.start()
    wait_for(
        lambda: sum(1 for p in api.list_namespaced_pod("restart").items if p.spec.node_name) >= 20,
        60,
        "the first bindings",
    )
    os.kill(pid, signal.SIGKILL)
    time.sleep(2)
    pid = cluster.start_extender(name, port)
    try:
        creator.join()
        placement = wait_bound(api, "restart", 120, timeout=180)
    finally:
        processes.stop_process(pid)

    assert len(placement) == 120
    scheduled = api.list_namespaced_event("restart", field_selector="reason=Scheduled").items
    per_pod: dict[str, int] = {}
    for event in scheduled:
        per_pod[event.involved_object.name] = per_pod.get(event.involved_object.name, 0) + 1
    # A pod whose bind reply died with the extender gets no Scheduled event, never two.
    assert set(per_pod) <= set(placement) and set(per_pod.values()) == {1}
    cpu: dict[str, float] = {}
    for pod in api.list_pod_for_all_namespaces().items:
        if pod.spec.node_name:
            request = (pod.spec.containers[0].resources.requests or {}).get("cpu", "0")
            cpu[pod.spec.node_name] = cpu.get(pod.spec.node_name, 0) + float(
                parse_quantity(request)
            )
    assert max(cpu.values()) <= 32, cpu  # nodes have 32 cpu: nothing overcommitted
