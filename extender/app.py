"""The extender's HTTP service: ``create_app(settings, ...)`` builds it; no work at import."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from extender.bind import Binder, BindService
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.decide import Decider, WeightedPolicy
from extender.preempt import candidates_from_wire, result_to_wire, select_victims
from kube.resources import node_spec, pod_request
from extender.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
)
from policies.registry import Registry, default_registry
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

Args = TypeVar("Args", bound=BaseModel)
Answer = tuple[int, bytes]  # HTTP status, JSON body
SETTLE_SECONDS = 0.5


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Metrics:
    def __init__(self, cache: ClusterCache | None) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "fulcrum_extender_requests", "Extender calls by verb", ["verb"], registry=self.registry
        )
        self.errors = Counter(
            "fulcrum_extender_errors",
            "Extender calls refused or failed, by verb and HTTP status ('refused': a bind the "
            "apiserver or Fulcrum refused; 'retry': a filter answered 'wait, then retry')",
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
        if cache is not None:
            lag.set_function(lambda: time.monotonic() - cache.last_event)


def _encode(result: BaseModel | list[tuple[str, int]] | dict[str, Any]) -> bytes:
    if isinstance(result, list):  # HostPriorityList, built without a model per node (5,000)
        return orjson.dumps([{"Host": host, "Score": score} for host, score in result])
    if isinstance(result, dict):
        return orjson.dumps(result)
    return orjson.dumps(result.model_dump(exclude_none=True))


async def _read_args(scope: Scope, receive: Receive, limit: int, model: type[Args]) -> Args:
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(
            413, f"request body of {declared.decode()} bytes exceeds the {limit}-byte limit"
        )
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "the client went away before sending the whole body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadRequest(413, f"request body exceeds the {limit}-byte limit")
        if not message.get("more_body"):
            break
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


def _pod(args: ExtenderArgs | ExtenderPreemptionArgs) -> PodRequest:
    try:
        return pod_request(args.Pod)
    except ValueError as exc:
        raise BadRequest(422, f"Pod: {exc}") from exc


def _node_names(args: ExtenderArgs) -> list[str]:
    if args.NodeNames is not None:
        return args.NodeNames
    if args.Nodes is None:
        raise BadRequest(422, "Nodes: either Nodes or NodeNames must be set")
    names = []
    for i, node in enumerate(args.Nodes.items):
        name = (node.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest(422, f"Nodes.items[{i}].metadata.name: missing")
        names.append(name)
    return names


def _snapshot_of(args: ExtenderArgs) -> Snapshot:
    """A throw-away snapshot of the request's Nodes, for an extender without a cluster cache."""
    snapshot = Snapshot(capacity=len(args.Nodes.items) if args.Nodes else 1)
    for i, node in enumerate(args.Nodes.items if args.Nodes else []):
        try:
            snapshot.add_node(node["metadata"]["name"], **node_spec(node))
        except (ValueError, KeyError) as exc:
            raise BadRequest(422, f"Nodes.items[{i}]: {exc}") from exc
    return snapshot


