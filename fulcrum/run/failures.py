"""A failure to talk to the apiserver, in one line a person can act on.

The kubernetes client raises urllib3's exceptions when the apiserver cannot be reached (the
server and port are the pool's, from the kubeconfig) and ``ApiException`` when it answers with
an error; for a 403 the apiserver's Status message names the user, verb, resource, API group and
namespace that RBAC refused, as in::

    pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the
    namespace "default"
"""

from __future__ import annotations

import re

import orjson
import urllib3
from kubernetes import client

# the Status message of an RBAC denial (k8s.io/apiserver's authorization "forbidden" message)
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]*)"'
    r'(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<namespace>[^"]*)"| at the cluster scope)?'
)
_OBJECT = re.compile(r"^<[^>]*>: |^\w+\(host='[^']*', port=\d+\): ")  # "HTTPSConnection(...): "


def describe(exc: BaseException) -> str | None:
    """One line for ``exc`` if it is a failure to reach the apiserver or an error it answered;
    None for any other exception."""
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return unreachable(exc)
    if isinstance(exc, client.ApiException):
        return refused(exc)
    return None


def unreachable(exc: urllib3.exceptions.HTTPError) -> str:
    """``cannot reach the apiserver at HOST:PORT: connection refused`` (or what else failed)."""
    pool = getattr(exc, "pool", None)
    server = f"{pool.host}:{pool.port}" if pool is not None else "the apiserver"
    return f"cannot reach the apiserver at {server}: {_why(getattr(exc, 'reason', None) or exc)}"


def _why(reason: BaseException) -> str:
    """The operating system's word for it (``Connection refused``, ``Name or service not
    known``) when there is one, else urllib3's message without the connection object."""
    cause: BaseException | None = reason
    while cause is not None:
        if isinstance(cause, OSError) and isinstance(cause.strerror, str) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    return _OBJECT.sub("", str(reason)) or type(reason).__name__


def status_message(body: object) -> str:
    """The ``message`` of a Status body, or the body itself (trimmed) if it is not one."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return " ".join(text.split())[:200]
    message = document.get("message") if isinstance(document, dict) else None
    return str(message) if message else " ".join(text.split())[:200]


def refused(exc: client.ApiException) -> str:
    """A 403 as the permission RBAC lacks; a 401 as refused credentials; else the status."""
    message = status_message(exc.body)
    if exc.status == 403:
        denied = _FORBIDDEN.search(message)
        if denied is None:
            return f"forbidden (403): {message or exc.reason}"
        group = denied["group"] or ""
        namespace = denied["namespace"]
        where = f'in namespace "{namespace}"' if namespace else "at the cluster scope"
        resource = f"{denied['resource']}.{group}" if group else denied["resource"]
        return (
            f'forbidden: User "{denied["user"]}" cannot {denied["verb"]} {resource} {where} '
            f'(RBAC needs verbs ["{denied["verb"]}"] on resources ["{denied["resource"]}"] '
            f'in apiGroups ["{group}"])'
        )
    if exc.status == 401:
        return f"unauthorized (401): the apiserver refused the credentials: {message or exc.reason}"
    return f"the apiserver answered {exc.status} {exc.reason}: {message}".rstrip(": ")
