"""``dev --agent-sandbox v1.0.1`` with the v1beta1 examples, as the README says: the warm-pool
session of examples/dev/v1beta1/ ends with the claim's NetworkPolicy and the adopted pod
carrying the label it selects on. On v1.0.1's default allow-list the claim is left alone,
so the label comes from the pod webhook and the reconciler, not from agent-sandbox."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import KUBECTL, Binaries

from tests.e2e.harness import REPO_ROOT
from tests.e2e.test_dev import start_dev, stop_dev
from webhook.api import kinds

VERSION = "v1.0.1"
EXAMPLES = ("examples/dev/v1beta1/warm-pool.yaml", "examples/dev/v1beta1/session.yaml")
SESSION = "python-warm-s3ss10n1"  # examples/dev/v1beta1/session.yaml
SESSION_WAIT_S = 60.0


def test_the_v1beta1_examples_give_a_session_its_policy_on_v1_0_1(
    binaries: Binaries, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "dev.kubeconfig"
    log_path = tmp_path / "dev.log"
    started = time.monotonic()
    dev = start_dev(binaries, kubeconfig, log_path, "--agent-sandbox", VERSION)

    def kubectl(*args: str) -> str:
        return subprocess.run(
            [str(binaries.path(KUBECTL)), f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}", *args],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
        ).stdout  # fmt: skip

    try:
        print(f"dev --agent-sandbox {VERSION} ready after {time.monotonic() - started:.1f}s")
        served = kubectl("api-versions").split()
        assert "extensions.agents.x-k8s.io/v1beta1" in served
        assert "extensions.agents.x-k8s.io/v1alpha1" not in served  # v1.0: v1beta1 only
        for example in EXAMPLES:
            kubectl("apply", "-f", example)
        applied = time.monotonic()
        pod, policy = session_isolated(kubectl)
        print(f"session isolated {time.monotonic() - applied:.1f}s after apply")
        claim = json.loads(kubectl("get", "sandboxclaim", SESSION, "-n", "default", "-o", "json"))
        # Left alone: v1.0.1's default allow-list would refuse our label in the claim.
        assert not (claim["spec"].get("additionalPodMetadata") or {}).get("labels")
        assert pod["metadata"]["labels"][kinds.LABEL_SESSION_ID] == "session-1"
        assert policy["spec"]["podSelector"] == {"matchLabels": {kinds.LABEL_SANDBOX_NAME: SESSION}}
        # The sandbox is its controller; its pods are owners too (see plan.py).
        [owner] = [o for o in policy["metadata"]["ownerReferences"] if o.get("controller")]
        assert (owner["apiVersion"], owner["kind"], owner["uid"]) == (
            "extensions.agents.x-k8s.io/v1beta1",
            "SandboxClaim",
            claim["metadata"]["uid"],
        )
        claimed = time.monotonic()
        pod, policy = session_by_the_agent_sandbox_client(kubeconfig, kubectl)
        print(f"agent-sandbox client's session isolated {time.monotonic() - claimed:.1f}s after")
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {kinds.LABEL_SANDBOX_NAME: CLIENT_SESSION}
        }
    finally:
        code = stop_dev(dev, log_path)
    assert code == 0, log_path.read_text(encoding="utf-8")
    assert not kubeconfig.exists()


CLIENT_SESSION = "python-warm-cl13nt01"


def session_by_the_agent_sandbox_client(
    kubeconfig: Path, kubectl: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A session as a user of agent-sandbox's own Python client makes one (the README shows
    it): create_sandbox claims from the warm pool and returns once the claim is Ready; the
    claim carries the sandbox-name label as AgentCube sets it."""
    from k8s_agent_sandbox import SandboxClient
    from kubernetes.config import new_client_from_config

    api_client = new_client_from_config(config_file=str(kubeconfig))
    try:
        client: SandboxClient[Any] = SandboxClient(api_client=api_client)
        client.create_sandbox(
            warmpool="python-warm",
            namespace="default",
            claim_name=CLIENT_SESSION,
            labels={kinds.LABEL_SANDBOX_NAME: CLIENT_SESSION},
            sandbox_ready_timeout=int(SESSION_WAIT_S),
        )
    finally:
        api_client.close()
    return session_isolated(kubectl, CLIENT_SESSION)


def session_isolated(kubectl: Any, session: str = SESSION) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod the real v1.0.1 controller adopted for the claim (labelled for the claim's
    policy) and that policy, once both are there."""
    deadline = time.monotonic() + SESSION_WAIT_S
    seen: Any = None
    while time.monotonic() < deadline:
        policies = json.loads(kubectl("get", "networkpolicy", "-n", "default", "-o", "json"))
        by_name = {p["metadata"]["name"]: p for p in policies["items"]}
        pods = json.loads(
            kubectl("get", "pods", "-n", "default", "-l", f"{kinds.LABEL_SANDBOX_NAME}={session}",
                    "-o", "json")
        )["items"]  # fmt: skip
        adopted = [p for p in pods if kinds.LABEL_CLAIM_UID in p["metadata"]["labels"]]
        seen = (sorted(by_name), [p["metadata"]["name"] for p in pods])
        if {"netpol-baseline.python-warm", session} <= by_name.keys() and adopted:
            return adopted[0], by_name[session]
        time.sleep(0.5)
    raise AssertionError(f"no NetworkPolicy and labelled adopted pod for {session}: {seen}")
