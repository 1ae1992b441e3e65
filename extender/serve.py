"""Run the extender: an informer-fed cache (when given a kubeconfig) behind uvicorn.

This module owns the extender process's Kubernetes client.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from pathlib import Path

import uvicorn
from kubernetes import client, config

from extender.app import ExtenderSettings, create_app
from extender.cache import ClusterCache, Informer

log = logging.getLogger(__name__)

# kube-scheduler's HTTP client keeps idle connections 90 s; outlive that so it never reuses a
# connection the server is closing.
KEEP_ALIVE_SECONDS = 120
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


class ServeError(RuntimeError):
    """The extender cannot start; the message names the cause and the fix."""


def start_cache(
    kubeconfig: Path, *, sync_timeout: float = 120
) -> tuple[ClusterCache, list[Informer]]:
    if not kubeconfig.is_file():
        raise ServeError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    except config.ConfigException as exc:
        raise ServeError(f"--kubeconfig {kubeconfig}: {exc}") from exc
    cache = ClusterCache()
    informers = [
        Informer("nodes", api.list_node, cache),
        Informer("pods", api.list_pod_for_all_namespaces, cache, field_selector=ACTIVE_PODS),
    ]
    for informer in informers:
        informer.start()
    deadline = time.monotonic() + sync_timeout
    while not cache.ready:
        if time.monotonic() > deadline:
            raise ServeError(
                f"cache did not sync within {sync_timeout:.0f} s: is the apiserver in "
                f"{kubeconfig} reachable, and may this identity list nodes and pods?"
            )
        time.sleep(0.1)
    return cache, informers


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use: stop what listens there "
                    f"(`ss -ltnp 'sport = :{port}'`) or pass another --port"
                ) from exc
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def serve(settings: ExtenderSettings, kubeconfig: Path | None) -> None:
    check_port_free(settings.host, settings.port)
    cache = None
    if kubeconfig is not None:
        cache, _ = start_cache(kubeconfig)
        log.info(
            "cache synced: %d nodes, %d bound pods", len(cache.node_names()), cache.pod_count()
        )
    app = create_app(settings, cache)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="warning",
        access_log=False,
    )
