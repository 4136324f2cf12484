"""The control plane itself: the built release answers, RBAC is real, the controller manager
collects garbage and deletes namespaces, and stopping leaves no process behind."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentcube_netpol_dev import controlplane
from agentcube_netpol_dev.controlplane import (
    VERSIONS_FILE,
    Binaries,
    ControlPlane,
    is_healthy,
    read_versions,
    tls_context,
)

from tests.e2e.harness import Kubectl, WebhookServer

CONTROLLER_WAIT_S = 60.0
POLL_INTERVAL_S = 0.5


def wait_until_gone(kubectl: Kubectl, *args: str) -> float:
    """Seconds until ``kubectl get ARGS`` says NotFound; fails after CONTROLLER_WAIT_S."""
    started = time.monotonic()
    while time.monotonic() - started < CONTROLLER_WAIT_S:
        result = kubectl("get", *args)
        if result.returncode != 0 and "NotFound" in result.stderr:
            return time.monotonic() - started
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"{' '.join(args)} still there after {CONTROLLER_WAIT_S:.0f}s")


def test_server_and_kubectl_are_the_release_build_sh_built(kubectl: Kubectl) -> None:
    expected = read_versions(VERSIONS_FILE)["K8S_VERSION"]
    versions = json.loads(kubectl.ok("version", "-o", "json"))
    assert versions["serverVersion"]["gitVersion"] == expected
    assert versions["clientVersion"]["gitVersion"] == expected


def test_minted_user_gets_only_what_rbac_grants(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    carol = control_plane.mint_user("carol", groups=["tenants"])

    denied = kubectl("get", "configmaps", "-n", namespace, user=carol)
    assert denied.returncode != 0
    assert 'User "carol" cannot list resource "configmaps"' in denied.stderr

    kubectl.ok("create", "role", "read-cm", "--verb=list", "--resource=configmaps", "-n", namespace)
    kubectl.ok(
        "create", "rolebinding", "tenants-read-cm", "--role=read-cm", "--group=tenants",
        "-n", namespace,
    )  # fmt: skip
    assert kubectl("get", "configmaps", "-n", namespace, user=carol).returncode == 0
    # Granted in that namespace only, and only to list.
    assert kubectl("get", "configmaps", "-n", "default", user=carol).returncode != 0
    assert kubectl("create", "configmap", "x", "-n", namespace, user=carol).returncode != 0


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.ok("create", "configmap", "owner", "-n", namespace)
    owner_uid = kubectl.get("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    kubectl.ok("apply", "-f", "-", input=json.dumps(dependent))

    kubectl.ok("delete", "configmap", "owner", "-n", namespace)

    wait_until_gone(kubectl, "configmap", "dependent", "-n", namespace)


def test_namespace_deletion_completes(kubectl: Kubectl) -> None:
    kubectl.ok("create", "namespace", "e2e-doomed")
    kubectl.ok("create", "configmap", "content", "-n", "e2e-doomed")
    kubectl.ok("delete", "namespace", "e2e-doomed", "--wait=false")
    wait_until_gone(kubectl, "namespace", "e2e-doomed")


def test_stop_leaves_no_process_and_no_work_dir(binaries: Binaries) -> None:
    control_plane = ControlPlane(binaries=binaries)
    with control_plane:
        pids = control_plane.pids
        assert len(pids) == 2  # etcd, kube-apiserver
        assert is_healthy(
            f"{control_plane.url}/readyz",
            tls_context(
                ca_file=control_plane.ca_file,
                client=(
                    control_plane.work_dir / "pki" / "admin.crt",
                    control_plane.work_dir / "pki" / "admin.key",
                ),
            ),
        )
        work_dir = control_plane.work_dir
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} still there"
    assert not work_dir.exists()
    assert control_plane.pids == []


# --- ports picked free, bound later ---------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process holds (listening), as if it took it after we picked."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_control_plane_starts_on_new_ports_when_one_was_taken(
    binaries: Binaries, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = controlplane.free_loopback_ports
    picks: list[list[int]] = []

    def first_pick_is_taken(count: int) -> list[int]:
        ports = real(count)
        if not picks:
            ports[0] = taken_port  # etcd's client port
        picks.append(ports)
        return ports

    monkeypatch.setattr(controlplane, "free_loopback_ports", first_pick_is_taken)
    with ControlPlane(binaries=binaries) as control_plane:
        assert len(picks) == 2
        assert Kubectl(control_plane).ok("get", "namespace", "default", "-o", "name").strip() == (
            "namespace/default"
        )


def test_webhook_server_moves_to_a_new_port_when_its_port_was_taken(
    tmp_path: Path, taken_port: int
) -> None:
    server = WebhookServer(cert_dir=tmp_path / "certs", log_path=tmp_path / "server.log")
    server.port = taken_port
    server.start()
    try:
        assert server.port != taken_port
        assert server.answers_200("/healthz")
        assert "address already in use" in server.log().lower()
    finally:
        server.stop()
