"""`serve --watch-claims`: a claimed warm-pool pod gets its sandbox's labels through the real
API server, the claim looked up in memory (list + watch under deploy/'s RBAC), never by an
API call inside the admission request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds

from tests.builders import sandbox_claim, sandbox_pod
from tests.e2e.deployed import deploy_manifests, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.test_reconciler import eventually
from webhook.api import kinds

NAMESPACE = "warm"
WARM_LABELS = {
    kinds.LABEL_WARM_POOL_SANDBOX: "ci-pool",
    "agents.x-k8s.io/sandbox-template-ref-hash": "5d8f",
    "agents.x-k8s.io/sandbox-pod-template-hash": "7c9b",
}
CACHE_CATCH_UP_S = 15.0


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries, with_controller_manager=False) as control_plane:
        install_crds(control_plane, CRD_DIR)
        manifests = deploy_manifests(control_plane)
        service_account = install_rbac(control_plane, manifests)
        work = tmp_path_factory.mktemp("claims")
        server = WebhookServer(
            cert_dir=work / "certs",
            log_path=work / "server.log",
            extra_args=("--watch-claims", f"--kubeconfig={service_account}"),
        )
        server.start()  # ready only once the first list of claims has landed
        try:
            install_webhooks(control_plane, manifests, base_url=server.url, ca_pem=server.ca_pem)
            Kubectl(control_plane).ok("create", "namespace", NAMESPACE)
            yield control_plane
        finally:
            server.stop()


def claim_for_session(kubectl: Kubectl, name: str, session: str) -> dict[str, object]:
    claim = sandbox_claim(
        name,
        NAMESPACE,
        template="ci",
        labels={kinds.LABEL_SANDBOX_NAME: name, kinds.LABEL_SESSION_ID: session},
    )
    kubectl.ok("create", "-f", "-", input=as_json(claim))
    return kubectl.get("sandboxclaim", name, "-n", NAMESPACE)


def wait_until_the_cache_knows(kubectl: Kubectl, claim_uid: str) -> None:
    """A server-side dry-run create of a pod of that claim goes through the mutation without
    side effects: once it comes back labelled, the watch has delivered the claim."""
    probe = sandbox_pod(
        "probe", NAMESPACE, labels={**WARM_LABELS, kinds.LABEL_CLAIM_UID: claim_uid}
    )
    deadline = time.monotonic() + CACHE_CATCH_UP_S
    while time.monotonic() < deadline:
        dry = kubectl.ok(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=as_json(probe)
        )
        if kinds.LABEL_SANDBOX_NAME in json.loads(dry)["metadata"]["labels"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the claim {claim_uid} did not reach the server's cache")


def test_claim_adoption_labels_the_running_warm_pod(cluster: ControlPlane) -> None:
    kubectl = Kubectl(cluster)
    kubectl.ok(
        "create",
        "-f",
        "-",
        input=as_json(sandbox_pod("ci-pool-x7k2p", NAMESPACE, labels=WARM_LABELS)),
    )
    claim = claim_for_session(kubectl, "ci-ab12cd34", "session-1")
    # The claim itself was stored with the label agent-sandbox copies onto the pod.
    assert claim["spec"]["additionalPodMetadata"]["labels"] == {
        kinds.LABEL_SANDBOX_NAME: "ci-ab12cd34"
    }  # type: ignore[index]
    uid = claim["metadata"]["uid"]  # type: ignore[index]
    wait_until_the_cache_knows(kubectl, uid)

    # What the Sandbox controller does on adoption: an UPDATE that adds claim-uid.
    kubectl.ok("label", "pod", "ci-pool-x7k2p", "-n", NAMESPACE, f"{kinds.LABEL_CLAIM_UID}={uid}")
    labels = kubectl.get("pod", "ci-pool-x7k2p", "-n", NAMESPACE)["metadata"]["labels"]
    assert labels[kinds.LABEL_SANDBOX_NAME] == "ci-ab12cd34"
    assert labels[kinds.LABEL_SESSION_ID] == "session-1"
    assert labels[kinds.LABEL_WARM_POOL_SANDBOX] == "ci-pool"  # nothing else touched


def test_pod_created_for_a_claim_is_labelled_at_creation(cluster: ControlPlane) -> None:
    kubectl = Kubectl(cluster)
    claim = claim_for_session(kubectl, "ci-cd34ef56", "session-2")
    uid = claim["metadata"]["uid"]  # type: ignore[index]
    wait_until_the_cache_knows(kubectl, uid)
    pod = sandbox_pod(
        "ci-pool-y8m3q", NAMESPACE, labels={**WARM_LABELS, kinds.LABEL_CLAIM_UID: uid}
    )
    created = json.loads(kubectl.ok("create", "-f", "-", "-o", "json", input=as_json(pod)))
    assert created["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME] == "ci-cd34ef56"


def test_pod_of_a_claim_nobody_knows_is_created_unchanged(cluster: ControlPlane) -> None:
    kubectl = Kubectl(cluster)
    pod = sandbox_pod(
        "ci-pool-z9n4r", NAMESPACE, labels={**WARM_LABELS, kinds.LABEL_CLAIM_UID: "no-such-claim"}
    )
    created = json.loads(kubectl.ok("create", "-f", "-", "-o", "json", input=as_json(pod)))
    assert kinds.LABEL_SANDBOX_NAME not in created["metadata"]["labels"]


def test_a_claim_in_another_namespace_never_labels_the_pod(cluster: ControlPlane) -> None:
    """A tenant copies another namespace's claim uid (and name) onto its pod: no label."""
    kubectl = Kubectl(cluster)
    kubectl.ok("create", "namespace", "elsewhere")
    claim = sandbox_claim(
        "ci-ef56ab78",
        "elsewhere",
        template="ci",
        labels={kinds.LABEL_SANDBOX_NAME: "ci-ef56ab78", kinds.LABEL_SESSION_ID: "session-3"},
    )
    uid = json.loads(kubectl.ok("create", "-o", "json", "-f", "-", input=as_json(claim)))[
        "metadata"
    ]["uid"]
    # The same claim is known in its own namespace (so the cache has it) ...
    probe = sandbox_pod("probe", "elsewhere", labels={**WARM_LABELS, kinds.LABEL_CLAIM_UID: uid})
    deadline = time.monotonic() + CACHE_CATCH_UP_S
    while True:
        dry = json.loads(
            kubectl.ok("create", "--dry-run=server", "-o", "json", "-f", "-", input=as_json(probe))
        )
        if kinds.LABEL_SANDBOX_NAME in dry["metadata"]["labels"]:
            break
        assert time.monotonic() < deadline, "the claim did not reach the server's cache"
        time.sleep(0.2)
    # ... and a pod of another namespace that names it gets nothing from it.
    pod = sandbox_pod("ci-ef56ab78", NAMESPACE, labels={**WARM_LABELS, kinds.LABEL_CLAIM_UID: uid})
    created = json.loads(kubectl.ok("create", "-f", "-", "-o", "json", input=as_json(pod)))
    assert kinds.LABEL_SANDBOX_NAME not in created["metadata"]["labels"]
    assert kinds.LABEL_SESSION_ID not in created["metadata"]["labels"]


