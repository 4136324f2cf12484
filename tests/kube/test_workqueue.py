"""The work queue's guarantees, one by one, with a fake clock; then under several threads."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from webhook.kube.workqueue import ItemExponentialBackoff, TokenBucket, WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(queue: WorkQueue[str]) -> list[str]:
    """Everything ready now, each marked done."""
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_a_key_added_many_times_while_queued_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ["a", "b", "a", "a", "c", "b"]:
        queue.add(key)
    assert len(queue) == 3
    assert drain(queue) == ["a", "b", "c"]  # first-come order


def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    queue.add("a")
    assert queue.get(timeout=0) is None  # still with its first worker
    assert queue.processing == 1
    queue.done("a")
    assert queue.get(timeout=0) == "a"  # queued again, once
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_done_without_a_new_add_does_not_requeue() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = queue.get(timeout=0)
    assert key == "a"
    queue.done(key)
    assert len(queue) == 0
    assert queue.get(timeout=0) is None


def test_add_after_waits_for_its_time() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    assert queue.waiting == 1
    assert queue.get(timeout=0) is None
    clock.advance(9.9)
    assert queue.get(timeout=0) is None
    clock.advance(0.2)
    assert queue.get(timeout=0) == "a"
    assert queue.waiting == 0


def test_add_after_keeps_the_earliest_time_and_dedups_with_add() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 5)  # sooner: wins
    queue.add_after("a", 20)  # later: ignored
    clock.advance(5)
    assert drain(queue) == ["a"]
    clock.advance(20)
    assert drain(queue) == []  # the superseded times do not fire again

    queue.add("b")
    queue.add_after("b", 1)
    clock.advance(1)
    assert drain(queue) == ["b"]  # queued and due at once: processed once
    assert queue.add_after("c", 0) is None
    assert drain(queue) == ["c"]  # no delay: ready now


def test_rate_limited_adds_back_off_exponentially_per_key_until_forgotten() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    for expected_delay in (0.005, 0.010, 0.020, 0.040):
        queue.add_rate_limited("a")
        clock.advance(expected_delay * 0.99)
        assert drain(queue) == []
        clock.advance(expected_delay * 0.02)
        assert drain(queue) == ["a"]
    assert queue.num_requeues("a") == 4
    assert queue.num_requeues("b") == 0  # each key has its own backoff
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    clock.advance(0.005)
    assert drain(queue) == ["a"]


def test_backoff_is_capped() -> None:
    backoff: ItemExponentialBackoff[str] = ItemExponentialBackoff(0.005, 1000.0)
    delays = [backoff.when("a") for _ in range(100)]
    assert delays[:3] == [0.005, 0.010, 0.020]
    assert max(delays) == 1000.0
    assert delays[-1] == 1000.0


def test_token_bucket_allows_a_burst_then_spaces_retries() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 2, clock=clock)
    assert [bucket.when() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.1, 0.2])
    clock.advance(10)
    assert [bucket.when() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def test_the_overall_bucket_delays_retries_of_many_keys() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock, bucket_qps=10, bucket_burst=1)
    queue.add_rate_limited("a")
    queue.add_rate_limited("b")  # the bucket is empty: 100 ms, not 5 ms
    clock.advance(0.005)
    assert drain(queue) == ["a"]
    clock.advance(0.095)
    assert drain(queue) == ["b"]


def test_get_times_out_with_none() -> None:
    queue: WorkQueue[str] = WorkQueue()
    assert queue.get(timeout=0.01) is None


def test_a_blocked_get_wakes_when_a_delayed_key_is_due() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.05)
    assert queue.get(timeout=10) == "a"


def test_shutdown_wakes_blocked_workers_and_ignores_later_adds() -> None:
    queue: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    workers = [threading.Thread(target=lambda: got.append(queue.get())) for _ in range(3)]
    for worker in workers:
        worker.start()
    queue.shutdown()
    for worker in workers:
        worker.join(5)
    assert got == [None, None, None]
    queue.add("a")
    queue.add_after("b", 1)
    assert len(queue) == 0
    assert queue.get(timeout=0) is None


def test_many_workers_never_share_a_key_and_the_last_add_is_always_processed() -> None:
    queue: WorkQueue[int] = WorkQueue()
    keys = range(20)
    active: set[int] = set()
    overlaps: list[int] = []
    processed: Counter[int] = Counter()
    added: Counter[int] = Counter()
    last_added_at: dict[int, int] = {}
    processed_at: dict[int, int] = {}
    lock = threading.Lock()
    ticks = iter(range(10**9))

    def worker() -> None:
        while (key := queue.get()) is not None:
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
                started = next(ticks)
            threading.Event().wait(random.random() / 1000)
            with lock:
                active.discard(key)
                processed[key] += 1
                processed_at[key] = started
            queue.done(key)

    def producer() -> None:
        for _ in range(500):
            key = random.choice(keys)
            with lock:
                added[key] += 1
                last_added_at[key] = next(ticks)
            queue.add(key)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    producers = [threading.Thread(target=producer) for _ in range(3)]
    for thread in [*workers, *producers]:
        thread.start()
    for thread in producers:
        thread.join(30)
    pause = threading.Event()
    while not queue.idle:  # until nothing is queued or in a worker
        pause.wait(0.01)
    queue.shutdown()
    for thread in workers:
        thread.join(5)

    assert overlaps == []
    assert set(processed) == set(added)
    # Coalesced: never more runs than adds, and fewer in total.
    assert all(processed[key] <= added[key] for key in added)
    assert sum(processed.values()) < sum(added.values())
    # Level-based: every key was processed after (or while starting after) its last add.
    assert all(processed_at[key] > last_added_at[key] for key in added)
