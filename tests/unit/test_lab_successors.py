"""What successors kept: each figure counts only the members it means something for."""

from __future__ import annotations

from fulcrum.lab.successors import Kept, Member, kept
from kube import api


def member(
    name: str,
    node: str,
    ip: str,
    *,
    key: str | None = None,
    uid: str | None = None,
    claims: tuple[str, ...] = (),
    claimed: str = "",
    pool: str = "",
) -> Member:
    return Member(key or name, name, uid or f"uid-{name}", node, ip, claims, claimed, pool)


def by_key(*members: Member) -> dict[str, Member]:
    return {m.key: m for m in members}


def test_a_rebuild_with_an_ip_pool_and_no_pvcs_reports_no_pvc_figure() -> None:
    # the demo's 'local': each successor claims its predecessor's Reservation
    before = by_key(*(member(f"old-{i}", f"n{i}", f"10.64.0.{i}", pool="local") for i in range(3)))
    after = by_key(
        *(
            member(
                f"new-{i}",
                f"n{i}",
                f"10.64.0.{i}",
                claimed=api.reservation_name(f"uid-old-{i}"),
                pool="local",
            )
            for i in range(3)
        )
    )
    figures = kept(before, after)
    assert figures == Kept(3, 3, pooled=3, ip=3, with_claims=0, claims=0)
    assert str(figures) == "same node 3/3, same IP 3/3 (IP pool), same PVCs n/a (no PVCs)"
    assert figures.misses == ()


def test_plain_replicas_have_no_ip_figure_whatever_ips_come_back() -> None:
    # the demo's 'plain': new names, nothing claimed; matched as a set. One new replica got an
    # old replica's IP back (kwok hands a freed IP to the next pod): not something kept.
    before = by_key(
        member("old-0", "n0", "10.0.0.1"),
        member("old-1", "n1", "10.0.0.2"),
        member("old-2", "n1", "10.0.0.3"),
    )
    after = by_key(
        member("new-0", "n1", "10.0.0.2"),
        member("new-1", "n2", "10.0.0.7"),
        member("new-2", "n1", "10.0.0.8"),
    )
    figures = kept(before, after)
    assert figures == Kept(3, 2, pooled=0, ip=0, with_claims=0, claims=0)
    assert str(figures) == "same node 2/3, same IP n/a (no IP pool), same PVCs n/a (no PVCs)"


def test_pooled_replicas_matched_as_a_set_keep_the_pools_ips() -> None:
    # two replicas with a pool and no Reservation claimed: one IP comes back, one does not
    before = by_key(
        member("old-0", "n0", "10.64.0.1", pool="web"),
        member("old-1", "n1", "10.64.0.2", pool="web"),
    )
    after = by_key(
        member("new-0", "n0", "10.64.0.2", pool="web"),
        member("new-1", "n3", "10.64.0.9", pool="web"),
    )
    assert kept(before, after) == Kept(2, 1, pooled=2, ip=1, with_claims=0, claims=0)


def test_pvcs_count_only_members_that_have_them() -> None:
    # a StatefulSet of two with PVCs (matched by ordinal), beside a bare pod without any
    before = by_key(
        member("db-0", "n0", "10.64.1.1", key="db/0", claims=("data-db-0",), pool="db"),
        member("db-1", "n1", "10.64.1.2", key="db/1", claims=("data-db-1",), pool="db"),
        member("solo", "n2", "10.0.0.9"),
    )
    after = by_key(
        member("db-0", "n0", "10.64.1.1", key="db/0", uid="u0", claims=("data-db-0",), pool="db"),
        member("db-1", "n3", "10.64.1.5", key="db/1", uid="u1", claims=("data-db-x",), pool="db"),
        member("solo", "n2", "10.0.0.9", uid="u2"),
    )
    figures = kept(before, after)
    assert figures == Kept(3, 2, pooled=2, ip=1, with_claims=2, claims=1)
    assert str(figures) == "same node 2/3, same IP 1/2 (IP pool), same PVCs 1/2 (with PVCs)"
    assert len(figures.misses) == 1 and figures.misses[0].startswith("db-1@n1")


def test_empty_lists_and_empty_ips_are_not_something_kept() -> None:
    # pods without PVCs, one with a pool but no IP yet: two empty lists, two empty strings
    before = by_key(member("a", "n0", "", key="a", pool="p"), member("b", "n1", "", key="b"))
    after = by_key(member("a", "n0", "", uid="u0", pool="p"), member("b", "n1", "", uid="u1"))
    figures = kept(before, after)
    assert (figures.pooled, figures.ip, figures.with_claims, figures.claims) == (0, 0, 0, 0)
    assert str(figures) == "same node 2/2, same IP n/a (no IP pool), same PVCs n/a (no PVCs)"


def test_the_json_keeps_its_keys_and_comes_back() -> None:
    figures = Kept(20, 19, pooled=20, ip=18, with_claims=5, claims=5)
    document = figures.to_json()
    assert {"same_node", "same_ip", "total"} <= set(document)
    assert (document["same_node"], document["same_ip"], document["total"]) == (19, 18, 20)
    assert Kept.from_json(document) == figures
