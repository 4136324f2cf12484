"""The manager's start and stop order, readiness, Lease and signals.

The parts here are small in-memory runnables that write what happens to them into one
journal; the real parts (caches, elector, server) run under the manager in the e2e tier
(tests/e2e/test_shutdown.py, test_rediscovery.py, test_cli_cluster.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from webhook.api.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_RESTART
from webhook.api.lifecycle import OnFailure, StartError
from webhook.runtime.manager import Manager, Periodic, Task

WAIT_SECONDS = 10.0


class Journal:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def say(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, line: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: line in self.lines, WAIT_SECONDS):
                pytest.fail(f"{line!r} never happened: {self.lines}")


class Part:
    def __init__(self, name: str, journal: Journal, *, fails_to_start: bool = False) -> None:
        self.name = name
        self._journal = journal
        self._fails = fails_to_start
        self.on_failure: OnFailure | None = None

    def start(self, on_failure: OnFailure) -> None:
        if self._fails:
            raise StartError(f"{self.name} cannot start")
        self.on_failure = on_failure
        self._journal.say(f"start {self.name}")

    def stop(self) -> None:
        self._journal.say(f"stop {self.name}")


class Elector:
    """Wins the Lease as soon as it stands; gives it up when stopped."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._on_stopped: Callable[[], None] | None = None

    def start(
        self, on_started_leading: Callable[[], None], on_stopped_leading: Callable[[], None]
    ) -> None:
        self._journal.say("stand")
        self._on_stopped = on_stopped_leading
        on_started_leading()

    def stop(self) -> None:
        if self._on_stopped is None:
            return  # never stood: nothing to release
        self._on_stopped()
        self._journal.say("release lease")


