"""Peers from the FGD artifact, FGD and Archimedes: worked examples.

Nodes (free resources; GPUs are devices with 1000 milli each):

    n1: cpu 64000, GPUs [1000, 1000]                     model T4, no pods
    n2: cpu 32000, GPUs [1000] * 8                       model A100, no pods
    n3: cpu 32000, GPUs [1000, 300, 600, 1000]           model A100, two sharing pods
"""

from __future__ import annotations

import math

import numpy as np

from policies.archimedes import (
    Archimedes,
    ArchimedesArgs,
    cpu_per_gpu_milli,
    scarcity_weighted,
    stranded_gpu,
)
from policies.best_fit import BestFit
from policies.dot_product import DotProduct
from policies.fgd import FGD
from policies.gpu_clustering import GpuClustering
from policies.gpu_packing import GpuPacking
from policies.random_fit import RandomFit
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import PodRequest
from scheduler.snapshot import Snapshot

WHOLE = PodRequest(cpu_milli=8000, gpu_count=1, gpu_milli=1000)
SHARE = PodRequest(cpu_milli=8000, gpu_count=1, gpu_milli=250)
CPU_ONLY = PodRequest(cpu_milli=8000)


def cluster() -> Snapshot:
    s = Snapshot()
    s.add_node("n1", cpu_milli=64000, memory=1 << 40, gpu_count=2, gpu_model="T4")
    s.add_node("n2", cpu_milli=32000, memory=1 << 40, gpu_count=8, gpu_model="A100")
    s.add_node("n3", cpu_milli=32000, memory=1 << 40, gpu_count=4, gpu_model="A100")
    s.assign("s1", PodRequest(gpu_count=1, gpu_milli=700), "n3", devices=(1,))
    s.assign("s2", PodRequest(gpu_count=1, gpu_milli=400), "n3", devices=(2,))
    return s


def test_best_fit() -> None:
    # n1: s = 0.5*(64000-8000)/128000 + 0.5*(2000-1000)/8000 = 0.21875 + 0.0625
    #     -> trunc(71.875) = 71
    # n2: s = 0.5*24000/128000 + 0.5*7000/8000 = 0.09375 + 0.4375         -> trunc(46.875) = 46
    # n3: s = 0.5*24000/128000 + 0.5*(2900-1000)/8000 = 0.09375 + 0.11875  -> trunc(78.75)  = 78
    assert BestFit().score(cluster(), WHOLE).tolist() == [71, 46, 78]


def test_dot_product() -> None:
    # n1: dot = (64000/128000)(8000/128000) + (2000/8000)(1000/8000) = 0.03125 + 0.03125 = 0.0625
    #     trunc(100 * (1 - 0.0625/2)) = trunc(96.875) = 96
    # n2: dot = 0.25*0.0625 + 1.0*0.125 = 0.140625 -> trunc(92.96875) = 92
    # n3: dot = 0.25*0.0625 + (2900/8000)*0.125 = 0.015625 + 0.0453125 -> trunc(96.953125) = 96
    assert DotProduct().score(cluster(), WHOLE).tolist() == [96, 92, 96]


def test_gpu_packing() -> None:
    # n1, n2: every device free -> 33 - F: 33 - 2 = 31, 33 - 8 = 25
    # n3 sharing q=250: ascending free [300, 600, 1000, 1000]; the first with g >= 250
    #     is 300, partly used
    #     -> max(100 - (300*100//1000)//10, 50) = 100 - 3 = 97
    # n3 whole: the first device with g >= 1000 is fully free (f = 1) -> max(50 - 1, 33) = 49
    assert GpuPacking().score(cluster(), SHARE).tolist() == [31, 25, 97]
    assert GpuPacking().score(cluster(), WHOLE).tolist() == [31, 25, 49]
    assert GpuPacking().score(cluster(), CPU_ONLY).tolist() == [0, 0, 0]


def test_gpu_clustering() -> None:
    # base = 25*(8000 - G)//8000: n1 25*6000//8000 = 18, n2 0, n3 25*5100//8000 = 15
    # sharing pod: n1, n2 have no GPU pods (+25); n3 holds only sharing pods (+75)
    # whole 1-GPU pod: n3 holds only other tags (+0)
    assert GpuClustering().score(cluster(), SHARE).tolist() == [43, 25, 90]
    assert GpuClustering().score(cluster(), WHOLE).tolist() == [43, 25, 15]
    assert GpuClustering().score(cluster(), CPU_ONLY).tolist() == [0, 0, 0]