def test_the_cache_stops_promptly_while_its_watch_is_open(cluster: ControlPlane) -> None:
    from webhook.api.settings import Settings
    from webhook.kube.rest import Rest
    from webhook.reconciler.caches import Caches

    cache = Caches(
        Rest.from_config(cluster.admin_kubeconfig), Settings(), watched=(kinds.SANDBOX_CLAIM,)
    )
    cache.start()
    assert cache.wait_synced(10)
    eventually(lambda: cache.informers[kinds.SANDBOX_CLAIM][0].watching, "the watch to be open")
    started = time.monotonic()
    cache.stop()
    assert time.monotonic() - started < 3
    assert not cache.informers[kinds.SANDBOX_CLAIM][0].running


def test_readyz_waits_for_the_first_list_of_claims(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A replica whose claim cache has not listed yet would answer pod mutations from an empty
    cache (claimed pods left unlabelled): it must not be Ready until the first list lands."""
    kubectl = Kubectl(cluster)
    user = "claims-not-yet"
    work = tmp_path_factory.mktemp("readyz")
    server = WebhookServer(
        cert_dir=work / "certs",
        log_path=work / "server.log",
        extra_args=("--watch-claims", f"--kubeconfig={cluster.mint_user(user)}"),
    )
    server.start(until="/healthz")
    try:
        # RBAC refuses the list: the cache retries and the server stays not ready.
        deadline = time.monotonic() + CACHE_CATCH_UP_S
        while "list/watch failed" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert not server.answers_200("/readyz")
        assert server.answers_200("/healthz")

        kubectl.ok("create", "clusterrole", user, "--verb=list,watch",
                   "--resource=sandboxclaims.extensions.agents.x-k8s.io")  # fmt: skip
        kubectl.ok("create", "clusterrolebinding", user, f"--clusterrole={user}", f"--user={user}")
        deadline = time.monotonic() + 2 * CACHE_CATCH_UP_S  # the retry backs off
        while not server.answers_200("/readyz"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert "listed" in server.log()
    finally:
        server.stop()
