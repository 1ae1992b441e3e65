"""The thresholds of ``fulcrum inspect``'s cluster checks: the defaults in
``fulcrum/inspect/thresholds.yaml``, a user's ``--thresholds FILE`` over them.

The same design and the same rules as the node agent's (``node.check_thresholds``: one YAML of
defaults, a user's file replacing the levels of each check it names, every mistake a
``ThresholdError`` naming the file, the key and the fix); only the checks differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from node.check_thresholds import Bound, Levels, Spec, ThresholdError, parse
from node.plugin import Severity

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
DEFAULTS = "thresholds.yaml"


class ClusterThresholds:
    """Every cluster check's levels: the shipped defaults, with a user's file over them."""

    def __init__(self, levels: Mapping[str, Levels]) -> None:
        missing = [c for c in SPECS if c not in levels]
        if missing:
            raise ThresholdError(f"no levels for {', '.join(missing)}")
        self.levels = dict(levels)

    @classmethod
    def load(cls, path: Path | str | None = None) -> ClusterThresholds:
        """The defaults, and ``path``'s levels over them when given."""
        text = resources.files("fulcrum.inspect").joinpath(DEFAULTS).read_text(encoding="utf-8")
        levels = parse(text, "fulcrum/inspect/thresholds.yaml", SPECS, FIXED)
        if path is not None:
            try:
                mine = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ThresholdError(
                    f"{path}: cannot read it ({exc.strerror or exc}); --thresholds names a "
                    "readable YAML file of check: {warn: W, alarm: A, error: E}"
                ) from None
            levels.update(parse(mine, str(path), SPECS, FIXED))
        return cls(levels)

    def judge(self, check: str, value: float) -> tuple[Severity, Bound | None]:
        return self.levels[check].judge(value)
