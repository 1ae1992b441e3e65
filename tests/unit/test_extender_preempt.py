"""The preempt verb's decision: PDBs first, minimal device-aware victims, least fragmentation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from extender.cache import ClusterCache
from extender.decide import Decider, WeightedPolicy
from extender.preempt import Victims, candidates_from_wire, result_to_wire, select_victims
from policies.registry import default_registry
from scheduler.pod import MIB, PodRequest
from scheduler.snapshot import Snapshot

CPU1 = PodRequest(cpu_milli=1000, memory=MIB)
HALF = PodRequest(cpu_milli=1000, memory=MIB, gpu_count=1, gpu_milli=500)
WHOLE = PodRequest(cpu_milli=1000, memory=MIB, gpu_count=1, gpu_milli=1000)


def flat(snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
    """A scorer with no opinion: every node 50."""
    return np.full(snapshot.num_nodes, 50.0)


def cpu_nodes(*names: str, cpu: int = 4000) -> Snapshot:
    s = Snapshot()
    for name in names:
        s.add_node(name, cpu_milli=cpu, memory=64 << 30)
    return s


def fill(s: Snapshot, node: str, *uids: str, pod: PodRequest = CPU1) -> None:
    for uid in uids:
        s.assign(uid, pod, node)


def test_empty_candidates_give_nothing() -> None:
    assert select_victims(cpu_nodes("a"), CPU1, {}, {}, flat) == {}


def test_three_proposed_victims_one_needed_keeps_the_lowest_priority() -> None:
    s = cpu_nodes("a")
    fill(s, "a", "keep", "v-high", "v-low", "v-mid")  # node full: 4 x 1000m of 4000m
    priority = {"v-high": 5, "v-low": 1, "v-mid": 3}
    proposed = {"a": Victims(["v-high", "v-low", "v-mid"], 0)}
    # all gone: 3000m free; v-high back: 2000m, fits; v-mid back: 1000m, fits; v-low back: 0
    assert select_victims(s, CPU1, proposed, priority, flat) == {"a": Victims(["v-low"], 0)}


def test_two_needed_of_three() -> None:
    s = cpu_nodes("a")
    fill(s, "a", "keep", "v1", "v2", "v3")
    big = PodRequest(cpu_milli=2000, memory=MIB)
    result = select_victims(s, big, {"a": Victims(["v1", "v2", "v3"], 0)}, {"v1": 9}, flat)
    assert result == {"a": Victims(["v2", "v3"], 0)}


def test_fewest_pdb_violations_win_over_every_other_key() -> None:
    s = cpu_nodes("a", "b")
    fill(s, "a", "a0", "a1", "a2", "a3")
    fill(s, "b", "b0", "b1", "b2", "b3")
    big = PodRequest(cpu_milli=3000, memory=MIB)
    proposed = {
        "a": Victims(["a1"], 1),  # better on priority, count and row, but violates a PDB
        "b": Victims(["b1", "b2", "b3"], 0),
    }
    big_cpu = PodRequest(cpu_milli=1000, memory=MIB)
    assert select_victims(s, big_cpu, proposed, {"b1": 7}, flat) == {
        "b": Victims(["b3"], 0)  # b1 (priority 7) and then b2 reprieved; a never considered
    }
    # ...but a node violating fewer PDBs that cannot take the pod does not block preemption
    proposed = {"a": Victims(["a0", "a1", "a2"], 2), "b": Victims(["b1"], 0)}
    assert select_victims(s, big, proposed, {}, flat) == {"a": Victims(["a0", "a1", "a2"], 2)}


def test_rank_by_highest_victim_priority_then_victim_count() -> None:
    s = cpu_nodes("a", "b", "c")
    for node in ("a", "b", "c"):
        fill(s, node, *(f"{node}{i}" for i in range(4)))
    two = PodRequest(cpu_milli=2000, memory=MIB)
    proposed = {
        "a": Victims(["a0", "a1"], 0),  # one victim of priority 10
        "b": Victims(["b0", "b1"], 0),  # two of priority 3
        "c": Victims(["c0", "c1", "c2"], 0),  # three of priority 3
    }
    priority = {"a0": 10, "a1": 10, "b0": 3, "b1": 3, "c0": 3, "c1": 3, "c2": 3}
    # c needs only two of its three: ties with b on (priority 3, two victims); b has the lower row
    assert select_victims(s, two, proposed, priority, flat) == {"b": Victims(["b0", "b1"], 0)}
    del proposed["b"]
    assert select_victims(s, two, proposed, priority, flat) == {"c": Victims(["c1", "c2"], 0)}


def test_gpu_devices_decide_which_victim_goes() -> None:
    s = Snapshot()
    s.add_node("g", cpu_milli=8000, memory=64 << 30, gpu_count=2, gpu_model="T4")
    s.assign("v0", PodRequest(gpu_count=1, gpu_milli=600), "g", devices=(0,))
    s.assign("v1", PodRequest(gpu_count=1, gpu_milli=300), "g", devices=(1,))
    s.assign("keep", PodRequest(gpu_count=1, gpu_milli=500), "g", devices=(1,))
    want = PodRequest(cpu_milli=100, gpu_count=1, gpu_milli=700)
    proposed = {"g": Victims(["v0", "v1"], 0)}
    # By total free milli, evicting v1 alone would do (400 + 500 >= 700) and v0, tried first
    # for its higher priority, would be reprieved. No device then has 700 free: v0 must go.
    result = select_victims(s, want, proposed, {"v0": 2, "v1": 1}, flat)
    assert result == {"g": Victims(["v0"], 0)}


def test_node_where_even_all_victims_do_not_make_room_is_dropped() -> None:
    s = Snapshot()
    s.add_node("g", cpu_milli=8000, memory=64 << 30, gpu_count=2, gpu_model="T4")
    s.add_node("c", cpu_milli=8000, memory=64 << 30, gpu_count=2, gpu_model="T4")
    s.assign("g-keep0", PodRequest(gpu_count=1, gpu_milli=600), "g", devices=(0,))
    s.assign("g-keep1", PodRequest(gpu_count=1, gpu_milli=600), "g", devices=(1,))
    s.assign("g-v", PodRequest(gpu_count=1, gpu_milli=300), "g", devices=(1,))
    s.assign("c-v", WHOLE, "c", devices=(0,))
    s.assign("c-keep", WHOLE, "c", devices=(1,))
    want = PodRequest(gpu_count=1, gpu_milli=700)
    alone = {"g": Victims(["g-v"], 0)}  # 400 + 400 milli free after, no device 700
    assert select_victims(s, want, alone, {}, flat) == {}
    both = {**alone, "c": Victims(["c-v"], 0)}
    assert select_victims(s, want, both, {}, flat) == {"c": Victims(["c-v"], 0)}


def test_unknown_nodes_and_uids_never_reach_the_result() -> None:
    s = cpu_nodes("a", "b")
    fill(s, "a", "a0", "a1", "a2", "a3")
    fill(s, "b", "b0", "b1", "b2", "b3")
    proposed = {
        "ghost": Victims(["x"], 0),  # node not in the snapshot
        "b": Victims(["gone", "a0"], 0),  # unknown UID, and a pod that is on another node
        "a": Victims(["gone", "a1"], 0),
    }
    assert select_victims(s, CPU1, proposed, {}, flat) == {"a": Victims(["a1"], 0)}


def test_no_eviction_needed_in_fulcrums_view_keeps_kube_schedulers_victims() -> None:
    s = cpu_nodes("a")
    fill(s, "a", "a0", "a1")  # 2000m free: the pod fits; what blocks it is not a resource
    proposed = {"a": Victims(["a1", "a0"], 0)}
    assert select_victims(s, CPU1, proposed, {}, flat) == {"a": Victims(["a1", "a0"], 0)}


def test_equal_priority_reprieve_prefers_the_better_score() -> None:
    s = cpu_nodes("a", cpu=3000)
    fill(s, "a", "small")
    fill(s, "a", "big", pod=PodRequest(cpu_milli=2000, memory=MIB))
    want = PodRequest(cpu_milli=1000, memory=MIB)

    def tight(snapshot: Snapshot, pod: PodRequest) -> NDArray[np.float64]:
        left = snapshot.free[:, 0] - pod.cpu_milli  # best fit: least CPU left over
        return 100.0 - left / 30.0

    # either alone makes room; putting "big" back leaves 0m over (100) vs 1000m (66.7)
    result = select_victims(s, want, {"a": Victims(["small", "big"], 0)}, {}, tight)
    assert result == {"a": Victims(["small"], 0)}
    assert select_victims(s, want, {"a": Victims(["small", "big"], 0)}, {}, flat) == {
        "a": Victims(["big"], 0)  # no opinion: kube-scheduler's order, "small" back first
    }


def fragmentation_cluster() -> ClusterCache:
    cache = ClusterCache()
    s = cache.snapshot
    for name in ("b", "a"):  # b is row 0: it wins every tie before the score
        s.add_node(name, cpu_milli=8000, memory=32 << 30, gpu_count=1, gpu_model="T4")
    s.assign("vB", WHOLE, "b")
    s.assign("vA", HALF, "a", devices=(0,))
    s.assign("keepA", HALF, "a", devices=(0,))
    return cache


def test_fragmentation_breaks_the_tie_between_two_nodes() -> None:
    cache = fragmentation_cluster()
    decider = Decider(cache, default_registry(), [WeightedPolicy("Archimedes", 1.0)])
    proposed = {"b": Victims(["vB"], 0), "a": Victims(["vA"], 0)}
    # Evicting vB leaves a whole free GPU of which the half-GPU pod strands 500 milli for the
    # whole-GPU pods of the workload; evicting vA leaves a 500-milli hole the pod fills exactly.
    result = select_victims(cache.snapshot, HALF, proposed, {}, decider.scores)
    assert result == {"a": Victims(["vA"], 0)}
    assert select_victims(cache.snapshot, HALF, proposed, {}, flat) == {"b": Victims(["vB"], 0)}


def test_hypothetical_states_do_not_leak_into_a_caching_scorer() -> None:
    cache = fragmentation_cluster()
    live = cache.snapshot
    decider = Decider(cache, default_registry(), [WeightedPolicy("Archimedes", 1.0)])
    policy = decider.policies()[0][0]
    decider.scores(live, HALF)  # warm the per-shape score cache (keyed by node_version)
    proposed = {"b": Victims(["vB"], 0), "a": Victims(["vA"], 0)}
    assert select_victims(live, HALF, proposed, {}, decider.scores) == {"a": Victims(["vA"], 0)}
    # Real events now take each row through the versions the hypothetical states passed
    # through, with other contents: the cached scores must still be the live ones.
    for node in ("a", "b"):
        for _ in range(2):
            live.assign(f"extra-{node}", CPU1, node)
            np.testing.assert_array_equal(decider.scores(live, HALF), policy.score(live, HALF))
            live.release(f"extra-{node}")
            np.testing.assert_array_equal(decider.scores(live, HALF), policy.score(live, HALF))


def test_inputs_are_untouched() -> None:
    cache = fragmentation_cluster()
    s = cache.snapshot
    s.add_node("c", cpu_milli=2000, memory=32 << 30)
    fill(s, "c", "c0", "c1")
    arrays = ("allocatable", "free", "gpu_free", "gpu_count", "gpu_model", "gpu_pod_kinds")
    before = {name: getattr(s, name).copy() for name in arrays}
    versions, version, pods = s.node_version.copy(), s.version, dict(s.pods())
    on_node = {n: s.pods_on(n) for n in s.names}
    proposed = {
        "b": Victims(["vB"], 0),
        "a": Victims(["vA", "keepA"], 0),
        "c": Victims(["c0", "c1"], 0),
    }
    priority = {"keepA": 3}
    copies = (dict(proposed), [list(v.uids) for v in proposed.values()], dict(priority))
    decider = Decider(cache, default_registry(), [WeightedPolicy("Archimedes", 1.0)])
    assert select_victims(s, HALF, proposed, priority, decider.scores)
    for name in arrays:
        np.testing.assert_array_equal(getattr(s, name), before[name])
    np.testing.assert_array_equal(s.node_version, versions)
    assert (s.version, dict(s.pods())) == (version, pods)
    assert {n: s.pods_on(n) for n in s.names} == on_node
    assert (dict(proposed), [list(v.uids) for v in proposed.values()], dict(priority)) == copies


def test_candidates_from_full_pods_carry_priorities() -> None:
    body = {
        "Pod": {},
        "NodeNameToVictims": {
            "a": {
                "Pods": [
                    {"metadata": {"uid": "u1"}, "spec": {"priority": 7}},
                    {"metadata": {"uid": "u2"}, "spec": {}},
                ],
                "NumPDBViolations": 1,
            },
            "b": None,
        },
        "NodeNameToMetaVictims": None,
    }
    assert candidates_from_wire(body) == ({"a": Victims(["u1", "u2"], 1)}, {"u1": 7, "u2": 0})


def test_candidates_from_meta_victims_and_the_result_body() -> None:
    body = {
        "Pod": {},
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": "u1"}], "NumPDBViolations": 0}},
    }
    candidates, priority = candidates_from_wire(body)
    assert (candidates, priority) == ({"a": Victims(["u1"], 0)}, {})
    assert result_to_wire(candidates) == {
        "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": "u1"}], "NumPDBViolations": 0}}
    }
    assert result_to_wire({}) == {"NodeNameToMetaVictims": {}}
    assert candidates_from_wire({"Pod": {}}) == ({}, {})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"NodeNameToMetaVictims": []}, "NodeNameToMetaVictims: expected an object"),
        ({"NodeNameToMetaVictims": {"a": {"Pods": [{}]}}}, "NodeNameToMetaVictims.a.Pods[0]"),
        ({"NodeNameToVictims": {"a": {"Pods": {}}}}, "NodeNameToVictims.a.Pods: expected"),
        ({"NodeNameToVictims": {"a": {"NumPDBViolations": "1"}}}, "NumPDBViolations"),
        (
            {
                "NodeNameToVictims": {
                    "a": {"Pods": [{"metadata": {"uid": "u"}, "spec": {"priority": "x"}}]}
                }
            },
            "spec.priority",
        ),
    ],
)
def test_malformed_candidates_name_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        candidates_from_wire(body)
