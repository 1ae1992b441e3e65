"""The decision record: noted at filter (and prioritize), written on the binding, bounded."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

import numpy as np
import orjson

from extender import record
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from extender.verbs import Verbs
from extender.wire import ExtenderArgs, ExtenderBindingArgs
from kube.api import DECISION, SCHEDULER_NAME
from tests import builders
from tests.builders import node

# the pods of the scheduler that calls the extender: bind serves no other
pod = functools.partial(builders.pod, scheduler=SCHEDULER_NAME)


class RecordingBinder:
    def __init__(self) -> None:
        self.annotations: dict[str, dict[str, str]] = {}

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        self.annotations[uid] = annotations

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        raise AssertionError("no conflicts here")

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        raise AssertionError("no IP pools here")


def cluster(decide_in_filter: bool) -> tuple[Verbs, RecordingBinder]:
    cache = ClusterCache()
    for item in (node("n1"), node("n2"), node("n3"), node("small", cpu="1")):
        cache.apply("nodes", "ADDED", item)
    cache.apply("nodes", "ADDED", node("off", cordoned=True))
    cache.apply("pods", "ADDED", pod("busy", node_name="n2", cpu="1"))
    cache.apply("pods", "ADDED", pod("full", node_name="n3", cpu="3"))
    settings = ExtenderSettings(
        prioritize=(PolicyWeight(policy="MostAllocated", weight=1),),
        decide_in_filter=decide_in_filter,
        bind_all=True,  # the record rides on Fulcrum's bind
    )
    binder = RecordingBinder()
    return Verbs(settings, cache, binder), binder


def place(verbs: Verbs, binder: RecordingBinder, chosen: str | None = None) -> dict[str, object]:
    """Filter (and prioritize, when filter leaves a choice) then bind pod ``p``."""
    p = pod("p", cpu="2")
    names = ["n1", "n2", "n3", "small", "off"]
    passed = asyncio.run(verbs.filter(ExtenderArgs(Pod=p, NodeNames=names))).NodeNames or []
    if len(passed) > 1:
        verbs.prioritize(ExtenderArgs(Pod=p, NodeNames=passed))
    target = chosen or passed[0]
    args = ExtenderBindingArgs(PodName="p", PodNamespace="ns", PodUID="p", Node=target)
    assert asyncio.run(verbs.bind(args)).Error == ""
    written: dict[str, object] = orjson.loads(binder.annotations["p"][DECISION])
    return written


def test_a_bind_writes_why_its_node_was_chosen_with_the_runner_up_and_the_failures() -> None:
    verbs, binder = cluster(decide_in_filter=True)

    written = place(verbs, binder)

    assert written == {
        "policy": "MostAllocated",
        "node": "n2",  # the busier of the two that fit: 3000m of 4000m
        "feasible": 2,
        "nodes": 5,
        "score": 75.0,
        "runnerUp": {"node": "n1", "score": 50.0},
        "failed": {
            "Insufficient cpu: the pod requests 2000m": 1,
            "node's whole allocatable cpu is less than the pod's request 2000m": 1,
            "node is cordoned (spec.unschedulable)": 1,
        },
    }
    assert len(verbs.records) == 0  # taken by the bind


def test_with_prioritize_the_record_names_the_node_kube_scheduler_bound() -> None:
    verbs, binder = cluster(decide_in_filter=False)

    written = place(verbs, binder, chosen="n1")  # kube-scheduler's own scores may differ

    assert written["node"] == "n1" and written["score"] == 50.0
    assert written["runnerUp"] == {"node": "n2", "score": 75.0}
    assert written["feasible"] == 2


def test_the_record_is_bounded() -> None:
    reasons = [f"reason {i} " + "x" * 500 for i in range(50)]
    decision = record.Decision(
        "MostAllocated",
        5000,
        0,
        ranked=(),
        failed=record.counted((reason, 3) for reason in reasons),
    )
    assert len(decision.annotation("n" * 253)) < 1500

    notes = record.Records()
    for i in range(record.REMEMBERED + 10):
        notes.note(f"u{i}", decision)
    assert len(notes) == record.REMEMBERED
    assert notes.take("u0", "n") == {}  # the oldest went first
    assert DECISION in notes.take(f"u{record.REMEMBERED + 9}", "n")


def test_a_bound_node_outside_the_best_three_still_gets_its_score() -> None:
    verbs, binder = cluster(decide_in_filter=False)
    for name in ("m1", "m2", "m3"):  # three more nodes busier than n1
        assert verbs.cache is not None
        verbs.cache.apply("nodes", "ADDED", node(name))
        verbs.cache.apply("pods", "ADDED", pod(f"on-{name}", node_name=name, cpu="1"))
    p = pod("p", cpu="2")
    names = ["n1", "n2", "m1", "m2", "m3"]
    asyncio.run(verbs.filter(ExtenderArgs(Pod=p, NodeNames=names)))
    verbs.prioritize(ExtenderArgs(Pod=p, NodeNames=names))
    bind = ExtenderBindingArgs(PodName="p", PodNamespace="ns", PodUID="p", Node="n1")
    assert asyncio.run(verbs.bind(bind)).Error == ""

    written = orjson.loads(binder.annotations["p"][DECISION])
    assert written["node"] == "n1" and written["score"] == 50.0
    assert written["runnerUp"] == {"node": "n2", "score": 75.0}


def test_the_record_can_be_turned_off() -> None:
    verbs, binder = cluster(decide_in_filter=True)
    verbs.settings = verbs.settings.model_copy(update={"decision_record": False})
    p = pod("p", cpu="2")
    asyncio.run(verbs.filter(ExtenderArgs(Pod=p, NodeNames=["n1", "n2"])))
    bind = ExtenderBindingArgs(PodName="p", PodNamespace="ns", PodUID="p", Node="n2")
    assert asyncio.run(verbs.bind(bind)).Error == ""
    assert DECISION not in binder.annotations["p"] and len(verbs.records) == 0


def test_the_ranking_lists_the_chosen_node_first_among_equals() -> None:
    names = ["n0", "n1", "n2", "n3"]
    rows, scores = np.array([3, 0, 2, 1]), np.array([50.0, 50.0, 70.0, 50.0])
    top = [n for n, _ in record.ranked(names, rows, scores, chosen=3)]
    assert top == ["n2", "n3", "n0"]  # the best RANKED (3)
