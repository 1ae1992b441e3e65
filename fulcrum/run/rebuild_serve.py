"""Run the rebuild controller: Lease leader election, then the controller, plus health endpoints.

The process's wiring, kept out of ``rebuild/``: it loads the kubeconfig, makes the one
``ApiClient`` the controller is given, and campaigns for the Lease. Every replica serves
``/healthz`` and ``/metrics``; ``/readyz`` answers 200 once this replica leads and its informers
have synced. A replica that loses its lease exits at once (its work queue may hold decisions
made as leader), to be restarted as a follower, as client-go's controllers do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from fulcrum.run.kubeconfig import CredentialsError
from fulcrum.run.kubeconfig import api_client as kubeconfig_api_client
from kube.api import DEFAULT_PREPULL_WAIT_SECONDS, SCHEDULER_NAME
from rebuild import release
from rebuild.controller import WORKERS, Controller
from rebuild.errors import ApiError
from rebuild.store import Store
from rebuild.sweep import NOT_READY_SECONDS
from rebuild.writes import Writes

log = logging.getLogger(__name__)
logging.getLogger("leaderelection").setLevel(logging.WARNING)  # it logs every renewal at INFO

LEASE_NAME = "fulcrum-rebuild"


class RebuildError(RuntimeError):
    """The controller cannot start; the message names the cause and the fix."""


HEALTH_TIMEOUT_SECONDS = 5  # a client that sends nothing holds the health server this long


def health_server(
    host: str, port: int, ready: threading.Event, registry: CollectorRegistry
) -> HTTPServer:
    """/healthz, /readyz and /metrics on one thread: requests are answered one at a time (each
    is tiny), so no number of connections starts a thread, and a client that stalls is dropped
    after ``HEALTH_TIMEOUT_SECONDS``."""

    class Handler(BaseHTTPRequestHandler):
        timeout = HEALTH_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            ok = self.path in ("/healthz", "/metrics") or (
                self.path == "/readyz" and ready.is_set()
            )
            body = b"ok" if ok else b"not leading, or caches not synced"
            kind = "text/plain"
            if self.path == "/metrics":
                body, kind = generate_latest(registry), CONTENT_TYPE_LATEST
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        server = HTTPServer((host, port), Handler)
    except OSError as exc:
        raise RebuildError(f"--health-port {port}: {exc.strerror}; pass another port") from exc
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def release_all(
    kubeconfig: Path | None,
    *,
    context: str | None = None,
    lease_namespace: str = "kube-system",
    lease_name: str = LEASE_NAME,
    lease_seconds: int = 15,
) -> int:
    """``fulcrum rebuild --release-all``: take the controllers' Lease (so none runs), then no
    pod keeps ``fulcrum.io/rebuild``; how many had it."""
    try:
        api_client = kubeconfig_api_client(kubeconfig, log=log.info, context=context)
    except CredentialsError as exc:
        raise RebuildError(str(exc)) from exc
    try:
        return release.release_all(
            Writes(api_client), lease=(lease_namespace, lease_name, lease_seconds)
        )
    except ApiError as exc:
        raise RebuildError(
            f"releasing pods: {exc}; this identity needs list and patch on pods, and create "
            "on events, get and update on its Lease (the rebuild controller's roles have them)"
        ) from exc


def run(
    kubeconfig: Path | None,
    *,
    context: str | None = None,
    health_port: int,
    health_host: str = "127.0.0.1",
    lease_namespace: str = "kube-system",
    lease_name: str = LEASE_NAME,
    scheduler_name: str = SCHEDULER_NAME,
    identity: str | None = None,
    lease_seconds: int = 15,
    not_ready_seconds: float = NOT_READY_SECONDS,
    prepull_wait: float = DEFAULT_PREPULL_WAIT_SECONDS,
) -> None:
    """Block forever: campaign for the Lease, and run the controller while leading."""
    try:
        api_client = kubeconfig_api_client(
            kubeconfig,
            log=log.info,
            connections=WORKERS + len(Store.KINDS) + 2,
            context=context,
        )
    except CredentialsError as exc:
        raise RebuildError(str(exc)) from exc
    client.Configuration.set_default(api_client.configuration)  # the Lease lock's client
    ready = threading.Event()
    if not_ready_seconds <= 0:
        raise RebuildError(
            f"--node-not-ready-seconds {not_ready_seconds:g}: give a positive number of seconds"
        )
    if prepull_wait < 0:
        raise RebuildError(f"--prepull-wait {prepull_wait:g}: give 0 or more seconds")
    controller = Controller(
        api_client,
        scheduler_name=scheduler_name,
        not_ready_seconds=not_ready_seconds,
        prepull_wait=prepull_wait,
    )
    health_server(health_host, health_port, ready, controller.metrics.registry)
    log.info("health and metrics on http://%s:%d", health_host, health_port)
    if identity:
        controller.identity = identity
    else:
        controller.identity = f"{socket.gethostname()}-{os.getpid()}"

    def lead() -> None:
        log.info("%s leads; starting", controller.identity)
        controller.start()
        ready.set()

    def lost() -> None:
        log.error("%s lost the %s lease; exiting", controller.identity, lease_name)
        os._exit(1)

    def terminated(signum: int, frame: object) -> None:
        # as a container's PID 1 the process gets no default action for SIGTERM: without this
        # it sat out its whole grace period on every rollout and `helm uninstall`. Every write
        # is idempotent and the next leader resumes (the Lease expires), so just go.
        log.info("%s: SIGTERM; exiting", controller.identity)
        os._exit(0)

    signal.signal(signal.SIGTERM, terminated)
    lock = LeaseLock(lease_name, lease_namespace, controller.identity)
    renew = max(2, lease_seconds * 2 // 3)
    election = electionconfig.Config(
        lock,
        lease_duration=lease_seconds,
        renew_deadline=renew,
        retry_period=max(1, renew // 3),
        onstarted_leading=lead,
        onstopped_leading=lost,
    )
    leaderelection.LeaderElection(election).run()
    lost()
