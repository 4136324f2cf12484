"""The manager: one owner for a process's lifecycle, in the spirit of controller-runtime's.

A program (``run``, ``reconcile``, ``serve``, ``dev``; see ``programs``) is a manager
given its parts:

- **runnables**, started in the order added and stopped in the reverse order: the
  shared caches first, the webhook server last, so the server never answers without the
  caches it reads and stops before them;
- **leader runnables**, started when the Lease is won and stopped when it is lost or
  released; the elector stands only once its ``when`` condition holds (``elect``: the caches
  have listed everything, or a policy whose sandbox is not listed yet would look orphaned);
- **readiness checks**, by name: ``/readyz`` fails while any fails, and says which.

It also owns the signals. The first SIGTERM or SIGINT, a runnable failing, or a
program asking (``shut_down``: ``run`` restarting after agent-sandbox's versions
changed) all take one path:

1. readiness fails at once (the endpoint leaves the Service);
2. the Lease is released and leader runnables stop (a standby takes over at once);
3. the runnables keep serving for ``drain`` seconds;
4. the runnables stop, newest first (the server lets requests in flight finish).

A second signal cuts the hold and the drain short.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from webhook.api.exitcodes import EXIT_FAILED, EXIT_OK
from webhook.api.lifecycle import OnFailure, Runnable, StartError

logger = logging.getLogger(__name__)


class Elector(Protocol):
    """What the manager needs of ``webhook.kube.leader.LeaderElector``."""

    def start(
        self, on_started_leading: Callable[[], None], on_stopped_leading: Callable[[], None]
    ) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Task:
    """A runnable made of two callables (``start`` may be None: nothing to start)."""

    name: str
    on_start: Callable[[], None] | None = None
    on_stop: Callable[[], None] | None = None

    def start(self, on_failure: OnFailure) -> None:
        if self.on_start is not None:
            self.on_start()

    def stop(self) -> None:
        if self.on_stop is not None:
            self.on_stop()


class Periodic:
    """``call`` at start and every ``interval_seconds`` after, on a thread. At start it
    must succeed: ``start_attempts`` tries, backing off from ``backoff_seconds``, then
    StartError (the kubelet restarts the process with its own backoff). Later a failure
    is logged and the next round tries again."""

    def __init__(
        self,
        name: str,
        call: Callable[[], object],
        *,
        interval_seconds: float,
        start_attempts: int = 6,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self._call = call
        self._interval = interval_seconds
        self._attempts = start_attempts
        self._backoff = backoff_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_failure: OnFailure) -> None:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                self._call()
                break
            except Exception as exc:  # API errors, network errors, a broken Secret
                if attempt == self._attempts or self._stopping.is_set():
                    raise StartError(f"{self.name}: {exc}") from None
                logger.warning("%s failed (%s); retrying in %.0fs", self.name, exc, delay)
                if self._stopping.wait(delay):
                    raise StartError(f"{self.name}: stopped while retrying") from None
                delay = min(delay * 2, 16.0)
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._call()
            except Exception:  # the API server may be away; the next round tries again
                logger.exception("%s failed", self.name)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


ReadyCheck = Callable[[], str | None]
"""None when ready; otherwise a few words on what is missing."""

ELECT_POLL_SECONDS = 1.0


class Manager:
    def __init__(self, *, drain_seconds: float = 0.0) -> None:
        """``drain_seconds``: how long a signalled process keeps serving, not ready, before
        it stops."""
        self.drain_seconds = drain_seconds
        self._elector: Elector | None = None
        self._elect_when: Callable[[float], bool] = lambda timeout: True
        self._runnables: list[Runnable] = []
        self._leader_runnables: list[Runnable] = []
        self._checks: dict[str, ReadyCheck] = {}
        self._started: list[Runnable] = []
        self._lock = threading.Lock()
        self._leading = False
        self.shutting_down = threading.Event()  # readiness fails from here on
        self._hurry = threading.Event()  # a second signal: no more waiting
        self._done = threading.Event()
        self._exit_code = EXIT_OK
        self._shutdown_started = False
        self._starting: Runnable | None = None

    # --- parts --------------------------------------------------------------------------

    def add(self, runnable: Runnable, *, needs_lease: bool = False) -> None:
        """Run ``runnable`` for the process's life, or (``needs_lease``) while leading."""
        (self._leader_runnables if needs_lease else self._runnables).append(runnable)

    def add_ready_check(self, name: str, check: ReadyCheck) -> None:
        self._checks[name] = check

    def elect(self, elector: Elector, *, when: Callable[[float], bool]) -> None:
        """Stand for the Lease with ``elector`` once ``when(timeout)`` is true (it waits at
        most ``timeout`` seconds), and run the leader runnables while it is held."""
        self._elector, self._elect_when = elector, when

    # --- readiness ----------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        """Why ``/readyz`` fails, one entry per failing check; empty when ready."""
        if self.shutting_down.is_set():
            return ["shutting down"]
        reasons = []
        for name, check in self._checks.items():
            why = check()
            if why is not None:
                reasons.append(f"{name}: {why}" if why else name)
        return reasons

    def ready(self) -> bool:
        return not self.not_ready()

    @property
    def leading(self) -> bool:
        return self._leading

    # --- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Start every part, wait for a signal or ``shut_down``, stop every part; the exit
        code (EXIT_FAILED when a part could not start or failed)."""
        previous = self._catch_signals()
        try:
            if self._start_all():
                if self._elector is not None:
                    threading.Thread(target=self._elect, name="elect", daemon=True).start()
                # Signals are handled on this thread, between waits; shutting down runs on
                # its own thread and sets _done once the drain is over.
                while not self._done.wait(0.5):
                    pass
            self._stop_all()
            return self._exit_code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shut_down(
        self,
        why: str,
        *,
        exit_code: int = EXIT_OK,
        hold_seconds: float = 0.0,
        drain_seconds: float | None = None,
    ) -> None:
        """Stop the process: serve ``hold_seconds`` as now, then fail readiness, release
        the Lease, serve ``drain_seconds`` more (default: the manager's), and stop. A
        shutdown already under way is not started again (a second call hurries it)."""
        with self._lock:
            if self._exit_code == EXIT_OK:
                self._exit_code = exit_code
            first, self._shutdown_started = not self._shutdown_started, True
            starting = self._starting
        if not first:
            self._hurry.set()
            return
        if starting is not None:  # still starting up: there is nothing to drain
            logger.info("%s while starting %s: stopping", why, starting.name)
            starting.stop()  # a start that is waiting (retries, a bind) gives up
            self.shutting_down.set()
            self._done.set()
            return
        drain = self.drain_seconds if drain_seconds is None else drain_seconds
        threading.Thread(
            target=self._shut_down, args=(why, hold_seconds, drain), name="shutdown", daemon=True
        ).start()

    def _shut_down(self, why: str, hold: float, drain: float) -> None:
        if hold > 0:
            logger.info("%s: still serving for %.0fs", why, hold)
            self._hurry.wait(hold)
        self.shutting_down.set()
        self._release_lease()
        if drain > 0 and not self._hurry.is_set():
            logger.info(
                "%s: not ready now, stopping in %.1fs (a second signal stops at once)", why, drain
            )
            self._hurry.wait(drain)
        else:
            logger.info("%s: stopping", why)
        self._done.set()

    def _catch_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # a test running a manager on a thread stops it with shut_down
        handled = (signal.SIGTERM, signal.SIGINT)
        return {sig: signal.signal(sig, self._on_signal) for sig in handled}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.shut_down(signal.Signals(signum).name)

    def _on_failure(self, runnable: Runnable) -> OnFailure:
        def failed(why: str) -> None:
            logger.error("%s stopped: %s", runnable.name, why)
            self.shut_down(f"{runnable.name} failed", exit_code=EXIT_FAILED, drain_seconds=0)

        return failed

    def _start_all(self) -> bool:
        for runnable in self._runnables:
            with self._lock:
                if self._shutdown_started:
                    return False
                self._starting = runnable
            try:
                runnable.start(self._on_failure(runnable))
            except StartError as exc:
                with self._lock:
                    if not self._shutdown_started:  # else: stopped by a signal, as asked
                        logger.error("cannot start: %s", exc)
                        self._exit_code = EXIT_FAILED
                return False
            finally:
                with self._lock:
                    self._starting = None
            self._started.append(runnable)  # stopped at the end, even if a signal came
        return True

    def _stop_all(self) -> None:
        """Everything started, newest first (after the leader runnables)."""
        self.shutting_down.set()
        self._release_lease()
        while self._started:
            runnable = self._started.pop()
            try:
                runnable.stop()
            except Exception:  # the rest must still stop
                logger.exception("stopping %s failed", runnable.name)

    # --- the Lease ----------------------------------------------------------------------

    def _elect(self) -> None:
        while not self.shutting_down.is_set():
            if self._elect_when(ELECT_POLL_SECONDS):
                break
        with self._lock:
            if self.shutting_down.is_set() or self._elector is None:
                return
            self._elector.start(
                on_started_leading=self._start_leading, on_stopped_leading=self._stop_leading
            )

    def _start_leading(self) -> None:
        self._leading = True
        for runnable in self._leader_runnables:
            try:
                runnable.start(self._on_failure(runnable))
            except StartError as exc:
                self._on_failure(runnable)(str(exc))

    def _stop_leading(self) -> None:
        with self._lock:
            was_leading, self._leading = self._leading, False
        if not was_leading:
            return
        for runnable in reversed(self._leader_runnables):
            try:
                runnable.stop()
            except Exception:
                logger.exception("stopping %s failed", runnable.name)

    def _release_lease(self) -> None:
        """Leader runnables stop, then the elector gives the Lease up (a standby takes over
        at once); the elector stands no more."""
        with self._lock:
            elector, self._elector = self._elector, None
        self._stop_leading()
        if elector is not None:
            elector.stop()
