"""``python -m webhook dev`` as a newcomer runs it: the kubeconfig appears once everything is
ready, kubectl against it is refused a bad template, and SIGTERM cleans everything up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.builders import code_interpreter, sandbox_claim, sandbox_pod
from tests.e2e.harness import REPO_ROOT, as_json
from tests.readme import console_commands, section
from webhook.api import kinds
from webhook.devtools.controlplane import KUBECTL, Binaries

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# Stopping takes about 1.5 s: the server drains, then the claim watch, then the control plane.
# A watch left open kept kube-apiserver from stopping for 10 s until it was killed; the bound
# leaves room for a loaded machine and still tells the two apart.
PROMPT_STOP_S = 5.0
CACHE_WAIT_S = 20.0


def claimed_pod_gets_its_label(binaries: Binaries, kubeconfig: Path) -> bool:
    """The warm-pool fix in the playground: a pod claimed by a SandboxClaim gets the claim's
    sandbox-name label (once the claim has reached the webhook's watch cache)."""

    def kubectl(*args: str, input: str | None = None) -> str:
        return subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip

    claim = sandbox_claim("session-1", "default", labels={kinds.LABEL_SANDBOX_NAME: "session-1"})
    uid = json.loads(kubectl("create", "-o", "json", "-f", "-", input=as_json(claim)))["metadata"][
        "uid"
    ]
    deadline = time.monotonic() + CACHE_WAIT_S
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        pod = sandbox_pod(f"warm-{attempt}", "default", labels={kinds.LABEL_CLAIM_UID: uid})
        stored = json.loads(kubectl("create", "-o", "json", "-f", "-", input=as_json(pod)))
        if stored["metadata"]["labels"].get(kinds.LABEL_SANDBOX_NAME) == "session-1":
            return True
        time.sleep(0.5)
    return False


def readme_session_does_what_it_shows(binaries: Binaries, kubeconfig: Path) -> None:
    """The kubectl commands of the README's dev session, run from the checkout's root: each
    line shown after a command is a line of its output (stdout and stderr), and the fixtures
    are each refused by our webhook with the fields their headers name."""
    session = section((REPO_ROOT / "README.md").read_text(), "### A session with `dev`")
    commands = console_commands(session, "kubectl")
    assert [c for c, _ in commands] == [
        "apply -f examples/",
        "apply -f examples/agentcube/",
        "apply -f tests/fixtures/invalid/",
    ]
    for command, shown in commands:
        result = subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", *command.split()],
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT,
        )  # fmt: skip
        output = result.stdout.splitlines() + result.stderr.splitlines()
        missing = [line for line in shown if line != "..." and line not in output]
        assert missing == [], f"kubectl {command}:\n{result.stdout}{result.stderr}"
        refused = any(line.startswith("Error from server") for line in shown)
        assert (result.returncode != 0) == refused, result.stderr
    invalid = sorted((REPO_ROOT / "tests" / "fixtures" / "invalid").glob("*.yaml"))
    denials = [line for line in output if 'webhook "templates.netpol.agentcube.io" denied' in line]
    assert len(denials) == len(invalid), result.stderr
    for path in invalid:
        (denial,) = [line for line in denials if f'"tests/fixtures/invalid/{path.name}"' in line]
        for field in re.findall(r"^# expect-error: (\S+)$", path.read_text(), re.MULTILINE):
            assert field in denial, denial


def test_dev_playground_starts_admits_and_cleans_up(binaries: Binaries, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "dev.kubeconfig"
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "webhook", "dev", "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env={**os.environ, "KUBEBUILDER_ASSETS": str(binaries.directory)},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not kubeconfig.exists():
            assert dev.poll() is None, log_path.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log_path.read_text(encoding="utf-8")
            time.sleep(0.2)
        banner = log_path.read_text(encoding="utf-8")
        assert f"export KUBECONFIG={kubeconfig}" in banner
        assert "No reconciler runs yet" in banner

        bad = code_interpreter(
            "demo", "default", {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
        )
        result = subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
            input=as_json(bad), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert "spec.template.networkPolicy.egress[0].cidrs[0]" in result.stderr
        assert claimed_pod_gets_its_label(binaries, kubeconfig)
        readme_session_does_what_it_shows(binaries, kubeconfig)
        children = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(dev.pid)], capture_output=True, text=True, check=False
        ).stdout.split()]  # fmt: skip
        assert len(children) == 3  # etcd, kube-apiserver, kube-controller-manager
    finally:
        dev.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = dev.wait(timeout=STOP_TIMEOUT_S)
            stopped_in_s = time.monotonic() - signalled
        except subprocess.TimeoutExpired:
            dev.kill()  # its control plane dies with it (PR_SET_PDEATHSIG)
            dev.wait()
            raise AssertionError(
                f"dev did not stop within {STOP_TIMEOUT_S:.0f}s of SIGTERM:\n"
                + log_path.read_text(encoding="utf-8")
            ) from None

    log_text = log_path.read_text(encoding="utf-8")
    assert code == 0, log_text
    assert "did not stop" not in log_text  # nothing had to be killed
    assert stopped_in_s < PROMPT_STOP_S, log_text
    assert not kubeconfig.exists()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left running"
