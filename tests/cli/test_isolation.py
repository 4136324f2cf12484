"""``wait-isolated``, the init container of --isolation-canary: it lets the pod's containers
start once the canary is refused, never while it still answers."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator

import pytest

from webhook.cli import isolation
from webhook.cli.isolation import REFUSALS_NEEDED, wait_until_refused


class Script:
    """A canary that answers as told, on a clock that moves only when the waiter sleeps."""

    def __init__(self, answers: Iterator[bool]) -> None:
        self.answers = answers
        self.now = 0.0
        self.tries = 0

    def connect(self, _address: str, _port: int, _timeout_s: float) -> bool:
        self.tries += 1
        return next(self.answers)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waited(answers: Iterator[bool], timeout_s: float = 10.0) -> tuple[isolation.Waited, Script]:
    script = Script(answers)
    result = wait_until_refused(
        ("10.96.0.10", 443),
        timeout_s=timeout_s,
        connect=script.connect,
        clock=script.clock,
        sleep=script.sleep,
    )
    return result, script


def test_it_waits_while_the_canary_answers_and_goes_once_it_is_refused() -> None:
    result, script = waited(itertools.chain([True] * 5, itertools.repeat(False)))
    assert result.isolated is True
    assert result.through == 5
    assert script.tries == 5 + REFUSALS_NEEDED


def test_one_lost_connection_is_not_isolation() -> None:
    answers = [True, False, True, False, False, True] + [False] * REFUSALS_NEEDED
    result, script = waited(iter(answers))
    assert result.isolated is True
    assert result.through == 3
    assert script.tries == len(answers)


def test_a_canary_that_keeps_answering_fails_at_the_timeout() -> None:
    result, _ = waited(itertools.repeat(True), timeout_s=2.0)
    assert result.isolated is False
    assert result.seconds >= 2.0


def wait_isolated(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "wait-isolated", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize("env", [{}, {"NETPOL_ISOLATION_CANARY": ""}])
def test_with_nothing_to_check_the_pod_starts_at_once(env: dict[str, str]) -> None:
    """The annotation is empty (mode None, or a policy that lets the canary through) or the
    webhook added no variable: exit 0 and say so in the init container's log."""
    result = wait_isolated(env=env)
    assert result.returncode == 0
    assert result.stdout.startswith("wait-isolated: nothing to check for this pod")


def test_a_malformed_canary_fails_the_init_container() -> None:
    result = wait_isolated(env={"NETPOL_ISOLATION_CANARY": "localhost:443"})
    assert result.returncode == 2
    assert "wait-isolated: error: the canary 'localhost:443': 'localhost' is not an IP" in (
        result.stderr
    )
