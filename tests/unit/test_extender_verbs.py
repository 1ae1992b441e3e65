"""The verbs without HTTP: wire models in, results out."""

from __future__ import annotations

import asyncio

import pytest

from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from extender.rebuild_gate import RebuildGate
from extender.verbs import BadRequest, Verbs
from extender.wire import ExtenderArgs, ExtenderBindingArgs, ExtenderPreemptionArgs
from kube.hooks import default_hook_registry
from tests.builders import node, pod

SETTINGS = ExtenderSettings(prioritize=(PolicyWeight(policy="MostAllocated", weight=1),))


def cache_of(*nodes: dict[str, object]) -> ClusterCache:
    cache = ClusterCache()
    for item in nodes:
        cache.apply("nodes", "ADDED", item)
    return cache


def test_filter_picks_one_node_and_prioritize_scores_every_node() -> None:
    cache = cache_of(node("n1"), node("n2"), node("small", cpu="1"))
    cache.apply("pods", "ADDED", pod("busy", node_name="n2"))
    verbs = Verbs(SETTINGS, cache)
    args = ExtenderArgs(Pod=pod("p", cpu="2"), NodeNames=["n1", "n2", "small"])

    result = asyncio.run(verbs.filter(args))

    assert result.NodeNames == ["n2"]  # MostAllocated: the busier node that fits
    # cpu requested after the pod: n1 2000m of 4000m = 50, n2 3000m of 4000m = 75;
    # min-max to 0..10: n1 0, n2 10
    scored = ExtenderArgs(Pod=args.Pod, NodeNames=["n1", "n2"])
    assert verbs.prioritize(scored) == [("n1", 0), ("n2", 10)]


def test_bind_and_preempt_need_a_cluster() -> None:
    verbs = Verbs(SETTINGS)
    with pytest.raises(BadRequest) as bind:
        asyncio.run(
            verbs.bind(ExtenderBindingArgs(PodName="p", PodNamespace="ns", PodUID="u", Node="n"))
        )
    assert bind.value.status == 400 and "--kubeconfig" in bind.value.message
    with pytest.raises(BadRequest) as preempt:
        verbs.preempt(ExtenderPreemptionArgs(Pod=pod("p")))
    assert preempt.value.status == 400 and "--kubeconfig" in preempt.value.message


def test_a_gate_must_observe_the_verbs_cache() -> None:
    gate = RebuildGate(ClusterCache(), default_hook_registry(plugins=False))
    with pytest.raises(ValueError, match="observe"):
        Verbs(SETTINGS, ClusterCache(), gate=gate)
