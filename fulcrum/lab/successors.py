"""What the successors of a workload's pods kept of their predecessors: node, IP and PVCs.

Pure: it compares two readings of a workload's members (``rebuild_run.members``), taken before
and after a change. Each figure counts only the members it means something for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube import api


@dataclass(frozen=True)
class Member:
    """Where one member of a workload runs."""

    key: str
    name: str
    uid: str
    node: str
    ip: str
    claims: tuple[str, ...]
    claimed: str  # the Reservation this pod claimed at bind, if any
    pool: str  # the IPPool its IP comes from (``fulcrum.io/ip-pool``), if any


@dataclass(frozen=True)
class Kept:
    """What the successors kept of their predecessors: each figure counts only the members it
    means something for.

    A node means something for every member. An IP can be kept only from an IP pool, so "same
    IP" counts the members with one; a member without a pool gets whatever IP the network
    hands out (kwok hands a freed IP to the next pod: plain replicas came back with all their
    old IPs in one run and with none in another), so there is no figure for it. "Same PVCs"
    counts the members that had PersistentVolumeClaims: for the others there is nothing to
    keep.
    """

    total: int  # members before the change
    node: int  # of ``total``: successors on their predecessor's node
    pooled: int  # members with an IP pool (and an IP)
    ip: int  # of ``pooled``: successors with their predecessor's IP
    with_claims: int  # members with PVCs
    claims: int  # of ``with_claims``: successors with their predecessor's PVCs
    misses: tuple[str, ...] = field(default=(), compare=False)  # who did not keep what

    def __str__(self) -> str:
        ip = (
            f"same IP {self.ip}/{self.pooled} (IP pool)"
            if self.pooled
            else "same IP n/a (no IP pool)"
        )
        claims = (
            f"same PVCs {self.claims}/{self.with_claims} (with PVCs)"
            if self.with_claims
            else "same PVCs n/a (no PVCs)"
        )
        return f"same node {self.node}/{self.total}, {ip}, {claims}"

    def to_json(self) -> dict[str, int]:
        """The figures under the keys ``fulcrum bench -o json`` has always used (``same_node``,
        ``same_ip``, ``total``) and the counts each one is out of."""
        return {
            "total": self.total,
            "same_node": self.node,
            "ip_pool": self.pooled,
            "same_ip": self.ip,
            "with_pvcs": self.with_claims,
            "same_pvcs": self.claims,
        }

    @classmethod
    def from_json(cls, figures: Mapping[str, int]) -> Kept:
        """Back from :meth:`to_json`."""
        return cls(
            figures["total"],
            figures["same_node"],
            figures["ip_pool"],
            figures["same_ip"],
            figures["with_pvcs"],
            figures["same_pvcs"],
        )


def _shared(before: Iterable[Any], after: Iterable[Any]) -> int:
    """How many of ``before`` are in ``after``, as multisets."""
    return sum((Counter(before) & Counter(after)).values())


def kept(before: Mapping[str, Member], after: Mapping[str, Member]) -> Kept:
    """Compare each member with its successor.

    A successor names the Reservation it claimed (``fulcrum.io/reservation``), which names its
    predecessor's UID; members that claimed nothing are matched by key (StatefulSet ordinal,
    bare-pod name), and Deployment replicas, being interchangeable, as a set: what the old
    replicas had that the unmatched new ones have too (nodes, IPs, PVCs).
    """
    by_claim = {m.claimed: m for m in after.values() if m.claimed}
    pairs: list[tuple[Member, Member]] = []
    loose: list[Member] = []
    for b in before.values():
        a = by_claim.get(api.reservation_name(b.uid)) or after.get(b.key)
        if a is not None:
            pairs.append((b, a))
        else:
            loose.append(b)
    paired = {a.uid for _, a in pairs}
    spare = [m for m in after.values() if m.uid not in paired]
    misses = tuple(
        f"{b.name}@{b.node}/{b.ip} -> {a.name}@{a.node}/{a.ip} claimed {a.claimed or '-'}"
        for b, a in pairs
        if a.node != b.node or (b.pool and a.ip != b.ip) or a.claims != b.claims
    )
    return Kept(
        total=len(before),
        node=sum(a.node == b.node for b, a in pairs)
        + _shared((b.node for b in loose), (m.node for m in spare)),
        pooled=sum(bool(b.pool and b.ip) for b in before.values()),
        ip=sum(bool(b.pool and b.ip) and a.ip == b.ip for b, a in pairs)
        + _shared((b.ip for b in loose if b.pool and b.ip), (m.ip for m in spare if m.ip)),
        with_claims=sum(bool(b.claims) for b in before.values()),
        claims=sum(bool(b.claims) and a.claims == b.claims for b, a in pairs)
        + _shared((b.claims for b in loose if b.claims), (m.claims for m in spare if m.claims)),
        misses=misses,
    )
