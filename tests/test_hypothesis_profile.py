"""CI runs of the property tests are repeatable: the same examples every time."""

from __future__ import annotations

import os
import subprocess
import sys

from tests import REPO_ROOT

PROBE = (
    "import tests.conftest; from hypothesis import settings; d = settings.default; "
    "print(d.derandomize, d.database is None, d.print_blob)"
)


def profile_under(ci: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = ci
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return result.stdout.strip()


def test_ci_draws_the_same_examples_every_run() -> None:
    assert profile_under("true") == "True True True"


def test_elsewhere_a_failure_prints_how_to_replay_it() -> None:
    assert profile_under("") == "False False True"
