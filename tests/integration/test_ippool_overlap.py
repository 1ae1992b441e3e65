"""A real apiserver calls Fulcrum's webhook for IPPools: a pool whose addresses another
namespace's pool has is refused, on CREATE and on an UPDATE of its spec; other writes pass."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from kube import api

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


def test_a_pod_of_the_remaining_pool_is_bound_by_fulcrum_with_its_address(kit: rr.Kit) -> None:
    """Fulcrum's bind (a pod with an IP pool is one only Fulcrum binds) still serves its own
    scheduler's pods: known to its cache, schedulerName fulcrum-scheduler, names checked."""
    rr.apply(kit, [rr.bare_pod("team-b", "member-0", "other", opted=False, pool="other")])

    def pod() -> dict[str, Any]:
        got: dict[str, Any] = json.loads(
            kit.kubectl("get", "pod", "member-0", "-n", "team-b", "-o", "json")
        )
        return got

    def bound() -> bool:
        found = pod()
        return bool(found["spec"].get("nodeName")) and api.ASSIGNED_IP in (
            found["metadata"].get("annotations") or {}
        )

    rr.wait_for("pod member-0 bound with an address", bound, timeout=60)
    assert pod()["metadata"]["annotations"][api.ASSIGNED_IP].startswith("10.0.1.")
