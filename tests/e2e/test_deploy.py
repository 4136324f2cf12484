"""deploy/ against a real kube-apiserver (e2e tier).

What only the API server can tell: the CRDs are valid and keep networkPolicy through
storage, the patch works on a stored CRD, the base applies, the Deployment's pod meets
the namespace's Pod Security level, RBAC grants what it should, and the CEL
matchConditions compile and send a fail-closed webhook only the requests it must see.
For the last, the base is installed as is: its Service has no endpoints, so a request
that reaches a Fail webhook is refused with "failed calling webhook <name>".
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import (
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    install_crds,
)

from tests import builders
from tests.deploy.manifests import (
    CA_SECRET,
    CLAIMS,
    CRDS,
    DEPLOY,
    NAMESPACE,
    OVERRIDES,
    POD_GATES,
    POD_LABELS,
    TEMPLATES,
    Doc,
    only,
    render_base,
    render_cert_manager,
    render_crds,
    root_schema,
    schema_at,
)
from webhook.api import kinds

TEAM = "team-a"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{NAMESPACE}:agentcube-netpol"

NETWORK_POLICY = {
    "mode": "Restricted",
    "ingress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 8080}]}],
    "egress": [
        {
            "cidrs": ["0.0.0.0/0"],
            "except": ["10.0.0.0/8", "169.254.0.0/16"],
            "ports": [{"port": 443}, {"protocol": "TCP", "port": 8000, "endPort": 8100}],
        }
    ],
    "custom": {
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "x"}}}], "ports": [{"port": "http"}]}
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "1.2.3.0/24"}}]}],
    },
}


def policy_of(obj: Doc, kind: str) -> Any:
    node: Any = obj
    for key in kinds.TEMPLATE_POLICY_PATH[kind]:
        node = node.get(key) if isinstance(node, dict) else None
    return node


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    """A control plane of this module's own: the base it installs has fail-closed webhooks
    whose Service has no endpoints, which would refuse the other modules' requests."""
    try:
        binaries = find_binaries(os.environ)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    with ControlPlane(binaries=binaries) as started:
        install_crds(started, CRDS)
        started.kubectl("create", "namespace", TEAM)
        yield started


def apply_json(
    control_plane: ControlPlane, *args: str, obj: Doc
) -> subprocess.CompletedProcess[str]:
    return control_plane.kubectl(*args, "-f", "-", input=json.dumps(obj), check=False)


def read(control_plane: ControlPlane, resource: str, name: str) -> Doc:
    found: Doc = json.loads(
        control_plane.kubectl("get", resource, name, "-n", TEAM, "-o", "json").stdout
    )
    return found


@pytest.fixture(scope="module")
def stored_templates(control_plane: ControlPlane) -> dict[str, Doc]:
    """Templates created and read back before any webhook is installed."""
    stored = {}
    for kind in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER):
        created = apply_json(
            control_plane, "create", obj=builders.template(kind.kind, NETWORK_POLICY, name="t")
        )
        assert created.returncode == 0, created.stderr
        stored[kind.kind] = read(control_plane, f"{kind.plural}.{kind.group}", "t")
    return stored


@pytest.fixture(scope="module")
def installed_base(control_plane: ControlPlane, stored_templates: dict[str, Doc]) -> None:
    control_plane.kubectl("apply", "-k", str(DEPLOY))  # as the README says


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(kinds.TEMPLATE_POLICY_PATH))
def test_api_server_stores_network_policy_whole(
    stored_templates: dict[str, Doc], kind: str
) -> None:
    assert policy_of(stored_templates[kind], kind) == NETWORK_POLICY


