"""The pure parts of the agent-sandbox harness and the fake kubelet: agent-sandbox's NameHash,
finding the build, the pod IPs and the status a kubelet reports. (The processes themselves
run in tests/e2e/test_agent_sandbox.py.)"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import (
    AgentSandboxBuild,
    controller_args,
    find_agent_sandbox,
    pinned_agent_sandbox_versions,
    rbac_manifests,
    with_conversion_webhook,
    without_conversion_webhook,
)
from agentcube_netpol_dev.controlplane import ControlPlaneError
from agentcube_netpol_dev.kubelet import (
    READY_CONDITIONS,
    CidrPodNetwork,
    is_gated,
    is_running_here,
    running_status,
)

from webhook.reconciler.agentsandbox import name_hash


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # FNV-1a 32-bit test vectors (Fowler/Noll/Vo reference), as Go's hash/fnv New32a.
        ("", "811c9dc5"),
        ("a", "e40c292c"),
        ("foobar", "bf9cf968"),
        # Labels the real v0.4.6 controller wrote on this project's control plane.
        ("ci", "6029a0e1"),
        ("ci-466jd", "ad75b542"),
    ],
)
def test_name_hash_is_fnv1a_32_as_8_hex_digits(name: str, expected: str) -> None:
    assert name_hash(name) == expected


def test_name_hash_is_always_8_lowercase_hex_digits() -> None:
    # A hash below 0x10000000 keeps its leading zeros, as Go's %08x does.
    hashes = [name_hash(f"pool-{i}") for i in range(2000)]
    assert all(len(h) == 8 and h == h.lower() and int(h, 16) >= 0 for h in hashes)
    assert any(h.startswith("0") for h in hashes)


def make_build(root: Path, *, complete: bool = True, version: str = "v0.4.6") -> Path:
    directory = root / "bin" / f"agent-sandbox-{version}"
    (directory / "crds").mkdir(parents=True)
    (directory / "rbac").mkdir()
    for name in ("a", "b", "c", "d"):
        (directory / "crds" / f"{name}.yaml").write_text("{}\n")
    (directory / "rbac" / "controller.yaml").write_text(
        "kind: ServiceAccount\nmetadata: {name: x}\n---\nkind: Deployment\nmetadata: {name: y}\n"
    )
    binary = directory / "agent-sandbox-controller"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    if complete:
        (directory / ".complete").write_text("done\n")
    return directory


def versions(tmp_path: Path) -> Path:
    path = tmp_path / "versions.env"
    path.write_text(
        "K8S_VERSION=v1.37.2\nAGENT_SANDBOX_VERSIONS=v0.4.6,v0.5.6,v1.0.1\n"
        "AGENT_SANDBOX_VERSION=v0.4.6\n"
    )
    return path


def test_find_agent_sandbox_in_the_cache(tmp_path: Path) -> None:
    directory = make_build(tmp_path / "cache")
    build = find_agent_sandbox(
        {"AGENTCUBE_NETPOL_CACHE": str(tmp_path / "cache")}, versions_file=versions(tmp_path)
    )
    assert build == AgentSandboxBuild(directory, "v0.4.6")
    assert build.controller == directory / "agent-sandbox-controller"


def test_a_named_version_is_found_in_its_own_folder(tmp_path: Path) -> None:
    make_build(tmp_path / "cache")
    directory = make_build(tmp_path / "cache", version="v1.0.1")
    build = find_agent_sandbox(
        {"AGENTCUBE_NETPOL_CACHE": str(tmp_path / "cache")},
        "v1.0.1",
        versions_file=versions(tmp_path),
    )
    assert build == AgentSandboxBuild(directory, "v1.0.1")


def test_a_version_not_built_names_the_command_with_that_version(tmp_path: Path) -> None:
    make_build(tmp_path / "cache")
    with pytest.raises(ControlPlaneError) as raised:
        find_agent_sandbox(
            {"AGENTCUBE_NETPOL_CACHE": str(tmp_path / "cache")},
            "v0.5.6",
            versions_file=versions(tmp_path),
        )
    assert "tests/controlplane/build-agent-sandbox.sh v0.5.6" in str(raised.value)


def test_the_pinned_versions_are_one_per_line(tmp_path: Path) -> None:
    assert pinned_agent_sandbox_versions(versions(tmp_path)) == ("v0.4.6", "v0.5.6", "v1.0.1")
    assert pinned_agent_sandbox_versions() == ("v0.4.6", "v0.5.6", "v1.0.1")


def test_an_unfinished_build_fails_with_the_command_that_builds_it(tmp_path: Path) -> None:
    make_build(tmp_path / "cache", complete=False)
    with pytest.raises(ControlPlaneError) as raised:
        find_agent_sandbox(
            {"AGENTCUBE_NETPOL_CACHE": str(tmp_path / "cache")}, versions_file=versions(tmp_path)
        )
    assert "tests/controlplane/build-agent-sandbox.sh" in str(raised.value)
    assert ".complete" in str(raised.value)


def test_only_rbac_is_taken_from_the_release_manifests(tmp_path: Path) -> None:
    directory = make_build(tmp_path)
    assert [doc["kind"] for doc in rbac_manifests(directory / "rbac")] == ["ServiceAccount"]


def test_controller_flags_use_the_given_loopback_ports(tmp_path: Path) -> None:
    args = controller_args(
        kubeconfig=tmp_path / "k",
        metrics_port=4001,
        probe_port=4002,
        extensions=True,
        log_level="info",
    )
    assert "--metrics-bind-address=127.0.0.1:4001" in args
    assert "--health-probe-bind-address=127.0.0.1:4002" in args
    assert "--extensions=true" in args
    assert "--leader-elect=false" in args


def pod(name: str, uid: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": uid},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}], **spec},
    }


def test_pod_ips_are_unique_stable_and_released() -> None:
    network = CidrPodNetwork("10.88.0.0/29", exclude=("10.88.0.1",))
    first, second = pod("a", "1"), pod("b", "2")
    ip_first = network.attach(first)
    assert ip_first == "10.88.0.2"  # .1 excluded (the node's)
    assert network.attach(first) == ip_first  # the same pod keeps its IP
    ip_second = network.attach(second)
    assert ip_second != ip_first
    network.detach(first)
    assert ("ns", "a", "1") not in network.addresses()
    # A new pod of the same name is another pod: a fresh IP while fresh ones are left.
    assert network.attach(pod("a", "3")) not in (ip_first, ip_second)


def test_pod_ips_run_out_loudly() -> None:
    network = CidrPodNetwork("10.88.0.0/30")  # two hosts
    network.attach(pod("a", "1"))
    network.attach(pod("b", "2"))
    with pytest.raises(RuntimeError, match="no free pod IP"):
        network.attach(pod("c", "3"))
    network.detach(pod("a", "1"))
    assert ipaddress.ip_address(network.attach(pod("c", "3"))) in network.network


def test_running_status_is_what_readiness_checks_read() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    subject = pod("a", "1", nodeName="node")
    status = running_status(subject, pod_ip="10.88.0.2", host_ip="10.89.0.1", at=at)
    assert status["phase"] == "Running"
    assert {c["type"] for c in status["conditions"]} == set(READY_CONDITIONS)
    assert status["podIPs"] == [{"ip": "10.88.0.2"}]
    assert status["hostIP"] == "10.89.0.1"
    assert status["startTime"] == "2026-01-02T03:04:05Z"
    (container,) = status["containerStatuses"]
    assert container["ready"] is True and "running" in container["state"]
    assert is_running_here({**subject, "status": status}, node_name="node", pod_ip="10.88.0.2")
    assert not is_running_here({**subject, "status": status}, node_name="other", pod_ip="10.88.0.2")


def test_scheduling_gates_are_seen() -> None:
    assert is_gated(pod("a", "1", schedulingGates=[{"name": "x"}]))
    assert not is_gated(pod("a", "1", schedulingGates=[]))
    assert not is_gated(pod("a", "1"))


@pytest.mark.parametrize(
    ("version", "webhook_off"), [("v0.4.6", False), ("v0.5.6", True), ("v1.0.1", False)]
)
def test_only_v0_5_runs_with_its_conversion_webhook_off(version: str, webhook_off: bool) -> None:
    args = controller_args(
        kubeconfig=Path("k"), metrics_port=1, probe_port=2, extensions=True, log_level="info",
        version=version,
    )  # fmt: skip
    assert ("--enable-webhook=false" in args) is webhook_off


def test_v0_5_crds_are_installed_without_their_conversion_webhook() -> None:
    crd = {"spec": {"group": "g", "conversion": {"strategy": "Webhook", "webhook": {}}}}
    assert without_conversion_webhook(crd)["spec"] == {
        "group": "g",
        "conversion": {"strategy": "None"},
    }
    assert crd["spec"]["conversion"]["strategy"] == "Webhook"  # the release's file untouched


def test_v0_5_conversion_webhook_serves_on_the_given_port_with_our_certificate() -> None:
    args = controller_args(
        kubeconfig=Path("k"), metrics_port=1, probe_port=2, extensions=True, log_level="info",
        version="v0.5.6", webhook_port=4003, webhook_cert_dir=Path("/w/certs"),
    )  # fmt: skip
    assert "--enable-webhook=false" not in args
    assert {
        "--webhook-port=4003",
        "--webhook-cert-dir=/w/certs",
        "--manage-webhook-certs=false",
    } <= (set(args))


def test_v0_5_crds_can_convert_through_a_loopback_webhook() -> None:
    crd = {
        "spec": {
            "group": "g",
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {"service": {"name": "svc", "namespace": "ns"}},
                },
            },
        }
    }
    converted = with_conversion_webhook(crd, url="https://127.0.0.1:4003/convert", ca_pem=b"CA")
    assert converted["spec"]["conversion"] == {
        "strategy": "Webhook",
        "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"url": "https://127.0.0.1:4003/convert", "caBundle": "Q0E="},
        },
    }
    assert crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["name"] == "svc"
