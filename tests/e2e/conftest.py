"""Session fixtures of the end-to-end tier: a real control plane (etcd, kube-apiserver,
kube-controller-manager), the webhook server on a loopback port, deploy/'s CRDs and webhook
configurations installed against it, the built kubectl, and a fresh namespace per test.
On request, for the test module that asks: the real agent-sandbox controller
(``agent_sandbox``; its own CRDs replace deploy/'s four agent-sandbox ones for the rest of the
session) and a fake kubelet (``kubelet``) that binds and runs every ungated pod of the cluster.
Module-scoped, not session-scoped: other modules play the controller's part by hand (they
create a Sandbox's pod themselves) and would collide with the real one.

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
from agentcube_netpol_dev.agentsandbox import (
    AgentSandboxBuild,
    AgentSandboxController,
    find_agent_sandbox,
)
from agentcube_netpol_dev.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    install_crds,
    install_webhooks,
    load_manifests,
    network_policy_api_crds,
)
from agentcube_netpol_dev.dataplane import Dataplane, DataplaneError, running_node
from agentcube_netpol_dev.kubelet import FakeKubelet

from tests.e2e.harness import CRD_DIR, DEPLOY_DIR, Kubectl, WebhookServer, agent_sandbox_running


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
def network_policy_api_crd_dir() -> Path:
    """The pinned ClusterNetworkPolicy CRD's directory (not installed: a test that needs the
    kind passes it to ``install_crds``)."""
    try:
        return network_policy_api_crds(os.environ)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)


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


@pytest.fixture(scope="session")
def agent_sandbox_build() -> AgentSandboxBuild:
    try:
        return find_agent_sandbox(os.environ)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def agent_sandbox(
    control_plane: ControlPlane,
    crds: list[str],
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AgentSandboxController]:
    """The real agent-sandbox controller, extensions on, as its own ServiceAccount, for one
    test module. Its CRDs (Established before it starts) replace deploy/'s four agent-sandbox
    CRDs for the rest of the session; deploy/'s AgentRuntime and CodeInterpreter CRDs stay."""
    with agent_sandbox_running(
        control_plane, agent_sandbox_build, tmp_path_factory.mktemp("agent-sandbox")
    ) as controller:
        yield controller


@pytest.fixture(scope="module")
def kubelet(control_plane: ControlPlane) -> Iterator[FakeKubelet]:
    """A fake kubelet (and scheduler) for every pod of the session's cluster, for one test
    module: the Node ``agentcube-netpol-node``; ungated pods bound, Running and Ready with a
    unique pod IP (``kubelet.network``); pods being deleted removed with grace 0. Pods it
    bound and that are deleted after the module stay Terminating (no kubelet finishes them)."""
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    try:
        with FakeKubelet(CoreV1Api(api_client)) as fake:
            yield fake
    finally:
        api_client.close()


# --- the dataplane tier: a node of the module's own control plane (its ``cluster`` fixture) ---


@pytest.fixture(scope="module")
def node(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Dataplane, FakeKubelet]]:
    """The node namespace with kube-router, and the fake kubelet running pods on it, on the
    requesting module's ``cluster``; the tier fails (never skips) on a machine that lacks
    what it needs."""
    try:
        with running_node(cluster, tmp_path_factory.mktemp("dataplane")) as node_and_kubelet:
            yield node_and_kubelet
    except DataplaneError as exc:
        pytest.fail(f"the dataplane tier cannot run: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def dataplane(node: tuple[Dataplane, FakeKubelet]) -> Dataplane:
    return node[0]


@pytest.fixture(scope="module")
def kubelet_of_the_plane(node: tuple[Dataplane, FakeKubelet]) -> FakeKubelet:
    return node[1]