@pytest.mark.e2e
def test_patch_adds_network_policy_to_a_stored_crd(
    control_plane: ControlPlane, tmp_path: Path, stored_templates: Doc
) -> None:
    kind = kinds.AGENT_RUNTIME
    crd_name = f"{kind.plural}.{kind.group}"
    without = copy.deepcopy(render_crds()[kind.kind])
    path = kinds.TEMPLATE_POLICY_PATH[kind.kind]
    parent = schema_at(root_schema(without), path[:-1])
    assert parent is not None
    del parent["properties"][path[-1]]
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(without)
    )
    # Without the property a client that does not ask for strict field validation (a
    # controller, say) has the field silently pruned.
    before = apply_json(
        control_plane,
        "create",
        "--dry-run=server",
        "--validate=false",
        "-o",
        "json",
        obj=builders.template(kind.kind, NETWORK_POLICY, name="before-patch"),
    )
    assert before.returncode == 0, before.stderr
    assert policy_of(json.loads(before.stdout), kind.kind) is None
    patch_file = str(CRDS / "patches" / f"{kind.plural}-networkpolicy.yaml")
    for _ in range(2):  # idempotent
        control_plane.kubectl(
            "patch", "crd", crd_name, "--type", "json", "--patch-file", patch_file
        )
    stored = apply_json(
        control_plane,
        "create",
        "--dry-run=server",
        "-o",
        "json",
        obj=builders.template(kind.kind, NETWORK_POLICY, name="after-patch"),
    )
    assert stored.returncode == 0, stored.stderr
    assert policy_of(json.loads(stored.stdout), kind.kind) == NETWORK_POLICY


@pytest.mark.e2e
def test_deployment_pod_meets_the_namespace_pod_security(
    control_plane: ControlPlane, installed_base: None
) -> None:
    template = only(render_base(), "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pss-check", "namespace": NAMESPACE, **template["metadata"]},
        "spec": template["spec"],
    }
    created = apply_json(control_plane, "create", "--dry-run=server", obj=pod)
    assert created.returncode == 0, created.stderr
    # The namespace really enforces "restricted": a plain pod is refused.
    plain = {**pod, "spec": builders.sandbox_pod()["spec"]}
    refused = apply_json(control_plane, "create", "--dry-run=server", obj=plain)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr


@pytest.mark.e2e
def test_cert_manager_overlay_applies(control_plane: ControlPlane) -> None:
    without_cert_manager_kinds = [
        d for d in render_cert_manager() if "cert-manager.io" not in d["apiVersion"]
    ]
    # Client-side, as deploy/README.md applies it (over the base, when the module installed it).
    applied = apply_json(
        control_plane,
        "apply",
        "--dry-run=server",
        obj={"apiVersion": "v1", "kind": "List", "items": without_cert_manager_kinds},
    )
    assert applied.returncode == 0, applied.stderr


SERVICE_ACCOUNT_MAY = [
    ("list", "sandboxes.agents.x-k8s.io", "-A"),
    ("watch", "sandboxclaims.extensions.agents.x-k8s.io", "-A"),
    ("watch", "codeinterpreters.runtime.agentcube.volcano.sh", "-A"),
    ("patch", "pods", "-n", TEAM),
    ("delete", "networkpolicies.networking.k8s.io", "-n", TEAM),
    ("create", "events.events.k8s.io", "-n", TEAM),
    ("update", "leases.coordination.k8s.io", "-n", NAMESPACE),
    ("get", f"secrets/{CA_SECRET}", "-n", NAMESPACE),
    ("patch", "validatingwebhookconfigurations/agentcube-netpol"),
    ("patch", "mutatingwebhookconfigurations/agentcube-netpol"),
    ("update", "sandboxclaims.extensions.agents.x-k8s.io", "--subresource=finalizers", "-n", TEAM),
]
SERVICE_ACCOUNT_MAY_NOT = [
    ("get", "secrets", "-n", TEAM),
    ("get", "secrets/other", "-n", NAMESPACE),
    ("list", "secrets", "-n", NAMESPACE),
    ("delete", "pods", "-n", TEAM),
    ("update", "sandboxes.agents.x-k8s.io", "-n", TEAM),
    ("update", "leases.coordination.k8s.io", "-n", TEAM),
    ("patch", "validatingwebhookconfigurations/someone-else"),
    ("create", "clusterrolebindings"),
]


@pytest.mark.e2e
def test_service_account_permissions(control_plane: ControlPlane, installed_base: None) -> None:
    def can(*args: str) -> bool:
        answer = control_plane.kubectl(
            "auth", "can-i", f"--as={SERVICE_ACCOUNT_USER}", *args, check=False
        )
        return answer.stdout.strip() == "yes"

    assert [args for args in SERVICE_ACCOUNT_MAY if not can(*args)] == []
    assert [args for args in SERVICE_ACCOUNT_MAY_NOT if can(*args)] == []


