"""Replay pods in their given order, as a live extender sees them: no shuffle, no look-ahead.

The FGD protocol (``scheduler.replay``) shuffles arrivals and hands every policy the trace's
typical pods up front. A live cluster offers neither: pods come in whatever order their owners
create them (often all CPU pods first, then GPU pods), and what to expect has to be learnt as
they come. Here the policies are rebuilt every ``refresh`` pods from the live workload model
(``scheduler.workload_model``), as the extender rebuilds them every 30 s, with one second of
simulated time per pod.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduler.fragmentation import TargetWorkload
from scheduler.pod import PodRequest
from scheduler.policy import Policy
from scheduler.select import choose_node
from scheduler.snapshot import Snapshot
from scheduler.workload_model import LiveWorkload, WorkloadPrior, node_cpu_per_gpu

PolicyBuilder = Callable[[TargetWorkload | None], Policy]


@dataclass
class SequenceResult:
    pods: int
    placed: int
    nodes_used: int
    unplaced: list[int] = field(default_factory=list)  # indices into the sequence

    def to_json(self) -> dict[str, object]:
        return {
            "pods": self.pods,
            "placed": self.placed,
            "nodes_used": self.nodes_used,
            "unplaced": self.unplaced,
        }


def replay_in_order(
    snapshot: Snapshot,
    pods: Sequence[PodRequest],
    build: PolicyBuilder,
    *,
    prior: WorkloadPrior | None = None,
    refresh: int = 10,
) -> SequenceResult:
    """Place ``pods`` one by one on ``snapshot`` (modified) with the policy ``build`` makes
    for the live workload; a pod that fits nowhere stays unplaced (no retry)."""
    live = LiveWorkload(prior)
    cpu_per_gpu = node_cpu_per_gpu(snapshot)
    policy: Policy | None = None
    result = SequenceResult(len(pods), 0, 0)
    for i, pod in enumerate(pods):
        live.arrived(pod, float(i))
        if policy is None or i % refresh == 0:
            current = [p.pod for p in snapshot.pods().values()]
            policy = build(live.target(current, float(i), node_cpu_per_gpu=cpu_per_gpu))
        choice = choose_node(snapshot, pod, policy)
        if choice is None:
            result.unplaced.append(i)
            continue
        row, devices = choice
        snapshot.assign(f"seq-{i}", pod, snapshot.names[row], devices=devices)
        result.placed += 1
    used = np.zeros(snapshot.num_nodes, dtype=np.bool_)
    for placement in snapshot.pods().values():
        used[snapshot.index_of(placement.node)] = True
    result.nodes_used = int(used.sum())
    return result
