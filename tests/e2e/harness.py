"""Helpers for the end-to-end tier: the webhook server as a subprocess, and kubectl results.

The control plane itself is ``agentcube_netpol_dev.controlplane`` (``python -m webhook dev`` uses it too).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild, AgentSandboxController
from agentcube_netpol_dev.controlplane import (
    LOOPBACK,
    ControlPlane,
    ControlPlaneError,
    die_with_parent,
    free_loopback_ports,
    is_healthy,
    log_tail,
    lost_a_port,
    stop_process_group,
    tls_context,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
CRD_DIR = DEPLOY_DIR / "crds"

SERVER_START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3
SERVER_STOP_GRACE_S = 15.0
POLL_INTERVAL_S = 0.1


class PortTakenError(RuntimeError):
    """The server could not bind its port: another process took it."""


class WebhookServer:
    """``python -m webhook serve`` on a loopback port; stoppable and restartable on the same
    port and certificates, so the webhook configurations stay valid across a restart."""

    def __init__(
        self,
        *,
        cert_dir: Path,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        command: str = "serve",
    ) -> None:
        self.command = command  # serve, or run (the server and the reconciler)
        self.cert_dir = cert_dir
        self.log_path = log_path
        self.extra_args = extra_args
        self.port = free_loopback_ports(1)[0]
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code once the server ends by itself within ``timeout_s``; None if not."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def start(self, *, until: str = "/readyz") -> None:
        """Start it and wait until ``until`` answers 200 (``/healthz``: up, maybe not ready).

        The port was free when picked; if another process took it before the server bound it,
        the first start moves to a new port (later starts keep theirs: webhook configurations
        point at it)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start(until)
                self._started_once = True
                return
            except PortTakenError:
                if self._started_once or attempt == PORT_ATTEMPTS:
                    raise
                self.port = free_loopback_ports(1)[0]

    def _start(self, until: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "webhook",
            self.command,
            f"--host={LOOPBACK}",
            f"--port={self.port}",
            f"--cert-dir={self.cert_dir}",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (only a prctl call)
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                if lost_a_port(log_tail(self.log_path)):
                    raise PortTakenError(f"port {self.port}: {log_tail(self.log_path)}")
                raise RuntimeError(
                    f"webhook server exited with code {code}:\n{log_tail(self.log_path)}"
                )
            if self.ca_file.is_file() and self.answers_200(until):
                return
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        raise RuntimeError(
            f"webhook server: no 200 from {self.url}{until} after {SERVER_START_TIMEOUT_S:.0f}s:"
            f"\n{log_tail(self.log_path)}"
        )

    def answers_200(self, path: str) -> bool:
        return is_healthy(f"{self.url}{path}", tls_context(ca_file=self.ca_file, client=None))

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_process_group(process, name="webhook server", grace_s=SERVER_STOP_GRACE_S)

    def send_signal(self, signum: int) -> None:
        """A signal to the server process (SIGTERM: what the kubelet sends at pod deletion)."""
        if self._process is not None:
            self._process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a node failure would end it: no clean shutdown, no lease release."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=SERVER_STOP_GRACE_S)

    def metric(self, name: str) -> float | None:
        """A sample of the server's /metrics (first series of that name), None if absent."""
        context = tls_context(ca_file=self.ca_file, client=None)
        with urllib.request.urlopen(f"{self.url}/metrics", context=context, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None


@dataclass(frozen=True)
class Kubectl:
    """Runs the built kubectl against the test control plane; never raises on a non-zero exit:
    tests assert on ``returncode``, ``stdout`` and ``stderr`` as a user would read them."""

    control_plane: ControlPlane

    def __call__(
        self, *args: str, user: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, kubeconfig=user, input=input, check=False)

    def ok(self, *args: str, user: Path | None = None, input: str | None = None) -> str:
        """stdout of a command that must succeed (its stderr in the assertion message)."""
        result = self(*args, user=user, input=input)
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def get(self, *args: str, user: Path | None = None) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.ok("get", *args, "-o", "json", user=user))
        return value


def as_json(*objects: dict[str, Any]) -> str:
    """Input for ``kubectl apply -f -``: one object, or a List of several."""
    if len(objects) == 1:
        return json.dumps(objects[0])
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


@contextlib.contextmanager
def agent_sandbox_running(
    control_plane: ControlPlane, build: AgentSandboxBuild, work_dir: Path
) -> Iterator[AgentSandboxController]:
    """The real agent-sandbox controller, extensions on, as its own ServiceAccount, on
    ``control_plane``; stopped afterwards. A failed start FAILS the test with the reason."""
    controller = AgentSandboxController(build=build, control_plane=control_plane, work_dir=work_dir)
    try:
        controller.start()
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield controller
    finally:
        controller.stop()


def wait_established(kubectl: Kubectl, *crds: str, timeout_s: float = 60.0) -> None:
    """Until each CRD is Established (polled: `kubectl wait` fails on a CRD whose status the
    API server has not written yet)."""
    deadline = time.monotonic() + timeout_s
    pending = list(crds)
    while pending and time.monotonic() < deadline:
        result = kubectl(
            "get", "crd", pending[0], "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}',
        )  # fmt: skip
        if result.returncode == 0 and result.stdout.strip() == "True":
            pending.pop(0)
        else:
            time.sleep(POLL_INTERVAL_S)
    if pending:
        pytest.fail(f"CRDs not Established after {timeout_s:.0f}s: {pending}")
