from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kube.ippool import (
    AddressTaken,
    PoolError,
    PoolExhausted,
    allocate,
    check_invariants,
    holder_ip,
    holders,
    ip_holder,
    pool_addresses,
    release,
    selects,
    transfer,
)
from tests import builders

Pool = dict[str, Any]


def make_pool(
    *,
    cidr: str | None = None,
    addresses: list[str] | None = None,
    allocations: dict[str, str] | None = None,
    selector: dict[str, Any] | None = None,
) -> Pool:
    spec: dict[str, Any] = {}
    if cidr is not None:
        spec["cidr"] = cidr
    if addresses is not None:
        spec["addresses"] = addresses
    if selector is not None:
        spec["selector"] = selector
    pool: Pool = {
        "apiVersion": "fulcrum.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
        "spec": spec,
    }
    if allocations is not None:
        pool["status"] = {"allocations": allocations}
    return pool


def pod(labels: dict[str, str], namespace: str = "shop") -> dict[str, Any]:
    return builders.pod("p", namespace=namespace, labels=labels)


# --- pool_addresses -----------------------------------------------------------------------------


def test_ipv4_cidr_skips_network_and_broadcast() -> None:
    addresses = pool_addresses(make_pool(cidr="10.64.0.0/28"))
    assert len(addresses) == 14
    assert (addresses[0], addresses[-1]) == ("10.64.0.1", "10.64.0.14")


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.64.0.0/31", ["10.64.0.0", "10.64.0.1"]),
        ("10.64.0.9/32", ["10.64.0.9"]),
        ("fd00::/126", ["fd00::", "fd00::1", "fd00::2", "fd00::3"]),
    ],
)
def test_small_cidrs_keep_every_address(cidr: str, expected: list[str]) -> None:
    assert pool_addresses(make_pool(cidr=cidr)) == expected


def test_largest_cidrs() -> None:
    assert len(pool_addresses(make_pool(cidr="10.0.0.0/16"))) == 65_534
    assert len(pool_addresses(make_pool(cidr="fd00::/112"))) == 65_536


@pytest.mark.parametrize("cidr", ["10.0.0.0/15", "fd00::/111"])
def test_too_large_cidr(cidr: str) -> None:
    with pytest.raises(PoolError, match="use a smaller cidr"):
        pool_addresses(make_pool(cidr=cidr))


def test_listed_addresses_sorted_and_canonical() -> None:
    pool = make_pool(addresses=["10.64.0.9", "fd00:0::1", "10.64.0.10", "10.64.0.2"])
    assert pool_addresses(pool) == ["10.64.0.2", "10.64.0.9", "10.64.0.10", "fd00::1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cidr": "10.0.0.0/33"}, r'spec.cidr "10.0.0.0/33" is not a CIDR'),
        ({"cidr": "web"}, r'spec.cidr "web" is not a CIDR'),
        ({"cidr": "10.64.0.1/28"}, r'has host bits set; write "10.64.0.0/28"'),
        ({}, "exactly one of spec.cidr and spec.addresses"),
        ({"cidr": "10.0.0.0/28", "addresses": ["10.0.0.1"]}, "exactly one of"),
        ({"addresses": []}, "spec.addresses must be a non-empty list"),
        ({"addresses": ["10.0.0.1", "nope"]}, r"spec.addresses\[1\] 'nope' is not an IP"),
        ({"addresses": ["fd00::1", "fd00:0::1"]}, "lists fd00::1 twice"),
    ],
)
def test_malformed_pool(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PoolError, match=message) as raised:
        pool_addresses(make_pool(**kwargs))
    assert "pool shop/web" in str(raised.value)


def test_cidr_not_a_string() -> None:
    pool = make_pool()
    pool["spec"]["cidr"] = 10
    with pytest.raises(PoolError, match="not a CIDR"):
        pool_addresses(pool)


# --- selects ------------------------------------------------------------------------------------


