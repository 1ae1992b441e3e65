"""Live placement does not strand GPUs (issue 14), on a real control plane.

10 kwok nodes of 32 cpu and 2 A100 each. The pods come in batches, each bound before the next
is created, as a user's workloads arrive: Fulcrum must place every pod (a packing of all of
them exists: 16 CPU pods and 4 GPU shares per node) with no node over-committed.

Nodes: default-scheduler spreads the 200 pods over all 10 nodes, so "no more nodes than
default-scheduler" alone would hold of any placement. Where the GPU pods come early enough to
be seen (gpu-first, interleaved), Fulcrum must pack: at most one node over the lower bound of
7, fewer than default-scheduler. Cpu-first sends 160 CPU pods before any GPU pod; packing them
onto 5 nodes would strand the GPU shares, so Fulcrum keeps room on every GPU node: placing
every pod is the property there, not the nodes.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from tests.integration.conftest import _start

pytestmark = pytest.mark.integration

SHARE = {"fulcrum.io/gpu-milli": "300"}
CPU_POD = ("1", "1Gi", {})
SHARE_POD = ("100m", "128Mi", SHARE)
SCENARIOS = {
    "cpu-first": [(CPU_POD, 160), (SHARE_POD, 40)],
    "gpu-first": [(SHARE_POD, 40), (CPU_POD, 160)],
    "interleaved": [(CPU_POD, 40), (SHARE_POD, 10)] * 4,
}
NODES = 10
# GPU shares of 300 milli: 3 per GPU, so 40 need 14 GPUs, 7 nodes (cpu: 164 of 32 per node, 6)
LOWER_BOUND = 7
PACKED = {"gpu-first": LOWER_BOUND + 1, "interleaved": LOWER_BOUND + 1}  # the most nodes used


@pytest.fixture(scope="module")
def kit() -> Iterator[rr.Kit]:
    name = "it-live"
    _start(name, nodes=NODES, shape=cluster.NodeShape(cpu="32", gpu=2, gpu_model="A100"))
    try:
        yield rr.Kit.of(name)
    finally:
        cluster.down(name, log=print)


def pod(namespace: str, name: str, shape: tuple[str, str, dict[str, str]], scheduler: str) -> Any:
    cpu, memory, annotations = shape
    if scheduler != cluster.FULCRUM_SCHEDULER:  # it cannot see GPU shares; and the admission
        annotations = {}  # webhook would send a pod with a fulcrum.io annotation to Fulcrum
    out = rr.bare_pod(namespace, name, "live", opted=False, annotations=annotations)
    out["spec"]["schedulerName"] = scheduler
    out["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": memory}}
    return out


def bound(kit: rr.Kit, namespace: str) -> list[dict[str, Any]]:
    raw = kit.core.list_namespaced_pod(namespace, _preload_content=False).data
    return [p for p in orjson.loads(raw)["items"] if p["spec"].get("nodeName")]


def place(kit: rr.Kit, namespace: str, scenario: str, scheduler: str) -> list[dict[str, Any]]:
    """Each batch created once the previous one is bound (or has stopped binding)."""
    kit.kubectl("create", "namespace", namespace)
    created = 0
    for shape, count in SCENARIOS[scenario]:
        pods = [pod(namespace, f"p{created + i}", shape, scheduler) for i in range(count)]
        rr.apply(kit, pods)
        created += count
        with contextlib.suppress(TimeoutError):  # what did not bind is counted below
            rr.wait_for(
                f"{created} bound", lambda n=created: len(bound(kit, namespace)) == n, timeout=60
            )
    return bound(kit, namespace)


def overcommitted(placed: list[dict[str, Any]]) -> list[str]:
    cpu: Counter[str] = Counter()
    shares: defaultdict[tuple[str, str], int] = defaultdict(int)
    for p in placed:
        node = p["spec"]["nodeName"]
        request = p["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        cpu[node] += int(request[:-1]) if request.endswith("m") else 1000 * int(request)
        annotations = p["metadata"].get("annotations") or {}
        if "fulcrum.io/gpu-milli" in annotations:
            device = annotations["fulcrum.io/gpu-devices"]
            shares[(node, device)] += int(annotations["fulcrum.io/gpu-milli"])
    return [n for n, used in cpu.items() if used > 32_000] + [
        f"{n}/gpu{d}" for (n, d), used in shares.items() if used > 1000
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_placed_and_packed_on_fewer_nodes_unless_cpu_comes_first(
    kit: rr.Kit, scenario: str
) -> None:
    ours = place(kit, f"live-{scenario}", scenario, cluster.FULCRUM_SCHEDULER)
    kit.kubectl("delete", "namespace", f"live-{scenario}", "--wait=true")
    theirs = place(kit, f"default-{scenario}", scenario, "default-scheduler")
    kit.kubectl("delete", "namespace", f"default-{scenario}", "--wait=true")
    nodes = {p["spec"]["nodeName"] for p in ours}
    default_nodes = {p["spec"]["nodeName"] for p in theirs}
    print(
        f"\n{scenario}: Fulcrum {len(ours)}/200 on {len(nodes)} nodes; default-scheduler "
        f"{len(theirs)}/200 on {len(default_nodes)} nodes"
    )
    assert len(ours) == 200
    assert overcommitted(ours) == []
    assert len(theirs) == 200
    if scenario in PACKED:
        assert len(nodes) <= PACKED[scenario] < len(default_nodes)
