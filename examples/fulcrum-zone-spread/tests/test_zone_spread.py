from collections import Counter
from dataclasses import replace
from itertools import count

from fulcrum_zone_spread.policy import ZoneSpread, create

from policies.conformance import check_policy
from scheduler.attributes import ZONE, PodAttributes
from scheduler.pod import PodRequest
from scheduler.select import choose_node
from scheduler.snapshot import Snapshot

GIB = 1 << 30
KEYS = count()


def cluster(nodes_per_zone: int = 2) -> Snapshot:
    snapshot = Snapshot()
    for zone in "abc":
        for i in range(nodes_per_zone):
            snapshot.add_node(
                f"{zone}-{i}", cpu_milli=8000, memory=16 * GIB, labels={ZONE: f"zone-{zone}"}
            )
    return snapshot


def replica(owner: str = "rs-1") -> PodRequest:
    attributes = PodAttributes(namespace="default", owner_kind="ReplicaSet", owner_uid=owner)
    return replace(PodRequest(cpu_milli=1000, memory=GIB), attributes=attributes)


def place(snapshot: Snapshot, pods: list[PodRequest]) -> Counter[str]:
    policy, zones = ZoneSpread(), Counter[str]()
    for pod in pods:
        choice = choose_node(snapshot, pod, policy)
        assert choice is not None
        node = snapshot.names[choice[0]]
        snapshot.assign(f"pod-{next(KEYS)}", pod, node)
        zones[node.split("-")[0]] += 1
    return zones


def test_passes_the_conformance_suite() -> None:
    check_policy(create)


def test_six_replicas_spread_two_per_zone() -> None:
    assert place(cluster(), [replica() for _ in range(6)]) == {"a": 2, "b": 2, "c": 2}


def test_inside_a_zone_it_packs_the_fullest_node() -> None:
    snapshot = cluster()
    place(snapshot, [replica() for _ in range(6)])
    used = [len(snapshot.pods_on(name)) for name in snapshot.names]
    assert sorted(used) == [0, 0, 0, 2, 2, 2]  # one node per zone holds both replicas


def test_owners_spread_independently() -> None:
    snapshot = cluster()
    place(snapshot, [replica("rs-1") for _ in range(3)])
    assert place(snapshot, [replica("rs-2") for _ in range(3)]) == {"a": 1, "b": 1, "c": 1}


def test_a_released_replica_no_longer_counts() -> None:
    snapshot = cluster()
    place(snapshot, [replica() for _ in range(3)])
    gone = next(key for key, p in snapshot.pods().items() if p.node.startswith("b"))
    snapshot.release(gone)
    assert place(snapshot, [replica()]) == {"b": 1}
