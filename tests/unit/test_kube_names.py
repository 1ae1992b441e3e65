"""Names checked before they reach an apiserver URL path (kube/names.py, extender/apiserver.py)."""

from __future__ import annotations

import asyncio

import pytest

from extender.apiserver import KubeBinder
from kube.names import InvalidName, check_label, check_object, check_subdomain


@pytest.mark.parametrize("good", ["a", "ns-1", "0", "a" * 63])
def test_dns_labels(good: str) -> None:
    assert check_label("namespace", good) == good


@pytest.mark.parametrize(
    "bad", ["", "A", "-a", "a-", "a.b", "a/b", "..", "a%2Fb", "a?b", "a" * 64, "é", "a\nb"]
)
def test_not_dns_labels(bad: str) -> None:
    with pytest.raises(InvalidName, match=r"namespace .* is not a DNS label"):
        check_label("namespace", bad)


@pytest.mark.parametrize("good", ["a", "web-0", "a.b.c", "x" * 253])
def test_dns_subdomains(good: str) -> None:
    assert check_subdomain("pod name", good) == good


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "a/b", "../x", "A", "x" * 254, "a b"])
def test_not_dns_subdomains(bad: str) -> None:
    with pytest.raises(InvalidName, match=r"pod name .* is not a DNS subdomain"):
        check_subdomain("pod name", bad)


class Configuration:
    host = "https://127.0.0.1:1"  # nothing listens: a request that got through would fail else
    ssl_ca_cert = None
    verify_ssl = False
    cert_file = None
    key_file = None
    api_key = None

    def get_api_key_with_prefix(self, identifier: str, alias: str | None = None) -> str | None:
        return None


def test_the_binder_refuses_names_before_any_request() -> None:
    binder = KubeBinder(Configuration())

    async def calls() -> list[str]:
        errors = []
        for call in (
            binder.bind("ns", "a/../b", "u", "n1", {}),
            binder.event("ns/x", "a", "u", "R", "m"),
            binder.nominate("ns", "A", "u", "n1"),
            binder.current("ns", "a?watch=1"),
            binder.allocate_ip("ns", "pool/../x", "pod:u", None, {}),
        ):
            with pytest.raises(InvalidName) as caught:
                await call
            errors.append(str(caught.value))
        return errors

    errors = asyncio.run(calls())
    assert errors[-1].startswith("IPPool name 'pool/../x'")
    check_object("ns", "web-0.x")
