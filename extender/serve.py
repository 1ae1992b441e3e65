"""Run the extender: an informer-fed cache and a binder (given a kubeconfig) behind uvicorn.

This module owns the extender process's Kubernetes client.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvicorn
from kubernetes import client, config

from extender.app import create_app
from extender.bind import BindConflict, PodGone
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from kube import api as rebuild
from kube import ippool
from kube.informer import Informer

log = logging.getLogger(__name__)

# kube-scheduler's HTTP client keeps idle connections 90 s; outlive that so it never reuses a
# connection the server is closing.
KEEP_ALIVE_SECONDS = 120
# Our side of it: idle apiserver connections are closed before kube-apiserver's own 90 s idle
# timeout would, so a bind never goes out on a connection the apiserver is closing.
APISERVER_KEEP_ALIVE_SECONDS = 60
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
BIND_CONNECTIONS = 64


class ServeError(RuntimeError):
    """The extender cannot start; the message names the cause and the fix."""


class KubeBinder:
    """``pods/binding`` over an async HTTP client that shares the kubeconfig's credentials.

    Async, so binds never hold the event loop (nor the GIL, in a thread) while filter and
    prioritize wait. aiohttp, whose C parser costs ~0.1 ms of CPU per request where httpx cost
    ~2 ms (measured side by side, TLS, keep-alive): at a few hundred binds a second that was
    most of the extender's event loop. Implements ``extender.bind.Binder``.
    """

    def __init__(self, api: Any) -> None:
        cfg = api.api_client.configuration
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if not cfg.verify_ssl:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        self._context = context
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        # a service-account kubeconfig (tokenFile) stores the token as "BearerToken"
        token = cfg.get_api_key_with_prefix("BearerToken") or (cfg.api_key or {}).get(
            "authorization"
        )
        if token:
            self._headers["Authorization"] = token
        self._base = cfg.host.rstrip("/")  # may carry a path (an apiserver behind a proxy)
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[str, dict[str, Any]] = {}  # IPPool path -> as our last write left it

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the server's event loop
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                # kube-scheduler binds many pods at once, and each HTTP/1.1 connection carries
                # one request at a time; kept alive, as each new one costs a TLS handshake
                # (past aiohttp's 15 s default, so a burst after a short quiet spell does not
                # pay for up to BIND_CONNECTIONS handshakes again)
                connector=aiohttp.TCPConnector(
                    ssl=self._context,
                    limit=BIND_CONNECTIONS,
                    keepalive_timeout=APISERVER_KEEP_ALIVE_SECONDS,
                ),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body or None) of one apiserver request."""
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self._base + path, data=data) as reply:
            raw = await reply.read()
            try:
                return reply.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return reply.status, {"message": raw.decode(errors="replace")[:200]}

    @staticmethod
    def _raise_for(status: int, reply: Any) -> None:
        if status == 404:
            raise PodGone
        if status == 409:
            raise BindConflict
        if status >= 300:
            message = reply.get("message", "") if isinstance(reply, dict) else ""
            raise RuntimeError(f"apiserver answered {status}: {message}")

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        metadata: dict[str, object] = {"name": name, "namespace": namespace, "uid": uid}
        if annotations:
            metadata["annotations"] = annotations
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/binding"
        self._raise_for(*await self._call("POST", path, body))

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        status, pod = await self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        self._raise_for(status, pod)
        return str(pod["metadata"]["uid"]), str(pod["spec"].get("nodeName") or "")

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        path = f"/apis/{rebuild.API_VERSION}/namespaces/{namespace}/{rebuild.IPPOOLS}/{pool}"
        for _ in range(8):  # compare-and-swap: the PUT carries the resourceVersion we read
            current = self._pools.pop(path, None)  # what our last write left, if anything
            if current is None:
                status, current = await self._call("GET", path)
                if status == 404:
                    raise ValueError(
                        f"annotation {rebuild.IP_POOL}={pool!r}: no IPPool {pool!r} in "
                        f"namespace {namespace!r}; create it or fix the annotation"
                    )
                self._raise_for(status, current)
            if not ippool.selects(current, pod):
                raise ValueError(
                    f"IPPool {namespace}/{pool} does not select this pod (spec.selector); "
                    "fix the pod's labels or its fulcrum.io/ip-pool annotation"
                )
            changed, ip = ippool.allocate(current, holder, want=want)  # PoolError: ValueError
            if changed == current:
                self._pools[path] = current
                return ip
            status, written = await self._call("PUT", path, changed)
            if status != 409:  # on 409 (someone else wrote) read it again
                self._raise_for(status, written)
                self._pools[path] = written
                return ip
        raise RuntimeError(f"IPPool {namespace}/{pool}: too many concurrent updates; retrying")


def core_api(kubeconfig: Path) -> Any:
    if not kubeconfig.is_file():
        raise ServeError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
    except config.ConfigException as exc:
        raise ServeError(f"--kubeconfig {kubeconfig}: {exc}") from exc
    api_client.configuration.connection_pool_maxsize = 16
    return client.CoreV1Api(api_client)


def has_reservations(api: Any) -> bool:
    """Whether the cluster serves Fulcrum's Reservation resource (its CRD is installed)."""
    try:
        client.CustomObjectsApi(api.api_client).list_cluster_custom_object(
            rebuild.GROUP, rebuild.VERSION, rebuild.RESERVATIONS, limit=1
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def start_cache(api: Any, *, sync_timeout: float = 120) -> tuple[ClusterCache, list[Informer]]:
    cache = ClusterCache()
    informers = [
        Informer("nodes", api.list_node, cache),
        Informer("pods", api.list_pod_for_all_namespaces, cache, field_selector=ACTIVE_PODS),
    ]
    if has_reservations(api):
        custom = client.CustomObjectsApi(api.api_client)
        list_fn = functools.partial(
            custom.list_cluster_custom_object, rebuild.GROUP, rebuild.VERSION, rebuild.RESERVATIONS
        )
        informers.append(Informer("reservations", list_fn, cache))
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
    cache = binder = None
    if kubeconfig is not None:
        api = core_api(kubeconfig)
        cache, _ = start_cache(api)
        binder = KubeBinder(api)
        log.info(
            "cache synced: %d nodes, %d bound pods", len(cache.node_names()), cache.pod_count()
        )
    tls = settings.tls
    uvicorn.run(
        create_app(settings, cache, binder),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="warning",
        access_log=False,
        # per-request work nobody reads: kube-scheduler calls us directly, not via a proxy
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
