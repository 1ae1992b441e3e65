from dataclasses import replace

import numpy as np
from fulcrum_tenant_affinity.policy import NODE_LABEL, TenantAffinity, create

from policies.conformance import check_policy
from scheduler.attributes import PodAttributes
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

GIB = 1 << 30


def cluster() -> Snapshot:
    snapshot = Snapshot()
    for name, tenant in [("a-1", "a"), ("b-1", "b"), ("shared-1", None)]:
        labels = {NODE_LABEL: tenant} if tenant else {}
        snapshot.add_node(name, cpu_milli=4000, memory=8 * GIB, labels=labels)
    return snapshot


def pod(tenant: str | None) -> PodRequest:
    labels = (("tenant", tenant),) if tenant else ()
    return replace(PodRequest(cpu_milli=1000), attributes=PodAttributes(labels=labels))


def test_passes_the_conformance_suite() -> None:
    check_policy(create)


def test_a_tenants_pod_prefers_its_nodes_then_untenanted_ones() -> None:
    scores = TenantAffinity().score(cluster(), pod("a"))
    assert scores.tolist() == [100.0, 0.0, 50.0]


def test_a_pod_of_no_tenant_keeps_off_tenants_nodes() -> None:
    assert TenantAffinity().score(cluster(), pod(None)).tolist() == [50.0, 50.0, 100.0]


def test_a_tenant_with_no_nodes_prefers_untenanted_ones() -> None:
    scores = TenantAffinity().score(cluster(), pod("c"))
    assert scores.tolist() == [0.0, 0.0, 50.0]


def test_without_attributes_it_scores_like_a_pod_of_no_tenant() -> None:
    scores = TenantAffinity().score(cluster(), PodRequest(cpu_milli=1000))
    assert np.array_equal(scores, [50.0, 50.0, 100.0])
