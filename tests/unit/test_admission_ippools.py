"""An IPPool whose addresses another namespace's pool has is refused at admission."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from admission.app import create_app
from admission.ippools import ippool_refusal
from admission.review import validate
from kube import ippool


def pool(namespace: str, name: str, *, cidr: str | None = None, addresses: Any = None) -> Any:
    spec: dict[str, Any] = {"cidr": cidr} if cidr is not None else {"addresses": addresses}
    return {
        "apiVersion": "fulcrum.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }


EXISTING = [
    pool("team-a", "web", cidr="10.0.0.0/29"),  # 10.0.0.1 .. 10.0.0.6
    pool("team-b", "db", addresses=["10.0.1.5", "10.0.1.9"]),
    pool("team-c", "broken", cidr="not a cidr"),  # unreadable: hands out nothing
]


def listed() -> Sequence[Any]:
    return EXISTING


def test_shared_addresses_are_the_usable_ones_both_pools_have() -> None:
    # a /29's network and broadcast addresses are not handed out: .0 and .7 are not shared
    assert ippool.shared_addresses(
        pool("x", "a", cidr="10.0.0.4/30"), pool("y", "b", cidr="10.0.0.0/29")
    ) == ["10.0.0.5", "10.0.0.6"]
    assert (
        ippool.shared_addresses(
            pool("x", "a", addresses=["10.0.0.7"]), pool("y", "b", cidr="10.0.0.0/29")
        )
        == []
    )


@pytest.mark.parametrize(
    ("candidate", "refusal"),
    [
        (
            pool("team-b", "web2", cidr="10.0.0.4/30"),
            "IPPool team-b/web2: its addresses overlap IPPool team-a/web (10.0.0.5 and 1 more)",
        ),
        (
            pool("team-a", "db2", addresses=["10.0.1.9"]),
            "IPPool team-a/db2: its addresses overlap IPPool team-b/db (10.0.1.9)",
        ),
        (pool("team-b", "bad", cidr="10.0.0.1/29"), 'spec.cidr "10.0.0.1/29" has host bits set'),
    ],
)
def test_a_pool_overlapping_another_namespaces_is_refused(candidate: Any, refusal: str) -> None:
    got = ippool_refusal(candidate, candidate["metadata"]["namespace"], listed)
    assert got.startswith(refusal) or refusal in got, got


@pytest.mark.parametrize(
    "candidate",
    [
        pool("team-b", "other", cidr="10.0.2.0/29"),  # disjoint
        pool("team-a", "web", cidr="10.0.0.0/28"),  # itself, grown (an UPDATE)
        pool("team-a", "more", cidr="10.0.0.0/29"),  # same namespace: its own affair
        pool("team-d", "over-broken", cidr="10.9.0.0/29"),
    ],
)
def test_pools_that_share_nothing_with_other_namespaces_pass(candidate: Any) -> None:
    assert ippool_refusal(candidate, candidate["metadata"]["namespace"], listed) == ""


def test_without_a_cluster_the_pool_is_checked_alone_and_a_failed_list_refuses() -> None:
    fine = pool("team-b", "web2", cidr="10.0.0.4/30")
    assert ippool_refusal(fine, "team-b", None) == ""

    def unreachable() -> Sequence[Any]:
        raise OSError("connection refused")

    refusal = ippool_refusal(fine, "team-b", unreachable)
    assert "cannot list IPPools" in refusal and "connection refused" in refusal


def review(obj: Any, operation: str = "CREATE") -> dict[str, Any]:
    return {
        "uid": "u",
        "kind": {"group": "fulcrum.io", "version": "v1alpha1", "kind": "IPPool"},
        "namespace": obj["metadata"]["namespace"],
        "name": obj["metadata"]["name"],
        "operation": operation,
        "object": obj,
    }


def test_validate_routes_ippools_to_the_overlap_check() -> None:
    overlapping = pool("team-b", "web2", cidr="10.0.0.4/30")
    decision = validate(review(overlapping, "UPDATE"), pools=listed)
    assert not decision.allowed and "overlap IPPool team-a/web" in decision.message
    assert validate(review(pool("team-b", "x", cidr="10.0.3.0/29")), pools=listed).allowed


def test_the_webhook_answers_with_the_refusal() -> None:
    client = TestClient(create_app(pools=listed))
    reply = client.post(
        "/validate", json={"request": review(pool("team-b", "web2", cidr="10.0.0.4/30"))}
    )
    assert reply.status_code == 200
    answer = reply.json()["response"]
    assert answer["allowed"] is False and answer["status"]["code"] == 422
    assert "overlap IPPool team-a/web" in answer["status"]["message"]
