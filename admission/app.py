"""The admission webhook's HTTP service: ``/mutate`` and ``/validate`` take an AdmissionReview.

A malformed review is answered 400 with a message naming the field, never a 500; a review this
service does not understand is allowed (the API server's own validation still applies).

What one client can cost it is bounded: a body is read with a limit (``kube.asgi.read_body``, a
declared ``Content-Length`` past it is refused before a byte is read) and must arrive within
``BODY_SECONDS``; at most ``max_in_flight`` reviews are read or decided at once, and one more is
answered 429 with ``Retry-After`` at once. So its bodies hold at most ``max_in_flight`` x 8 MiB.
The API server counts a 429 as a failed call (the webhook's ``failurePolicy`` applies), so the
default is well above what it sends: its reviews are small and each is decided in about a
millisecond, so eight at once is a flood, not a busy cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from admission.ippools import PoolLister
from admission.review import Decision, mutate, response, validate
from kube import api
from kube.asgi import BodyError, read_body
from kube.metrics import standard_registry

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 2**20  # the API server sends at most ~3 MiB objects, twice in an UPDATE
MAX_IN_FLIGHT = 8  # reviews at once; the API server's are small and answered in a millisecond
BODY_SECONDS = 10.0  # the API server gives up on a webhook after its timeoutSeconds (5)


def _reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def create_app(
    *,
    scheduler_name: str = api.SCHEDULER_NAME,
    trusted_users: Iterable[str] = (),
    pools: PoolLister | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The webhooks' app; pods it routes go to ``scheduler_name``; only ``trusted_users`` may
    write the annotations Fulcrum writes (``admission.review.validate``); ``pools`` lists the
    cluster's IPPools, for the overlap check of a new or changed one.

    ``registry``: what ``/metrics`` serves (the process adds its certificate's expiry to it);
    by default a new ``standard_registry``.
    """
    trusted = frozenset(trusted_users)
    metrics = registry if registry is not None else standard_registry("webhook")
    reviews = Counter(
        "fulcrum_webhook_reviews", "Admission reviews answered, by path", ["path"], registry=metrics
    )
    refused = Counter(
        "fulcrum_webhook_refused_requests",
        "Requests answered without a review, by HTTP code (413 too large, 400 malformed or cut "
        "short, 408 too slow, 429 too many at once)",
        ["code"],
        registry=metrics,
    )
    in_flight = asyncio.Semaphore(max_in_flight)
    app = FastAPI(title="Fulcrum admission", docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(status: int, message: str, *, close: bool = False) -> Response:
        refused.labels(str(status)).inc()
        headers = {"Connection": "close"} if close else None  # drop the unread rest of the body
        return _reply(status, {"message": message}, headers)

    async def review(request: Request, decide: Callable[[dict[str, Any]], Decision]) -> Response:
        if in_flight.locked():
            refused.labels("429").inc()
            message = f"{max_in_flight} reviews in flight (--max-in-flight); retry"
            return _reply(429, {"message": message}, {"Retry-After": "1", "Connection": "close"})
        async with in_flight:
            try:
                body = await asyncio.wait_for(
                    read_body(request.scope, request.receive, MAX_BODY_BYTES), BODY_SECONDS
                )
            except BodyError as exc:
                return refuse(exc.status, exc.message, close=True)
            except TimeoutError:
                return refuse(408, f"the body did not arrive within {BODY_SECONDS:g} s", close=True)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return refuse(400, f"not JSON: {exc}")
            del body
            req = parsed.get("request") if isinstance(parsed, dict) else None
            if not isinstance(req, dict):
                return refuse(400, "request: expected an AdmissionReview with a request")
            decision = decide(req)
        reviews.labels(request.url.path).inc()
        if not decision.allowed:
            what = f"{(req.get('kind') or {}).get('kind')} {req.get('namespace')}/{req.get('name')}"
            log.info("denied %s: %s", what, decision.message)
        return _reply(200, response(req, decision))

    @app.post("/mutate")
    async def mutate_endpoint(request: Request) -> Response:
        return await review(request, lambda req: mutate(req, scheduler_name=scheduler_name))

    @app.post("/validate")
    async def validate_endpoint(request: Request) -> Response:
        return await review(request, lambda req: validate(req, trusted=trusted, pools=pools))

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app
