"""Kubernetes object names as the apiserver accepts them, checked before they reach a URL path.

A namespace is a DNS label (RFC 1123: at most 63 lower-case alphanumerics or '-', starting and
ending alphanumeric); a pod's or an IPPool's name a DNS subdomain (such labels joined by '.', at
most 253 characters). Anything else ('/', '..', '%2F', '?', upper case) could address another
object or another resource, so it is refused here with the rule it broke.
"""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class InvalidName(ValueError):
    """A name no object can have; the message names which and the rule."""


def check_label(what: str, value: str) -> str:
    """``value`` if it is a DNS label (a namespace), else ``InvalidName``."""
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise InvalidName(
            f"{what} {value[:80]!r} is not a DNS label (at most 63 characters of a-z, 0-9 and "
            "'-', starting and ending with a letter or digit)"
        )
    return value


def is_subdomain(value: str) -> bool:
    """Whether ``value`` is a DNS subdomain: a pod's or a custom object's name."""
    return len(value) <= 253 and DNS_SUBDOMAIN.fullmatch(value) is not None


def check_subdomain(what: str, value: str) -> str:
    """``value`` if it is a DNS subdomain (a pod's or custom object's name), else
    ``InvalidName``."""
    if not is_subdomain(value):
        raise InvalidName(
            f"{what} {value[:80]!r} is not a DNS subdomain (at most 253 characters of a-z, 0-9, "
            "'-' and '.', each '.'-separated part starting and ending with a letter or digit)"
        )
    return value


def check_object(namespace: str, name: str, *, kind: str = "pod") -> None:
    """A namespaced object's namespace and name, both checked (``InvalidName``)."""
    check_label(f"{kind} namespace", namespace)
    check_subdomain(f"{kind} name", name)
