"""The admission webhook's HTTP service: ``/mutate`` and ``/validate`` take an AdmissionReview.

A malformed review is answered 400 with a message naming the field, never a 500; a review this
service does not understand is allowed (the API server's own validation still applies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from admission.ippools import PoolLister
from admission.review import Decision, mutate, response, validate
from kube import api
from kube.hooks import HookRegistry, default_hook_registry

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 2**20  # the API server sends at most ~3 MiB objects, twice in an UPDATE


def _reply(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(
    hooks: HookRegistry | None = None,
    *,
    scheduler_name: str = api.SCHEDULER_NAME,
    trusted_users: Iterable[str] = (),
    pools: PoolLister | None = None,
) -> FastAPI:
    """The webhooks' app; pods it routes go to ``scheduler_name``; only ``trusted_users`` may
    write the annotations Fulcrum writes (``admission.review.validate``); ``pools`` lists the
    cluster's IPPools, for the overlap check of a new or changed one."""
    registry = hooks if hooks is not None else default_hook_registry()
    trusted = frozenset(trusted_users)
    app = FastAPI(title="Fulcrum admission", docs_url=None, redoc_url=None, openapi_url=None)

    async def review(request: Request, decide: Callable[[dict[str, Any]], Decision]) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _reply(413, {"message": f"body exceeds {MAX_BODY_BYTES} bytes"})
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _reply(400, {"message": f"not JSON: {exc}"})
        req = parsed.get("request") if isinstance(parsed, dict) else None
        if not isinstance(req, dict):
            return _reply(400, {"message": "request: expected an AdmissionReview with a request"})
        decision = decide(req)
        if not decision.allowed:
            what = f"{(req.get('kind') or {}).get('kind')} {req.get('namespace')}/{req.get('name')}"
            log.info("denied %s: %s", what, decision.message)
        return _reply(200, response(req, decision))

    @app.post("/mutate")
    async def mutate_endpoint(request: Request) -> Response:
        return await review(
            request, lambda req: mutate(req, registry, scheduler_name=scheduler_name)
        )

    @app.post("/validate")
    async def validate_endpoint(request: Request) -> Response:
        return await review(
            request, lambda req: validate(req, registry, trusted=trusted, pools=pools)
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    return app
