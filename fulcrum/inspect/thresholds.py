"""The thresholds of ``fulcrum inspect``'s cluster checks: the defaults in
``fulcrum/inspect/thresholds.yaml``, a user's ``--thresholds FILE`` over them.

The same design and the same rules as the node agent's (``node.check_thresholds``: one YAML of
defaults, a user's file replacing the levels of each check it names, every mistake a
``ThresholdError`` naming the file, the key and the fix); only the checks differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from node.check_thresholds import Spec, ThresholdError, Thresholds

__all__ = ["SPECS", "ClusterThresholds", "ThresholdError"]

SPECS: dict[str, Spec] = {
    "etcd.db_size_pct": Spec("above", "% of quota"),
    "etcd.leader_changes": Spec("above", "in the window"),
    "etcd.proposals_failed": Spec("above", "in the window"),
    "etcd.wal_fsync_p99_ms": Spec("above", "ms"),
    "etcd.backend_commit_p99_ms": Spec("above", "ms"),
    "etcd.grpc_open_streams": Spec("above", "streams"),
    "etcd.open_fds_pct": Spec("above", "% of the limit"),
    "apiserver.request_p99_ms": Spec("above", "ms"),
    "apiserver.5xx_per_s": Spec("above", "per s"),
    "apiserver.429_per_s": Spec("above", "per s"),
    "apiserver.inflight": Spec("above", "requests"),
    "scheduler.attempt_p99_ms": Spec("above", "ms"),
    "pods.pending_age_s": Spec("above", "s"),
    "node.lease_age_pct": Spec("above", "% of its duration"),
    "node.kubelet_skew": Spec("above", "minor versions"),
}
# checks whose severity is what they find (healthy or not), with no levels to set
FIXED = (
    "etcd.health",
    "etcd.leader",
    "apiserver.livez",
    "apiserver.readyz",
    "scheduler.leader",
    "scheduler.health",
    "controller-manager.leader",
    "controller-manager.health",
    "node.ready",
    "node.pressure",
    "node.kubelet_version",
)


class ClusterThresholds(Thresholds):
    """Every cluster check's levels: the shipped defaults, with a user's file over them."""

    SPECS: ClassVar[Mapping[str, Spec]] = SPECS
    FIXED: ClassVar[tuple[str, ...]] = FIXED
    DEFAULTS: ClassVar[tuple[str, str]] = ("fulcrum.inspect", "thresholds.yaml")
    USER_FILE: ClassVar[str] = (
        "--thresholds names a readable YAML file of check: {warn: W, alarm: A, error: E}"
    )
