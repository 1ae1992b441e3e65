"""``rebuild.writes.PoolPatches``: moves of one pool's addresses written together, each keeping
its own compare-and-swap outcome."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rebuild.errors import Invalid
from rebuild.writes import PoolPatches


def move(ip: str, old: str, new: str) -> list[dict[str, Any]]:
    path = f"/status/allocations/{ip}"
    return [
        {"op": "test", "path": path, "value": old},
        {"op": "replace", "path": path, "value": new},
    ]


class Pool:
    """One pool's allocations, patched atomically as the API server does; the first patch
    blocks until ``release`` is set, so others queue up behind it."""

    def __init__(self, allocations: dict[str, str]) -> None:
        self.allocations = allocations
        self.patches: list[int] = []  # moves per patch written
        self.release = threading.Event()

    def send(self, namespace: str, pool: str, ops: list[dict[str, Any]]) -> None:
        if not self.patches:
            self.release.wait(5)
        after = dict(self.allocations)
        for op in ops:
            ip = op["path"].rsplit("/", 1)[1]
            if op["op"] == "test" and after.get(ip) != op["value"]:
                self.patches.append(0)
                raise Invalid(422, f"test failed at {op['path']}")
            if op["op"] == "replace":
                after[ip] = op["value"]
        self.allocations = after
        self.patches.append(len(ops) // 2)


def run(pool: Pool, patches: PoolPatches, moves: list[list[dict[str, Any]]]) -> list[Any]:
    """Each move on its own thread; what each ``write`` returned or raised."""
    out: list[Any] = [None] * len(moves)

    def one(i: int) -> None:
        try:
            out[i] = patches.write("ns", "web", moves[i])
        except Invalid as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(moves))]
    threads[0].start()
    time.sleep(0.05)  # the first write is in flight; the others wait behind it
    for t in threads[1:]:
        t.start()
    time.sleep(0.05)
    pool.release.set()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    return out


def test_moves_arriving_during_a_write_go_in_the_next_one_together() -> None:
    pool = Pool({f"10.0.0.{i}": f"pod:{i}" for i in range(6)})
    patches = PoolPatches(pool.send)
    out = run(
        pool, patches, [move(f"10.0.0.{i}", f"pod:{i}", f"reservation:{i}") for i in range(6)]
    )
    assert out == [True] * 6
    assert pool.patches == [1, 5]  # the one in flight, then the five that waited, at once
    assert pool.allocations == {f"10.0.0.{i}": f"reservation:{i}" for i in range(6)}
    assert patches.waiting == {}


def test_a_batch_that_fails_has_each_move_written_alone() -> None:
    """One stale move (its test fails) must not take the others down with it, nor be written."""
    pool = Pool({"10.0.0.0": "pod:0", "10.0.0.1": "pod:1", "10.0.0.2": "pod:2"})
    patches = PoolPatches(pool.send)
    moves = [
        move("10.0.0.0", "pod:0", "reservation:0"),
        move("10.0.0.1", "pod:gone", "reservation:1"),  # stale: pod:1 holds it
        move("10.0.0.2", "pod:2", "reservation:2"),
    ]
    out = run(pool, patches, moves)
    assert out[0] is True
    assert out[1:] == [False, False]  # the batch failed: the caller writes each alone
    assert pool.patches == [1, 0]
    with pytest.raises(Invalid):  # alone, the stale move gets its own refusal
        patches.write("ns", "web", moves[1])
    assert patches.write("ns", "web", moves[2]) is True
    assert pool.allocations["10.0.0.1"] == "pod:1"
    assert pool.allocations["10.0.0.2"] == "reservation:2"