class ExtenderApp(FastAPI):
    """FastAPI for health, readiness, metrics and 404s, with the extender verbs in front of it.

    kube-scheduler waits for every filter, one pod at a time, so its per-request cost counts.
    Through FastAPI's routing (dependency solving, Request and Response objects) a filter cost
    ~0.47 ms of server CPU; as plain ASGI, and without reasons for the nodes decideInFilter did
    not choose, ~0.31 ms (a real uvicorn server, 200 openb nodes, one keep-alive client); an
    empty ASGI answer costs ~0.08 ms. The verbs are answered before FastAPI's middleware stack
    too: they read their own body with a limit and answer their own errors.
    """

    verbs: Mapping[str, Callable[[Scope, Receive], Awaitable[Answer]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.verbs.get(scope["path"])
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        status, body = await handler(scope, receive)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _settle(busy: Callable[[], bool]) -> None:
    """Give the watches a moment to show what kube-scheduler already knows, while ``busy()``.

    The scheduler may ask about a pod a few milliseconds before our watches show what decides
    it: a local-rebuild successor's pod, its predecessor's deletion or the Reservation
    (``ClusterCache.settling``), or the deletion of the victims a preemptor evicted
    (``ClusterCache.evicting``). Answering at once would cost a successor at least
    kube-scheduler's 1 s back-off and a preemptor a second round of victims. Waits at most
    SETTLE_SECONDS, without blocking other requests; a controller that is slow or down is not
    waited for.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def create_app(
    settings: ExtenderSettings,
    cache: ClusterCache | None = None,
    binder: Binder | None = None,
    registry: Registry | None = None,
) -> ExtenderApp:
    app = ExtenderApp(title="Fulcrum scheduler extender", docs_url=None, redoc_url=None)
    metrics = Metrics(cache)
    decider = Decider(
        cache,
        registry or default_registry(),
        [WeightedPolicy(p.policy, p.weight) for p in settings.prioritize],
    )
    binds = BindService(cache, binder, decider.devices) if cache and binder else None
    app.state.metrics, app.state.decider = metrics, decider

    @contextmanager
    def view(args: ExtenderArgs) -> Iterator[Snapshot]:
        if args.NodeNames is not None and cache is None:
            raise BadRequest(
                400,
                "NodeNames given but this extender has no cluster cache: run it with "
                "--kubeconfig, or set nodeCacheCapable: false so the scheduler sends Nodes",
            )
        if cache is None:
            yield _snapshot_of(args)
            return
        with cache.lock:
            yield cache.snapshot

    def verb(
        name: str, model: type[Args], decide: Callable[[Args], Any]
    ) -> Callable[[Scope, Receive], Awaitable[Answer]]:
        calls, latency = metrics.calls.labels(name), metrics.latency.labels(name)

        async def answer(scope: Scope, receive: Receive) -> Answer:
            started = time.perf_counter()
            calls.inc()
            try:
                args = await _read_args(scope, receive, settings.max_body_bytes, model)
                result = decide(args)
                if inspect.isawaitable(result):
                    result = await result
                return 200, _encode(result)
            except BadRequest as exc:
                metrics.errors.labels(name, str(exc.status)).inc()
                return exc.status, _encode(ExtenderFilterResult(Error=exc.message))
            finally:
                latency.observe(time.perf_counter() - started)

        return answer

    async def do_filter(args: ExtenderArgs) -> ExtenderFilterResult:
        pod, names = _pod(args), _node_names(args)
        pending = None
        if cache is not None:
            noted = cache.note_pending(args.Pod, pod)
            await _settle(lambda: cache.settling(noted) or cache.evicting(noted.uid, names))
            pending = cache.pending(noted.uid) or noted
        with view(args) as snapshot:
            choose = settings.decide_in_filter
            out = (
                decider.filter_rebuild(snapshot, pending, names, choose=choose) if pending else None
            )
            if out is None:
                out = decider.filter(snapshot, pod, names, choose=choose)
        if out.retry:
            metrics.errors.labels("filter", "retry").inc()
            return ExtenderFilterResult(Error=out.retry)
        metrics.decisions.labels("passed").inc(len(out.passed))
        metrics.decisions.labels("failed").inc(len(out.failed) + len(out.unresolvable))
        if args.NodeNames is not None:
            return ExtenderFilterResult(
                NodeNames=out.passed,
                FailedNodes=out.failed,
                FailedAndUnresolvableNodes=out.unresolvable,
            )
        assert args.Nodes is not None
        keep = set(out.passed)
        items = [n for n in args.Nodes.items if n["metadata"]["name"] in keep]
        return ExtenderFilterResult(
            Nodes=args.Nodes.model_copy(update={"items": items}),
            FailedNodes=out.failed,
            FailedAndUnresolvableNodes=out.unresolvable,
        )

    def do_prioritize(args: ExtenderArgs) -> list[tuple[str, int]]:
        pod, names = _pod(args), _node_names(args)
        with view(args) as snapshot:
            scores = decider.prioritize(snapshot, pod, names)
        return scores

    async def do_bind(args: ExtenderBindingArgs) -> ExtenderBindingResult:
        if binds is None:
            raise BadRequest(
                400,
                "bind needs a cluster: run the extender with --kubeconfig, or remove "
                "bindVerb from the scheduler's extender configuration",
            )
        # Reserve now, before the next request is served; then await the apiserver.
        ticket = binds.reserve(args.PodNamespace, args.PodName, args.PodUID, args.Node)
        error = await binds.commit(ticket)
        if error:
            metrics.errors.labels("bind", "refused").inc()
        return ExtenderBindingResult(Error=error)

    def do_preempt(args: ExtenderPreemptionArgs) -> dict[str, Any]:
        if cache is None:
            raise BadRequest(
                400,
                "preempt needs a cluster cache: run the extender with --kubeconfig, or remove "
                "preemptVerb from the scheduler's extender configuration",
            )
        pod = _pod(args)
        try:
            candidates, priority = candidates_from_wire(args.model_dump())
        except ValueError as exc:
            raise BadRequest(422, str(exc)) from exc
        with cache.lock:
            chosen = select_victims(cache.snapshot, pod, candidates, priority, decider.scores)
        preemptor = str((args.Pod.get("metadata") or {}).get("uid") or "")
        for node, victims in chosen.items() if preemptor else ():
            cache.note_eviction(preemptor, node, victims.uids)
        return result_to_wire(chosen)

    app.verbs = {
        "/filter": verb("filter", ExtenderArgs, do_filter),
        "/prioritize": verb("prioritize", ExtenderArgs, do_prioritize),
        "/preempt": verb("preempt", ExtenderPreemptionArgs, do_preempt),
        "/bind": verb("bind", ExtenderBindingArgs, do_bind),
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
