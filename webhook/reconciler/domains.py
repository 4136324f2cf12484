"""Keeping the domain names resolved: the refresher, the tracker's one I/O edge.

A thread asks the resolver for each name the tracker says is due (a few at once: one
slow name does not hold up the rest), gives it the answers, lets addresses whose grace
has ended go, and queues the shared domain policies of every name whose addresses
changed: one reconcile, one write, for every sandbox that shares them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from webhook.reconciler.domaincache import DomainTracker, Resolution
from webhook.reconciler.metrics import ReconcilerMetrics

logger = logging.getLogger(__name__)

LOOKUPS_AT_ONCE = 4
IDLE_WAKE_SECONDS = 5.0


class Resolver(Protocol):
    def resolve(self, name: str) -> Resolution: ...


class DomainRefresher:
    name = "domain refresher"

    def __init__(
        self,
        tracker: DomainTracker,
        resolver: Resolver,
        enqueue: Callable[[Any], None] = lambda request: None,
        *,
        metrics: ReconcilerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self._resolver = resolver
        # Set to the reconciler's queue: where a changed name's shared policies go.
        self.enqueue = enqueue
        self._metrics = metrics
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(LOOKUPS_AT_ONCE, thread_name_prefix="dns")
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """New names are wanted: ask for them now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh()
            except Exception:  # never let the thread die: the next round tries again
                logger.exception("refreshing domain names failed")
            wake_at = self.tracker.wake_at()
            timeout = IDLE_WAKE_SECONDS
            if wake_at is not None:
                timeout = min(max(wake_at - self._clock(), 0.05), IDLE_WAKE_SECONDS)
            self._wake.wait(timeout)
            self._wake.clear()

    def refresh(self) -> set[str]:
        """One round: resolve what is due, expire what is old; the names that changed."""
        due = self.tracker.due(self._clock())
        changed: set[str] = set()
        if due:
            results = (
                list(self._pool.map(self._resolver.resolve, due))
                if self._pool is not None
                else [self._resolver.resolve(n) for n in due]
            )
            now = self._clock()
            for name, result in zip(due, results, strict=True):
                if self._metrics is not None:
                    self._metrics.domain_lookups.labels(result.error or "ok").inc()
                if result.error:
                    logger.info("resolving %s: %s", name, result.error)
                if self.tracker.record(name, result, now):
                    changed.add(name)
        changed.update(self.tracker.expire(self._clock()))
        if self._metrics is not None:
            self._metrics.domain_names.set(len(self.tracker.names()))
        for name in sorted(changed):
            state = self.tracker.state(name)
            logger.info(
                "%s now holds %s%s",
                name,
                ", ".join(state.addresses) if state and state.addresses else "no address",
                f" ({state.error})" if state and state.error else "",
            )
            for user in self.tracker.users(name):
                self.enqueue(user)
        return changed
