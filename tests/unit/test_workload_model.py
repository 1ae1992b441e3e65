"""The live workload model (``scheduler.workload_model``) and in-order replay
(``scheduler.sequence``): mixed sequences where a packing of every pod exists.

Each scenario comes with an explicit packing of all its pods, checked here with the snapshot's
own accounting (``check=True``), so "every pod fits" is proven, not assumed; Fulcrum's policies,
learning the workload as the pods come, must place every pod and use no more nodes than
LeastAllocated (default-scheduler's scoring).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policies.registry import default_registry
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import GPU_MILLI, PodRequest
from scheduler.policy import Policy, PolicyContext
from scheduler.sequence import replay_in_order
from scheduler.snapshot import Snapshot
from scheduler.workload_model import LiveWorkload, WorkloadPrior

GI = 2**30
CPU = PodRequest(cpu_milli=1000, memory=GI)
SHARE = PodRequest(cpu_milli=100, memory=GI // 8, gpu_count=1, gpu_milli=300)
WHOLE = PodRequest(cpu_milli=2000, memory=2 * GI, gpu_count=1, gpu_milli=GPU_MILLI)
A100 = PodRequest(
    cpu_milli=2000, memory=2 * GI, gpu_count=1, gpu_milli=GPU_MILLI, gpu_models=frozenset({"A100"})
)
V100 = PodRequest(
    cpu_milli=2000, memory=2 * GI, gpu_count=1, gpu_milli=GPU_MILLI, gpu_models=frozenset({"V100"})
)


def cluster(models: tuple[str, ...] = ("A100",)) -> Snapshot:
    """10 nodes of 32 cpu and 2 GPUs (models in turn), as issue 14's kwok cluster."""
    snapshot = Snapshot()
    for i in range(10):
        snapshot.add_node(
            f"n{i}",
            cpu_milli=32_000,
            memory=256 * GI,
            max_pods=110,
            gpu_count=2,
            gpu_model=models[i % len(models)],
        )
    return snapshot


SCENARIOS: dict[str, tuple[list[PodRequest], tuple[str, ...]]] = {
    "cpu first, then GPU shares (issue 14)": ([CPU] * 160 + [SHARE] * 40, ("A100",)),
    "GPU shares first": ([SHARE] * 40 + [CPU] * 160, ("A100",)),
    "interleaved": ([CPU, CPU, CPU, CPU, SHARE] * 40, ("A100",)),
    "cpu first, then whole GPUs": ([CPU] * 200 + [WHOLE] * 20, ("A100",)),
    "two models, cpu first": ([CPU] * 200 + [A100, V100] * 10, ("A100", "V100")),
}


def proven_packing(pods: list[PodRequest], models: tuple[str, ...]) -> None:
    """Every pod placed: GPU pods first on the node with the most free GPU, then CPU pods
    round-robin; ``assign`` checks each placement against the node's capacity."""
    snapshot = cluster(models)
    order = sorted(range(len(pods)), key=lambda i: -pods[i].gpu_count)
    for n, i in enumerate(order):
        pod = pods[i]
        fits = snapshot.feasible(pod)
        if pod.gpu_count:
            rows = [r for r in range(snapshot.num_nodes) if fits[r]]
            row = max(rows, key=lambda r: (int(snapshot.gpu_free[r].sum()), -r))
        else:
            row = next(r for r in ((n + k) % 10 for k in range(10)) if fits[r])
        devices = snapshot.best_fit_devices(row, pod) if pod.gpu_count else None
        snapshot.assign(f"p{i}", pod, snapshot.names[row], devices=devices, check=True)


def builder(name: str) -> Callable[[TargetWorkload | None], Policy]:
    registry = default_registry()
    return lambda workload: registry.create(name, PolicyContext(workload=workload))


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("policy", ["Archimedes", "FGD"])
def test_every_pod_is_placed_where_a_packing_exists(scenario: str, policy: str) -> None:
    pods, models = SCENARIOS[scenario]
    proven_packing(pods, models)
    ours = replay_in_order(cluster(models), pods, builder(policy))
    spread = replay_in_order(cluster(models), pods, builder("LeastAllocated"))
    assert ours.placed == len(pods), ours.unplaced
    assert ours.nodes_used <= spread.nodes_used


def test_without_the_prior_a_packer_strands_gpus() -> None:
    """The defect the prior fixes: having seen only CPU pods, nothing protects GPU nodes' CPU."""
    pods, models = SCENARIOS["cpu first, then GPU shares (issue 14)"]
    blind = replay_in_order(
        cluster(models), pods, builder("Archimedes"), prior=WorkloadPrior(pods=0)
    )
    assert blind.placed == 190


def test_the_prior_is_a_gpu_pod_kept_through_the_typical_cut() -> None:
    live = LiveWorkload(WorkloadPrior(pods=10))
    workload = live.target([CPU] * 1000, 0.0, node_cpu_per_gpu=16_000)  # 99 % CPU pods
    assert workload is not None
    prior = workload.gpu_count.index(1)
    assert (workload.cpu_milli[prior], workload.gpu_milli[prior]) == (8000, GPU_MILLI)
    assert workload.probability[prior] == pytest.approx(10 / 1010)
    fixed = LiveWorkload(WorkloadPrior(cpu_per_gpu_milli=500)).target([], 0.0, node_cpu_per_gpu=1)
    assert fixed is not None and fixed.cpu_milli == (500,)
    assert live.target([CPU], 0.0, node_cpu_per_gpu=0) == TargetWorkload(
        (1000,), (0,), (0,), (frozenset(),), (1.0,)
    )


def test_arrivals_are_remembered_for_a_half_life_at_a_time() -> None:
    live = LiveWorkload(WorkloadPrior(pods=0, half_life_s=100))
    live.arrived(SHARE, 0.0)
    live.arrived(CPU, 100.0)  # the share's weight has halved by now
    workload = live.target([], 100.0, node_cpu_per_gpu=16_000)
    assert workload is not None
    assert dict(zip(workload.gpu_milli, workload.probability, strict=True)) == pytest.approx(
        {300: 0.5 / 1.5, 0: 1 / 1.5}
    )
    assert live.target([], 100.0 + 100 * 20, node_cpu_per_gpu=16_000) is None  # long forgotten


def test_prior_arguments_are_checked_with_their_field() -> None:
    with pytest.raises(ValueError, match=r"workloadPrior\.pods"):
        WorkloadPrior(pods=-1)
    with pytest.raises(ValueError, match=r"workloadPrior\.halfLifeSeconds"):
        WorkloadPrior(half_life_s=0)
    with pytest.raises(ValueError, match=r"workloadPrior\.cpuShare"):
        WorkloadPrior(cpu_share=2)
