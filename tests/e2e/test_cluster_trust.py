"""`serve --ca-secret`: in a cluster without cert-manager, the replicas share one CA kept
in a Secret and write it into the webhooks' caBundle, under the RBAC deploy/ grants.

A control plane of its own: the session's webhook configurations trust another server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from agentcube_netpol_dev.controlplane import (
    Binaries,
    ControlPlane,
    install_crds,
    is_healthy,
    tls_context,
)

from tests import builders
from tests.e2e.deployed import (
    NAMESPACE,
    SERVICE_ACCOUNT_GROUPS,
    SERVICE_ACCOUNT_USER,
    deploy_manifests,
    install_rbac,
    install_webhooks,
)
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer
from webhook.kube import cabundle
from webhook.tls import certs

SECRET = "agentcube-netpol-ca"
CONFIGURATION = "agentcube-netpol"


@pytest.fixture(scope="module")
def cluster(binaries: Binaries) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries, with_controller_manager=False) as control_plane:
        install_crds(control_plane, CRD_DIR)
        yield control_plane


@pytest.fixture(scope="module")
def replicas(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WebhookServer]]:
    """deploy/'s RBAC and webhook configurations (caBundle empty, as shipped), then two
    servers that authenticate as deploy/'s service account."""
    manifests = deploy_manifests(cluster)
    service_account = install_rbac(cluster, manifests)
    work = tmp_path_factory.mktemp("trust")
    args = (f"--ca-secret={NAMESPACE}/{SECRET}", f"--kubeconfig={service_account}")
    first = WebhookServer(cert_dir=work / "a", log_path=work / "a.log", extra_args=args)
    second = WebhookServer(cert_dir=work / "b", log_path=work / "b.log", extra_args=args)
    install_webhooks(cluster, manifests, base_url=first.url, ca_pem=None)

    first.start()
    second.start()
    try:
        yield [first, second]
    finally:
        first.stop()
        second.stop()


def ca_bundles(kubectl: Kubectl) -> list[str]:
    bundles = []
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        configuration = kubectl.get(kind, CONFIGURATION)
        bundles += [w["clientConfig"].get("caBundle", "") for w in configuration["webhooks"]]
    return bundles


def test_replicas_share_one_ca_and_write_it_into_every_webhook(
    cluster: ControlPlane, replicas: list[WebhookServer]
) -> None:
    kubectl = Kubectl(cluster)
    secret = kubectl.get("secret", SECRET, "-n", NAMESPACE)
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    first, second = replicas
    assert first.ca_pem == ca_pem
    assert second.ca_pem == ca_pem
    bundles = ca_bundles(kubectl)
    assert len(bundles) == 7  # every webhook of deploy/: 4 validating, 3 mutating
    assert set(bundles) == {base64.b64encode(ca_pem).decode()}
    # Each replica serves its own certificate, and the shared CA vouches for both.
    assert (first.cert_dir / "tls.crt").read_bytes() != (second.cert_dir / "tls.crt").read_bytes()
    assert is_healthy(f"{second.url}/readyz", tls_context(ca_file=first.ca_file, client=None))


def test_api_server_trusts_the_server_it_could_not_reach_before(
    cluster: ControlPlane, replicas: list[WebhookServer]
) -> None:
    kubectl = Kubectl(cluster)
    kubectl.ok("create", "namespace", "trust")
    bad = builders.code_interpreter(
        "py", "trust", {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
    )
    result = kubectl("apply", "-f", "-", input=json.dumps(bad))
    assert result.returncode != 0
    # Denied by our webhook (TLS worked), not "failed calling webhook ... x509".
    assert 'admission webhook "templates.netpol.agentcube.io" denied the request' in result.stderr
    assert 'did you mean "10.0.0.0/8"' in result.stderr


def test_a_restart_repairs_a_ca_bundle_that_was_dropped(
    cluster: ControlPlane, replicas: list[WebhookServer]
) -> None:
    kubectl = Kubectl(cluster)
    patch = json.dumps([{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}])
    kubectl.ok("patch", "validatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", patch)
    assert "" in ca_bundles(kubectl)
    first = replicas[0]
    first.stop()
    first.start()
    assert set(ca_bundles(kubectl)) == {base64.b64encode(first.ca_pem).decode()}


def test_the_ca_secret_is_the_only_secret_the_service_account_can_read(
    cluster: ControlPlane, replicas: list[WebhookServer]
) -> None:
    service_account = cluster.mint_user(SERVICE_ACCOUNT_USER, groups=SERVICE_ACCOUNT_GROUPS)
    kubectl = Kubectl(cluster)
    allowed = kubectl(
        "auth", "can-i", "get", f"secret/{SECRET}", "-n", NAMESPACE, user=service_account
    )
    assert allowed.stdout.strip() == "yes"
    for args in (
        ("get", "secrets", "-n", NAMESPACE),
        ("get", "secret/other", "-n", NAMESPACE),
        ("get", "secrets", "-n", "default"),
    ):
        denied = kubectl("auth", "can-i", *args, user=service_account)
        assert denied.stdout.strip() == "no", args


def test_a_ca_near_its_end_is_replaced_and_the_old_one_stays_trusted_meanwhile(
    cluster: ControlPlane, replicas: list[WebhookServer]
) -> None:
    """A year before the shared CA expires, the first replica to sync replaces it in the
    Secret; the caBundle then holds the new CA and the old one (which signed what the other
    replicas still serve until their next sync), and the API server keeps calling us."""
    kubectl = Kubectl(cluster)
    for replica in replicas:
        replica.stop()
    now = datetime.now(UTC)
    old = certs.create_ca(
        common_name="old",
        not_before=now - timedelta(days=3500),
        not_after=now + timedelta(days=150),
    )
    body = cabundle.ca_secret(namespace=NAMESPACE, name=SECRET, ca=old)
    kubectl.ok("replace", "-f", "-", input=json.dumps(body))

    first, second = replicas
    first.start()
    secret = kubectl.get("secret", SECRET, "-n", NAMESPACE)
    new_pem = base64.b64decode(secret["data"]["ca.crt"])
    assert new_pem != old.cert_pem
    assert base64.b64decode(secret["data"]["ca-previous.crt"]) == old.cert_pem
    assert first.ca_pem == new_pem  # and it serves a certificate of the new CA
    assert is_healthy(f"{first.url}/readyz", tls_context(ca_file=first.ca_file, client=None))
    assert set(ca_bundles(kubectl)) == {base64.b64encode(new_pem + old.cert_pem).decode()}
    kubectl.ok("create", "namespace", "renewed")
    bad = builders.code_interpreter("py", "renewed", {"mode": "Sideways"})
    refused = kubectl("apply", "-f", "-", input=json.dumps(bad))
    assert 'admission webhook "templates.netpol.agentcube.io" denied' in refused.stderr

    second.start()  # takes the new CA; no second replacement
    assert second.ca_pem == new_pem
    assert kubectl.get("secret", SECRET, "-n", NAMESPACE)["data"] == secret["data"]
