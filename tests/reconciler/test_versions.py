"""agent-sandbox's versions: which one is watched, and v1beta1 claims on the warm path."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reconciler.objects import NS, SETTINGS, claim, interpreter, pod, view
from webhook.api import kinds
from webhook.reconciler.caches import slim_claim, slim_sandbox
from webhook.reconciler.plan import ReconcileRequest, plan
from webhook.reconciler.sandboxes import claim_template_name, sandbox_names_for

ALL = ("sandboxes", "sandboxtemplates", "sandboxclaims", "sandboxwarmpools")
V1ALPHA1 = {
    "agents.x-k8s.io/v1alpha1": {"sandboxes"},
    "extensions.agents.x-k8s.io/v1alpha1": set(ALL[1:]),
}
V1BETA1 = {
    "agents.x-k8s.io/v1beta1": {"sandboxes"},
    "extensions.agents.x-k8s.io/v1beta1": set(ALL[1:]),
}


def versions_of(chosen: dict[kinds.Kind, kinds.Kind]) -> dict[str, str]:
    return {kind.plural: kind.version for kind in chosen.values()}


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (V1ALPHA1, "v1alpha1"),  # agent-sandbox v0.4
        ({**V1ALPHA1, **V1BETA1}, "v1beta1"),  # v0.5: v1alpha1 only through conversion
        (V1BETA1, "v1beta1"),  # v1.0
    ],
)
def test_the_served_version_is_watched_v1beta1_first(
    served: dict[str, set[str]], expected: str
) -> None:
    assert versions_of(kinds.served_kinds(served)) == dict.fromkeys(ALL, expected)


def test_a_kind_served_in_no_known_version_is_left_out() -> None:
    served = {"agents.x-k8s.io/v1beta1": {"sandboxes"}, "agents.x-k8s.io/v2": {"sandboxclaims"}}
    assert versions_of(kinds.served_kinds(served)) == {"sandboxes": "v1beta1"}


def test_the_same_kind_in_another_version_is_the_same_kind() -> None:
    [beta] = kinds.served_kinds({"agents.x-k8s.io/v1beta1": {"sandboxes"}}).values()
    assert beta == kinds.SANDBOX
    assert beta.api_version == "agents.x-k8s.io/v1beta1"
    assert {kinds.SANDBOX: "found"}[beta] == "found"


def v1beta1_claim(name: str = "py-claim0001", pool: str = "py") -> dict[str, Any]:
    out = claim(name)
    out["apiVersion"] = "extensions.agents.x-k8s.io/v1beta1"
    out["spec"] = {"warmPoolRef": {"name": pool}}
    return out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"sandboxTemplateRef": {"name": "py"}}, "py"),  # v1alpha1
        ({"warmPoolRef": {"name": "py"}}, "py"),  # v1beta1: the pool AgentCube names after it
        ({"sandboxTemplateRef": {"name": "py"}, "warmPoolRef": {"name": "other"}}, "py"),
        ({"warmPoolRef": {}}, None),
        ({}, None),
    ],
)
def test_the_claims_code_interpreter_comes_from_its_spec(
    spec: dict[str, Any], expected: str | None
) -> None:
    assert claim_template_name({"metadata": {"name": "c"}, "spec": spec}) == expected


def test_the_owner_reference_does_not_decide_the_code_interpreter() -> None:
    the_claim = v1beta1_claim(pool="py")
    the_claim["metadata"]["ownerReferences"] = [
        {"apiVersion": kinds.CODE_INTERPRETER.api_version, "kind": "CodeInterpreter",
         "name": "loose", "uid": "uid-loose", "controller": True}
    ]  # fmt: skip
    assert claim_template_name(the_claim) == "py"


def test_a_v1beta1_claim_gets_its_policy_owned_in_the_version_it_was_read_in() -> None:
    the_claim = slim_claim(v1beta1_claim())
    claimed = pod("py-pool-x1", {kinds.LABEL_CLAIM_UID: "uid-py-claim0001"}, owner="py-pool-x1")
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(interpreters=[interpreter(warm=2)], claims=[the_claim], pods=[claimed]),
        SETTINGS,
    )
    assert result.write == "create"
    [owner, pod_owner] = result.desired["metadata"]["ownerReferences"]
    assert (pod_owner["kind"], pod_owner["name"]) == ("Pod", "py-pool-x1")
    assert (owner["apiVersion"], owner["kind"], owner["name"]) == (
        "extensions.agents.x-k8s.io/v1beta1",
        "SandboxClaim",
        "py-claim0001",
    )
    assert [p.name for p in result.label_pods] == ["py-pool-x1"]


def test_a_v1beta1_claimed_pod_without_claim_uid_is_found_through_the_adopted_sandbox() -> None:
    # agent-sandbox v0.5.x may leave agents.x-k8s.io/claim-uid off the claimed pod.
    the_claim = v1beta1_claim()
    the_claim["status"] = {"sandbox": {"name": "py-pool-x1"}}
    claimed = pod("py-pool-x1", {"app": "x"}, owner="py-pool-x1")
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(interpreters=[interpreter(warm=2)], claims=[slim_claim(the_claim)], pods=[claimed]),
        SETTINGS,
    )
    assert result.write == "create"
    assert [p.name for p in result.label_pods] == ["py-pool-x1"]


def test_a_code_interpreter_change_reaches_its_v1beta1_claims() -> None:
    the_view = view(interpreters=[interpreter(warm=2)], claims=[slim_claim(v1beta1_claim())])
    assert sandbox_names_for(kinds.CODE_INTERPRETER, interpreter(), the_view) == ["py-claim0001"]


def test_the_caches_keep_the_version_objects_were_served_in() -> None:
    sandbox = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {}}
    assert slim_sandbox(sandbox)["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert slim_claim(v1beta1_claim())["spec"] == {"warmPoolRef": {"name": "py"}}


def test_a_change_of_an_unlabelled_claimed_pod_reaches_its_claim_through_its_sandbox() -> None:
    # v0.5.x: no claim-uid on the pod, and (allow-list) no sandbox-name label either.
    adopted = {
        "metadata": {
            "name": "py-pool-x1",
            "namespace": NS,
            "uid": "uid-py-pool-x1",
            "labels": {kinds.LABEL_TEMPLATE_REF_HASH: "5769833c"},
            "ownerReferences": [
                {
                    "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
                    "kind": "SandboxClaim",
                    "name": "py-claim0001",
                    "uid": "uid-py-claim0001",
                    "controller": True,
                }
            ],
        }
    }
    claimed = pod("py-pool-x1", {kinds.LABEL_TEMPLATE_REF_HASH: "5769833c"}, owner="py-pool-x1")
    the_view = view(sandboxes=[adopted], claims=[slim_claim(v1beta1_claim())], pods=[claimed])
    assert sandbox_names_for(kinds.POD, claimed, the_view) == ["py-claim0001"]
    unclaimed = pod("py-pool-x2", {kinds.LABEL_TEMPLATE_REF_HASH: "5769833c"}, owner="py-pool-x2")
    assert sandbox_names_for(kinds.POD, unclaimed, the_view) == []
