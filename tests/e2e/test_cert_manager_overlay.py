"""deploy/overlays/cert-manager and the chart's cert-manager mode, applied (server-side dry
run) to a real API server that serves cert-manager's own CRDs, taken from its Go module at
the version versions.env pins: its Issuers and Certificates must pass cert-manager's schema,
and every other object the API server's validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentcube_netpol_dev.controlplane import (
    VERSIONS_FILE,
    Binaries,
    ControlPlane,
    read_versions,
)

from tests.deploy.manifests import CERT_MANAGER, helm_template
from tests.e2e.harness import Kubectl, as_json, wait_established

NAMESPACE = "agentcube-netpol-system"


def cert_manager_crds() -> Path:
    """cert-manager's deploy/crds, from the Go module cache (downloaded once by version)."""
    version = read_versions(VERSIONS_FILE)["CERT_MANAGER_VERSION"]
    go = shutil.which("go") or "/usr/local/go/bin/go"
    result = subprocess.run(
        [go, "mod", "download", "-json", f"github.com/cert-manager/cert-manager@{version}"],
        capture_output=True, text=True, timeout=600, check=False, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )  # fmt: skip
    info = json.loads(result.stdout) if result.stdout.strip() else {}
    if result.returncode != 0 or "Dir" not in info:
        pytest.fail(f"cert-manager {version} not downloaded: {info.get('Error') or result.stderr}")
    return Path(info["Dir"]) / "deploy" / "crds"


@pytest.fixture(scope="module")
def with_cert_manager_crds(binaries: Binaries) -> Iterator[Kubectl]:
    """A control plane of its own: the session's holds webhook configurations of our name
    that point elsewhere, which an apply would patch rather than create."""
    with ControlPlane(binaries=binaries) as control_plane:
        yield crds_installed(Kubectl(control_plane))


def crds_installed(kubectl: Kubectl) -> Kubectl:
    kubectl.ok("apply", "--server-side", "-f", str(cert_manager_crds()))
    wait_established(kubectl, "certificates.cert-manager.io", "issuers.cert-manager.io")
    if kubectl("get", "namespace", NAMESPACE).returncode != 0:
        kubectl.ok("create", "namespace", NAMESPACE)
    return kubectl


def test_the_cert_manager_overlay_applies(with_cert_manager_crds: Kubectl) -> None:
    output = with_cert_manager_crds.ok(
        "apply", "--dry-run=server", "-k", str(CERT_MANAGER), "-o", "name"
    )
    assert "certificate.cert-manager.io/agentcube-netpol-webhook" in output
    assert "issuer.cert-manager.io/agentcube-netpol-root-ca" in output
    assert "deployment.apps/agentcube-netpol" in output


def test_the_charts_cert_manager_mode_applies(with_cert_manager_crds: Kubectl) -> None:
    docs = [d for d in helm_template("certificates.mode=cert-manager") if d["kind"] != "Namespace"]
    output = with_cert_manager_crds.ok(
        "apply", "--dry-run=server", "-f", "-", "-o", "name", input=as_json(*docs)
    )
    assert "certificate.cert-manager.io/agentcube-netpol-webhook" in output
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/agentcube-netpol" in output
