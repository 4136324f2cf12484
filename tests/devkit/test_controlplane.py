"""The control-plane harness without the real binaries: finding them, the webhook rewrite,
certificates, and what a failed start leaves behind (stand-in binaries that are scripts)."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agentcube_netpol_dev.controlplane import (
    BINARY_NAMES,
    BUILD_SCRIPT,
    NETWORK_POLICY_API_CRD,
    NETWORK_POLICY_API_CRDS_SCRIPT,
    Binaries,
    ControlPlane,
    ControlPlaneError,
    apiserver_args,
    controller_manager_args,
    create_ca,
    create_pki,
    find_binaries,
    issue_client_cert,
    network_policy_api_crds,
    point_webhooks_at,
)
from cryptography import x509
from cryptography.x509.oid import NameOID

VERSIONS = "K8S_VERSION=v1.99.0\n# a comment\nETCD_VERSION=v3.9.9\n"


def write_script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_binaries(directory: Path, **bodies: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in BINARY_NAMES:
        write_script(directory / name, bodies.get(name.replace("-", "_"), "exit 0"))
    return directory


def test_binaries_found_in_the_cache_folder_named_after_the_versions(tmp_path: Path) -> None:
    versions_file = tmp_path / "versions.env"
    versions_file.write_text(VERSIONS, encoding="utf-8")
    cache = tmp_path / "cache"
    fake_binaries(cache / "bin" / "v1.99.0-v3.9.9")

    found = find_binaries({"AGENTCUBE_NETPOL_CACHE": str(cache)}, versions_file=versions_file)

    assert found.directory == cache / "bin" / "v1.99.0-v3.9.9"


def test_kubebuilder_assets_overrides_the_cache(tmp_path: Path) -> None:
    assets = fake_binaries(tmp_path / "assets")
    found = find_binaries(
        {"KUBEBUILDER_ASSETS": str(assets)}, versions_file=tmp_path / "no-such-file"
    )
    assert found.directory == assets


def test_missing_binaries_say_how_to_build_them(tmp_path: Path) -> None:
    assets = fake_binaries(tmp_path / "assets")
    (assets / "kube-apiserver").unlink()

    with pytest.raises(ControlPlaneError) as caught:
        find_binaries({"KUBEBUILDER_ASSETS": str(assets)})

    message = str(caught.value)
    assert "kube-apiserver" in message
    assert BUILD_SCRIPT in message
    assert "etcd" not in message.split("missing from")[1].split(".", maxsplit=1)[0]


def test_network_policy_api_crds_found_in_the_cache_folder_named_after_the_version(
    tmp_path: Path,
) -> None:
    versions_file = tmp_path / "versions.env"
    versions_file.write_text("NETWORK_POLICY_API_VERSION=v9.9.9\n", encoding="utf-8")
    cache = tmp_path / "cache"
    environ = {"AGENTCUBE_NETPOL_CACHE": str(cache)}
    directory = cache / "crds" / "network-policy-api-v9.9.9"
    directory.mkdir(parents=True)
    (directory / NETWORK_POLICY_API_CRD).write_text("kind: CustomResourceDefinition\n")

    with pytest.raises(ControlPlaneError) as caught:  # no .complete: a copy cut short
        network_policy_api_crds(environ, versions_file=versions_file)
    assert NETWORK_POLICY_API_CRDS_SCRIPT in str(caught.value)

    (directory / ".complete").write_text("2026-01-01T00:00:00Z\n")
    assert network_policy_api_crds(environ, versions_file=versions_file) == directory


def test_webhooks_pointed_at_the_local_server_keep_their_path_and_trust_its_ca() -> None:
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": "agentcube-netpol",
            "annotations": {"cert-manager.io/inject-ca-from": "ns/cert"},
        },
        "webhooks": [
            {
                "name": "templates.agentcube-netpol.io",
                "clientConfig": {
                    "service": {"name": "svc", "namespace": "ns", "path": "/validate", "port": 443}
                },
                "failurePolicy": "Fail",
            }
        ],
    }

    rewritten = point_webhooks_at(configuration, base_url="https://127.0.0.1:9443/", ca_pem=b"PEM")

    client_config = rewritten["webhooks"][0]["clientConfig"]
    assert client_config == {
        "url": "https://127.0.0.1:9443/validate",
        "caBundle": base64.b64encode(b"PEM").decode(),
    }
    assert rewritten["webhooks"][0]["failurePolicy"] == "Fail"
    assert rewritten["metadata"]["annotations"] == {}
    # The input is left as it was.
    assert "service" in configuration["webhooks"][0]["clientConfig"]  # type: ignore[index]


def test_client_certificate_carries_user_and_groups() -> None:
    now = datetime.now(UTC)
    ca = create_ca(common_name="test-ca", at=now)
    client = issue_client_cert(ca, user="alice", groups=("tenants", "devs"), at=now)
    cert = x509.load_pem_x509_certificate(client.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    groups = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert groups == ["tenants", "devs"]
    cert.verify_directly_issued_by(ca.cert)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    return "State:\tZ" not in status


def test_failed_start_shows_the_log_and_leaves_no_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "etcd.pid"
    assets = fake_binaries(
        tmp_path / "assets",
        etcd=f"echo $$ > {pid_file}\nexec sleep 300",
        kube_apiserver="echo 'E1129 unknown flag: --bogus' >&2\nexit 3",
    )
    control_plane = ControlPlane(
        binaries=Binaries(assets), work_dir=tmp_path / "work", start_timeout_s=10
    )

    with pytest.raises(ControlPlaneError) as caught:
        control_plane.start()

    message = str(caught.value)
    assert "kube-apiserver exited with code 3" in message
    assert "unknown flag: --bogus" in message
    assert (tmp_path / "work" / "logs" / "kube-apiserver.log").is_file()
    assert not process_exists(int(pid_file.read_text(encoding="ascii")))


def test_api_server_that_never_gets_ready_times_out_with_its_log(tmp_path: Path) -> None:
    assets = fake_binaries(
        tmp_path / "assets",
        etcd="exec sleep 300",
        kube_apiserver="echo 'waiting for etcd' >&2\nexec sleep 300",
    )
    control_plane = ControlPlane(
        binaries=Binaries(assets), work_dir=tmp_path / "work", start_timeout_s=1
    )

    with pytest.raises(ControlPlaneError, match="not healthy") as caught:
        control_plane.start()

    assert "waiting for etcd" in str(caught.value)
    assert control_plane.pids == []


def test_command_lines_name_the_pki_files_that_are_written(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    create_pki(at=datetime.now(UTC)).write(pki)
    argv = apiserver_args(etcd_url="http://127.0.0.1:2379", port=6443, pki=pki)
    argv += controller_manager_args(
        kubeconfig=tmp_path / "admin.kubeconfig", port=10257, cert_dir=tmp_path / "kcm", pki=pki
    )
    named = {Path(arg.partition("=")[2]) for arg in argv if f"={pki}/" in arg}
    assert {path.name for path in named} == {
        "ca.crt",
        "apiserver.crt",
        "apiserver.key",
        "sa.pub",
        "sa.key",
    }
    for path in named:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
