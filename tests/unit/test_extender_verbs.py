"""The verbs without HTTP: wire models in, results out."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from extender import verbs as verbs_module
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from extender.rebuild_gate import RebuildGate
from extender.verbs import BadRequest, Verbs
from extender.wire import ExtenderArgs, ExtenderBindingArgs, ExtenderPreemptionArgs
from kube.api import SCHEDULER_NAME
from kube.resources import BIND
from tests import builders
from tests.builders import node

# the pods of the scheduler that calls the extender: bind serves no other
pod = functools.partial(builders.pod, scheduler=SCHEDULER_NAME)

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
    gate = RebuildGate(ClusterCache())
    with pytest.raises(ValueError, match="observe"):
        Verbs(SETTINGS, ClusterCache(), gate=gate)


class Binder:
    """Records the binds it is asked for (``extender.bind.Binder``)."""

    def __init__(self) -> None:
        self.bound: dict[str, str] = {}

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        self.bound[uid] = node

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        raise AssertionError("no conflicts here")

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: object
    ) -> str:
        raise AssertionError("no IP pools here")


def marked(p: dict[str, Any]) -> dict[str, Any]:
    """``p`` as the admission webhook leaves a pod only Fulcrum's bind can bind."""
    p["spec"]["containers"][0]["resources"]["limits"] = {BIND: "1"}
    p["spec"]["containers"][0]["resources"]["requests"][BIND] = "1"
    return p


def filtered(verbs: Verbs, p: dict[str, Any], names: list[str]) -> list[str]:
    return asyncio.run(verbs.filter(ExtenderArgs(Pod=p, NodeNames=names))).NodeNames or []


def test_a_pod_kube_scheduler_binds_is_charged_at_filter_until_asked_again() -> None:
    """The next pod's filter sees the first before any watch event; a pod asked about again
    was not bound where filter said, so its charge is lifted first."""
    cache = cache_of(node("n1"), node("n2"))
    verbs = Verbs(SETTINGS, cache, Binder())
    first, second = pod("a", cpu="3"), pod("b", cpu="3")
    assert filtered(verbs, first, ["n1", "n2"]) == ["n1"]
    assert cache.bound_node("a") == "n1"
    assert filtered(verbs, second, ["n1", "n2"]) == ["n2"]  # n1 has 1 cpu left
    assert filtered(verbs, first, ["n1", "n2"]) == ["n1"]  # asked again: n1 free again for it
    assert cache.bound_node("a") == "n1"
    cache.apply("pods", "MODIFIED", pod("a", cpu="3", node_name="n1"))  # kube-scheduler bound it
    assert cache.bound_node("a") == "n1"


def test_a_charge_no_watch_confirms_is_lifted_after_a_while(monkeypatch: Any) -> None:
    cache = cache_of(node("n1"), node("n2"))
    verbs = Verbs(SETTINGS, cache, Binder())
    assert filtered(verbs, pod("a", cpu="3"), ["n1", "n2"]) == ["n1"]
    cache.apply("pods", "MODIFIED", pod("b", cpu="2", node_name="n2"))
    later = time.monotonic() + verbs_module.ASSUMED_SECONDS + 1
    monkeypatch.setattr(verbs_module.time, "monotonic", lambda: later)
    assert filtered(verbs, pod("c", cpu="3"), ["n1", "n2"]) == ["n1"]  # "a" never came
    assert cache.bound_node("a") is None


def test_fulcrum_binds_marked_pods_and_refuses_unmarked_ones_that_need_it() -> None:
    cache = cache_of(node("n1", gpus=2), node("n2"))
    binder = Binder()
    verbs = Verbs(SETTINGS, cache, binder)
    gpu = pod("g", requests={"nvidia.com/gpu": "1"})
    result = asyncio.run(verbs.filter(ExtenderArgs(Pod=gpu, NodeNames=["n1", "n2"])))
    assert result.NodeNames == []
    reason = result.FailedAndUnresolvableNodes["n1"]
    assert "GPUs" in reason and BIND in reason and "admission webhook" in reason
    gpu = marked(pod("g", name="g", requests={"nvidia.com/gpu": "1"}))  # created anew, marked
    gpu["metadata"]["uid"] = "g2"
    assert filtered(verbs, gpu, ["n1", "n2"]) == ["n1"]
    assert cache.bound_node("g2") is None  # charged by its bind, not at filter
    bind = ExtenderBindingArgs(PodName="g", PodNamespace="ns", PodUID="g2", Node="n1")
    assert asyncio.run(verbs.bind(bind)).Error == ""
    assert binder.bound == {"g2": "n1"} and cache.bound_node("g2") == "n1"


def test_a_pod_charged_at_filter_and_still_sent_to_bind_is_bound() -> None:
    """A scheduler configuration with bind for every pod, and an extender set for the split:
    the pod is bound all the same, never left charged and unbound."""
    cache = cache_of(node("n1"))
    binder = Binder()
    verbs = Verbs(SETTINGS, cache, binder)
    assert filtered(verbs, pod("a"), ["n1"]) == ["n1"]
    bind = ExtenderBindingArgs(PodName="a", PodNamespace="ns", PodUID="a", Node="n1")
    assert asyncio.run(verbs.bind(bind)).Error == ""
    assert binder.bound == {"a": "n1"}


@pytest.mark.parametrize(
    ("namespace", "name", "uid", "refusal"),
    [
        ("ns", "stranger", "stranger", "is not a pending pod Fulcrum's cache knows"),
        ("ns", "other", "other", "schedulerName 'default-scheduler'"),
        ("ns", "none", "none", "schedulerName '(none)'"),
        ("ns", "someone-else", "a", "uid a is pod ns/a, not ns/someone-else"),
        ("ns", "a/../../secrets/x", "a", "pod name 'a/../../secrets/x' is not a DNS subdomain"),
        ("kube-system/pods", "a", "a", "pod namespace 'kube-system/pods' is not a DNS label"),
        ("ns", "A", "a", "pod name 'A' is not a DNS subdomain"),
    ],
)
def test_bind_serves_only_known_pods_of_its_scheduler(
    namespace: str, name: str, uid: str, refusal: str
) -> None:
    cache = cache_of(node("n1"))
    cache.apply("pods", "ADDED", pod("a"))
    cache.apply("pods", "ADDED", builders.pod("other", scheduler="default-scheduler"))
    cache.apply("pods", "ADDED", builders.pod("none"))
    binder = Binder()
    verbs = Verbs(SETTINGS, cache, binder)
    bind = ExtenderBindingArgs(PodName=name, PodNamespace=namespace, PodUID=uid, Node="n1")
    error = asyncio.run(verbs.bind(bind)).Error
    assert error.startswith("bind refused: ") and refusal in error, error
    assert binder.bound == {}
    assert cache.bound_node(uid) is None
    ok = ExtenderBindingArgs(PodName="a", PodNamespace="ns", PodUID="a", Node="n1")
    assert asyncio.run(verbs.bind(ok)).Error == ""  # the pod refused under another name: intact
    assert binder.bound == {"a": "n1"}


def test_bind_serves_the_scheduler_named_in_the_configuration() -> None:
    cache = cache_of(node("n1"))
    cache.apply("pods", "ADDED", builders.pod("a", scheduler="canary-scheduler"))
    binder = Binder()
    verbs = Verbs(SETTINGS.model_copy(update={"scheduler_name": "canary-scheduler"}), cache, binder)
    bind = ExtenderBindingArgs(PodName="a", PodNamespace="ns", PodUID="a", Node="n1")
    assert asyncio.run(verbs.bind(bind)).Error == ""
    assert binder.bound == {"a": "n1"}
