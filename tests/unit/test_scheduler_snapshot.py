"""The snapshot: node CRUD, assign/release, vectorised fit with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.pod import MIB, PodRequest, effective_request, pod_request_from_resources
from scheduler.snapshot import Snapshot


def cluster() -> Snapshot:
    s = Snapshot()
    s.add_node("cpu-a", cpu_milli=4000, memory=8192 * MIB, ephemeral_storage=10 << 30, max_pods=2)
    s.add_node("gpu-b", cpu_milli=16000, memory=65536 * MIB, gpu_count=2, gpu_model="T4")
    s.add_node(
        "gpu-c",
        cpu_milli=32000,
        memory=65536 * MIB,
        gpu_count=4,
        gpu_model="A100",
        extended={"example.com/fpga": 1},
    )
    return s


def test_add_node_sets_free_to_allocatable() -> None:
    s = cluster()
    assert s.num_nodes == 3
    np.testing.assert_array_equal(s.free, s.allocatable)
    assert s.gpu_free.tolist()[2][:4] == [1000] * 4
    assert s.gpu_free[0].sum() == 0
    assert s.model_names == ("T4", "A100")
    assert s.resource_names[-1] == "example.com/fpga"


def test_assign_release_round_trip_restores_every_array() -> None:
    s = cluster()
    before = [s.free.copy(), s.gpu_free.copy(), s.gpu_pod_kinds.copy()]
    pod = PodRequest(cpu_milli=1500, memory=1024 * MIB, gpu_count=1, gpu_milli=300)
    placement = s.assign("ns/p", pod, "gpu-b")
    assert placement.devices == (0,)
    assert s.free[1, 0] == 16000 - 1500
    assert s.gpu_free[1, 0] == 700
    assert s.gpu_pod_kinds[1, 0] == 1
    s.release("ns/p")
    for old, new in zip(before, [s.free, s.gpu_free, s.gpu_pod_kinds], strict=True):
        np.testing.assert_array_equal(old, new)
    assert "ns/p" not in s.pods()


def test_sharing_pods_go_best_fit_and_whole_gpus_lowest_index() -> None:
    s = cluster()
    s.assign("a", PodRequest(gpu_count=1, gpu_milli=600), "gpu-c")  # device 0 -> 400 left
    s.assign("b", PodRequest(gpu_count=1, gpu_milli=300), "gpu-c")  # best fit: device 0
    assert s.gpu_free[2, :4].tolist() == [100, 1000, 1000, 1000]
    s.assign("c", PodRequest(gpu_count=2, gpu_milli=1000), "gpu-c")
    assert s.pods()["c"].devices == (1, 2)


def test_fit_reports_every_reason_per_node() -> None:
    s = cluster()
    pod = PodRequest(
        cpu_milli=20000,
        memory=1024 * MIB,
        gpu_count=1,
        gpu_milli=1000,
        gpu_models=frozenset({"A100"}),
    )
    fit = s.fit(pod)
    assert fit.feasible.tolist() == [False, False, True]
    reasons = fit.reasons(s.names)
    assert reasons["cpu-a"] == "Insufficient cpu, GPU model not acceptable, Insufficient GPU"
    assert reasons["gpu-b"] == "Insufficient cpu, GPU model not acceptable"
    np.testing.assert_array_equal(s.feasible(pod), fit.feasible)


def test_fit_checks_pods_ephemeral_and_extended_resources() -> None:
    s = cluster()
    s.assign("x", PodRequest(), "cpu-a")
    s.assign("y", PodRequest(), "cpu-a")
    fit = s.fit(PodRequest(ephemeral_storage=1 << 30, extended=(("example.com/fpga", 1),)))
    assert fit.reason(0) == "Too many pods, Insufficient example.com/fpga"
    assert fit.reason(1) == "Insufficient ephemeral-storage, Insufficient example.com/fpga"
    assert fit.feasible.tolist() == [False, False, False]
    assert s.fit(PodRequest(extended=(("example.com/fpga", 1),))).feasible.tolist() == [
        False,
        False,
        True,
    ]


def test_update_node_keeps_usage_and_remove_node_drops_its_pods() -> None:
    s = cluster()
    s.assign("p", PodRequest(cpu_milli=1000, gpu_count=1, gpu_milli=1000), "gpu-b")
    s.update_node("gpu-b", cpu_milli=8000, memory=65536 * MIB, gpu_count=2, gpu_model="T4")
    assert s.free[1, 0] == 7000
    assert s.gpu_free[1, :2].tolist() == [0, 1000]
    assert s.remove_node("gpu-b") == ["p"]
    assert s.names == ["cpu-a", "gpu-c"]
    assert s.index_of("gpu-c") == 1
    assert s.gpu_free[1, :4].tolist() == [1000] * 4
    assert "p" not in s.pods()


def test_assign_rejects_what_does_not_fit_unless_told() -> None:
    s = cluster()
    with pytest.raises(ValueError, match="does not fit"):
        s.assign("big", PodRequest(cpu_milli=10**6), "cpu-a")
    s.assign("big", PodRequest(cpu_milli=10**6), "cpu-a", check=False)
    assert s.free[0, 0] < 0
    assert not s.feasible(PodRequest(cpu_milli=1))[0]


def test_take_is_an_independent_subset() -> None:
    s = cluster()
    sub = s.take(np.array([2, 0]))
    assert sub.names == ["gpu-c", "cpu-a"]
    sub.assign("q", PodRequest(cpu_milli=5), "gpu-c")
    assert s.free[2, 0] == 32000
    assert sub.gpu_supply_by_model() == {"T4": 2, "A100": 4}


def test_effective_request_uses_init_container_max_and_overhead() -> None:
    # cpu: max(100 + 200, 250) + 10 = 310; memory: max(64, 128) + 0 = 128
    total = effective_request(
        [{"cpu": 100, "memory": 64}, {"cpu": 200}], [{"cpu": 250, "memory": 128}], {"cpu": 10}
    )
    assert total == {"cpu": 310, "memory": 128}
    pod = pod_request_from_resources({**total, "example.com/fpga": 1}, gpu_count=1, gpu_milli=500)
    assert pod == PodRequest(
        cpu_milli=310, memory=128, gpu_count=1, gpu_milli=500, extended=(("example.com/fpga", 1),)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu_milli": -1},
        {"gpu_count": 2, "gpu_milli": 500},
        {"gpu_count": 1, "gpu_milli": 0},
        {"gpu_count": 1, "gpu_milli": 1001},
    ],
)
def test_pod_request_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PodRequest(**kwargs)  # type: ignore[arg-type]