def called(result: subprocess.CompletedProcess[str]) -> str | None:
    """The fail-closed webhook that refused the request for being unreachable, if any."""
    match = re.search(r'failed calling webhook "([^"]+)"', result.stderr)
    if match:
        return match.group(1)
    assert result.returncode == 0, result.stderr
    return None


@pytest.mark.e2e
def test_fail_closed_webhooks_see_only_what_they_must(
    control_plane: ControlPlane, installed_base: None
) -> None:
    k = control_plane.kubectl
    override = {kinds.ANNOTATION_NETWORK_POLICY: '{"mode": "None"}'}
    sandbox_pod = {kinds.LABEL_SANDBOX_NAME: "s1"}
    seen = {
        "sandbox without override": called(
            apply_json(control_plane, "create", obj=builders.sandbox("s1", TEAM))
        ),
        "sandbox with override": called(
            apply_json(
                control_plane, "create", obj=builders.sandbox("s2", TEAM, annotations=override)
            )
        ),
        "sandbox relabelled": called(k("label", "sandbox", "s1", "-n", TEAM, "x=y", check=False)),
        "sandbox pod created": called(
            apply_json(
                control_plane, "create", obj=builders.sandbox_pod("p0", TEAM, labels=sandbox_pod)
            )
        ),
        "pod created without labels": called(
            apply_json(control_plane, "create", obj=builders.sandbox_pod("p1", TEAM))
        ),
        "pod given a sandbox-name": called(
            k("label", "pod", "p1", "-n", TEAM, f"{kinds.LABEL_SANDBOX_NAME}=s1", check=False)
        ),
        "sandbox pod, other label": called(k("label", "pod", "p1", "-n", TEAM, "x=y", check=False)),
        "sandbox pod, same sandbox-name": called(
            k(
                "label",
                "--overwrite",
                "pod",
                "p1",
                "-n",
                TEAM,
                f"{kinds.LABEL_SANDBOX_NAME}=s1",
                check=False,
            )
        ),
        "sandbox pod, sandbox-name changed": called(
            k(
                "label",
                "--overwrite",
                "pod",
                "p1",
                "-n",
                TEAM,
                f"{kinds.LABEL_SANDBOX_NAME}=other",
                check=False,
            )
        ),
        "sandbox pod, sandbox-name removed": called(
            k("label", "pod", "p1", "-n", TEAM, f"{kinds.LABEL_SANDBOX_NAME}-", check=False)
        ),
        "claimed pod created (fails open)": called(
            apply_json(
                control_plane,
                "create",
                obj=builders.sandbox_pod("p2", TEAM, labels={kinds.LABEL_CLAIM_UID: "u"}),
            )
        ),
        "claim created": called(
            apply_json(
                control_plane,
                "create",
                obj=builders.sandbox_claim("c1", TEAM, template="t"),
            )
        ),
        "template changed": called(
            k(
                "label",
                "codeinterpreters.runtime.agentcube.volcano.sh",
                "t",
                "-n",
                TEAM,
                "x=y",
                check=False,
            )
        ),
        "pod in kube-system": called(
            apply_json(
                control_plane,
                "create",
                "--dry-run=server",
                obj=builders.sandbox_pod("p3", "kube-system", labels={kinds.LABEL_CLAIM_UID: "u"}),
            )
        ),
    }
    assert seen == {
        "sandbox without override": None,
        "sandbox with override": OVERRIDES,
        "sandbox relabelled": None,
        # Gated at creation, or it would run before its NetworkPolicy exists.
        "sandbox pod created": POD_GATES,
        "pod created without labels": None,
        "pod given a sandbox-name": None,
        "sandbox pod, other label": None,
        "sandbox pod, same sandbox-name": None,
        "sandbox pod, sandbox-name changed": POD_LABELS,
        "sandbox pod, sandbox-name removed": POD_LABELS,
        "claimed pod created (fails open)": None,
        "claim created": CLAIMS,
        "template changed": TEMPLATES,
        "pod in kube-system": None,
    }
