"""``dev --dataplane``'s printed commands: what the NetworkPolicies say a pod may reach
(pure), and the server and the fetch command it prints when there is no curl (on loopback)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentcube_netpol_dev.devdataplane import (
    DESTINATIONS,
    HTTP_SERVER,
    PodView,
    egress_allowed,
    pod_view,
    try_command,
    try_lines,
)
from agentcube_netpol_dev.devenv import run_dev

from webhook.api import kinds
from webhook.api.exitcodes import EXIT_FAILED, EXIT_USAGE
from webhook.api.settings import Settings
from webhook.policy.builder import build_network_policy
from webhook.reconciler.agentsandbox import name_hash
from webhook.reconciler.plan import build_baseline

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION = "python-warm-s3ss10n1"  # examples/dev/session.yaml


def warm_pool_policies() -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """What the reconciler writes for examples/dev/: the warm pool's baseline and the
    session's policy; the labels of a warm pod, and of the same pod once claimed."""
    docs = list(yaml.safe_load_all((REPO_ROOT / "examples/dev/warm-pool.yaml").read_text()))
    (interpreter,) = [d for d in docs if d["kind"] == kinds.CODE_INTERPRETER.kind]
    interpreter["metadata"]["uid"] = "uid-1"  # as the API server gives it
    baseline = build_baseline(interpreter, settings=Settings())
    session = build_network_policy(
        interpreter["spec"]["template"]["networkPolicy"],
        sandbox=SESSION,
        namespace="default",
        settings=Settings(),
    )
    assert session is not None
    warm = {kinds.LABEL_TEMPLATE_REF_HASH: name_hash("python-warm")}
    return [baseline, session], warm, {**warm, kinds.LABEL_SANDBOX_NAME: SESSION}


def test_a_warm_pod_reaches_nothing_and_once_claimed_only_its_cidr_and_port() -> None:
    policies, warm, claimed = warm_pool_policies()

    assert pod_view(policies, "default", warm) == PodView(
        policies=("netpol-baseline.python-warm",), allowed=(False, False, False, False)
    )
    claimed_view = pod_view(policies, "default", claimed)
    assert claimed_view.policies == ("netpol-baseline.python-warm", SESSION)
    assert {d.url: ok for d, ok in zip(DESTINATIONS, claimed_view.allowed, strict=True)} == {
        "http://192.0.2.10:443/": True,
        "http://192.0.2.10/": False,  # same host, port 80
        "http://198.51.100.10:443/": False,
        "http://169.254.169.254/": False,
    }
    # The same labels in another namespace: these policies do not select it; it is open.
    assert pod_view(policies, "elsewhere", claimed) == PodView((), (True, True, True, True))


def policy(spec: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "address", "port", "allowed"),
    [
        ({"podSelector": {}, "policyTypes": ["Ingress"]}, "198.51.100.1", 443, True),
        ({"podSelector": {}, "policyTypes": ["Egress"]}, "198.51.100.1", 443, False),
        ({"podSelector": {}, "egress": []}, "198.51.100.1", 443, False),  # no policyTypes
        ({"podSelector": {}, "egress": [{}]}, "198.51.100.1", 443, True),  # allow all
        ({"podSelector": {"matchLabels": {"app": "x"}}, "egress": []}, "198.51.100.1", 1, True),
        (
            {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.0/28"]}}]}]},
            "198.51.100.1", 443, False,
        ),
        (
            {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.0/28"]}}]}]},
            "198.51.100.20", 443, True,
        ),
        (
            {"podSelector": {}, "egress": [{"to": [{"podSelector": {}}, {"namespaceSelector": {}}]}]},
            "198.51.100.1", 443, False,  # pods, not hosts outside the cluster
        ),
        (
            {"podSelector": {}, "egress": [{"ports": [{"port": 8000, "endPort": 9000}]}]},
            "198.51.100.1", 8443, True,
        ),
        (
            {"podSelector": {}, "egress": [{"ports": [{"protocol": "UDP", "port": 443}]}]},
            "198.51.100.1", 443, False,
        ),
        (
            {"podSelector": {}, "egress": [{"ports": [{"port": "https"}]}]},
            "198.51.100.1", 443, False,  # a named port
        ),
    ],
)  # fmt: skip
def test_egress_as_network_policies_add_up(
    spec: dict[str, Any], address: str, port: int, allowed: bool
) -> None:
    assert egress_allowed([policy(spec)], "ns", {}, address=address, port=port) is allowed


def test_printed_lines_mark_each_destination_as_the_view_says() -> None:
    view = PodView(policies=("a", "b"), allowed=(True, False, False, False))
    lines = try_lines(
        pod="default/p", address="10.88.0.2", network_namespace="acnp0000p4",
        view=view, first=True, curl="/usr/bin/curl",
    )  # fmt: skip
    assert lines[0].startswith("pod default/p runs: network namespace acnp0000p4, IP 10.88.0.2")
    assert "selected by NetworkPolicy a, b" in lines[1]
    assert lines[2].split("#")[0].split() == [
        "allowed", "ip", "netns", "exec", "acnp0000p4", "curl", "-sS", "-m", "2",
        "http://192.0.2.10:443/",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[3:]] == ["refused"] * 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_without_curl_the_printed_command_fetches_what_the_server_answers() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", HTTP_SERVER, "hello from here", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"listening\n"
        command = shlex.split(try_command("some-ns", f"http://127.0.0.1:{port}/", curl=None))
        assert command[:4] == ["ip", "netns", "exec", "some-ns"]
        fetched = subprocess.run(
            command[4:], capture_output=True, text=True, timeout=30, check=False
        )
        assert (fetched.returncode, fetched.stdout) == (0, "hello from here\n"), fetched.stderr
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def dev_dataplane(**flags: Any) -> int:
    return run_dev(
        kubeconfig=Path("unused.kubeconfig"),
        port=0,
        settings=Settings(),
        environ={},
        with_dataplane=True,
        **flags,
    )


def test_dev_dataplane_without_tools_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing starts: the reason, and what to run, before any control plane."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no ip, iptables nor ipset on it
    if os.geteuid() != 0:
        assert dev_dataplane() == EXIT_FAILED
        assert "dev --dataplane cannot start: the dataplane tier needs root" in caplog.text
        return
    assert dev_dataplane() == EXIT_FAILED
    assert (
        "dev --dataplane cannot start: missing ip, iptables, ipset: "
        "`make dataplane-packages` installs iptables and ipset"
    ) in caplog.text


def test_dev_dataplane_needs_the_stand_in_kubelet(caplog: pytest.LogCaptureFixture) -> None:
    assert dev_dataplane(with_agent_sandbox=False) == EXIT_USAGE
    assert "drop --without-agent-sandbox" in caplog.text