def running(manager: Manager) -> tuple[threading.Thread, list[int]]:
    """The manager run on a thread (no signals there); its exit code lands in the list."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(manager.run()), daemon=True)
    thread.start()
    return thread, codes


def finished(thread: threading.Thread, codes: list[int]) -> int:
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), "the manager did not stop"
    return codes[0]


def test_parts_start_in_order_and_stop_in_reverse_after_the_leader_parts() -> None:
    journal = Journal()
    manager = Manager()
    for name in ("caches", "reconciler", "server"):
        manager.add(Part(name, journal))
    manager.add(Part("workers", journal), needs_lease=True)
    manager.elect(Elector(journal), when=lambda timeout: True)
    thread, codes = running(manager)
    journal.wait_for("start workers")
    manager.shut_down("test")
    assert finished(thread, codes) == EXIT_OK
    assert journal.lines == [
        "start caches", "start reconciler", "start server",
        "stand", "start workers",
        "stop workers", "release lease",
        "stop server", "stop reconciler", "stop caches",
    ]  # fmt: skip


def test_the_elector_stands_only_once_its_condition_holds() -> None:
    journal = Journal()
    synced = threading.Event()
    manager = Manager()
    manager.add(Part("caches", journal))
    manager.add(Part("workers", journal), needs_lease=True)
    manager.elect(Elector(journal), when=synced.wait)
    thread, codes = running(manager)
    journal.wait_for("start caches")
    time.sleep(0.3)  # the negative: give a wrong implementation time to stand early
    assert "stand" not in journal.lines
    synced.set()
    journal.wait_for("start workers")
    manager.shut_down("test")
    assert finished(thread, codes) == EXIT_OK


def test_a_part_that_cannot_start_stops_those_started_and_exits_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    manager = Manager()
    manager.add(Part("caches", journal))
    manager.add(Part("server", journal, fails_to_start=True))
    manager.add(Part("never", journal))
    manager.add(Part("workers", journal), needs_lease=True)
    manager.elect(Elector(journal), when=lambda timeout: True)
    assert finished(*running(manager)) == EXIT_FAILED
    assert journal.lines == ["start caches", "stop caches"]
    assert "cannot start: server cannot start" in caplog.text


def test_a_part_failing_later_stops_the_process_with_exit_failed() -> None:
    journal = Journal()
    manager = Manager(drain_seconds=30.0)  # a failure does not wait for a drain
    server = Part("server", journal)
    manager.add(Part("caches", journal))
    manager.add(server)
    thread, codes = running(manager)
    journal.wait_for("start server")
    assert server.on_failure is not None
    server.on_failure("the port closed")
    assert finished(thread, codes) == EXIT_FAILED
    assert journal.lines[-2:] == ["stop server", "stop caches"]


def test_readiness_names_each_failing_check_and_fails_once_shutting_down() -> None:
    manager = Manager(drain_seconds=30.0)
    listed = threading.Event()
    manager.add_ready_check("caches", lambda: None if listed.is_set() else "pods, sandboxes")
    manager.add_ready_check("certificates", lambda: None)
    assert manager.not_ready() == ["caches: pods, sandboxes"]
    listed.set()
    assert manager.ready()
    thread, codes = running(manager)
    manager.shut_down("test")
    deadline = time.monotonic() + WAIT_SECONDS
    while manager.ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.not_ready() == ["shutting down"]
    assert thread.is_alive(), "it stopped before its drain"
    manager.shut_down("again")  # a second signal cuts the drain short
    assert finished(thread, codes) == EXIT_OK


def test_a_shutdown_releases_the_lease_before_the_drain_and_stops_after_it() -> None:
    journal = Journal()
    manager = Manager(drain_seconds=0.5)
    manager.add(Part("server", journal))
    manager.add(Part("workers", journal), needs_lease=True)
    manager.elect(Elector(journal), when=lambda timeout: True)
    thread, codes = running(manager)
    journal.wait_for("start workers")
    asked = time.monotonic()
    manager.shut_down("test")
    journal.wait_for("release lease")
    released = time.monotonic() - asked
    journal.wait_for("stop server")
    stopped = time.monotonic() - asked
    assert finished(thread, codes) == EXIT_OK
    assert released < 0.5 <= stopped


def test_a_restart_holds_then_drains_and_exits_restart() -> None:
    journal = Journal()
    manager = Manager()
    manager.add(Part("server", journal))
    thread, codes = running(manager)
    journal.wait_for("start server")
    manager.shut_down(
        "versions changed", exit_code=EXIT_RESTART, hold_seconds=0.3, drain_seconds=0.2
    )
    time.sleep(0.1)
    assert manager.ready(), "not ready before the hold is over"
    assert finished(thread, codes) == EXIT_RESTART


def test_sigterm_takes_the_same_path_and_exits_0(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    journal = Journal()
    manager = Manager()
    manager.add(Part("server", journal))
    manager.add(
        Task(
            "signaller",
            on_start=lambda: threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start(),
        )
    )
    before = signal.getsignal(signal.SIGTERM)
    assert manager.run() == EXIT_OK  # on the main thread: the manager takes the signals
    assert journal.lines == ["start server", "stop server"]
    assert "SIGTERM: stopping" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == before, "the previous handler is not back"


def test_a_signal_while_a_part_retries_its_start_stops_at_once() -> None:
    calls: list[float] = []

    def unreachable() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("connection refused")

    manager = Manager()
    manager.add(Periodic("caBundle sync", unreachable, interval_seconds=300, backoff_seconds=5))
    thread, codes = running(manager)
    deadline = time.monotonic() + WAIT_SECONDS
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    manager.shut_down("SIGTERM")
    assert finished(thread, codes) == EXIT_OK  # asked to stop: not a failure
    assert len(calls) == 1


def test_a_periodic_part_gives_up_after_its_attempts_with_exit_failed() -> None:
    attempts: list[int] = []

    def broken() -> None:
        attempts.append(1)
        raise ValueError("Secret holds no CA")

    manager = Manager()
    manager.add(
        Periodic(
            "caBundle sync", broken, interval_seconds=300, start_attempts=3, backoff_seconds=0.01
        )
    )
    assert finished(*running(manager)) == EXIT_FAILED
    assert len(attempts) == 3


def test_a_periodic_part_runs_again_every_interval_and_survives_a_failure() -> None:
    rounds: list[int] = []

    def call() -> None:
        rounds.append(1)
        if len(rounds) == 2:
            raise ConnectionError("API server away")

    periodic = Periodic("sync", call, interval_seconds=0.05)
    periodic.start(lambda why: None)
    deadline = time.monotonic() + WAIT_SECONDS
    while len(rounds) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    periodic.stop()
    assert len(rounds) >= 4
