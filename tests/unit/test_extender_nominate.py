from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ConfigError, ExtenderSettings, PolicyWeight, load_settings
from extender.nominate import Nominator
from extender.verbs import Verbs
from extender.wire import ExtenderArgs
from kube import api
from kube.api import SCHEDULER_NAME
from kube.resources import BIND
from policies.registry import default_registry
from scheduler.snapshot import CPU_COL
from tests import builders
from tests.builders import node

pod = functools.partial(builders.pod, scheduler=SCHEDULER_NAME)
SETTINGS = ExtenderSettings(
    prioritize=(PolicyWeight(policy="MostAllocated", weight=1),), nominate=True
)


class Sink:
    """Records the nominations it is asked to write (``extender.events.EventSink``)."""

    def __init__(self) -> None:
        self.nominated: dict[str, str] = {}

    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        raise AssertionError("no events here")

    async def nominate(self, namespace: str, name: str, uid: str, node: str) -> None:
        self.nominated[f"{namespace}/{name}"] = node


class Binder:
    """A binder never called: kube-scheduler binds the pods nominated (``extender.bind.Binder``)."""

    async def bind(self, *args: object) -> None:
        raise AssertionError("no binds here")

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        raise AssertionError("no binds here")

    async def allocate_ip(self, *args: object) -> str:
        raise AssertionError("no IP pools here")


def setup(*nodes: dict[str, Any]) -> tuple[ClusterCache, Verbs, Nominator]:
    cache = ClusterCache()
    for item in nodes:
        cache.apply("nodes", "ADDED", item)
    verbs = Verbs(SETTINGS, cache, Binder())
    nominator = Nominator(cache, verbs.decider, Sink(), SCHEDULER_NAME, binds=verbs.fulcrum_binds)
    return cache, verbs, nominator


def used_cpu(cache: ClusterCache, name: str) -> int:
    row = cache.snapshot.index_of(name)
    return int(cache.snapshot.allocatable[row, CPU_COL] - cache.snapshot.free[row, CPU_COL])


def picks(nominator: Nominator) -> dict[str, str]:
    return {p.uid: n for p, n in nominator.decide()}


def test_arrivals_are_decided_in_turn_each_around_the_last() -> None:
    """Each pick is charged at once: the third pod no longer fits the node the first two
    filled, as kube-scheduler's accounting of nominated pods has it too."""
    cache, _, nominator = setup(node("n1"), node("n2"))
    cache.apply("pods", "ADDED", pod("busy", node_name="n2", phase="Running"))
    for uid in ("a", "b", "c"):
        cache.apply("pods", "ADDED", pod(uid, cpu="2"))
    assert picks(nominator) == {"a": "n2", "b": "n1", "c": "n1"}  # MostAllocated, then full
    assert used_cpu(cache, "n1") == 4000 and used_cpu(cache, "n2") == 3000
    assert not cache.arrivals and not picks(nominator)  # each pod decided once


def test_the_filter_lifts_the_charge_and_decides_over_the_names_sent() -> None:
    """kube-scheduler sends the nominated node alone when it fits, else the others: a node
    that filled meanwhile is not chosen."""
    cache, verbs, nominator = setup(node("n1"), node("n2"))
    cache.apply("pods", "ADDED", pod("a", cpu="3"))
    assert picks(nominator) == {"a": "n1"}
    filtered = asyncio.run(verbs.filter(ExtenderArgs(Pod=pod("a", cpu="3"), NodeNames=["n1"])))
    assert filtered.NodeNames == ["n1"] and used_cpu(cache, "n1") == 3000  # charged once

    cache.apply("pods", "ADDED", pod("b", cpu="3"))
    assert picks(nominator) == {"b": "n2"}
    cache.apply("pods", "ADDED", pod("filler", cpu="2", node_name="n2", phase="Running"))
    sent = ExtenderArgs(Pod=pod("b", cpu="3"), NodeNames=["n1", "n2"])
    assert asyncio.run(verbs.filter(sent)).NodeNames == []  # neither fits now: 1 + 2 cpu free
    assert used_cpu(cache, "n2") == 2000  # b's nomination no longer charged


def test_the_charge_goes_with_the_binding_or_the_pod() -> None:
    cache, _, nominator = setup(node("n1"))
    cache.apply("pods", "ADDED", pod("a"))
    cache.apply("pods", "ADDED", pod("b"))
    assert picks(nominator) == {"a": "n1", "b": "n1"}
    cache.apply("pods", "MODIFIED", pod("a", node_name="n1", phase="Running"))
    assert used_cpu(cache, "n1") == 2000  # a once, bound; b nominated
    cache.apply("pods", "DELETED", pod("b"))
    assert used_cpu(cache, "n1") == 1000
    cache.replace("pods", [pod("a", node_name="n1", phase="Running")])
    assert used_cpu(cache, "n1") == 1000


def test_only_pods_kube_scheduler_binds_of_its_profile_are_nominated() -> None:
    cache, _, nominator = setup(node("n1"))
    gpu_like = pod("marked")
    gpu_like["spec"]["containers"][0]["resources"]["requests"][BIND] = "1"
    successor = pod("successor", annotations={api.REBUILD: "true"})
    cache.apply("pods", "ADDED", gpu_like)
    cache.apply("pods", "ADDED", successor)
    cache.apply("pods", "ADDED", builders.pod("other", scheduler="default-scheduler"))
    nominated = pod("preempting")
    nominated["status"] = {"nominatedNodeName": "n1"}
    cache.apply("pods", "ADDED", nominated)
    cache.apply("pods", "ADDED", pod("plain"))
    assert picks(nominator) == {"plain": "n1"}


def test_no_arrivals_are_kept_without_a_nominator() -> None:
    cache = ClusterCache()
    cache.apply("pods", "ADDED", pod("a"))
    assert not cache.arrivals


def test_the_app_writes_the_nominations_in_the_background() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    sink = Sink()
    app = create_app(SETTINGS, cache, events=sink)

    async def serve_a_while() -> None:
        async with app.router.lifespan_context(app):
            cache.apply("pods", "ADDED", pod("a"))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if sink.nominated:
                    return

    asyncio.run(serve_a_while())
    assert sink.nominated == {"ns/a": "n1"}


def test_nominations_need_kube_scheduler_to_bind(tmp_path: Any) -> None:
    path = tmp_path / "extender.yaml"
    path.write_text("nominate: true\nbindAll: true\n")
    with pytest.raises(ConfigError, match="nominate: true nominates only pods kube-scheduler"):
        load_settings(path, default_registry())
