"""TenantAffinity: a pod labelled ``tenant: X`` prefers the nodes labelled
``fulcrum.io/tenant: X``, then nodes of no tenant, then other tenants' nodes.

It filters nothing, so a pod falls back to any node that fits once its tenant's nodes are
full. A pod without the label prefers nodes of no tenant, keeping tenants' nodes for them.
Scores (0..100) by node: the pod's tenant 100, no tenant 50, another tenant 0.

It reads one node label and the pod's labels, and declares both (``reads``); a node's score
depends only on that node, so it is ``node_local``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scheduler.attributes import NO_VALUE, Reads
from scheduler.pod import PodRequest
from scheduler.policy import PolicyContext
from scheduler.snapshot import Snapshot

NODE_LABEL = "fulcrum.io/tenant"  # on nodes: the tenant they are kept for
POD_LABEL = "tenant"  # on pods: the tenant they belong to

OWN, FREE, OTHER = 100.0, 50.0, 0.0


class TenantAffinity:
    name = "TenantAffinity"
    node_local = True
    reads = Reads(labels=frozenset({NODE_LABEL}), pod=True)

    def score(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        column = snapshot.label_column(NODE_LABEL)
        tenant = pod.attributes.label(POD_LABEL) if pod.attributes else None
        untenanted = column.codes == NO_VALUE
        if tenant is None:
            return np.where(untenanted, OWN, FREE)
        return np.where(column.equals(tenant), OWN, np.where(untenanted, FREE, OTHER))

    def filter(self, snapshot: Snapshot, pod: PodRequest) -> NDArray[np.bool_]:
        return np.ones(snapshot.num_nodes, dtype=np.bool_)

    def select_devices(self, snapshot: Snapshot, row: int, pod: PodRequest) -> tuple[int, ...]:
        return snapshot.best_fit_devices(row, pod)


def create(context: PolicyContext) -> TenantAffinity:
    return TenantAffinity()
