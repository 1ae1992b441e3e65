"""Run the extender: an informer-fed cache, its rebuild gate and a binder behind uvicorn.

The one place that wires the extender's process together, and so the one that owns its
Kubernetes client: ``extender/`` is given what it needs (objects through informers, the client
configuration for its async binder) and never imports ``kubernetes``.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import uvicorn
from kubernetes import client
from prometheus_client import start_http_server

from extender.apiserver import KubeBinder
from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.decide import declared_reads
from extender.rebuild_gate import RebuildGate
from fulcrum.inspect.inspection import ClusterCollector
from fulcrum.run.kubeconfig import api_client as kubeconfig_api_client
from fulcrum.run.kubeconfig import configured
from kube.api import GROUP, RESERVATIONS, VERSION
from kube.informer import ACTIVE_PODS, Informer
from policies.registry import Registry
from rebuild.release import RELEASE_AFTER_SECONDS, Releaser
from rebuild.writes import Writes
from scheduler.attributes import NOTHING, Reads

log = logging.getLogger(__name__)

# kube-scheduler's HTTP client keeps idle connections 90 s; outlive that so it never reuses a
# connection the server is closing.
KEEP_ALIVE_SECONDS = 120


class ServeError(RuntimeError):
    """The extender cannot start; the message names the cause and the fix."""


def core_api(kubeconfig: Path | None, context: str | None = None) -> Any:
    """The CoreV1Api of ``fulcrum.run.kubeconfig``'s credentials (``--kubeconfig``, then
    ``$KUBECONFIG``, then in-cluster; ``--context``), saying where they came from."""
    api_client = kubeconfig_api_client(kubeconfig, log=log.info, connections=16, context=context)
    return client.CoreV1Api(api_client)


def has_reservations(api: Any) -> bool:
    """Whether the cluster serves Fulcrum's Reservation resource (its CRD is installed)."""
    try:
        client.CustomObjectsApi(api.api_client).list_cluster_custom_object(
            GROUP, VERSION, RESERVATIONS, limit=1
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def start_cache(
    api: Any, *, sync_timeout: float = 120, reads: Reads = NOTHING
) -> tuple[ClusterCache, RebuildGate, list[Informer]]:
    """The extender's cache and rebuild gate, fed by informers and synced.

    The gate is the Reservations' sink when their CRD is installed. ``reads``: the node
    labels, taints and pod attributes the policies read.
    """
    cache = ClusterCache(reads)
    gate = RebuildGate(cache)
    informers = [
        Informer("nodes", api.list_node, cache),
        Informer("pods", api.list_pod_for_all_namespaces, cache, field_selector=ACTIVE_PODS),
    ]
    if has_reservations(api):
        custom = client.CustomObjectsApi(api.api_client)
        list_fn = functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, RESERVATIONS)
        informers.append(Informer("reservations", list_fn, gate))
    else:
        log.warning(
            "the Reservation CRD is not installed: local rebuild is off "
            "(kubectl apply -f deploy/crds/ to turn it on)"
        )
    for informer in informers:
        cache.synced[informer.kind] = informer.synced
        informer.start()
    deadline = time.monotonic() + sync_timeout
    while not cache.ready:
        if time.monotonic() > deadline:
            raise ServeError(
                f"cache did not sync within {sync_timeout:.0f} s: is the apiserver reachable, "
                "and may this identity list and watch nodes and pods?"
            )
        time.sleep(0.1)
    return cache, gate, informers


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


def serve(
    settings: ExtenderSettings,
    kubeconfig: Path | None,
    registry: Registry,
    *,
    context: str | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    rebuild_lease: tuple[str, str] = ("kube-system", "fulcrum-rebuild"),
    release_after: float = RELEASE_AFTER_SECONDS,
) -> None:
    """Run the extender until stopped, with ``registry``'s policies (``settings`` were checked
    against it); ``metrics_port``: also serve /metrics there.

    ``rebuild_lease`` (namespace, name): the rebuild controller's Lease; while no controller
    has renewed it for ``release_after`` seconds (0: never), deleted pods are let go of
    (``rebuild.release``)."""
    if release_after < 0:
        raise ServeError(f"--release-after {release_after:g}: give seconds, or 0 for never")
    check_port_free(settings.host, settings.port)
    for plugin in registry.installed:  # load_settings refused a configuration naming one
        if plugin.problem:
            log.warning("%s; %s", plugin.problem, plugin.fix)
    cache = gate = binder = None
    if not configured(kubeconfig, context):
        log.warning(
            "no cluster (no --kubeconfig, $KUBECONFIG or in-cluster account): filter and "
            "prioritize only, on the Nodes each request carries (nodeCacheCapable: false)"
        )
    else:
        api = core_api(kubeconfig, context)
        names = [p.policy for p in settings.prioritize]
        cache, gate, _ = start_cache(api, reads=declared_reads(registry, names))
        binder = KubeBinder(api.api_client.configuration)
        if release_after > 0:
            namespace, name = rebuild_lease
            Releaser(
                Writes(api.api_client),
                namespace=namespace,
                name=name,
                after=release_after,
                on_release=gate.released,
            ).start()
            log.info(
                "deleted pods are released if no rebuild controller renews Lease %s/%s for %g s",
                namespace,
                name,
                release_after,
            )
        log.info(
            "cache synced: %d nodes, %d bound pods", len(cache.node_names()), cache.pod_count()
        )
    app = create_app(settings, cache, binder, registry, gate=gate, events=binder)
    metrics = app.state.metrics.registry
    if cache is not None:
        metrics.register(ClusterCollector(cache.snapshot_copy))
    if metrics_port is not None:  # for Prometheus, while the verbs may stay on loopback
        check_port_free(metrics_host, metrics_port)
        start_http_server(metrics_port, addr=metrics_host, registry=metrics)
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    tls = settings.tls
    log.info(
        "extender on %s://%s:%d%s; policies %s; decideInFilter %s",
        "https" if tls else "http",
        settings.host,
        settings.port,
        " (clients need a certificate of tls.clientCAFile)" if tls and tls.client_ca_file else "",
        ", ".join(f"{p.policy}:{p.weight:g}" for p in settings.prioritize),
        settings.decide_in_filter,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
        ssl_ca_certs=str(tls.client_ca_file) if tls and tls.client_ca_file else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca_file else ssl.CERT_NONE,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="warning",
        log_config=None,  # the process's logging (--log-format), not uvicorn's own
        access_log=False,
        # per-request work nobody reads: kube-scheduler calls us directly, not via a proxy
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
