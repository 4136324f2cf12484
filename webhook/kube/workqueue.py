"""client-go's rate-limited work queue, for threads.

The guarantees a level-based controller is built on:
- a key added many times while it waits is processed once (bursts coalesce);
- a key being processed is never handed to a second worker; added meanwhile, it is queued
  again once, when the worker calls ``done``;
- ``add_after`` delays a key (kept at the earliest time asked for);
- ``add_rate_limited`` delays it by its own exponential backoff (5 ms, 10 ms, ... up to
  1000 s, as client-go's ``ItemExponentialFailureRateLimiter``), and, when the queue has an
  overall token bucket, by that too (client-go's ``DefaultControllerRateLimiter`` is both:
  10 per second, bursts of 100); ``forget`` ends a key's backoff after a success.

A worker loop::

    while (key := queue.get()) is not None:
        try:
            result = reconcile(key)
        except Exception:
            queue.add_rate_limited(key)
        else:
            queue.forget(key)
        finally:
            queue.done(key)

``get`` returns None once the queue is shut down (what is still queued is dropped: the
next leader's first list finds it again) or when its timeout passes. Time is read from an
injected clock, so delays are tested without waiting.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BASE_DELAY_SECONDS = 0.005
MAX_DELAY_SECONDS = 1000.0
BUCKET_BURST = 100

Clock = Callable[[], float]


class ItemExponentialBackoff(Generic[K]):
    """Per-key delay doubling on each failure: base * 2**failures, at most ``max``."""

    def __init__(
        self,
        base_delay_seconds: float = BASE_DELAY_SECONDS,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
    ) -> None:
        self.base = base_delay_seconds
        self.max = max_delay_seconds
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures >= 64:  # 2**64 * 5 ms is far past any max: do not overflow
            return self.max
        return min(self.base * 2.0**failures, self.max)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)


class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved up; each retry takes one, and waits
    for it when there is none (golang.org/x/time/rate's ``Reserve().Delay()``)."""

    def __init__(self, qps: float, burst: int, *, clock: Clock) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("a token bucket needs qps > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def when(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


class WorkQueue(Generic[K]):
    """Deduplicating, delaying, rate-limited queue of keys; safe for many threads."""

    def __init__(
        self,
        *,
        name: str = "",
        base_delay_seconds: float = BASE_DELAY_SECONDS,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
        bucket_qps: float | None = None,
        bucket_burst: int = BUCKET_BURST,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self._backoff: ItemExponentialBackoff[K] = ItemExponentialBackoff(
            base_delay_seconds, max_delay_seconds
        )
        self._bucket = (
            TokenBucket(bucket_qps, bucket_burst, clock=clock) if bucket_qps is not None else None
        )
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # queued, or to be queued again when done
        self._processing: set[K] = set()
        self._waiting: dict[K, float] = {}  # key -> when it is ready
        self._heap: list[tuple[float, int, K]] = []  # may hold stale entries
        self._sequence = itertools.count()
        self._shutting_down = False

    # Adding.

    def add(self, key: K) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again by done()
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            ready_at = self._clock() + seconds
            if key in self._waiting and self._waiting[key] <= ready_at:
                return  # already due sooner
            self._waiting[key] = ready_at
            heapq.heappush(self._heap, (ready_at, next(self._sequence), key))
            self._cond.notify()  # a waiting get() may now need to wake sooner

    def add_rate_limited(self, key: K) -> None:
        with self._cond:
            delay = self._backoff.when(key)
            if self._bucket is not None:
                delay = max(delay, self._bucket.when())
        self.add_after(key, delay)

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the base again."""
        with self._cond:
            self._backoff.forget(key)

    def num_requeues(self, key: K) -> int:
        with self._cond:
            return self._backoff.num_requeues(key)

    # Processing.

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process (now owned by the caller until ``done``); None after
        ``shutdown`` or when ``timeout`` seconds pass with nothing ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutting_down:
                    return None
                self._move_ready()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                if self._heap:
                    until_ready = max(self._heap[0][0] - self._clock(), 0.0)
                    wait = until_ready if wait is None else min(wait, until_ready)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._cond.notify()

    def _move_ready(self) -> None:
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) != ready_at:
                continue  # superseded by an earlier add_after
            del self._waiting[key]
            self._add(key)

    # State.

    def shutdown(self) -> None:
        """Workers' ``get`` returns None from now on; later adds are ignored."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Keys ready and waiting for a worker (the queue depth)."""
        with self._cond:
            self._move_ready()
            return len(self._queue)

    @property
    def waiting(self) -> int:
        """Keys delayed by add_after or add_rate_limited, not yet ready."""
        with self._cond:
            return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing ready, delayed or being processed."""
        with self._cond:
            self._move_ready()
            return not self._queue and not self._waiting and not self._processing

    @property
    def processing(self) -> int:
        with self._cond:
            return len(self._processing)
