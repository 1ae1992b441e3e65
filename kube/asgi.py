"""A request body read with a limit, straight from ASGI ``receive``: what the extender's verbs
and the admission webhook share.

Reading stops as soon as the body passes the limit (or at once, when ``Content-Length`` says it
will), so a client cannot make the server hold more than ``limit`` bytes of its body; the caller
answers 413 and the server drops the rest with the connection.
"""

from __future__ import annotations

from starlette.types import Receive, Scope


class BodyError(Exception):
    """The body cannot be read: ``status`` (413 too large, 400 incomplete) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytearray:
    """The whole request body, at most ``limit`` bytes; past it, ``BodyError(413, ...)``."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(
            413, f"request body of {declared.decode()} bytes exceeds the {limit}-byte limit"
        )
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError(400, "the client went away before sending the whole body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyError(413, f"request body exceeds the {limit}-byte limit")
        if not message.get("more_body"):
            return body
