"""Every example passes ``check``, a new one included: the files are found by globbing
examples/, so an example nobody listed is checked all the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import EXAMPLES, REPO_ROOT
from tests.cli.test_offline import run
from webhook.cli.offline import load_objects

FILES = sorted(path for path in EXAMPLES.rglob("*") if path.suffix in (".yaml", ".yml", ".json"))


def test_the_examples_cover_each_agent_sandbox_version() -> None:
    """v1alpha1 (agent-sandbox v0.4) and v1beta1 (v0.5, v1.0): a SandboxClaim in each."""
    versions = {
        item.obj["apiVersion"]
        for path in FILES
        for item in load_objects(str(path))
        if item.kind == "SandboxClaim"
    }
    assert versions == {
        "extensions.agents.x-k8s.io/v1alpha1",
        "extensions.agents.x-k8s.io/v1beta1",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_passes_check(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, _ = run(capsys, "check", str(path.relative_to(REPO_ROOT)))
    assert code == 0, out
    assert ", 0 invalid" in out
