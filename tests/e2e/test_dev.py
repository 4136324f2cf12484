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
from typing import Any

from tests.builders import code_interpreter
from tests.e2e.harness import REPO_ROOT, as_json
from tests.readme import console_commands, section
from webhook.api import kinds
from webhook.devtools.controlplane import KUBECTL, Binaries

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# A watch left open once kept kube-apiserver from stopping for 10 s until it was killed; the
# log says when anything had to be killed. (Stopping took 2-4 s here; no time is asserted.)
SESSION_WAIT_S = 60.0
SESSION = "python-warm-s3ss10n1"  # examples/dev/session.yaml
SESSION_SELECTOR = f"{kinds.LABEL_SANDBOX_NAME}={SESSION}"


def a_session_gets_its_network_policy(binaries: Binaries, kubeconfig: Path) -> dict[str, Any]:
    """The README's warm-pool session: a warm pool as AgentCube sets it up, then a claim; the
    real agent-sandbox controller adopts a warm pod, the reconciler gives the claim its policy
    and the pod carries the label it selects on. Returns the adopted pod."""

    def kubectl(*args: str) -> str:
        return subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
        ).stdout  # fmt: skip

    kubectl("apply", "-f", "examples/dev/warm-pool.yaml")
    kubectl("apply", "-f", "examples/dev/session.yaml")
    deadline = time.monotonic() + SESSION_WAIT_S
    names: set[str] = set()
    while time.monotonic() < deadline:
        policies = json.loads(kubectl("get", "networkpolicy", "-n", "default", "-o", "json"))
        names = {p["metadata"]["name"] for p in policies["items"]}
        pods = json.loads(
            kubectl("get", "pods", "-n", "default", "-l", SESSION_SELECTOR, "-o", "json")
        )
        # Adopted: the Sandbox controller's own update (claim-uid) may land after our label.
        adopted = [p for p in pods["items"] if kinds.LABEL_CLAIM_UID in p["metadata"]["labels"]]
        if {"netpol-baseline.python-warm", SESSION} <= names and adopted:
            pod: dict[str, Any] = adopted[0]
            return pod
        time.sleep(0.5)
    raise AssertionError(f"no NetworkPolicy and labelled pod for {SESSION}: {names}")


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
        assert "each isolated sandbox gets its NetworkPolicy from the reconciler" in banner

        bad = code_interpreter(
            "demo", "default", {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
        )
        result = subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
            input=as_json(bad), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert "spec.template.networkPolicy.egress[0].cidrs[0]" in result.stderr
        pod = a_session_gets_its_network_policy(binaries, kubeconfig)
        assert kinds.LABEL_CLAIM_UID in pod["metadata"]["labels"]  # adopted by the real controller
        readme_session_does_what_it_shows(binaries, kubeconfig)
        children = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(dev.pid)], capture_output=True, text=True, check=False
        ).stdout.split()]  # fmt: skip
        # etcd, kube-apiserver, kube-controller-manager, the agent-sandbox controller
        assert len(children) == 4
    finally:
        dev.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = dev.wait(timeout=STOP_TIMEOUT_S)
            print(f"dev stopped {time.monotonic() - signalled:.1f}s after SIGTERM")
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
    assert not kubeconfig.exists()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left running"
