"""``python -m webhook dev`` as a newcomer runs it: the kubeconfig appears once everything is
ready, kubectl against it is refused a bad template, and SIGTERM cleans everything up. With
``--dataplane``: the commands it prints for a claimed sandbox pod, run, are refused and
answered as printed, and SIGTERM leaves no network namespace behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import KUBECTL, Binaries

from tests.builders import code_interpreter, sandbox
from tests.e2e.harness import REPO_ROOT, as_json
from tests.readme import console_commands, section
from webhook.api import kinds
from webhook.api.exitcodes import EXIT_FAILED

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# A watch left open once kept kube-apiserver from stopping for 10 s until it was killed; the
# log says when anything had to be killed. (Stopping took 2-4 s here; no time is asserted.)
SESSION_WAIT_S = 60.0
SESSION = "python-warm-s3ss10n1"  # examples/dev/session.yaml
SESSION_SELECTOR = f"{kinds.LABEL_SANDBOX_NAME}={SESSION}"
ENFORCED_WAIT_S = 60.0
DOMAINS_POD = "python-pypi-d0m41n01"  # examples/dev/domains.yaml's direct Sandbox
TRY_LINE = re.compile(r"^  (allowed|refused)  (ip netns exec .*?)\s+# (.*)$")


def a_session_gets_its_network_policy(binaries: Binaries, kubeconfig: Path) -> dict[str, Any]:
    """The README's warm-pool session: a warm pool as AgentCube sets it up, then a claim; the
    real agent-sandbox controller adopts a warm pod, the reconciler gives the claim its policy
    and the pod carries the label it selects on. Returns the adopted pod."""

    def kubectl(*args: str) -> str:
        return subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}", *args],
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


def a_direct_sandbox_runs_once_its_policy_exists(
    binaries: Binaries,
    kubeconfig: Path,
    name: str = "python-sandbox-d1r3c7a1",  # of examples/codeinterpreter-restricted.yaml
    workload: str = "python-sandbox",
) -> dict[str, Any]:
    """A Sandbox as AgentCube creates it on the direct path: its pod, created gated, runs once
    the reconciler has written its policy and lifted the gate, which dev's own admission
    server lets it do as the admin it runs as (it learns that at start). Returns the pod."""

    def kubectl(*args: str, input: str | None = None) -> str:
        return subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
        ).stdout  # fmt: skip

    kubectl("create", "-f", "-", input=as_json(sandbox(name, "default", workload=workload)))
    deadline = time.monotonic() + SESSION_WAIT_S
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = json.loads(kubectl("get", "pods", "-n", "default", "-o", "json"))["items"]
        pod = next((p for p in found if p["metadata"]["name"] == name), {})
        if pod.get("status", {}).get("phase") == "Running":
            break
        time.sleep(0.5)
    assert pod.get("status", {}).get("phase") == "Running", pod
    assert not pod["spec"].get("schedulingGates")
    kubectl("get", "networkpolicy", name, "-n", "default")
    return pod


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
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}", *command.split()],
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


def start_dev(
    binaries: Binaries, kubeconfig: Path, log_path: Path, *flags: str
) -> subprocess.Popen[bytes]:
    """``dev`` as a subprocess, its stdout and stderr into ``log_path``; returns once the
    kubeconfig is written (everything ready)."""
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "webhook", "dev", "--write-kubeconfig", str(kubeconfig), *flags],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env={**os.environ, "KUBEBUILDER_ASSETS": str(binaries.directory)},
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not kubeconfig.exists():
        if dev.poll() is not None or time.monotonic() > deadline:
            stop_dev(dev, log_path)
            raise AssertionError(log_path.read_text(encoding="utf-8"))
        time.sleep(0.2)
    return dev


def children_of(process: subprocess.Popen[bytes]) -> list[int]:
    return [int(pid) for pid in subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()]  # fmt: skip


def stop_dev(dev: subprocess.Popen[bytes], log_path: Path) -> int:
    """SIGTERM, as Ctrl-C would; its exit code once it stopped."""
    dev.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        code = dev.wait(timeout=STOP_TIMEOUT_S)
        print(f"dev stopped {time.monotonic() - signalled:.1f}s after SIGTERM")
        return code
    except subprocess.TimeoutExpired:
        dev.kill()  # its control plane dies with it (PR_SET_PDEATHSIG)
        dev.wait()
        raise AssertionError(
            f"dev did not stop within {STOP_TIMEOUT_S:.0f}s of SIGTERM:\n"
            + log_path.read_text(encoding="utf-8")
        ) from None


def test_dev_playground_starts_admits_and_cleans_up(binaries: Binaries, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "dev.kubeconfig"
    log_path = tmp_path / "dev.log"
    dev = start_dev(binaries, kubeconfig, log_path)
    try:
        banner = log_path.read_text(encoding="utf-8")
        assert f"export KUBECONFIG={kubeconfig}" in banner
        assert "each isolated sandbox gets its NetworkPolicy from the reconciler" in banner

        bad = code_interpreter(
            "demo", "default", {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
        )
        result = subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}", "apply", "-f", "-"],
            input=as_json(bad), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert "spec.template.networkPolicy.egress[0].cidrs[0]" in result.stderr
        pod = a_session_gets_its_network_policy(binaries, kubeconfig)
        assert kinds.LABEL_CLAIM_UID in pod["metadata"]["labels"]  # adopted by the real controller
        readme_session_does_what_it_shows(binaries, kubeconfig)
        a_direct_sandbox_runs_once_its_policy_exists(binaries, kubeconfig)
        children = children_of(dev)
        # etcd, kube-apiserver, kube-controller-manager, the agent-sandbox controller
        assert len(children) == 4
    finally:
        code = stop_dev(dev, log_path)

    log_text = log_path.read_text(encoding="utf-8")
    assert code == 0, log_text
    assert "did not stop" not in log_text  # nothing had to be killed
    assert not kubeconfig.exists()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left running"


def printed_tries(
    log_text: str, pod: str, selected_by: str = SESSION
) -> list[tuple[str, str, str]]:
    """(allowed|refused, command, what) of the last block ``dev --dataplane`` printed for
    pod ``default/<pod>`` once a NetworkPolicy named ``selected_by`` (by default the
    session's) selected it; [] before."""
    tries: list[tuple[str, str, str]] = []
    block: list[str] | None = None
    for line in [*log_text.splitlines(), ""]:
        if line.startswith(f"pod default/{pod} "):
            block = []
        elif block is not None and line.startswith("  "):
            block.append(line)
        elif block is not None:
            if block and selected_by in block[0]:
                tries = [(m[1], m[2], m[3]) for m in map(TRY_LINE.match, block[1:]) if m]
            block = None
    return tries


def run_try(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shlex.split(command), capture_output=True, text=True, timeout=30, check=False
    )


def as_printed(tries: list[tuple[str, str, str]]) -> dict[str, str]:
    """Each command that did not do what its line says, and what it did instead."""
    wrong = {}
    for verdict, command, _ in tries:
        result = run_try(command)
        answered = result.returncode == 0 and result.stdout.startswith("hello from ")
        if answered != (verdict == "allowed"):
            wrong[command] = f"exit {result.returncode}: {result.stdout}{result.stderr}".strip()
    return wrong


def test_dev_dataplane_refuses_and_answers_as_the_printed_commands_say(
    binaries: Binaries, tmp_path: Path
) -> None:
    """The README's warm-pool session on `dev --dataplane`: the commands printed for the
    claimed pod, run as a newcomer would paste them, connect where its policy allows and are
    refused elsewhere; after SIGTERM no namespace, no process of it is left."""
    kubeconfig = tmp_path / "dev.kubeconfig"
    log_path = tmp_path / "dev.log"
    dev = start_dev(binaries, kubeconfig, log_path, "--dataplane")
    try:
        found = re.search(r"network namespaces\s+\((acnp[0-9a-f]+)\*\)", log_path.read_text())
        assert found, log_path.read_text()
        prefix = found.group(1)
        pod = a_session_gets_its_network_policy(binaries, kubeconfig)["metadata"]["name"]
        deadline = time.monotonic() + ENFORCED_WAIT_S
        while not (tries := printed_tries(log_path.read_text(), pod)):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        printed = time.monotonic()
        assert [(verdict, command.split()[-1]) for verdict, command, _ in tries] == [
            ("allowed", "http://192.0.2.10:443/"),  # the session's 192.0.2.0/24 on 443
            ("refused", "http://192.0.2.10/"),
            ("refused", "http://198.51.100.10:443/"),
            ("refused", "http://169.254.169.254/"),
        ]
        wrong = as_printed(tries)
        while wrong and time.monotonic() < deadline:  # kube-router programs it within seconds
            time.sleep(0.5)
            wrong = as_printed(tries)
        assert wrong == {}, f"not as printed after {ENFORCED_WAIT_S:.0f}s"
        print(f"as printed {time.monotonic() - printed:.1f}s after it was printed")
        assert as_printed(tries) == {}  # and it holds
        # A direct-path sandbox of the same template is held until kube-router enforces its
        # policy: --isolation-canary is on in dev --dataplane, the canary the host outside.
        direct = a_direct_sandbox_runs_once_its_policy_exists(
            binaries, kubeconfig, "python-warm-d1r3c7a1", "python-warm"
        )
        assert direct["spec"]["initContainers"][0]["name"] == kinds.ISOLATION_CONTAINER
        assert direct["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        annotations = direct["metadata"]["annotations"]
        assert annotations[kinds.ANNOTATION_ISOLATION_CANARY] == "198.51.100.10:443"
        # The README's egress-by-name session: dev's DNS server names the hosts outside.
        subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}",
             f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}",
             "apply", "-f", "examples/dev/domains.yaml"],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
        )  # fmt: skip
        while not (by_name := printed_tries(log_path.read_text(), DOMAINS_POD, "netpol-domains.")):
            assert time.monotonic() < deadline + SESSION_WAIT_S, log_path.read_text()
            time.sleep(0.5)
        assert [(verdict, command.split()[-1]) for verdict, command, _ in by_name] == [
            ("allowed", "http://192.0.2.10:443/"),  # pypi.dev.test on 443
            ("refused", "http://192.0.2.10/"),
            ("refused", "http://198.51.100.10:443/"),  # evil.dev.test: not listed
            ("refused", "http://169.254.169.254/"),
        ]
        wrong = as_printed(by_name)
        while wrong and time.monotonic() < deadline + SESSION_WAIT_S:
            time.sleep(0.5)
            wrong = as_printed(by_name)
        assert wrong == {}
        children = children_of(dev)
        # the control plane (3), the agent-sandbox controller, kube-router, and the http
        # servers: three hosts outside the cluster, one per pod (the claimed, a new warm one,
        # the direct sandbox and the egress-by-name one)
        assert len(children) >= 4 + 1 + 3 + 2
        assert [line for line in _netns() if line.startswith(prefix)], "no namespace of dev's"
    finally:
        code = stop_dev(dev, log_path)

    log_text = log_path.read_text(encoding="utf-8")
    assert code == 0, log_text
    assert "did not stop" not in log_text
    assert [line for line in _netns() if line.startswith(prefix)] == []
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left running"


def _netns() -> list[str]:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()


def test_dev_dataplane_without_kube_router_says_how_to_build_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "dev", "--dataplane"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT,
        env={**os.environ, "AGENTCUBE_NETPOL_CACHE": str(tmp_path / "empty-cache")},
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "dev --dataplane cannot start" in result.stderr
    # Root with iptables and ipset here (the tier needs them): what is missing is kube-router.
    assert "build-kube-router.sh" in result.stderr, result.stderr
