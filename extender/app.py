"""The extender's HTTP service: ``create_app(settings, cache)`` builds it; no work at import."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError

from extender.bind import BindService
from extender.cache import ClusterCache, NodeInfo
from extender.decide import misfit, most_allocated_score
from extender.resources import QuantityError, node_allocatable, pod_requests
from extender.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriority,
    to_extender_score,
)

Args = TypeVar("Args", bound=BaseModel)


class ExtenderSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8888
    max_body_bytes: int = 64 * 2**20  # a 5,000-node NodeList is ~30 MiB


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "fulcrum_extender_requests", "Extender calls by verb", ["verb"], registry=self.registry
        )
        self.errors = Counter(
            "fulcrum_extender_errors",
            "Extender calls refused or failed, by verb and HTTP status",
            ["verb", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fulcrum_extender_latency_seconds",
            "Extender call latency by verb",
            ["verb"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


def _json(result: BaseModel | list[HostPriority], status: int = 200) -> Response:
    if isinstance(result, list):
        body = orjson.dumps([item.model_dump() for item in result])
    else:
        body = orjson.dumps(result.model_dump(exclude_none=True))
    return Response(body, status_code=status, media_type="application/json")


async def _read_args(request: Request, limit: int, model: type[Args]) -> Args:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body exceeds the {limit}-byte limit")
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


def _candidates(
    args: ExtenderArgs, cache: ClusterCache | None
) -> list[tuple[str, NodeInfo | None]]:
    """(name, node view) for every node in the request; the view is None if unknown."""
    if args.NodeNames is not None:
        if cache is None:
            raise BadRequest(
                400,
                "NodeNames given but this extender has no cluster cache: run it with "
                "--kubeconfig, or set nodeCacheCapable: false so the scheduler sends Nodes",
            )
        return [(name, cache.node(name)) for name in args.NodeNames]
    if args.Nodes is None:
        raise BadRequest(422, "Nodes: either Nodes or NodeNames must be set")
    out: list[tuple[str, NodeInfo | None]] = []
    for node in args.Nodes.items:
        name = (node.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest(422, "Nodes.items[].metadata.name: missing")
        seen = cache.node(name) if cache is not None else None
        try:
            allocatable = node_allocatable(node)
        except QuantityError as exc:
            raise BadRequest(422, f"Nodes.items[{name}].status.allocatable.{exc}") from exc
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        out.append(
            (
                name,
                NodeInfo(
                    name, allocatable, unschedulable, seen.requested if seen is not None else {}
                ),
            )
        )
    return out


def _requests(args: ExtenderArgs) -> dict[str, int]:
    try:
        return pod_requests(args.Pod)
    except QuantityError as exc:
        raise BadRequest(422, f"Pod.spec.containers[].resources.requests.{exc}") from exc


def create_app(
    settings: ExtenderSettings,
    cache: ClusterCache | None = None,
    binder: BindService | None = None,
) -> FastAPI:
    app = FastAPI(title="Fulcrum scheduler extender", docs_url=None, redoc_url=None)
    metrics = Metrics()
    app.state.metrics = metrics

    async def handle(
        verb: str, request: Request, model: type[Args], decide: Callable[[Args], Any]
    ) -> Response:
        started = time.perf_counter()
        metrics.calls.labels(verb).inc()
        try:
            args = await _read_args(request, settings.max_body_bytes, model)
            if verb == "bind":  # blocking apiserver call: keep it off the event loop
                return _json(await run_in_threadpool(decide, args))
            return _json(decide(args))
        except BadRequest as exc:
            metrics.errors.labels(verb, str(exc.status)).inc()
            return _json(ExtenderFilterResult(Error=exc.message), exc.status)
        finally:
            metrics.latency.labels(verb).observe(time.perf_counter() - started)

    def do_filter(args: ExtenderArgs) -> ExtenderFilterResult:
        requests = _requests(args)
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        for name, node in _candidates(args, cache):
            if node is None:
                failed[name] = "node not yet in Fulcrum's cache (informer catching up)"
                continue
            why = misfit(node, requests)
            if why is None:
                passed.append(name)
            elif why.unresolvable:
                unresolvable[name] = why.reason
            else:
                failed[name] = why.reason
        if args.NodeNames is not None:
            return ExtenderFilterResult(
                NodeNames=passed, FailedNodes=failed, FailedAndUnresolvableNodes=unresolvable
            )
        keep = set(passed)
        assert args.Nodes is not None
        items = [n for n in args.Nodes.items if n["metadata"]["name"] in keep]
        return ExtenderFilterResult(
            Nodes=args.Nodes.model_copy(update={"items": items}),
            FailedNodes=failed,
            FailedAndUnresolvableNodes=unresolvable,
        )

    def do_prioritize(args: ExtenderArgs) -> list[HostPriority]:
        requests = _requests(args)
        return [
            HostPriority(
                Host=name,
                Score=to_extender_score(most_allocated_score(node, requests)) if node else 0,
            )
            for name, node in _candidates(args, cache)
        ]

    def do_bind(args: ExtenderBindingArgs) -> ExtenderBindingResult:
        if binder is None:
            raise BadRequest(
                400,
                "bind needs a cluster: run the extender with --kubeconfig, or remove "
                "bindVerb from the scheduler's extender configuration",
            )
        error = binder.bind(args.PodNamespace, args.PodName, args.PodUID, args.Node)
        if error:
            metrics.errors.labels("bind", "refused").inc()
        return ExtenderBindingResult(Error=error)

    @app.post("/filter")
    async def filter_verb(request: Request) -> Response:
        return await handle("filter", request, ExtenderArgs, do_filter)

    @app.post("/prioritize")
    async def prioritize_verb(request: Request) -> Response:
        return await handle("prioritize", request, ExtenderArgs, do_prioritize)

    @app.post("/bind")
    async def bind_verb(request: Request) -> Response:
        return await handle("bind", request, ExtenderBindingArgs, do_bind)

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
