"""Admission of agent-sandbox's v1beta1 objects through the real API server and kubectl, on a
cluster with agent-sandbox v1.0.1's own CRDs (v1beta1 only: no v1alpha1 to fall back on) and
deploy/'s webhook configurations, unchanged. No controller runs: admission is all this is
about, and what the API server stores."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import find_agent_sandbox
from agentcube_netpol_dev.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    install_crds,
    install_webhooks,
    load_manifests,
)

from tests import EXAMPLES
from tests.builders import in_version, sandbox, sandbox_claim, sandbox_template, sandbox_warm_pool
from tests.e2e.harness import DEPLOY_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.test_admission import AGENTCUBE_SA, HOST_BITS_SET, RESTRICTED, not_found
from tests.e2e.test_agent_sandbox_versions import install_agentcube_crds
from webhook.admission.decide import validate_object
from webhook.api import kinds
from webhook.api.settings import Settings

VERSION = "v1.0.1"
V1BETA1 = "v1beta1"
OVERRIDE_AT = "metadata.annotations[runtime.agentcube.io/network-policy].egress[0].cidrs[0]"
CLAIMS = f"{kinds.SANDBOX_CLAIM.plural}.{kinds.SANDBOX_CLAIM.group}"
SANDBOXES = f"{kinds.SANDBOX.plural}.{kinds.SANDBOX.group}"


@dataclass(frozen=True)
class Cluster:
    kube: Kubectl
    namespace: str  # fresh for each test


@pytest.fixture(scope="module")
def v1beta1_cluster(binaries: Binaries, webhook_server: WebhookServer) -> Iterator[Kubectl]:
    try:
        build = find_agent_sandbox(os.environ, VERSION)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    with ControlPlane(binaries=binaries) as control_plane:
        install_crds(control_plane, build.crd_dir)  # v1.0.1's: no conversion webhook to drop
        install_agentcube_crds(control_plane)
        install_webhooks(
            control_plane,
            load_manifests(DEPLOY_DIR, control_plane=control_plane),
            base_url=webhook_server.url,
            ca_pem=webhook_server.ca_pem,
        )
        kube = Kubectl(control_plane)
        # RBAC lets AgentCube's workload manager and the tenant alice write agent-sandbox's
        # objects: what they may not do is then the webhook's to say.
        kube.ok(
            "create", "clusterrole", "agent-sandbox-writer", "--verb=get,list,create,update",
            "--resource=sandboxes.agents.x-k8s.io,sandboxclaims.extensions.agents.x-k8s.io",
        )  # fmt: skip
        kube.ok(
            "create", "clusterrolebinding", "agent-sandbox-writers",
            "--clusterrole=agent-sandbox-writer", "--user=alice",
            "--group=system:serviceaccounts:agentcube",
        )  # fmt: skip
        yield kube


@pytest.fixture
def cluster(v1beta1_cluster: Kubectl) -> Iterator[Cluster]:
    name = f"b-{uuid.uuid4().hex[:8]}"
    v1beta1_cluster.ok("create", "namespace", name)
    yield Cluster(v1beta1_cluster, name)
    v1beta1_cluster("delete", "namespace", name, "--wait=false")


def overridden(obj: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["annotations"] = {kinds.ANNOTATION_NETWORK_POLICY: json.dumps(policy)}
    return in_version(obj, V1BETA1)


def test_only_v1beta1_is_served(cluster: Cluster) -> None:
    served = cluster.kube.ok("api-versions").split()
    assert "extensions.agents.x-k8s.io/v1beta1" in served
    assert "extensions.agents.x-k8s.io/v1alpha1" not in served


@pytest.mark.parametrize(
    ("build", "resource"),
    [(sandbox, SANDBOXES), (sandbox_claim, CLAIMS)],
    ids=["Sandbox", "SandboxClaim"],
)
def test_a_bad_override_on_a_v1beta1_object_is_refused_and_a_good_one_admitted(
    cluster: Cluster, build: Any, resource: str
) -> None:
    kube, ns = cluster.kube, cluster.namespace
    bad = overridden(build("bad-1", ns), HOST_BITS_SET)
    result = kube("create", "-f", "-", *AGENTCUBE_SA, input=as_json(bad))
    assert result.returncode != 0
    assert 'admission webhook "overrides.netpol.agentcube.io" denied the request' in result.stderr
    assert f"{OVERRIDE_AT}: must be a canonical CIDR" in result.stderr
    assert not_found(kube, resource, "bad-1", "-n", ns)

    good = overridden(build("good-1", ns), RESTRICTED)
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE_SA, input=as_json(good))
    )
    assert created["apiVersion"].endswith("/v1beta1")
    assert json.loads(created["metadata"]["annotations"][kinds.ANNOTATION_NETWORK_POLICY]) == (
        RESTRICTED
    )


def test_a_v1beta1_claim_naming_its_warm_pool_is_admitted_as_it_was_written(
    cluster: Cluster,
) -> None:
    """serve has no cluster view of the allow-list, so "auto" leaves a v1beta1 claim alone:
    v0.5+'s default allow-list refuses our label (the pod webhook labels the pod instead)."""
    claim = in_version(sandbox_claim("s-1", cluster.namespace, template="py"), V1BETA1)
    created = json.loads(
        cluster.kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE_SA, input=as_json(claim))
    )
    assert created["spec"] == {"warmPoolRef": {"name": "py"}}