def test_selects_by_labels_and_namespace() -> None:
    pool = make_pool(cidr="10.64.0.0/28", selector={"matchLabels": {"app": "web"}})
    assert selects(pool, pod({"app": "web", "tier": "front"}))
    assert not selects(pool, pod({"app": "db"}))
    assert not selects(pool, pod({}))
    assert not selects(pool, pod({"app": "web"}, namespace="other"))


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}}])
def test_empty_selector_selects_the_whole_namespace(selector: dict[str, Any] | None) -> None:
    pool = make_pool(cidr="10.64.0.0/28", selector=selector)
    assert selects(pool, pod({}))
    assert not selects(pool, pod({}, namespace="other"))


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "tier", "operator": "In", "values": ["a", "b"]}, {"tier": "b"}, True),
        ({"key": "tier", "operator": "In", "values": ["a"]}, {"tier": "b"}, False),
        ({"key": "tier", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "b"}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "a"}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
        ({"key": "tier", "operator": "Exists"}, {}, False),
        ({"key": "tier", "operator": "DoesNotExist"}, {}, True),
        ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "a"}, False),
    ],
)
def test_match_expressions(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    pool = make_pool(cidr="10.64.0.0/28", selector={"matchExpressions": [expression]})
    assert selects(pool, pod(labels)) is expected


def test_unknown_operator() -> None:
    selector = {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}
    pool = make_pool(cidr="10.64.0.0/28", selector=selector)
    with pytest.raises(PoolError, match=r"matchExpressions\[0\].operator 'Gt' is not supported"):
        selects(pool, pod({"a": "2"}))


# --- lookups ------------------------------------------------------------------------------------


def test_lookups() -> None:
    pool = make_pool(
        cidr="fd00::/120", allocations={"fd00::2": "pod:a", "fd00::3": "reservation:rb-b"}
    )
    assert holders(pool) == {"pod:a": "fd00::2", "reservation:rb-b": "fd00::3"}
    assert holder_ip(pool, "pod:a") == "fd00::2"
    assert holder_ip(pool, "pod:z") is None
    assert ip_holder(pool, "fd00:0::3") == "reservation:rb-b"  # any spelling
    assert ip_holder(pool, "fd00::4") is None
    assert holders(make_pool(cidr="fd00::/120")) == {}


def test_corrupt_allocations() -> None:
    twice = make_pool(cidr="10.64.0.0/28", allocations={"10.64.0.1": "a", "10.64.0.2": "a"})
    with pytest.raises(PoolError, match=re.escape("a holds both 10.64.0.1 and 10.64.0.2")):
        holders(twice)
    not_strings = make_pool(cidr="10.64.0.0/28", allocations={})
    not_strings["status"]["allocations"]["10.64.0.1"] = 7
    with pytest.raises(PoolError, match=re.escape("status.allocations must map addresses")):
        holders(not_strings)


def test_check_invariants() -> None:
    check_invariants(make_pool(cidr="10.64.0.0/28", allocations={"10.64.0.1": "a"}))
    check_invariants(make_pool(cidr="10.64.0.0/28"))
    outside = make_pool(cidr="10.64.0.0/28", allocations={"10.64.0.15": "a"})  # broadcast
    with pytest.raises(
        PoolError, match=re.escape("10.64.0.15, which is not an address of the pool")
    ):
        check_invariants(outside)
    spelled = make_pool(cidr="fd00::/120", allocations={"fd00:0::1": "a"})
    with pytest.raises(PoolError, match="not an address of the pool"):
        check_invariants(spelled)
    twice = make_pool(cidr="10.64.0.0/28", allocations={"10.64.0.1": "a", "10.64.0.2": "a"})
    with pytest.raises(PoolError, match="holds both"):
        check_invariants(twice)


# --- allocate -----------------------------------------------------------------------------------


def test_allocate_lowest_free() -> None:
    pool = make_pool(cidr="10.64.0.0/29", allocations={"10.64.0.1": "pod:a"})
    before = copy.deepcopy(pool)
    new, ip = allocate(pool, "pod:b")
    assert ip == "10.64.0.2"
    assert new["status"]["allocations"] == {"10.64.0.1": "pod:a", "10.64.0.2": "pod:b"}
    assert new["metadata"] == pool["metadata"]
    assert pool == before


def test_allocate_into_a_pool_without_status() -> None:
    new, ip = allocate(make_pool(addresses=["10.0.0.7"]), "pod:a")
    assert (ip, new["status"]) == ("10.0.0.7", {"allocations": {"10.0.0.7": "pod:a"}})


def test_allocate_is_idempotent() -> None:
    pool = make_pool(cidr="10.64.0.0/29", allocations={"10.64.0.3": "pod:a"})
    assert allocate(pool, "pod:a") == (pool, "10.64.0.3")
    assert allocate(pool, "pod:a", want="10.64.0.3") == (pool, "10.64.0.3")
    with pytest.raises(PoolError, match=re.escape("pod:a already holds 10.64.0.3, not 10.64.0.4")):
        allocate(pool, "pod:a", want="10.64.0.4")


def test_allocate_wanted_address() -> None:
    pool = make_pool(cidr="fd00::/120")
    new, ip = allocate(pool, "pod:a", want="fd00:0:0::9")
    assert ip == "fd00::9"
    assert holders(new) == {"pod:a": "fd00::9"}


def test_allocate_wanted_outside_pool() -> None:
    pool = make_pool(cidr="10.64.0.0/28")
    with pytest.raises(PoolError, match=r"10.64.0.15 is outside pool shop/web \(10.64.0.0/28\)"):
        allocate(pool, "pod:a", want="10.64.0.15")
    with pytest.raises(PoolError, match='"nope" is not an IP address'):
        allocate(pool, "pod:a", want="nope")


def test_allocate_wanted_address_taken() -> None:
    pool = make_pool(cidr="10.64.0.0/28", allocations={"10.64.0.5": "reservation:rb-x"})
    with pytest.raises(
        AddressTaken, match=re.escape("10.64.0.5 in pool shop/web is held by reservation:rb-x")
    ):
        allocate(pool, "pod:a", want="10.64.0.5")


def test_allocate_exhausted() -> None:
    pool = make_pool(addresses=["10.0.0.1", "10.0.0.2"])
    pool, _ = allocate(pool, "pod:a")
    pool, _ = allocate(pool, "pod:b")
    with pytest.raises(PoolExhausted, match=r"pool shop/web \(2 listed addresses\).* all 2 "):
        allocate(pool, "pod:c")


# --- release and transfer -----------------------------------------------------------------------


def test_release() -> None:
    pool = make_pool(cidr="10.64.0.0/29", allocations={"10.64.0.1": "pod:a", "10.64.0.2": "b"})
    before = copy.deepcopy(pool)
    new = release(pool, "pod:a")
    assert new is not None
    assert holders(new) == {"b": "10.64.0.2"}
    assert pool == before
    assert release(pool, "pod:z") is None


def test_transfer() -> None:
    pool = make_pool(cidr="10.64.0.0/29", allocations={"10.64.0.4": "pod:old"})
    before = copy.deepcopy(pool)
    held = transfer(pool, "pod:old", "reservation:rb-old")
    assert held is not None
    assert holders(held) == {"reservation:rb-old": "10.64.0.4"}
    assert pool == before
    done = transfer(held, "reservation:rb-old", "pod:new")
    assert done is not None
    assert holders(done) == {"pod:new": "10.64.0.4"}
    # already transferred (a retry after a successful write): nothing to do
    assert transfer(done, "pod:old", "reservation:rb-old") is None
    assert transfer(done, "pod:new", "pod:new") is None


def test_transfer_to_a_holder_of_another_address() -> None:
    pool = make_pool(cidr="10.64.0.0/29", allocations={"10.64.0.1": "a", "10.64.0.2": "b"})
    with pytest.raises(
        PoolError, match=re.escape("b already holds 10.64.0.2, so it cannot take 10.64.0.1")
    ):
        transfer(pool, "a", "b")


def test_error_hierarchy() -> None:
    assert issubclass(PoolExhausted, PoolError)
    assert issubclass(AddressTaken, PoolError)
    assert issubclass(PoolError, ValueError)


# --- a pool under concurrent controllers --------------------------------------------------------

POOL_SPECS: list[dict[str, Any]] = [
    {"cidr": "10.64.0.0/29"},
    {"cidr": "10.64.0.0/31"},
    {"cidr": "10.64.0.7/32"},
    {"cidr": "fd00::/125"},
    {"addresses": ["10.0.0.9", "10.0.0.3", "fd00::1"]},
]
PODS = [f"pod:{i}" for i in range(5)]
HOLDERS = PODS + [f"reservation:rb-{i}" for i in range(5)]
OUTSIDE = "192.0.2.1"
LOST_RACE = st.sampled_from([False, False, False, True])

Model = dict[str, str]
Expected = Model | None | type[PoolError]  # new holders, no write needed, or the error


def expect_transfer(model: Model, old: str, new: str) -> Expected:
    ip = model.get(old)
    if ip is None or old == new:
        return None
    if new in model:
        return PoolError
    moved = {h: i for h, i in model.items() if h != old}
    moved[new] = ip
    return moved


class PoolMachine(RuleBasedStateMachine):
    """A model (holder -> address) against the real functions; a lost race discards a result."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: Pool = {}
        self.addresses: list[str] = []
        self.model: Model = {}

    @initialize(spec=st.sampled_from(POOL_SPECS))
    def create(self, spec: dict[str, Any]) -> None:
        self.pool = make_pool(**spec)
        self.addresses = pool_addresses(self.pool)

    def apply(self, op: Callable[[Pool], Pool | None], expected: Expected, lost: bool) -> None:
        """Run ``op`` on the stored pool and store its result unless the race was lost."""
        before = copy.deepcopy(self.pool)
        if isinstance(expected, type):
            with pytest.raises(PoolError) as raised:
                op(self.pool)
            assert type(raised.value) is expected
            result = None
        else:
            result = op(self.pool)
            assert (result is None) == (expected is None)
        assert self.pool == before, "the input pool was mutated"
        if result is None or lost:
            return
        assert isinstance(expected, dict)
        self.pool, self.model = result, expected

    @rule(
        holder=st.sampled_from(HOLDERS),
        want_index=st.none() | st.integers(min_value=0, max_value=9),
        lost=LOST_RACE,
    )
    def allocate_address(self, holder: str, want_index: int | None, lost: bool) -> None:
        want = None
        if want_index is not None:
            want = self.addresses[want_index] if want_index < len(self.addresses) else OUTSIDE
        taken = set(self.model.values())
        expected: Expected
        ip: str | None = None
        if holder in self.model:
            ip = self.model[holder]
            expected = dict(self.model) if want in (None, ip) else PoolError
        elif want is not None:
            ip = want
            if want not in self.addresses:
                expected = PoolError
            elif want in taken:
                expected = AddressTaken
            else:
                expected = {**self.model, holder: want}
        else:
            ip = next((a for a in self.addresses if a not in taken), None)
            expected = PoolExhausted if ip is None else {**self.model, holder: ip}

        def op(pool: Pool) -> Pool:
            new, got = allocate(pool, holder, want=want)
            assert got == ip
            return new

        self.apply(op, expected, lost)

    @rule(holder=st.sampled_from(HOLDERS), lost=LOST_RACE)
    def release_address(self, holder: str, lost: bool) -> None:
        expected = None
        if holder in self.model:
            expected = {h: i for h, i in self.model.items() if h != holder}
        self.apply(lambda pool: release(pool, holder), expected, lost)

    def rebuildable(self) -> list[int]:
        """Pods that hold an address, or whose rebuild stopped with the reservation holding it."""
        return [
            i
            for i, name in enumerate(PODS)
            if name in self.model or f"reservation:rb-{i}" in self.model
        ]

    @precondition(lambda self: bool(self.rebuildable()))
    @rule(
        data=st.data(),
        new=st.integers(min_value=0, max_value=len(PODS) - 1),
        lost_at=st.sampled_from([None, None, 1, 2]),
    )
    def rebuild(self, data: st.DataObject, new: int, lost_at: int | None) -> None:
        """pod -> reservation -> successor pod, as a local rebuild moves an address.

        A race lost at step 1 or 2 leaves the stored pool as it was before that step;
        a later rebuild of the same pod picks up from there.
        """
        old = data.draw(st.sampled_from(self.rebuildable()))
        predecessor, held, successor = PODS[old], f"reservation:rb-{old}", PODS[new]
        first = expect_transfer(self.model, predecessor, held)
        self.apply(lambda pool: transfer(pool, predecessor, held), first, lost_at == 1)
        if lost_at == 1:
            return
        second = expect_transfer(self.model, held, successor)
        self.apply(lambda pool: transfer(pool, held, successor), second, lost_at == 2)

    @invariant()
    def consistent(self) -> None:
        if not self.pool:
            return
        check_invariants(self.pool)
        assert holders(self.pool) == self.model
        ips = list(self.model.values())
        assert len(set(ips)) == len(ips)
        assert set(ips) <= set(self.addresses)
        for holder, ip in self.model.items():
            assert ip_holder(self.pool, ip) == holder
            assert holder_ip(self.pool, holder) == ip


PoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPoolMachine = PoolMachine.TestCase
