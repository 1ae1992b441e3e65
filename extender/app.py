"""The extender's HTTP service: ``create_app(settings, ...)`` builds it; no work at import.

Only HTTP lives here: the ASGI fast path for the verbs, body limits, errors, metrics, health and
readiness. What the verbs answer is ``extender.verbs``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from extender.bind import Binder
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.events import EventSink
from extender.nominate import Nominator
from extender.rebuild_gate import RebuildGate
from extender.verbs import BadRequest, Verbs
from extender.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
)
from kube.asgi import BodyError, read_body
from kube.metrics import standard_registry
from policies.registry import Registry

Args = TypeVar("Args", bound=BaseModel)
Answer = tuple[int, bytes]  # HTTP status, JSON body
HTTP_REASONS = {400: "bad_request", 413: "too_large", 422: "invalid"}


class Metrics:
    """Prometheus counters of the verbs; ``filtered`` and ``bound`` count from their results."""

    def __init__(self, cache: ClusterCache | None) -> None:
        self.registry = standard_registry("extender")
        self.calls = Counter(
            "fulcrum_extender_requests", "Extender calls by verb", ["verb"], registry=self.registry
        )
        self.errors = Counter(
            "fulcrum_extender_errors",
            "Extender calls refused or failed, by verb, HTTP code and reason (code 200: "
            "'refused', a bind the apiserver or Fulcrum refused; 'retry', a filter answered "
            "'wait, then retry')",
            ["verb", "code", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fulcrum_extender_latency_seconds",
            "Extender call latency by verb",
            ["verb"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.decisions = Counter(
            "fulcrum_extender_node_decisions",
            "Nodes passed or failed by filter",
            ["outcome"],
            registry=self.registry,
        )
        lag = Gauge(
            "fulcrum_extender_cache_idle_seconds",
            "Seconds since the informer cache last applied an event",
            registry=self.registry,
        )
        bad = Gauge(
            "fulcrum_extender_bad_objects",
            "Pods and nodes the cache ignored or read in part (a value not what Fulcrum writes "
            "or accepts); the log names each",
            registry=self.registry,
        )
        nodes = Gauge(
            "fulcrum_cluster_nodes", "Nodes in the informer cache", registry=self.registry
        )
        available = Gauge(
            "fulcrum_cluster_available_nodes",
            "Nodes in the informer cache that are Ready and schedulable (not cordoned)",
            registry=self.registry,
        )
        if cache is not None:
            lag.set_function(lambda: time.monotonic() - cache.last_event)
            bad.set_function(lambda: len(cache.bad_objects))
            nodes.set_function(lambda: len(cache.node_names()))
            available.set_function(cache.available_nodes)
        self.policy_failures = Counter(
            "fulcrum_policy_failures",
            "Placement-policy calls that raised or returned bad scores (their scores are left "
            "out); the log says what was wrong",
            ["policy"],
            registry=self.registry,
        )
        self._passed = self.decisions.labels("passed")
        self._failed = self.decisions.labels("failed")
        self._retried = self.errors.labels("filter", "200", "retry")
        self._refused = self.errors.labels("bind", "200", "refused")

    def filtered(self, result: ExtenderFilterResult) -> None:
        if result.Error:
            self._retried.inc()
            return
        if result.NodeNames is not None:
            self._passed.inc(len(result.NodeNames))
        elif result.Nodes is not None:
            self._passed.inc(len(result.Nodes.items))
        self._failed.inc(len(result.FailedNodes) + len(result.FailedAndUnresolvableNodes))

    def bound(self, result: ExtenderBindingResult) -> None:
        if result.Error:
            self._refused.inc()


def _encode(result: BaseModel | list[tuple[str, int]] | dict[str, Any]) -> bytes:
    if isinstance(result, list):  # HostPriorityList, built without a model per node (5,000)
        return orjson.dumps([{"Host": host, "Score": score} for host, score in result])
    if isinstance(result, dict):
        return orjson.dumps(result)
    return orjson.dumps(result.model_dump(exclude_none=True))


async def _read_args(scope: Scope, receive: Receive, limit: int, model: type[Args]) -> Args:
    try:
        body = await read_body(scope, receive, limit)
    except BodyError as exc:
        raise BadRequest(exc.status, exc.message) from exc
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"request body is not JSON: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(
            422, f"{where}: {first['msg']} (expected {model.__name__}, extender/v1 wire format)"
        ) from exc


class ExtenderApp(FastAPI):
    """FastAPI for health, readiness, metrics and 404s, with the extender verbs in front of it.

    kube-scheduler waits for every filter, one pod at a time, so its per-request cost counts.
    Through FastAPI's routing (dependency solving, Request and Response objects) a filter cost
    ~0.47 ms of server CPU; as plain ASGI, and without reasons for the nodes decideInFilter did
    not choose, ~0.31 ms (a real uvicorn server, 200 openb nodes, one keep-alive client); an
    empty ASGI answer costs ~0.08 ms. The verbs are answered before FastAPI's middleware stack
    too: they read their own body with a limit and answer their own errors.
    """

    endpoints: Mapping[str, Callable[[Scope, Receive], Awaitable[Answer]]] = {}  # by path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.endpoints.get(scope["path"])
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        status, body = await handler(scope, receive)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _endpoint(
    name: str,
    model: type[Args],
    call: Callable[[Args], Any],
    metrics: Metrics,
    max_body_bytes: int,
    count: Callable[[Any], None] | None = None,
) -> Callable[[Scope, Receive], Awaitable[Answer]]:
    """One verb over HTTP: read and validate the body, answer, count and time it."""
    calls, latency = metrics.calls.labels(name), metrics.latency.labels(name)

    async def answer(scope: Scope, receive: Receive) -> Answer:
        started = time.perf_counter()
        calls.inc()
        try:
            args = await _read_args(scope, receive, max_body_bytes, model)
            result = call(args)
            if inspect.isawaitable(result):
                result = await result
            if count is not None:
                count(result)
            return 200, _encode(result)
        except BadRequest as exc:
            reason = HTTP_REASONS.get(exc.status, "error")
            metrics.errors.labels(name, str(exc.status), reason).inc()
            return exc.status, _encode(ExtenderFilterResult(Error=exc.message))
        finally:
            latency.observe(time.perf_counter() - started)

    return answer


def create_app(
    settings: ExtenderSettings,
    cache: ClusterCache | None = None,
    binder: Binder | None = None,
    registry: Registry | None = None,
    *,
    gate: RebuildGate | None = None,
    events: EventSink | None = None,
) -> ExtenderApp:
    """The extender over ``Verbs(settings, cache, binder, registry, gate=..., events=...)``;
    with ``settings.nominate``, a cache and ``events``, its nominator runs with the server."""
    metrics = Metrics(cache)
    verbs = Verbs(settings, cache, binder, registry, gate=gate, events=events)
    nominator = None
    if settings.nominate and cache is not None and events is not None:
        nominator = Nominator(
            cache, verbs.decider, events, settings.scheduler_name, binds=verbs.fulcrum_binds
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(nominator.run()) if nominator else None
        yield
        if task is not None:
            task.cancel()

    app = ExtenderApp(
        title="Fulcrum scheduler extender", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    verbs.decider.on_failure = lambda policy, _: metrics.policy_failures.labels(policy).inc()
    app.state.metrics, app.state.verbs, app.state.nominator = metrics, verbs, nominator
    limit = settings.max_body_bytes
    app.endpoints = {
        "/filter": _endpoint(
            "filter", ExtenderArgs, verbs.filter, metrics, limit, metrics.filtered
        ),
        "/prioritize": _endpoint("prioritize", ExtenderArgs, verbs.prioritize, metrics, limit),
        "/preempt": _endpoint("preempt", ExtenderPreemptionArgs, verbs.preempt, metrics, limit),
        "/bind": _endpoint("bind", ExtenderBindingArgs, verbs.bind, metrics, limit, metrics.bound),
    }

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        if cache is not None and not cache.ready:
            return Response("cache not synced", status_code=503, media_type="text/plain")
        return Response("ok", media_type="text/plain")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
