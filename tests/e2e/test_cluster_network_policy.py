"""The native backend for egress domains: ClusterNetworkPolicy with domainNames.

A control plane of this module's own with the ClusterNetworkPolicy CRD pinned in
versions.env (sigs.k8s.io/network-policy-api, experimental channel), deploy/'s
cluster-network-policy overlay (its RBAC, ``--domain-backend=cluster-network-policy``) and
``run`` as deploy/'s service account. The API server checks every object we write against
the CRD's schema and rules; nothing here can show packets: no network plugin on this
machine implements ClusterNetworkPolicy (the dataplane tier's kube-router implements
NetworkPolicy only), so the packet-level proof is the resolving backend's
(test_dataplane_domains.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds, load_manifests

from tests.e2e.deployed import DEPLOY_DIR, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.test_reconciler import (
    eventually,
    grant_agentcube,
    interpreter,
    sandbox,
    sandbox_pod,
    start_run,
)
from webhook.api import kinds
from webhook.policy.domains import domain_entries, domain_set_key
from webhook.reconciler.domainplan import selected_names

OVERLAY = DEPLOY_DIR / "overlays" / "cluster-network-policy"
POLICY = {
    "mode": "Restricted",
    "egress": [
        {"domains": ["api.github.com", "*.githubusercontent.com"], "ports": [{"port": 443}]},
        {"cidrs": ["198.51.100.0/24"], "ports": [{"port": 8443}]},
    ],
}
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, network_policy_api_crd_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries) as control_plane:
        install_crds(control_plane, CRD_DIR)
        install_crds(control_plane, network_policy_api_crd_dir)
        yield control_plane


@pytest.fixture(scope="module")
def kube(cluster: ControlPlane) -> Kubectl:
    kubectl = Kubectl(cluster)
    grant_agentcube(kubectl)
    return kubectl


@pytest.fixture(scope="module")
def service_account(cluster: ControlPlane) -> Path:
    return install_rbac(cluster, load_manifests(OVERLAY, control_plane=cluster))


@pytest.fixture(scope="module")
def run(
    cluster: ControlPlane,
    kube: Kubectl,
    service_account: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebhookServer]:
    manifests = load_manifests(OVERLAY, control_plane=cluster)
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    backend = [a for a in args if a.startswith("--domain-backend")]
    assert backend == ["--domain-backend=cluster-network-policy"]  # as the overlay ships it
    server = start_run(cluster, service_account, tmp_path_factory.mktemp("run"), *backend)
    install_webhooks(cluster, manifests, base_url=server.url, ca_pem=server.ca_pem)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ns(kube: Kubectl, run: WebhookServer) -> Iterator[str]:
    name = f"cnp-{time.monotonic_ns() % 10**8:08d}"
    kube.ok("create", "namespace", name)
    yield name
    kube("delete", "namespace", name, "--wait=false")


def cnp_name(ns: str) -> str:
    return f"netpol-domains.{ns}.{domain_set_key(ns, domain_entries(POLICY))}"


def cnp_of(kube: Kubectl, name: str) -> dict[str, Any] | None:
    result = kube("get", "clusternetworkpolicy", name, "-o", "json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def audit(service_account: Path, ns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "audit", f"--kubeconfig={service_account}",
         "-n", ns, "--domain-backend=cluster-network-policy"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_wildcard_is_admitted_and_the_names_go_into_a_cluster_network_policy(
    kube: Kubectl, ns: str, service_account: Path
) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, policy=POLICY)))  # a wildcard
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    pod = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox_pod(ns, created)))
    )
    assert {"name": kinds.SCHEDULING_GATE} in pod["spec"]["schedulingGates"]
    name = cnp_name(ns)
    cnp = eventually(
        lambda: (
            (found := cnp_of(kube, name)) is not None
            and selected_names(found) == ["py-abcd1234"]
            and found
        ),
        "the ClusterNetworkPolicy selecting the sandbox",
        WAIT_S,
    )
    assert cnp["spec"]["tier"] == "Admin"
    assert cnp["spec"]["egress"] == [
        {
            "name": "domains-0",
            "action": "Accept",
            "to": [{"domainNames": ["*.githubusercontent.com", "api.github.com"]}],
            "protocols": [{"tcp": {"destinationPort": {"number": 443}}}],
        }
    ]
    # The pod leaves its gate once it is selected; its own NetworkPolicy holds the rest.
    eventually(
        lambda: not kube.get("pod", "py-abcd1234", "-n", ns)["spec"].get("schedulingGates"),
        "the pod released",
        WAIT_S,
    )
    own = kube.get("networkpolicy", "py-abcd1234", "-n", ns)
    blocks = [
        p["ipBlock"]["cidr"] for r in own["spec"]["egress"] for p in r["to"] if "ipBlock" in p
    ]
    assert blocks == ["198.51.100.0/24"]
    assert kube("get", "networkpolicy", "-n", ns, "-o", "name").stdout.count("netpol-domains") == 0
    # Stored as built: no write after the first (the reconciler compares with ==).
    version = cnp["metadata"]["resourceVersion"]
    time.sleep(3)
    again = cnp_of(kube, name)
    assert again is not None and again["metadata"]["resourceVersion"] == version
    result = audit(service_account, ns)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_edited_cluster_network_policy_is_put_back_and_goes_with_its_sandbox(
    kube: Kubectl, ns: str, service_account: Path
) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, policy=POLICY)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    kube.ok("create", "-f", "-", input=as_json(sandbox_pod(ns, created)))
    name = cnp_name(ns)
    original = eventually(lambda: cnp_of(kube, name), "the ClusterNetworkPolicy", WAIT_S)
    kube.ok(
        "patch", "clusternetworkpolicy", name, "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/spec/egress/0/to/0/domainNames",
                           "value": ["*.example.com"]}]),
    )  # fmt: skip
    eventually(
        lambda: (found := cnp_of(kube, name)) is not None and found["spec"] == original["spec"],
        "the edit undone",
        WAIT_S,
    )
    kube.ok("delete", "sandbox", "py-abcd1234", "-n", ns)
    kube.ok("delete", "pod", "py-abcd1234", "-n", ns, "--grace-period=0", "--force")
    kube.ok("delete", "networkpolicy", "py-abcd1234", "-n", ns, "--ignore-not-found")
    eventually(lambda: cnp_of(kube, name) is None, "the ClusterNetworkPolicy deleted", WAIT_S)
    result = audit(service_account, ns)
    assert result.returncode == 0, result.stdout + result.stderr
