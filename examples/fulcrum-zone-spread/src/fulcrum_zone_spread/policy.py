"""ZoneSpread: the replicas of one owner spread evenly over ``topology.kubernetes.io/zone``,
while packing inside each zone.

Score (0..100) = 90 x spread + 10 x pack:

- spread: 1 on the nodes of the zones holding the fewest of the pod's owner's pods (its
  ReplicaSet, StatefulSet, Job...), 0 on those holding the most, linear between; all 1 when
  the zones are even. Nodes without a zone label count as one more zone.
- pack: the share of the node's CPU and memory in use once the pod is on it (MostAllocated),
  so each zone fills its fullest nodes first.

A pod without an owner is only packed. It filters nothing: a zone that is full leaves the pod
to the others. It reads the zone label, the pod's owner and how many pods of that owner each
node holds (``Snapshot.owner_counts``), so a node's score depends on other nodes:
``node_local = False``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.attributes import NO_VALUE, ZONE, Reads
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import CPU_COL, MEMORY_COL, Snapshot

SPREAD, PACK = 90.0, 10.0


def packing(snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
    """Per node, the mean share of CPU and memory in use with ``pod`` on it, 0..1."""
    cols = [CPU_COL, MEMORY_COL]
    allocatable = snapshot.allocatable[:, cols].astype(np.float64)
    wanted = np.array([pod.cpu_milli, pod.memory], dtype=np.float64)
    used = allocatable - snapshot.free[:, cols] + wanted
    share = np.divide(used, allocatable, out=np.zeros_like(used), where=allocatable > 0)
    result: NDArray[np.float64] = np.clip(share, 0.0, 1.0).mean(axis=1)
    return result


def spreading(snapshot: Snapshot, owner: str) -> NDArray[np.float64]:
    """Per node, 1 in the zones with the fewest pods of ``owner``, 0 in those with the most."""
    column = snapshot.label_column(ZONE)
    zones = np.where(column.codes == NO_VALUE, len(column.values), column.codes)
    size = len(column.values) + 1
    per_zone = np.bincount(zones, weights=snapshot.owner_counts(owner), minlength=size)
    present = np.bincount(zones, minlength=size) > 0
    low, high = per_zone[present].min(), per_zone[present].max()
    if high == low:
        return np.ones(snapshot.num_nodes, dtype=np.float64)
    result: NDArray[np.float64] = (high - per_zone[zones]) / (high - low)
    return result


class ZoneSpread:
    name = "ZoneSpread"
    node_local = False
    reads = Reads(labels=frozenset({ZONE}), pod=True)

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        if snapshot.num_nodes == 0:
            return np.zeros(0, dtype=np.float64)
        owner = pod.attributes.owner if pod.attributes else ""
        pack = packing(snapshot, pod)
        if not owner:
            result: NDArray[np.float64] = 100.0 * pack
            return result
        return SPREAD * spreading(snapshot, owner) + PACK * pack

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
        return np.ones(snapshot.num_nodes, dtype=np.bool_)

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        return snapshot.best_fit_devices(row, pod)


def create(context: PolicyContext) -> ZoneSpread:
    return ZoneSpread()
