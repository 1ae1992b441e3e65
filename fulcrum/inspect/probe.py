"""What ``fulcrum inspect``'s cluster checks read, read: etcd's ``/health`` and ``/metrics``,
the apiserver's ``/livez``, ``/readyz`` and ``/metrics``, kube-scheduler's and
kube-controller-manager's ``/healthz`` and ``/metrics`` when their address is known, and the
Leases. Every figure that is a rate or a percentile comes from two scrapes at least ``window``
seconds apart, the time between them measured (``metrics.delta``); with a window of 0, from one
scrape, since each process started.

A component that does not answer is recorded as such (its checks say so); only the apiserver
not answering fails the inspection, and that is raised to the caller (exit status 2). An
apiserver that answers with a 5xx (etcd down) is a finding: what it could not list is recorded.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3

from fulcrum.inspect import metrics
from fulcrum.inspect.metrics import Scrape

TIMEOUT = 10.0
# every family of the apiserver's that the inspection reads (its checks, its history, --api);
# the rest of its /metrics is not parsed
APISERVER_FAMILIES = (
    "apiserver_request_total",
    "apiserver_request_duration_seconds",
    "apiserver_current_inflight_requests",
)
LIST_TIMEOUT = 60.0  # a list the apiserver cannot serve (etcd down) ends in its own timeout


def answered_but_failing(exc: Any) -> bool:
    """An ApiException that is a finding about the cluster, not a failed inspection: the
    apiserver answered, but with a 5xx (its storage, etcd, failing) or 429 (overloaded)."""
    status = int(getattr(exc, "status", 0) or 0)
    return status >= 500 or status == 429


@dataclass(frozen=True)
class Endpoint:
    """A component's base URL and how to reach it (TLS files; ``verify`` False: the certificate
    is not checked, as for a local cluster's self-signed components)."""

    url: str
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of GET ``path``; OSError (URLError) when it does not answer."""
        context = None
        if self.url.startswith("https"):
            context = ssl.create_default_context(cafile=self.cacert)
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
        try:
            with urllib.request.urlopen(
                self.url.rstrip("/") + path, timeout=TIMEOUT, context=context
            ) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")


@dataclass
class Component:
    """One component as read: its health answer, its metrics over the window and its gauges
    at the end, or why it could not be read."""

    endpoint: str | None = None  # None: no address given
    health: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, body)
    window: Scrape | None = None
    last: Scrape | None = None
    error: str | None = None


@dataclass
class ClusterView:
    """Everything the cluster checks judge, read at one time."""

    window: float
    etcd: Component
    apiserver: Component
    scheduler: Component
    controller_manager: Component
    leases: dict[str, dict[str, Any]]  # kube-system Leases by name
    node_leases: dict[str, dict[str, Any]]  # kube-node-lease Leases by node
    server_version: str  # the apiserver's gitVersion
    etcd_hint: str = "give --etcd-endpoint"
    leases_error: str | None = None  # why the Leases could not be read (the apiserver's 5xx)


def since(window: float) -> str:
    return f"over {window:g} s" if window > 0 else "since each process started"


Getter = Callable[[str], tuple[int, str]]


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def _read(
    getter: Getter | None,
    paths: tuple[str, ...],
    component: Component,
    families: tuple[str, ...] = (),
) -> Scrape | None:
    """Health paths into ``component``, then one scrape of /metrics (only ``families``, if
    named); errors recorded."""
    if getter is None:
        return None
    try:
        for path in paths:
            component.health[path] = getter(path)
        status, text = getter("/metrics")
        if status != 200:
            component.error = f"/metrics answered {status}: {text.strip()[:200]}"
            return None
        return metrics.parse(text, families)
    except (OSError, ssl.SSLError, metrics.MetricsError) as exc:
        component.error = _why(exc)
        return None
    except urllib3.exceptions.HTTPError as exc:  # the apiserver, through the kubernetes client
        if not timed_out(exc):
            raise  # not reached at all: the inspection fails (exit status 2)
        component.error = f"no answer within {TIMEOUT:g} s"
        return None


def timed_out(exc: BaseException) -> bool:
    """urllib3's read timeout, bare or as the reason its retries gave up: the server took the
    connection but did not answer (the apiserver's /metrics asks etcd for its size)."""
    reason = getattr(exc, "reason", None)
    return isinstance(exc, urllib3.exceptions.ReadTimeoutError) or isinstance(
        reason, urllib3.exceptions.ReadTimeoutError
    )


def apiserver_getter(api_client: Any) -> Getter:
    """GET a path of the apiserver with the client's credentials (kubernetes >= 31's
    ``param_serialize``), through the client's own connection pool but without its retries:
    with etcd down the apiserver's /metrics waits on etcd, and three retries of a 10 s timeout
    would make every scrape 40 s. An unreachable apiserver raises urllib3's error, which
    ``fulcrum.cli`` reports in one line (exit status 2)."""

    def get(path: str) -> tuple[int, str]:
        method, url, headers, _, _ = api_client.param_serialize(
            "GET", path, auth_settings=["BearerToken"]
        )
        reply = api_client.rest_client.pool_manager.request(
            method,
            url,
            headers=headers,
            timeout=TIMEOUT,
            # no retry, but errors as MaxRetryError, the form fulcrum.run.failures describes
            retries=urllib3.Retry(0, redirect=False),
            preload_content=True,
        )
        return int(reply.status), bytes(reply.data).decode("utf-8", "replace")

    return get


def read(
    api_client: Any,
    *,
    window: float,
    etcd: Endpoint | None,
    scheduler: Endpoint | None,
    controller_manager: Endpoint | None,
    meanwhile: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ClusterView:
    """Read every component twice, at least ``window`` seconds apart (once with a window of
    0), the window measured; ``meanwhile()`` runs between the two reads (the inspection lists
    and judges the cluster while the window passes, not after it) and says whether the
    apiserver can list: False (it is not ready), its Leases are not asked for."""
    from kubernetes import client

    sources = {
        "etcd": (Component(etcd.url if etcd else None), etcd.get if etcd else None, ("/health",)),
        "apiserver": (
            Component("apiserver"),
            apiserver_getter(api_client),
            ("/livez", "/readyz"),
        ),
        "scheduler": (
            Component(scheduler.url if scheduler else None),
            scheduler.get if scheduler else None,
            ("/healthz",),
        ),
        "controller_manager": (
            Component(controller_manager.url if controller_manager else None),
            controller_manager.get if controller_manager else None,
            ("/healthz",),
        ),
    }
    only = {"apiserver": APISERVER_FAMILIES}
    first = {name: _read(get, (), c, only.get(name, ())) for name, (c, get, _) in sources.items()}
    started = clock()
    lists = meanwhile()
    if window > 0:
        sleep(max(0.0, window - (clock() - started)))
        window = round(clock() - started, 1)
    for name, (component, get, paths) in sources.items():
        last = _read(get, paths, component, only.get(name, ()))
        component.last = last
        before = first[name]
        if last is not None:
            component.window = (
                metrics.delta(before, last, window)
                if before is not None and window > 0
                else Scrape(samples=last.samples)
            )
    coordination = client.CoordinationV1Api(api_client)
    unread: list[str] = []

    def leases(namespace: str) -> dict[str, dict[str, Any]]:
        if not lists:
            unread.append(f"{namespace} Leases: not listed, the apiserver is not ready")
            return {}
        try:
            raw = coordination.list_namespaced_lease(
                namespace, _preload_content=False, _request_timeout=LIST_TIMEOUT
            ).data
        except client.ApiException as exc:
            if not answered_but_failing(exc):
                raise  # 401/403: RBAC, the inspection itself fails (exit status 2)
            unread.append(f"{namespace} Leases: the apiserver answered {exc.status}")
            return {}
        except urllib3.exceptions.HTTPError as exc:
            if not timed_out(exc):
                raise
            unread.append(f"{namespace} Leases: no answer within {LIST_TIMEOUT:g} s")
            return {}
        return {i["metadata"]["name"]: i for i in json.loads(raw)["items"]}

    try:
        version = str(client.VersionApi(api_client).get_code().git_version)
    except client.ApiException as exc:
        if not answered_but_failing(exc):
            raise
        version = "unknown"
    system, node_leases = leases("kube-system"), leases("kube-node-lease")
    return ClusterView(
        window=window,
        etcd=sources["etcd"][0],
        apiserver=sources["apiserver"][0],
        scheduler=sources["scheduler"][0],
        controller_manager=sources["controller_manager"][0],
        leases=system,
        node_leases=node_leases,
        server_version=version,
        leases_error="; ".join(unread) or None,
    )
