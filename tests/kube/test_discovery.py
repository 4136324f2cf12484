"""Discovery of the versions agent-sandbox's kinds are served in."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.discovery import discover_kinds, resolve_claim_label_injection, served_resources


class DiscoveryRest:
    """Answers discovery for the group versions given, 404 for every other."""

    def __init__(self, documents: dict[str, list[str]]) -> None:
        self.documents = documents
        self.asked: list[str] = []

    def api_resources(self, group_version: str) -> dict[str, Any]:
        self.asked.append(group_version)
        if group_version not in self.documents:
            raise errors.NotFound(f"{group_version} is not served")
        return {
            "kind": "APIResourceList",
            "groupVersion": group_version,
            "resources": [{"name": name} for name in self.documents[group_version]],
        }


V1_0 = {
    "agents.x-k8s.io/v1beta1": ["sandboxes", "sandboxes/status"],
    "extensions.agents.x-k8s.io/v1beta1": [
        "sandboxclaims",
        "sandboxclaims/status",
        "sandboxtemplates",
        "sandboxwarmpools",
    ],
}


def test_subresources_are_not_resources() -> None:
    served = served_resources(DiscoveryRest(V1_0))  # type: ignore[arg-type]
    assert served == {
        "agents.x-k8s.io/v1beta1": {"sandboxes"},
        "extensions.agents.x-k8s.io/v1beta1": {
            "sandboxclaims",
            "sandboxtemplates",
            "sandboxwarmpools",
        },
    }


def test_a_v1beta1_only_cluster_is_watched_in_v1beta1() -> None:
    resolved = discover_kinds(DiscoveryRest(V1_0))  # type: ignore[arg-type]
    assert {kind.version for kind in resolved.values()} == {"v1beta1"}
    assert resolved[kinds.SANDBOX_CLAIM].api_version == "extensions.agents.x-k8s.io/v1beta1"


def test_a_cluster_without_agent_sandbox_keeps_the_v1alpha1_constants() -> None:
    resolved = discover_kinds(DiscoveryRest({}))  # type: ignore[arg-type]
    assert [kind.version for kind in resolved.values()] == ["v1alpha1"] * 4


class ClusterRest(DiscoveryRest):
    """Discovery, and agent-sandbox's ConfigMap when given."""

    def __init__(self, documents: dict[str, list[str]], allow_list: str | None) -> None:
        super().__init__(documents)
        self.allow_list = allow_list

    def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any]:
        assert (kind, namespace, name) == (
            kinds.CONFIG_MAP,
            "agent-sandbox-system",
            "agent-sandbox-config",
        )
        if self.allow_list is None:
            raise errors.NotFound("configmaps agent-sandbox-config not found")
        return {"data": {"allowed-label-domains": self.allow_list}}


V0_4 = {
    "agents.x-k8s.io/v1alpha1": ["sandboxes"],
    "extensions.agents.x-k8s.io/v1alpha1": [
        "sandboxclaims",
        "sandboxtemplates",
        "sandboxwarmpools",
    ],
}


@pytest.mark.parametrize(
    ("documents", "allow_list", "resolved"),
    [
        (V0_4, None, "on"),  # v0.4: no allow-list
        (V1_0, None, "off"),  # v0.5+ without the ConfigMap: sandbox.users.io only
        (V1_0, "sandbox.users.io", "off"),
        (V1_0, "sandbox.users.io,runtime.agentcube.io", "on"),
    ],
)
def test_auto_is_resolved_against_the_cluster(
    documents: dict[str, list[str]],
    allow_list: str | None,
    resolved: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.kube.discovery")
    rest = ClusterRest(documents, allow_list)
    settings = resolve_claim_label_injection(Settings(), rest)  # type: ignore[arg-type]
    assert settings.claim_label_injection == resolved
    assert f"claim label injection {resolved}" in caplog.text


def test_an_explicit_setting_is_kept_and_said() -> None:
    rest = ClusterRest(V1_0, None)
    settings = resolve_claim_label_injection(Settings(claim_label_injection="on"), rest)  # type: ignore[arg-type]
    assert settings.claim_label_injection == "on"
