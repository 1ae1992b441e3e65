"""The extender's apiserver client: ``pods/binding``, IPPool allocation, Events and nominations
(``pods/status``), over aiohttp. Every namespace and name is checked (``kube.names``) before
it goes into a URL path.

Given the client configuration the wiring (``fulcrum.run.serve``) loaded from the kubeconfig,
so this module never imports the ``kubernetes`` package.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from extender.bind import BindConflict, PodGone
from kube import api, ippool
from kube.names import check_object

# Idle apiserver connections are closed before kube-apiserver's own 90 s idle timeout would, so
# a bind never goes out on a connection the apiserver is closing.
APISERVER_KEEP_ALIVE_SECONDS = 60
BIND_CONNECTIONS = 64
EVENT_COMPONENT = "fulcrum-extender"


class ClientConfiguration(Protocol):
    """What the binder reads of a ``kubernetes.client.Configuration``."""

    host: str
    ssl_ca_cert: str | None
    verify_ssl: bool
    cert_file: str | None
    key_file: str | None
    api_key: dict[str, str] | None

    def get_api_key_with_prefix(self, identifier: str, alias: str | None = None) -> str | None: ...


class KubeBinder:
    """``pods/binding`` over an async HTTP client that shares the kubeconfig's credentials.

    Async, so binds never hold the event loop (nor the GIL, in a thread) while filter and
    prioritize wait. aiohttp, whose C parser costs ~0.1 ms of CPU per request where httpx cost
    ~2 ms (measured side by side, TLS, keep-alive): at a few hundred binds a second that was
    most of the extender's event loop. Implements ``extender.bind.Binder``.

    ``cfg``: the kubeconfig as the wiring loaded it (a ``kubernetes.client.Configuration``).
    """

    def __init__(self, cfg: ClientConfiguration) -> None:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if not cfg.verify_ssl:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        self._context = context
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        self._cfg = cfg
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

    def authorization(self) -> dict[str, str]:
        """The bearer token header, as the configuration has it now: its refresh hook re-reads
        a rotated service-account token (``fulcrum.run.kubeconfig``). A kubeconfig's token is
        stored as "BearerToken", the in-cluster one as "authorization"."""
        token = self._cfg.get_api_key_with_prefix(
            "BearerToken"
        ) or self._cfg.get_api_key_with_prefix("authorization")
        return {"Authorization": token} if token else {}

    async def _call(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None) of one apiserver request."""
        data = None if body is None else orjson.dumps(body)
        headers = {**self.authorization(), **(headers or {})}
        async with self.session.request(
            method, self._base + path, data=data, headers=headers
        ) as reply:
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
        check_object(namespace, name)
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

    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """A Warning Event on the pod, from component fulcrum-extender."""
        check_object(namespace, name)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": name,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": EVENT_COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        status, reply = await self._call("POST", f"/api/v1/namespaces/{namespace}/events", body)
        if status >= 300:
            message = reply.get("message", "") if isinstance(reply, dict) else ""
            raise RuntimeError(f"apiserver answered {status}: {message}")

    async def nominate(self, namespace: str, name: str, uid: str, node: str) -> None:
        """``status.nominatedNodeName``, as kube-scheduler's preemption sets it; the uid in the
        patch makes the apiserver refuse it for a newer pod of the same name."""
        check_object(namespace, name)
        body = {"metadata": {"uid": uid}, "status": {"nominatedNodeName": node}}
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"
        headers = {"Content-Type": "application/merge-patch+json"}
        self._raise_for(*await self._call("PATCH", path, body, headers))

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        check_object(namespace, name)
        status, pod = await self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        self._raise_for(status, pod)
        return str(pod["metadata"]["uid"]), str(pod["spec"].get("nodeName") or "")

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        check_object(namespace, pool, kind="IPPool")
        path = f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.IPPOOLS}/{pool}"
        for _ in range(8):  # compare-and-swap: the PUT carries the resourceVersion we read
            current = self._pools.pop(path, None)  # what our last write left, if anything
            if current is None:
                status, current = await self._call("GET", path)
                if status == 404:
                    raise ValueError(
                        f"annotation {api.IP_POOL}={pool!r}: no IPPool {pool!r} in "
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
