"""scheduler.attributes: what policies may read beyond resources, kept only when declared, and
the extender's guard against a policy that raises or returns bad scores."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.decide import Decider, WeightedPolicy, declared_reads
from extender.verbs import Verbs
from extender.wire import ExtenderArgs, ExtenderBindingArgs
from kube.resources import QuantityError, node_spec, pod_request
from policies.base import PolicyBase
from policies.registry import BUILTIN, Registry
from scheduler.attributes import NOTHING, ZONE, PodAttributes, Reads, Taint, reads_of
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext, score_problem
from scheduler.score_cache import ScoreCache
from scheduler.snapshot import Snapshot
from tests.builders import node, pod

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
for example in ("fulcrum-tenant-affinity", "fulcrum-zone-spread"):
    sys.path.insert(0, str(EXAMPLES / example / "src"))

from fulcrum_tenant_affinity.policy import TenantAffinity  # noqa: E402
from fulcrum_zone_spread.policy import ZoneSpread  # noqa: E402

GIB = 1 << 30
TENANT = "fulcrum.io/tenant"


def rs(name: str) -> dict[str, Any]:
    return {"kind": "ReplicaSet", "name": name, "uid": f"uid-{name}", "controller": True}


# --- the snapshot keeps labels, taints and owners in step with its rows ---------------------


def test_label_columns_follow_the_rows_through_updates_removals_and_subsets() -> None:
    snapshot = Snapshot()
    for name, zone in [("n0", "a"), ("n1", "b"), ("n2", None), ("n3", "a")]:
        snapshot.add_node(name, cpu_milli=1000, memory=GIB, labels={ZONE: zone} if zone else {})
    column = snapshot.label_column(ZONE)
    assert column.values == ("a", "b")
    assert column.codes.tolist() == [0, 1, -1, 0]
    assert column.equals("a").tolist() == [True, False, False, True]
    assert not column.equals("nowhere").any()
    snapshot.update_node("n2", cpu_milli=1000, memory=GIB, labels={ZONE: "c"})
    assert [snapshot.label_column(ZONE).values[c] for c in snapshot.label_column(ZONE).codes] == [
        "a",
        "b",
        "c",
        "a",
    ]
    snapshot.remove_node("n0")  # the last row moves into its place
    column = snapshot.label_column(ZONE)
    assert [column.values[c] for c in column.codes] == ["a", "b", "c"]
    assert snapshot.names == ["n3", "n1", "n2"]
    sub = snapshot.take(np.array([2, 0]))
    assert [sub.label_column(ZONE).values[c] for c in sub.label_column(ZONE).codes] == ["c", "a"]
    assert snapshot.label_column("undeclared").codes.tolist() == [-1, -1, -1]


def test_owner_counts_follow_assign_release_copy_and_node_removal() -> None:
    snapshot = Snapshot()
    for name in ("n0", "n1"):
        snapshot.add_node(name, cpu_milli=8000, memory=8 * GIB)
    mine = replace(PodRequest(cpu_milli=100), attributes=PodAttributes(owner_uid="rs-1"))
    other = replace(PodRequest(cpu_milli=100), attributes=PodAttributes(owner_uid="rs-2"))
    snapshot.assign("p1", mine, "n0")
    snapshot.assign("p2", mine, "n1")
    snapshot.assign("p3", mine, "n1")
    snapshot.assign("p4", other, "n1")
    snapshot.assign("p5", PodRequest(cpu_milli=100), "n0")
    assert snapshot.owner_counts("rs-1").tolist() == [1, 2]
    copy = snapshot.copy()
    snapshot.release("p2")
    assert snapshot.owner_counts("rs-1").tolist() == [1, 1]
    assert copy.owner_counts("rs-1").tolist() == [1, 2]
    snapshot.remove_node("n0")
    assert snapshot.owner_counts("rs-1").tolist() == [1]
    assert snapshot.owner_counts("nobody").tolist() == [0]


def test_taints_are_kept_per_node() -> None:
    snapshot = Snapshot()
    snapshot.add_node("n0", cpu_milli=1, memory=1, taints=[Taint("gpu", "yes", "NoSchedule")])
    snapshot.add_node("n1", cpu_milli=1, memory=1, taints=[Taint("gpu", "", "PreferNoSchedule")])
    assert snapshot.has_taint("gpu").tolist() == [True, False]
    assert snapshot.taints(1) == (Taint("gpu", "", "PreferNoSchedule"),)


# --- only what a configured policy declared is parsed and kept ------------------------------


def test_nodes_carry_only_the_declared_labels_and_taints() -> None:
    raw = node("n0", labels={ZONE: "a", TENANT: "x", "other": "y"})
    raw["spec"] = {"taints": [{"key": "k", "effect": "NoExecute"}]}
    assert "labels" not in node_spec(raw) and "taints" not in node_spec(raw)
    spec = node_spec(raw, Reads(labels=frozenset({ZONE, "absent"}), taints=True))
    assert spec["labels"] == {ZONE: "a"}
    assert spec["taints"] == [Taint("k", "", "NoExecute")]
    raw["spec"] = {"taints": [{"effect": "NoExecute"}]}
    with pytest.raises(QuantityError, match=r"spec.taints\[0\].key"):
        node_spec(raw, Reads(taints=True))


def test_a_pod_carries_its_attributes_only_when_a_policy_reads_them() -> None:
    raw = pod("u1", namespace="team", labels={"tenant": "a"}, owners=[rs("web-1")])
    raw["spec"]["priority"] = 1000
    assert pod_request(raw).attributes is None
    attributes = pod_request(raw, Reads(pod=True)).attributes
    assert attributes == PodAttributes(
        "team", (("tenant", "a"),), 1000, "ReplicaSet", "web-1", "uid-web-1"
    )
    assert attributes.owner == "uid-web-1" and attributes.label("tenant") == "a"
    assert pod_request(raw) == pod_request(raw, Reads(pod=True))  # attributes are not the shape
    raw["spec"]["priority"] = "high"
    with pytest.raises(QuantityError, match=r"spec\.priority"):
        pod_request(raw, Reads(pod=True))


def test_reads_combine_and_a_bad_declaration_names_the_policy() -> None:
    registry = Registry(dict(BUILTIN) | {"TenantAffinity": lambda c: TenantAffinity()})
    assert declared_reads(registry, ["Archimedes", "MostAllocated"]) == NOTHING
    both = declared_reads(registry, ["Archimedes", "TenantAffinity"])
    assert both == Reads(labels=frozenset({TENANT}), pod=True)
    assert both.describe() == f"labels {TENANT}; pod" and NOTHING.describe() == "resources only"

    class Bad(PolicyBase):
        name = "Bad"
        reads = (ZONE,)  # type: ignore[assignment]

    with pytest.raises(TypeError, match="policy 'Bad': reads must be"):
        reads_of(Bad())


def test_score_cache_rescores_policies_that_read_attributes() -> None:
    snapshot = Snapshot()
    snapshot.add_node("n0", cpu_milli=4000, memory=GIB, labels={TENANT: "a"})
    snapshot.add_node("n1", cpu_milli=4000, memory=GIB, labels={TENANT: "b"})
    cache, policy = ScoreCache(), TenantAffinity()
    for tenant, want in (("a", [100.0, 0.0]), ("b", [0.0, 100.0])):
        shape = replace(
            PodRequest(cpu_milli=1), attributes=PodAttributes(labels=(("tenant", tenant),))
        )
        assert cache.scores(policy, snapshot, shape).tolist() == want


# --- through the extender's cache and decider -------------------------------------------------


def decider(
    policies: dict[str, Callable[[PolicyContext], Any]], weights: dict[str, float]
) -> Decider:
    registry = Registry(dict(BUILTIN) | policies)
    reads = declared_reads(registry, weights)
    cache = ClusterCache(reads)
    return Decider(cache, registry, [WeightedPolicy(n, w) for n, w in weights.items()])


def place(d: Decider, raw: dict[str, Any]) -> str:
    assert d.cache is not None
    request = pod_request(raw, d.reads)
    out = d.filter(d.cache.snapshot, request, d.cache.node_names(), choose=True)
    [chosen] = out.passed
    raw["spec"]["nodeName"] = chosen
    d.cache.upsert_pod(raw)
    return chosen


def test_tenant_affinity_at_weight_10_keeps_a_tenants_pods_on_its_nodes_while_they_fit() -> None:
    d = decider(
        {"TenantAffinity": lambda c: TenantAffinity()}, {"TenantAffinity": 10, "Archimedes": 1}
    )
    assert d.cache is not None
    for name, tenant in [
        ("a-0", "a"),
        ("a-1", "a"),
        ("b-0", "b"),
        ("free-0", None),
        ("free-1", None),
    ]:
        d.cache.upsert_node(
            node(name, cpu="4", memory="8Gi", labels={TENANT: tenant} if tenant else {})
        )
    placed = [place(d, pod(f"u{i}", cpu="1", labels={"tenant": "a"})) for i in range(10)]
    assert all(n.startswith("a-") for n in placed[:8])  # 2 nodes x 4 cpu
    assert all(n.startswith("free-") for n in placed[8:])  # then untenanted, never b's


def test_zone_spread_spreads_a_replica_sets_pods_over_zones_through_the_cache() -> None:
    d = decider({"ZoneSpread": lambda c: ZoneSpread()}, {"ZoneSpread": 10, "Archimedes": 1})
    assert d.cache is not None
    for zone in "abc":
        for i in range(2):
            d.cache.upsert_node(node(f"{zone}-{i}", cpu="8", memory="16Gi", labels={ZONE: zone}))
    placed = [place(d, pod(f"u{i}", cpu="1", owners=[rs("web-1")])) for i in range(6)]
    assert Counter(n[0] for n in placed) == {"a": 2, "b": 2, "c": 2}


def test_verbs_refuse_a_cache_that_does_not_keep_what_the_policies_read() -> None:
    registry = Registry(dict(BUILTIN) | {"ZoneSpread": lambda c: ZoneSpread()})
    settings = ExtenderSettings.model_validate({"prioritize": [{"policy": "ZoneSpread"}]})
    with pytest.raises(ValueError, match="the cache keeps resources only, the policies read"):
        Verbs(settings, ClusterCache(), registry=registry)


# --- a broken policy never takes the extender down --------------------------------------------


class Broken(PolicyBase):
    name = "Broken"

    def __init__(self, scores: Callable[[int], object]) -> None:
        self.make = scores

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        return self.make(snapshot.num_nodes)  # type: ignore[return-value]


def _raise(n: int) -> object:
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("scores", "problem"),
    [
        (lambda n: np.zeros(n + 1), "shape"),
        (lambda n: np.zeros((n, 2)), "shape"),
        (lambda n: np.full(n, np.nan), "NaN"),
        (lambda n: np.full(n, 101.0), "out of 0..100"),
        (lambda n: np.full(n, -1.0), "out of 0..100"),
        (_raise, "RuntimeError: boom"),
    ],
)
def test_bad_scores_are_left_out_counted_and_named(
    scores: Callable[[int], object], problem: str
) -> None:
    d = decider({"Broken": lambda c: Broken(scores)}, {"Broken": 5, "MostAllocated": 1})
    assert d.cache is not None
    failures: list[tuple[str, str]] = []
    d.on_failure = lambda policy, why: failures.append((policy, why))
    d.cache.upsert_node(node("empty", cpu="8"))
    d.cache.upsert_node(node("busy", cpu="8"))
    d.cache.upsert_pod(pod("warm", cpu="4", node_name="busy"))
    assert place(d, pod("p", cpu="1")) == "busy"  # MostAllocated alone decided
    assert failures and failures[0][0] == "Broken" and problem in failures[0][1]


def test_a_filter_that_raises_vetoes_nothing() -> None:
    class BadFilter(PolicyBase):
        name = "BadFilter"

        def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
            return np.zeros(snapshot.num_nodes)

        def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
            raise KeyError("label")

    d = decider({"BadFilter": lambda c: BadFilter()}, {"BadFilter": 1})
    assert d.cache is not None
    d.cache.upsert_node(node("n0"))
    assert place(d, pod("p")) == "n0"


def test_score_problem_accepts_good_scores() -> None:
    assert score_problem(np.array([0.0, 100.0]), 2) == ""
    assert score_problem(np.zeros(0), 0) == ""
    assert "real numbers" in score_problem(np.array(["a"]), 1)


class Binder:
    """pods/binding that always succeeds (Fulcrum binds: bindAll)."""

    async def bind(self, namespace: str, name: str, uid: str, node: str, annotations: Any) -> None:
        pass

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        return "", ""

    async def allocate_ip(self, *args: Any) -> str:
        raise AssertionError("no IP pools here")


def test_the_next_filter_sees_a_pick_whose_bind_has_not_come_yet() -> None:
    """kube-scheduler binds asynchronously: with Fulcrum binding (bindAll), the second
    replica's filter may come before the first's bind, and still counts it in its zone."""
    registry = Registry(dict(BUILTIN) | {"ZoneSpread": lambda c: ZoneSpread()})
    settings = ExtenderSettings.model_validate(
        {"prioritize": [{"policy": "ZoneSpread"}], "bindAll": True}
    )
    cache = ClusterCache(declared_reads(registry, ["ZoneSpread"]))
    for zone in "ab":
        cache.upsert_node(node(f"{zone}-0", cpu="8", memory="16Gi", labels={ZONE: zone}))
    verbs = Verbs(settings, cache, Binder(), registry=registry)
    names = ["a-0", "b-0"]
    replicas = [
        pod(f"u{i}", name=f"web-{i}", owners=[rs("web")], scheduler="fulcrum-scheduler")
        for i in range(2)
    ]
    for raw in replicas:
        cache.upsert_pod(raw)
    picks = [
        (asyncio.run(verbs.filter(ExtenderArgs(Pod=raw, NodeNames=names))).NodeNames or [""])[0]
        for raw in replicas
    ]
    assert sorted(picks) == names  # one per zone, though neither is bound yet
    for raw, node_name in zip(replicas, picks, strict=True):
        meta = raw["metadata"]
        args = ExtenderBindingArgs(
            PodName=meta["name"], PodNamespace="ns", PodUID=meta["uid"], Node=node_name
        )
        assert asyncio.run(verbs.bind(args)).Error == ""
    assert cache.snapshot.owner_counts("uid-web").tolist() == [1, 1]  # charged once each