def test_random_is_seeded_and_feasible_only() -> None:
    s = cluster()
    pod = PodRequest(cpu_milli=40000)  # only n1 has 40000 cpu free
    assert RandomFit(7).score(s, pod).tolist() == [100, 0, 0]
    a = [RandomFit(3).score(s, CPU_ONLY).tolist() for _ in range(2)]
    assert a[0] == a[1]


HALF = TargetWorkload(
    cpu_milli=(0,), gpu_milli=(500,), gpu_count=(1,), models=(frozenset(),), probability=(1.0,)
)


def test_fgd_sharing_pod_takes_the_device_that_fragments_least() -> None:
    # Target: one type, q = 500. n3 free devices [1000, 300, 600, 1000]:
    #   F(n3) = sum of devices with g < 500 = 300.
    # A q=250 pod on device j:
    #   j=0 -> [750, 300, 600, 1000]: F = 300, delta 0    -> trunc(100*sigmoid(0))     = 50
    #   j=1 -> [1000, 50, 600, 1000]: F = 50,  delta +250 -> trunc(100*sigmoid(0.25)) = 56
    #   j=2 -> [1000, 300, 350, 1000]: F = 650, delta -350 -> trunc(100*sigmoid(-0.35)) = 41
    s = cluster()
    fgd = FGD(HALF)
    per_device = fgd.device_scores(s, SHARE)[2]
    assert per_device[:4].tolist() == [50, 56, 41, 50]
    assert math.trunc(100 / (1 + math.exp(-0.25))) == 56
    assert fgd.select_devices(s, 2, SHARE) == (1,)
    assert fgd.score(s, SHARE)[2] == 56


def test_fgd_whole_gpu_pod_on_free_node_is_neutral_for_a_half_gpu_workload() -> None:
    # n2: 8 free devices; taking one leaves 7 free -> F stays 0 -> score 50.
    assert FGD(HALF).score(cluster(), WHOLE)[1] == 50


def test_archimedes_helpers() -> None:
    w = TargetWorkload(
        cpu_milli=(4000, 8000),
        gpu_milli=(500, 1000),
        gpu_count=(1, 1),
        models=(frozenset(), frozenset({"T4"})),
        probability=(0.5, 0.5),
    )
    # 2 T4 GPUs of 10 in the cluster -> the T4-only type gets (10/2)**1 = 5x weight:
    # p~ = (0.5, 2.5) / 3.0
    weighted = scarcity_weighted(w, {"T4": 2, "A100": 8}, 1.0)
    np.testing.assert_allclose(weighted.probability, (1 / 6, 5 / 6))
    # rho = (1/6*4000 + 5/6*8000) / (1/6*500 + 5/6*1000) = 7333.3 / 916.7
    #     = 8 cpu milli per GPU milli
    assert math.isclose(cpu_per_gpu_milli(weighted), 8.0)
    # A node with 2000 GPU milli free but 8000 cpu feeds 8000/8 = 1000 -> 1000 stranded.
    cpu = np.array([8000, 32000])
    g = np.array([[1000, 1000], [1000, 1000]])
    assert stranded_gpu(cpu, g, 8.0).tolist() == [1000.0, 0.0]


def test_archimedes_prefers_nodes_that_keep_gpus_fed() -> None:
    # Two identical 2-GPU nodes; "lean" has little CPU left. A CPU-only pod placed there would
    # strand its GPUs (no CPU to feed them), so Archimedes sends it to "fat".
    s = Snapshot()
    s.add_node("lean", cpu_milli=12000, memory=1 << 40, gpu_count=2, gpu_model="T4")
    s.add_node("fat", cpu_milli=64000, memory=1 << 40, gpu_count=2, gpu_model="T4")
    w = TargetWorkload((4000,), (1000,), (1,), (frozenset(),), (1.0,))
    pod = PodRequest(cpu_milli=6000)
    scores = Archimedes(w).score(s, pod)
    assert scores[1] > scores[0]
    # Without the stranding term both look the same to the fragmentation measure alone.
    flat = Archimedes(w, ArchimedesArgs(stranding_weight=0.0)).score(s, pod)
    assert flat[0] == flat[1]