def test_a_tenant_may_not_set_the_override_on_a_v1beta1_claim(cluster: Cluster) -> None:
    claim = overridden(sandbox_claim("s-2", cluster.namespace), RESTRICTED)
    result = cluster.kube("create", "-f", "-", "--as=alice", input=as_json(claim))
    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    assert "metadata.annotations[runtime.agentcube.io/network-policy]: only group" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"sandboxTemplateRef": {"name": "py"}}, "spec.sandboxTemplateRef"), ({}, "spec.warmPoolRef")],
    ids=["v1alpha1-reference", "no-reference"],
)
def test_the_api_server_refuses_the_claims_check_refuses_at_the_same_field(
    cluster: Cluster, spec: dict[str, Any], field: str
) -> None:
    """A v1beta1 claim naming its template the v1alpha1 way, or nothing: refused by v1.0.1's
    schema (before our webhook sees it); offline, ``check`` names the same field."""
    claim = in_version(sandbox_claim("s-3", cluster.namespace), V1BETA1)
    claim["spec"] = spec
    result = cluster.kube("create", "-f", "-", *AGENTCUBE_SA, input=as_json(claim))
    assert result.returncode != 0
    assert field in result.stderr
    offline = validate_object(claim, settings=Settings())
    assert offline.errors and offline.errors[0].startswith(field), offline


def test_the_template_and_pool_builders_make_are_v1_0_1_objects(cluster: Cluster) -> None:
    """What the unit tiers feed the widening check as v1beta1 is what v1.0.1 stores."""
    objects = [
        in_version(sandbox_template("py", cluster.namespace), V1BETA1),
        in_version(sandbox_warm_pool("py", cluster.namespace), V1BETA1),
    ]
    cluster.kube.ok("create", "-f", "-", input=as_json(*objects))
    stored = cluster.kube.get("sandboxtemplate", "py", "-n", cluster.namespace)
    assert stored["spec"]["networkPolicyManagement"] == "Unmanaged"


def test_the_v1beta1_examples_are_what_v1_0_1_accepts(cluster: Cluster) -> None:
    """examples/dev/v1beta1/ as the API server of a v1.0.1 cluster reads it (server-side dry
    run: every admission webhook and the CRD schema, nothing stored)."""
    files = sorted((EXAMPLES / "dev" / "v1beta1").glob("*.yaml"))
    assert [f.name for f in files] == ["session.yaml", "warm-pool.yaml"]
    for path in files:
        result = cluster.kube("apply", "--dry-run=server", "-f", str(path))
        assert result.returncode == 0, result.stderr
        assert "(server dry run)" in result.stdout
