"""``python -m webhook dev`` as a newcomer runs it: the kubeconfig appears once everything is
ready, kubectl against it is refused a bad template, and SIGTERM cleans everything up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import REPO_ROOT, as_json
from tests.e2e.objects import code_interpreter
from webhook.controlplane import KUBECTL, Binaries

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


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
        children = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(dev.pid)], capture_output=True, text=True, check=False
        ).stdout.split()]  # fmt: skip
        assert len(children) == 3  # etcd, kube-apiserver, kube-controller-manager
    finally:
        dev.send_signal(signal.SIGTERM)
        code = dev.wait(timeout=STOP_TIMEOUT_S)

    assert code == 0, log_path.read_text(encoding="utf-8")
    assert not kubeconfig.exists()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left running"
