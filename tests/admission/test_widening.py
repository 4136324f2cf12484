"""A NetworkPolicy or SandboxTemplate that would loosen a sandbox: warned, or with
--deny-widening refused, at admission; decided from the reconciler's caches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.builders import AGENT_SANDBOX_VERSIONS, admission_request, in_version, sandbox_template
from webhook.admission.decide import validate
from webhook.api import kinds
from webhook.api.settings import Settings

SANDBOX_POD = {
    "metadata": {
        "name": "py-abcd1234",
        "labels": {kinds.LABEL_SANDBOX_NAME: "py-abcd1234", "app": "py"},
    }
}


@dataclass
class Sandboxes:
    pods: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    warm_pools: set[tuple[str, str]] = field(default_factory=set)

    def sandbox_pods(self, namespace: str) -> list[Mapping[str, Any]]:
        return self.pods.get(namespace, [])

    def isolated_warm_pool(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.warm_pools


CLUSTER = Sandboxes(pods={"team-a": [SANDBOX_POD]}, warm_pools={("team-a", "py")})


def policy(selector: dict[str, Any], *, managed: bool = False) -> dict[str, Any]:
    labels = {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY_VALUE} if managed else {}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "tenant", "namespace": "team-a", "labels": labels},
        "spec": {"podSelector": selector, "egress": [{}], "policyTypes": ["Egress"]},
    }


def template(management: str | None, version: str = "v1alpha1") -> dict[str, Any]:
    return in_version(sandbox_template("py", "team-a", management=management), version)


def decide(obj: dict[str, Any], kind: kinds.Kind, *, deny: bool = False) -> dict[str, Any]:
    request = admission_request(obj, kind=kind)
    return dict(validate(request, settings=Settings(deny_widening=deny), sandboxes=CLUSTER))


@pytest.mark.parametrize(
    "selector",
    [
        {},
        {"matchLabels": {"app": "py"}},
        {"matchExpressions": [{"key": kinds.LABEL_SANDBOX_NAME, "operator": "Exists"}]},
    ],
)
def test_a_tenant_policy_selecting_a_sandbox_pod_is_warned_naming_the_pod(
    selector: dict[str, Any],
) -> None:
    answer = decide(policy(selector), kinds.NETWORK_POLICY)
    assert answer["allowed"] is True
    [warning] = answer["warnings"]
    assert (
        warning
        == "spec.podSelector: selects sandbox pod py-abcd1234; its rules loosen their isolation"
    )


def test_with_deny_widening_it_is_refused() -> None:
    answer = decide(policy({}), kinds.NETWORK_POLICY, deny=True)
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert answer["status"]["message"].startswith(
        'NetworkPolicy "tenant" is forbidden: spec.podSelector'
    )


@pytest.mark.parametrize(
    "obj",
    [policy({"matchLabels": {"app": "web"}}), policy({}, managed=True)],
    ids=["selects no sandbox pod", "our own"],
)
def test_policies_that_select_no_sandbox_pod_or_are_ours_pass_silently(obj: dict[str, Any]) -> None:
    answer = decide(obj, kinds.NETWORK_POLICY, deny=True)
    assert answer["allowed"] is True and not answer.get("warnings")


def test_without_the_reconcilers_caches_nothing_is_known_and_nothing_is_said() -> None:
    answer = validate(
        admission_request(policy({}), kind=kinds.NETWORK_POLICY),
        settings=Settings(deny_widening=True),
    )
    assert answer["allowed"] is True and not answer.get("warnings")


@pytest.mark.parametrize("version", AGENT_SANDBOX_VERSIONS)
@pytest.mark.parametrize(
    ("management", "warned"), [(None, True), ("Managed", True), ("Unmanaged", False)]
)
def test_a_managed_sandbox_template_of_an_isolated_warm_pool_is_warned(
    management: str | None, warned: bool, version: str
) -> None:
    answer = decide(template(management, version), kinds.SANDBOX_TEMPLATE)
    assert answer["allowed"] is True
    assert bool(answer.get("warnings")) is warned
    if warned:
        assert answer["warnings"] == [
            f"spec.networkPolicyManagement: {management or 'Managed (default)'} adds "
            "agent-sandbox's policy to every session; set Unmanaged"
        ]
    elsewhere = template(management, version)
    elsewhere["metadata"]["name"] = "not-isolated"
    assert not decide(elsewhere, kinds.SANDBOX_TEMPLATE).get("warnings")


@pytest.mark.parametrize("version", AGENT_SANDBOX_VERSIONS)
def test_a_managed_sandbox_template_with_its_own_rules_is_refused_with_deny_widening(
    version: str,
) -> None:
    """agent-sandbox's own policy (spec.networkPolicy, allowed when Managed) would add its
    rules to every claimed pod of the warm pool: refused with --deny-widening, in either
    version's shape."""
    obj = template("Managed", version)
    obj["spec"]["networkPolicy"] = {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}
    answer = decide(obj, kinds.SANDBOX_TEMPLATE, deny=True)
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert answer["status"]["message"] == (
        'SandboxTemplate "py" is forbidden: spec.networkPolicyManagement: Managed adds '
        "agent-sandbox's policy to every session; set Unmanaged"
    )
    obj["spec"]["networkPolicyManagement"] = "Unmanaged"
    assert decide(obj, kinds.SANDBOX_TEMPLATE, deny=True)["allowed"] is True
