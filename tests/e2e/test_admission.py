"""Admission through the real API server and the real kubectl, as a user sees it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane

from tests import FIXTURES
from tests.builders import (
    agent_runtime,
    code_interpreter,
    sandbox,
    sandbox_claim,
    sandbox_pod,
)
from tests.e2e.harness import Kubectl, as_json
from webhook.api import kinds
from webhook.cli.offline import load_objects

pytestmark = pytest.mark.usefixtures("webhook_configurations")

CI = f"{kinds.CODE_INTERPRETER.plural}.{kinds.CODE_INTERPRETER.group}"
AR = f"{kinds.AGENT_RUNTIME.plural}.{kinds.AGENT_RUNTIME.group}"
CLAIMS = f"{kinds.SANDBOX_CLAIM.plural}.{kinds.SANDBOX_CLAIM.group}"
SANDBOXES = f"{kinds.SANDBOX.plural}.{kinds.SANDBOX.group}"
# Impersonating AgentCube's workload manager, which the default settings allow to set
# overrides and sandbox-name labels.
AGENTCUBE_SA = (
    "--as=system:serviceaccount:agentcube:workloadmanager",
    "--as-group=system:serviceaccounts",
    "--as-group=system:serviceaccounts:agentcube",
)

HOST_BITS_SET = {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
RESTRICTED = {
    "mode": "Restricted",
    "ingress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 8080}]}],
    "egress": [
        {
            "cidrs": ["0.0.0.0/0"],
            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
            "ports": [
                {"protocol": "TCP", "port": 443},
                {"protocol": "TCP", "port": 8000, "endPort": 8100},
            ],
        }
    ],
}
CUSTOM = {
    "mode": "Custom",
    "custom": {
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"protocol": "TCP", "port": "http"}],
            }
        ],
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "team", "operator": "In", "values": ["a", "b"]}
                            ]
                        }
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        ],
    },
}


def not_found(kubectl: Kubectl, *args: str) -> bool:
    result = kubectl("get", *args)
    return result.returncode != 0 and "NotFound" in result.stderr


def test_bad_template_is_refused_with_the_field_path_and_not_stored(
    kubectl: Kubectl, namespace: str
) -> None:
    result = kubectl(
        "apply", "-f", "-", input=as_json(code_interpreter("bad", namespace, HOST_BITS_SET))
    )

    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert "spec.template.networkPolicy.egress[0].cidrs[0]" in result.stderr
    assert '"10.0.0.0/8"' in result.stderr  # the suggestion
    assert not_found(kubectl, CI, "bad", "-n", namespace)


def test_every_error_is_reported_at_once(kubectl: Kubectl, namespace: str) -> None:
    policy = {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.8.0.0/33"]}],
        "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": 70000}]}],
    }
    result = kubectl("apply", "-f", "-", input=as_json(agent_runtime("bad", namespace, policy)))

    assert result.returncode != 0
    assert "spec.podTemplate.networkPolicy.ingress[0].cidrs[0]" in result.stderr
    assert "spec.podTemplate.networkPolicy.egress[0].ports[0].port" in result.stderr


def test_mode_typo_names_the_right_mode(kubectl: Kubectl, namespace: str) -> None:
    result = kubectl(
        "apply",
        "-f",
        "-",
        input=as_json(code_interpreter("typo", namespace, {"mode": "restricted"})),
    )
    assert result.returncode != 0
    assert "spec.template.networkPolicy.mode" in result.stderr
    assert "Restricted" in result.stderr


def test_server_dry_run_gets_the_same_verdict_and_stores_nothing(
    kubectl: Kubectl, namespace: str
) -> None:
    """The decisions never read dryRun (they have no side effects), so what this guards is the
    API server calling both webhooks on a dry run at all, as installed (sideEffects,
    matchConditions, rules): if it did not, the bad template would pass and the claim would
    come back without the label."""
    bad = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=as_json(code_interpreter("bad", namespace, HOST_BITS_SET)),
    )
    assert bad.returncode != 0
    assert "spec.template.networkPolicy.egress[0].cidrs[0]" in bad.stderr

    good = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=as_json(code_interpreter("good", namespace, RESTRICTED)),
    )
    assert good.returncode == 0, good.stderr
    assert "(server dry run)" in good.stdout
    assert not_found(kubectl, CI, "good", "-n", namespace)

    claim = sandbox_claim("dry-claim", namespace)
    patched = json.loads(
        kubectl.ok("create", "--dry-run=server", "-o", "json", "-f", "-", input=as_json(claim))
    )
    labels = patched["spec"]["additionalPodMetadata"]["labels"]
    assert labels == {kinds.LABEL_SANDBOX_NAME: "dry-claim"}
    claims = f"{kinds.SANDBOX_CLAIM.plural}.{kinds.SANDBOX_CLAIM.group}"
    assert not_found(kubectl, claims, "dry-claim", "-n", namespace)


def test_warnings_are_shown_by_kubectl_and_the_object_is_stored(
    kubectl: Kubectl, namespace: str
) -> None:
    everywhere = {"mode": "Restricted", "egress": [{"cidrs": ["0.0.0.0/0"]}]}

    result = kubectl(
        "apply", "-f", "-", input=as_json(code_interpreter("open", namespace, everywhere))
    )

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any("169.254.169.254" in line for line in warnings), result.stderr
    assert any("spec.template.networkPolicy.egress[0]" in line for line in warnings)
    assert kubectl.get(CI, "open", "-n", namespace)["metadata"]["name"] == "open"


@pytest.mark.parametrize(
    ("make", "path", "policy"),
    [
        (code_interpreter, ("spec", "template", "networkPolicy"), RESTRICTED),
        (agent_runtime, ("spec", "podTemplate", "networkPolicy"), RESTRICTED),
        (code_interpreter, ("spec", "template", "networkPolicy"), CUSTOM),
        (agent_runtime, ("spec", "podTemplate", "networkPolicy"), CUSTOM),
    ],
    ids=["codeinterpreter-restricted", "agentruntime-restricted", "codeinterpreter-custom",
         "agentruntime-custom"],
)  # fmt: skip
def test_network_policy_field_survives_storage(
    kubectl: Kubectl,
    namespace: str,
    make: Any,
    path: tuple[str, ...],
    policy: dict[str, Any],
) -> None:
    obj = make("kept", namespace, policy)
    kubectl.ok("apply", "-f", "-", input=as_json(obj))

    stored: Any = kubectl.get(f"{obj['kind'].lower()}", "kept", "-n", namespace)
    for key in path:
        stored = stored[key]
    assert stored == policy


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({kinds.LABEL_SANDBOX_NAME: "session-sbx-1"}, "session-sbx-1"),
        ({}, "claim-a"),
    ],
    ids=["from-the-label", "from-the-name"],
)
def test_sandbox_claim_is_stored_with_the_injected_pod_label(
    kubectl: Kubectl, namespace: str, labels: dict[str, str], expected: str
) -> None:
    claim = sandbox_claim("claim-a", namespace, labels=labels)
    claim["spec"]["additionalPodMetadata"] = {"labels": {"team": "a"}}

    kubectl.ok("create", "-f", "-", input=as_json(claim))

    stored = kubectl.get(CLAIMS, "claim-a", "-n", namespace)
    assert stored["spec"]["additionalPodMetadata"]["labels"] == {
        "team": "a",
        kinds.LABEL_SANDBOX_NAME: expected,
    }


def grant_tenant(kubectl: Kubectl, namespace: str, *, resource: str, group: str) -> None:
    kubectl.ok(
        "create", "role", f"edit-{resource}", "--verb=get,list,update,patch",
        f"--resource={resource}", "-n", namespace,
    )  # fmt: skip
    kubectl.ok(
        "create", "rolebinding", f"{group}-edit-{resource}", f"--role=edit-{resource}",
        f"--group={group}", "-n", namespace,
    )  # fmt: skip


@pytest.fixture
def tenant(control_plane: ControlPlane) -> Path:
    return control_plane.mint_user("tenant-alice", groups=["tenants"])


def test_tenant_cannot_strip_or_change_a_pods_sandbox_name_label(
    kubectl: Kubectl, namespace: str, tenant: Path
) -> None:
    labels = {kinds.LABEL_SANDBOX_NAME: "sbx-1", "app": "demo"}
    kubectl.ok("create", "-f", "-", input=as_json(sandbox_pod("sbx-1", namespace, labels=labels)))
    grant_tenant(kubectl, namespace, resource="pods", group="tenants")

    # RBAC lets the tenant edit the pod's labels...
    kubectl.ok("label", "pod", "sbx-1", "-n", namespace, "app=other", "--overwrite", user=tenant)
    # ...but not the one its NetworkPolicy selects on.
    stripped = kubectl(
        "label", "pod", "sbx-1", "-n", namespace, f"{kinds.LABEL_SANDBOX_NAME}-", user=tenant
    )
    changed = kubectl(
        "label", "pod", "sbx-1", "-n", namespace, f"{kinds.LABEL_SANDBOX_NAME}=other",
        "--overwrite", user=tenant,
    )  # fmt: skip

    for result in (stripped, changed):
        assert result.returncode != 0
        assert "denied the request" in result.stderr
        assert f"metadata.labels[{kinds.LABEL_SANDBOX_NAME}]" in result.stderr
        assert "tenant-alice" in result.stderr
    pod = kubectl.get("pod", "sbx-1", "-n", namespace)
    assert pod["metadata"]["labels"] == {kinds.LABEL_SANDBOX_NAME: "sbx-1", "app": "other"}


def test_impersonated_agentcube_service_account_may_relabel_a_pod(
    kubectl: Kubectl, namespace: str
) -> None:
    labels = {kinds.LABEL_SANDBOX_NAME: "sbx-2"}
    kubectl.ok("create", "-f", "-", input=as_json(sandbox_pod("sbx-2", namespace, labels=labels)))
    grant_tenant(kubectl, namespace, resource="pods", group="system:serviceaccounts:agentcube")

    kubectl.ok(
        "label", "pod", "sbx-2", "-n", namespace, f"{kinds.LABEL_SANDBOX_NAME}=sbx-2b",
        "--overwrite", *AGENTCUBE_SA,
    )  # fmt: skip

    pod = kubectl.get("pod", "sbx-2", "-n", namespace)
    assert pod["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME] == "sbx-2b"


def test_tenant_cannot_set_the_override_annotation(
    kubectl: Kubectl, namespace: str, tenant: Path
) -> None:
    kubectl.ok("create", "-f", "-", input=as_json(sandbox("sbx-3", namespace)))
    grant_tenant(kubectl, namespace, resource=SANDBOXES, group="tenants")
    assert_override_denied(kubectl, namespace, "sbx-3", tenant)


def assert_override_denied(kubectl: Kubectl, namespace: str, name: str, user: Path) -> None:
    """``user`` sets an override (mode None) on Sandbox ``name``: denied, none stored."""
    result = kubectl(
        "annotate", SANDBOXES, name, "-n", namespace,
        f"{kinds.ANNOTATION_NETWORK_POLICY}={json.dumps({'mode': 'None'})}", user=user,
    )  # fmt: skip

    assert result.returncode != 0
    assert f"metadata.annotations[{kinds.ANNOTATION_NETWORK_POLICY}]" in result.stderr
    stored = kubectl.get(SANDBOXES, name, "-n", namespace)
    assert kinds.ANNOTATION_NETWORK_POLICY not in (stored["metadata"].get("annotations") or {})


def test_agentcube_may_set_an_override_but_only_a_valid_one(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.ok("create", "-f", "-", input=as_json(sandbox("sbx-4", namespace)))
    grant_tenant(kubectl, namespace, resource=SANDBOXES, group="system:serviceaccounts:agentcube")
    bad = json.dumps({"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]})
    good = json.dumps({"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"]}]})

    refused = kubectl(
        "annotate", SANDBOXES, "sbx-4", "-n", namespace,
        f"{kinds.ANNOTATION_NETWORK_POLICY}={bad}", *AGENTCUBE_SA,
    )  # fmt: skip
    kubectl.ok(
        "annotate", SANDBOXES, "sbx-4", "-n", namespace,
        f"{kinds.ANNOTATION_NETWORK_POLICY}={good}", *AGENTCUBE_SA,
    )  # fmt: skip

    assert refused.returncode != 0
    assert f"metadata.annotations[{kinds.ANNOTATION_NETWORK_POLICY}]" in refused.stderr
    assert '"10.0.0.0/8"' in refused.stderr
    stored = kubectl.get(SANDBOXES, "sbx-4", "-n", namespace)
    assert stored["metadata"]["annotations"][kinds.ANNOTATION_NETWORK_POLICY] == good


# --- the corpus of invalid templates, as a user applies it -------------------------------------

INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))


def expected_errors(path: Path) -> list[str]:
    return re.findall(r"^# expect-error: (\S+)$", path.read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_each_invalid_fixture_is_refused_by_our_webhook_naming_the_field(
    kubectl: Kubectl, namespace: str, path: Path
) -> None:
    """Refused by the webhook (not earlier by the CRD schema), with every expected field."""
    result = kubectl("apply", "-n", namespace, "-f", str(path))
    assert result.returncode != 0
    assert 'admission webhook "templates.netpol.agentcube.io" denied the request' in (
        result.stderr
    ), result.stderr
    for field in expected_errors(path):
        assert field in result.stderr, result.stderr


def test_every_valid_fixture_is_stored(kubectl: Kubectl, namespace: str) -> None:
    objects = [
        item.obj
        for path in sorted((FIXTURES / "valid").iterdir())
        for item in load_objects(str(path))
    ]
    assert len(objects) == len(list((FIXTURES / "valid").iterdir()))
    refused = []
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        result = kubectl("create", "-f", "-", input=as_json(obj))
        if result.returncode != 0:
            refused.append(result.stderr)
    assert refused == []
