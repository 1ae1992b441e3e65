"""The rebuild controller's work queue: dedup, one worker per key, delays, backoff, shutdown."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from rebuild.workqueue import BASE_DELAY, MAX_DELAY, ExponentialBackoff, WorkQueue


class FakeClock:
    """A clock the test moves by hand (the queue only reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_deduplicated_while_queued() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "a", "b", "c"):
        queue.add(key)
    assert len(queue) == 3
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "b", "c"]
    assert queue.get(0) is None
    assert len(queue) == 0


def test_a_key_being_processed_is_not_handed_out_again() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")  # changed while a worker has it
    assert len(queue) == 0
    assert queue.get(0.01) is None  # not to a second worker
    queue.done("a")
    assert queue.get(0) == "a"  # dirty: queued again on done
    queue.done("a")
    assert queue.get(0) is None  # once only


def test_dirty_key_is_requeued_once_however_often_it_was_added() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")
    queue.add("a")
    queue.add("b")
    queue.done("a")
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["b", "a", None]


def test_no_two_workers_hold_the_same_key() -> None:
    queue = WorkQueue()
    holding: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (key := queue.get(0.05)) is not None:
            with lock:
                if key in holding:
                    overlaps.append(key)
                holding.add(key)
                processed.append(key)
            time.sleep(0.002)
            with lock:
                holding.discard(key)
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(30):
        queue.add("shared")
        queue.add("other")
        time.sleep(0.001)
    for thread in threads:
        thread.join(2)
    assert not overlaps
    assert processed.count("shared") > 1  # it was re-queued while processing


def test_add_after_holds_keys_back_and_hands_them_out_in_time_order() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("late", 0.3)
    queue.add_after("early", 0.1)
    queue.add_after("middle", 0.2)
    queue.add_after("now", 0)
    assert queue.get(0) == "now"
    assert len(queue) == 0
    clock.now += 0.25
    assert len(queue) == 2
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["early", "middle", None]
    clock.now += 0.1
    assert queue.get(0) == "late"


def test_the_earliest_add_after_wins() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 1)
    queue.add_after("a", 5)
    clock.now += 1
    assert queue.get(0) == "a"
    queue.done("a")
    clock.now += 10
    assert queue.get(0) is None  # the later requests were absorbed by the first


def test_a_waiting_get_wakes_up_for_a_delayed_key() -> None:
    queue = WorkQueue()
    queue.add_after("a", 0.02)
    started = time.monotonic()
    assert queue.get(1) == "a"
    assert 0.015 <= time.monotonic() - started < 0.5


def test_a_blocked_get_sees_a_delay_added_later() -> None:
    queue = WorkQueue()
    got: list[str | None] = []
    thread = threading.Thread(target=lambda: got.append(queue.get(1)))
    thread.start()
    time.sleep(0.01)
    queue.add_after("a", 0.01)
    thread.join(1)
    assert got == ["a"]


def test_backoff_doubles_from_5ms_up_to_60s() -> None:
    backoff = ExponentialBackoff()
    delays = [backoff.when("a") for _ in range(20)]
    assert delays[:4] == [BASE_DELAY, 2 * BASE_DELAY, 4 * BASE_DELAY, 8 * BASE_DELAY]
    assert delays[-1] == MAX_DELAY == 60.0
    assert all(b == min(2 * a, MAX_DELAY) for a, b in itertools.pairwise(delays))
    assert backoff.when("b") == BASE_DELAY  # per key
    for _ in range(200):
        backoff.when("a")  # no overflow, however long it fails
    assert backoff.when("a") == MAX_DELAY


def test_forget_resets_the_backoff() -> None:
    queue = WorkQueue(ExponentialBackoff(base=0.001, cap=0.004))
    for _ in range(3):
        queue.add_rate_limited("a")
    assert queue.requeues("a") == 3
    queue.forget("a")
    assert queue.requeues("a") == 0


def test_add_rate_limited_delays_by_the_backoff() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    for expected in (BASE_DELAY, 2 * BASE_DELAY, 4 * BASE_DELAY):
        queue.add_rate_limited("a")
        clock.now += expected * 0.9
        assert queue.get(0) is None
        clock.now += expected * 0.2
        assert queue.get(0) == "a"
        queue.done("a")
    queue.forget("a")
    queue.add_rate_limited("a")
    clock.now += BASE_DELAY
    assert queue.get(0) == "a"


def test_shutdown_unblocks_get_and_drops_later_adds() -> None:
    queue = WorkQueue()
    got: list[str | None] = ["not yet"]

    def worker() -> None:
        got[0] = queue.get()

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.01)
    queue.shutdown()
    thread.join(1)
    assert not thread.is_alive()
    assert got == [None]
    assert queue.shutting_down
    queue.add("a")
    queue.add_after("b", 0.001)
    assert len(queue) == 0
    assert queue.get(0) is None


@pytest.mark.parametrize("timeout", [0, 0.01])
def test_get_times_out(timeout: float) -> None:
    started = time.monotonic()
    assert WorkQueue().get(timeout) is None
    assert time.monotonic() - started < timeout + 0.1


def test_an_urgent_key_jumps_the_queue() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "c"):
        queue.add(key)
    queue.add("c", urgent=True)
    queue.add("d", urgent=True)
    assert [queue.get(timeout=0) for _ in range(4)] == ["d", "c", "a", "b"]
