"""deploy/ as shipped, on a control plane of a test module's own: its RBAC, its service
account as a client-certificate user (RBAC matches ServiceAccount subjects by user name),
and its webhook configurations pointed at a local server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import (
    WEBHOOK_CONFIGURATION_KINDS,
    ControlPlane,
    load_manifests,
    point_webhooks_at,
)

from tests.e2e.harness import DEPLOY_DIR, Kubectl, as_json

NAMESPACE = "agentcube-netpol-system"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{NAMESPACE}:agentcube-netpol"
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}")
RBAC_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)


def deploy_manifests(control_plane: ControlPlane) -> list[dict[str, Any]]:
    return load_manifests(DEPLOY_DIR, control_plane=control_plane)


def install_rbac(control_plane: ControlPlane, manifests: Iterable[Mapping[str, Any]]) -> Path:
    """Applies deploy/'s namespace and RBAC; a kubeconfig of its service account."""
    rbac = [dict(m) for m in manifests if m["kind"] in RBAC_KINDS]
    Kubectl(control_plane).ok("apply", "-f", "-", input=as_json(*rbac))
    return control_plane.mint_user(SERVICE_ACCOUNT_USER, groups=SERVICE_ACCOUNT_GROUPS)


def install_webhooks(
    control_plane: ControlPlane,
    manifests: Iterable[Mapping[str, Any]],
    *,
    base_url: str,
    ca_pem: bytes | None,
) -> None:
    """deploy/'s webhook configurations calling ``base_url``; ``ca_pem=None`` leaves the
    caBundle empty, as deploy/ ships it."""
    configurations = []
    for manifest in manifests:
        if manifest["kind"] in WEBHOOK_CONFIGURATION_KINDS:
            pointed = point_webhooks_at(manifest, base_url=base_url, ca_pem=ca_pem or b"")
            if ca_pem is None:
                for webhook in pointed["webhooks"]:
                    del webhook["clientConfig"]["caBundle"]
            configurations.append(pointed)
    Kubectl(control_plane).ok("apply", "-f", "-", input=as_json(*configurations))
