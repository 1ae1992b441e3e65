"""Upstream parity: LeastAllocated, MostAllocated, RequestedToCapacityRatio.

Worked examples in the style of kube-scheduler's own table tests. Cluster:

    node   allocatable cpu / memory   already requested   incoming pod
    a      4000 / 10000               1000 / 2000         2000 / 3000
    b      6000 / 10000               0 / 0               2000 / 3000
    c      1000 / 10000               0 / 0               2000 / 3000   (cpu over capacity)

so "requested" (existing + pod) is a: 3000/5000, b: 2000/3000, c: 2000/3000.
Memory is in bytes here; the arithmetic does not care about units.
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.least_allocated import LeastAllocated, LeastAllocatedArgs
from policies.most_allocated import MostAllocated
from policies.requested_to_capacity_ratio import (
    RequestedToCapacityRatio,
    RequestedToCapacityRatioArgs,
    ShapePoint,
)
from policies.resource_allocation import ResourceWeight
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

POD = PodRequest(cpu_milli=2000, memory=3000)


def cluster() -> Snapshot:
    s = Snapshot()
    s.add_node("a", cpu_milli=4000, memory=10000)
    s.add_node("b", cpu_milli=6000, memory=10000)
    s.add_node("c", cpu_milli=1000, memory=10000)
    s.assign("existing", PodRequest(cpu_milli=1000, memory=2000), "a")
    return s


def test_least_allocated_default_weights() -> None:
    # a: cpu (4000-3000)*100/4000 = 25, mem (10000-5000)*100/10000 = 50 -> (25+50)/2 = 37
    # b: cpu (6000-2000)*100/6000 = 66, mem (10000-3000)*100/10000 = 70 -> (66+70)/2 = 68
    # c: cpu requested > capacity -> 0,  mem 70                        -> (0+70)/2  = 35
    assert LeastAllocated().score(cluster(), POD).tolist() == [37, 68, 35]


def test_least_allocated_weighted() -> None:
    # a: (25*3 + 50*1) / 4 = 125/4 = 31;  b: (66*3 + 70) / 4 = 268/4 = 67;  c: (0 + 70)/4 = 17
    args = LeastAllocatedArgs((ResourceWeight("cpu", 3), ResourceWeight("memory", 1)))
    assert LeastAllocated(args).score(cluster(), POD).tolist() == [31, 67, 17]


def test_most_allocated_default_weights() -> None:
    # a: cpu 3000*100/4000 = 75, mem 5000*100/10000 = 50 -> 125/2 = 62
    # b: cpu 2000*100/6000 = 33, mem 30                  -> 63/2  = 31
    # c: cpu capped at capacity: 1000*100/1000 = 100, mem 30 -> 130/2 = 65
    assert MostAllocated().score(cluster(), POD).tolist() == [62, 31, 65]


def test_resources_missing_on_a_node_are_skipped() -> None:
    # Only node "g" has the extended resource; elsewhere it is skipped, not scored 0.
    s = Snapshot()
    s.add_node("plain", cpu_milli=1000, memory=1000)
    s.add_node("g", cpu_milli=1000, memory=1000, extended={"example.com/fpga": 4})
    pod = PodRequest(cpu_milli=500, extended=(("example.com/fpga", 1),))
    args = LeastAllocatedArgs((ResourceWeight("cpu", 1), ResourceWeight("example.com/fpga", 1)))
    # plain: cpu 50 only -> 50;  g: cpu 50, fpga (4-1)*100/4 = 75 -> 125/2 = 62
    assert LeastAllocated(args).score(s, pod).tolist() == [50, 62]


def test_requested_to_capacity_ratio_packing_shape() -> None:
    # Shape (0,0)-(100,10) is scaled to (0,0)-(100,100); f(u) = u.
    # a: u_cpu = 3000*100/4000 = 75, u_mem = 50 -> round((75+50)/2) = round(62.5) = 63
    # b: u_cpu = 2000*100/6000 = 33, u_mem = 30 -> round(31.5) = 32
    # c: cpu over capacity -> f(100) = 100, mem 30 -> round(65) = 65
    assert RequestedToCapacityRatio().score(cluster(), POD).tolist() == [63, 32, 65]


def test_requested_to_capacity_ratio_spreading_shape_drops_zero_scores() -> None:
    # Shape (0,10)-(100,0) -> f(u) = 100 - u.
    # a: cpu 100-75 = 25, mem 100-50 = 50 -> round(37.5) = 38
    # b: cpu 100-33 = 67, mem 70           -> round(68.5) = 69
    # c: cpu f(100) = 0 is not counted (upstream adds only scores > 0), mem 70 -> 70
    args = RequestedToCapacityRatioArgs(shape=(ShapePoint(0, 10), ShapePoint(100, 0)))
    assert RequestedToCapacityRatio(args).score(cluster(), POD).tolist() == [38, 69, 70]


def test_requested_to_capacity_ratio_three_point_shape() -> None:
    # Shape (0,0), (50,10), (100,5) -> (0,0), (50,100), (100,50)
    # a: cpu u=75: 100 + (50-100)*(75-50)/(100-50) = 100 - 25 = 75; mem u=50 -> 100
    #    round((75+100)/2) = round(87.5) = 88
    args = RequestedToCapacityRatioArgs(
        shape=(ShapePoint(0, 0), ShapePoint(50, 10), ShapePoint(100, 5))
    )
    assert RequestedToCapacityRatio(args).score(cluster(), POD)[0] == 88


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: LeastAllocatedArgs(()), "leastAllocated.resources"),
        (
            lambda: LeastAllocatedArgs((ResourceWeight("cpu", 0),)),
            "leastAllocated.resources[0].weight",
        ),
        (
            lambda: RequestedToCapacityRatioArgs(shape=(ShapePoint(50, 1), ShapePoint(40, 2))),
            "requestedToCapacityRatio.shape[1].utilization",
        ),
        (
            lambda: RequestedToCapacityRatioArgs(shape=(ShapePoint(0, 11),)),
            "requestedToCapacityRatio.shape[0].score",
        ),
    ],
)
def test_arguments_are_validated_with_field_paths(build: object, path: str) -> None:
    with pytest.raises(ValueError, match=path.replace("[", r"\[").replace("]", r"\]")):
        build()  # type: ignore[operator]


def test_scores_are_new_float_arrays() -> None:
    s = cluster()
    for policy in (LeastAllocated(), MostAllocated(), RequestedToCapacityRatio()):
        scores = policy.score(s, POD)
        assert scores.dtype == np.float64
        assert scores.shape == (3,)
