"""A real apiserver calls Fulcrum's webhook for IPPools: a pool whose addresses another
namespace's pool has is refused, on CREATE and on an UPDATE of its spec; other writes pass."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kit() -> Iterator[rr.Kit]:
    name = f"pools-{os.getpid()}"
    try:
        cluster.up(name, nodes=1, log=print)
        kit = rr.Kit.of(name)
        for namespace in ("team-a", "team-b"):
            kit.kubectl("create", "namespace", namespace)
        yield kit
    finally:
        cluster.down(name, log=print)


def apply(kit: rr.Kit, namespace: str, name: str, cidr: str) -> str:
    return kit.kubectl("apply", "-f", "-", stdin=json.dumps(rr.ip_pool(namespace, name, cidr)))


def test_an_overlapping_pool_of_another_namespace_is_refused(kit: rr.Kit) -> None:
    apply(kit, "team-a", "web", "10.0.0.0/29")
    with pytest.raises(RuntimeError, match="overlap IPPool team-a/web") as refused:
        apply(kit, "team-b", "web", "10.0.0.4/30")
    assert "ippools.validate.fulcrum.io" in str(refused.value)
    apply(kit, "team-b", "other", "10.0.1.0/29")  # disjoint: created
    with pytest.raises(RuntimeError, match="overlap IPPool team-a/web"):
        apply(kit, "team-b", "other", "10.0.0.0/30")  # an UPDATE into team-a's range
    # writes that leave the addresses alone are not even sent to the webhook
    kit.kubectl("label", "ippool", "web", "-n", "team-a", "checked=yes")
    listed = kit.kubectl("get", "ippools", "-A", "-o", "jsonpath={..metadata.namespace}")
    assert sorted(listed.split()) == ["team-a", "team-b"]  # the refused pool was never made
