"""What a reconcile can end with besides success, grouped by what the worker does next.

After kopf's ``TemporaryError(delay=…)``: a step that is not done yet raises
:class:`TemporaryError`, and the worker asks for the key again after ``delay`` without counting
a failure. Anything else a step raises, :class:`ApiError` included, is retried with the queue's
per-key back-off. ``rebuild.writes`` turns the Kubernetes client's ``ApiException`` into an
:class:`ApiError`, so no other module depends on the client's types or inspects HTTP statuses.
"""

from __future__ import annotations


class TemporaryError(Exception):
    """Not done yet: look at this key again after ``delay`` seconds (a timer, or a hook's wait)."""

    def __init__(self, delay: float, message: str = "") -> None:
        super().__init__(message or f"again in {delay:.3g} s")
        self.delay = delay


class ApiError(Exception):
    """The apiserver refused a call; ``status`` is its HTTP status (0: no response)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"apiserver: {status} {reason}")
        self.status = status
        self.reason = reason


class NotFound(ApiError):
    """404: the object is gone."""


class Conflict(ApiError):
    """409: it exists already, or changed since it was read, or a precondition failed."""


class Invalid(ApiError):
    """422: a JSON-patch ``test`` failed, or the patch names an immutable field's other value."""


def api_error(status: int, reason: str) -> ApiError:
    """The :class:`ApiError` (sub)class for ``status``."""
    kind = {404: NotFound, 409: Conflict, 422: Invalid}.get(status, ApiError)
    return kind(status, reason)
