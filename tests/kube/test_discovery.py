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


# --- asked again --------------------------------------------------------------------------------


def test_version_changes_name_each_kind_that_moved() -> None:
    v0_4 = kinds.versions_in_use(kinds.served_kinds({"agents.x-k8s.io/v1alpha1": ["sandboxes"]}))
    v1_0 = kinds.versions_in_use(
        kinds.served_kinds({k: set(v) for k, v in V1_0.items() if "/" in k})
    )
    assert kinds.version_changes(v0_4, v0_4) == []
    assert kinds.version_changes(v0_4, v1_0) == [
        "Sandbox v1alpha1 -> v1beta1",
        "SandboxTemplate v1alpha1 -> v1beta1",
        "SandboxClaim v1alpha1 -> v1beta1",
        "SandboxWarmPool v1alpha1 -> v1beta1",
    ]


def _rediscovery(
    rest: DiscoveryRest, in_use: dict[str, list[str]], settings: Settings | None = None
) -> tuple[Any, list[list[str]], list[Settings]]:
    from webhook.kube.discovery import Rediscovery

    settings = settings or Settings()
    changed: list[list[str]] = []
    flipped: list[Settings] = []
    rediscovery = Rediscovery(
        rest,  # type: ignore[arg-type]
        in_use=discover_kinds(DiscoveryRest(in_use)),  # type: ignore[arg-type]
        settings=resolve_claim_label_injection(settings, rest),  # type: ignore[arg-type]
        configured=settings.claim_label_injection,
        on_versions_changed=changed.append,
        on_settings_changed=flipped.append,
    )
    return rediscovery, changed, flipped


def test_an_upgrade_to_v1beta1_is_acted_on_once_two_checks_agree() -> None:
    rest = ClusterRest(V0_4, None)
    rediscovery, changed, _ = _rediscovery(rest, V0_4)
    assert rediscovery.check() is False
    assert changed == []
    rest.documents = {}  # the old CRDs deleted, the new ones not there yet
    assert rediscovery.check() is False
    rest.documents = V1_0
    assert rediscovery.check() is False  # seen once
    assert changed == []
    assert rediscovery.check() is True
    assert changed == [[f"{k} v1alpha1 -> v1beta1" for k in (
        "Sandbox", "SandboxTemplate", "SandboxClaim", "SandboxWarmPool")]]  # fmt: skip


def test_crds_that_come_back_as_they_were_change_nothing() -> None:
    rest = ClusterRest(V1_0, None)
    rediscovery, changed, _ = _rediscovery(rest, V1_0)
    rest.documents = {}
    assert rediscovery.check() is False
    rest.documents = V1_0
    assert rediscovery.check() is False
    assert rediscovery.check() is False
    assert changed == []


def test_agent_sandbox_installed_after_us_is_a_change() -> None:
    rest = ClusterRest({}, None)
    rediscovery, changed, _ = _rediscovery(rest, {})
    rest.documents = V1_0
    assert [rediscovery.check(), rediscovery.check()] == [False, True]
    assert "SandboxClaim v1alpha1 -> v1beta1" in changed[0]


def test_the_allow_list_flips_auto_in_place_and_an_explicit_setting_never() -> None:
    rest = ClusterRest(V1_0, None)
    rediscovery, changed, flipped = _rediscovery(rest, V1_0)
    assert rediscovery.settings.claim_label_injection == "off"
    rediscovery.check()
    assert flipped == []
    rest.allow_list = "sandbox.users.io,runtime.agentcube.io"
    rediscovery.check()
    assert [s.claim_label_injection for s in flipped] == ["on"]
    rest.allow_list = None  # the ConfigMap deleted: the default list
    rediscovery.check()
    assert [s.claim_label_injection for s in flipped] == ["on", "off"]
    assert changed == []

    explicit, _, flipped = _rediscovery(rest, V1_0, Settings(claim_label_injection="off"))
    rest.allow_list = "runtime.agentcube.io"
    explicit.check()
    assert flipped == []


def test_an_unreadable_allow_list_keeps_what_is_in_use() -> None:
    rest = ClusterRest(V1_0, "runtime.agentcube.io")
    rediscovery, _, flipped = _rediscovery(rest, V1_0)
    assert rediscovery.settings.claim_label_injection == "on"

    def forbidden(*args: Any) -> dict[str, Any]:
        raise errors.ApiError("forbidden", status=403)

    rest.get = forbidden  # type: ignore[method-assign]
    rediscovery.check()
    assert flipped == []
    assert rediscovery.settings.claim_label_injection == "on"


def test_auto_is_off_when_discovery_fails_at_start(caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(DiscoveryRest):
        def api_resources(self, group_version: str) -> dict[str, Any]:
            raise errors.ApiError(
                "the server is currently unable to handle the request", status=503
            )

    settings = resolve_claim_label_injection(Settings(), Refusing({}))  # type: ignore[arg-type]
    assert settings.claim_label_injection == "off"
    assert "could not be discovered" in caplog.text
