"""Session fixtures of the end-to-end tier: a real control plane (etcd, kube-apiserver,
kube-controller-manager), the webhook server on a loopback port, deploy/'s CRDs and webhook
configurations installed against it, the built kubectl, and a fresh namespace per test.

Missing binaries FAIL the tier with instructions (`.ci/run` builds them first); they never
turn into skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import CRD_DIR, DEPLOY_DIR, Kubectl, WebhookServer
from webhook.devtools.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    install_crds,
    install_webhooks,
    load_manifests,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    try:
        return find_binaries(os.environ)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def control_plane(binaries: Binaries) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        yield control_plane


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def webhook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    work_dir = tmp_path_factory.mktemp("webhook")
    server = WebhookServer(cert_dir=work_dir / "certs", log_path=work_dir / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    return install_crds(control_plane, CRD_DIR)


@pytest.fixture(scope="session")
def webhook_configurations(
    control_plane: ControlPlane, webhook_server: WebhookServer, crds: list[str]
) -> list[dict[str, Any]]:
    """deploy/'s webhook configurations as installed: calling the local server."""
    manifests = load_manifests(DEPLOY_DIR, control_plane=control_plane)
    return install_webhooks(
        control_plane, manifests, base_url=webhook_server.url, ca_pem=webhook_server.ca_pem
    )


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, deleted afterwards. Tests of admission also ask for
    ``webhook_configurations``."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl.ok("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")
