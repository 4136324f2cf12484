"""Fixtures shared by the unit tiers: an AdmissionRequest that tests tweak field by field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from webhook.api import kinds
from webhook.api.settings import Settings

AGENTCUBE_SA = {
    "username": "system:serviceaccount:agentcube:workloadmanager",
    "groups": [
        "system:serviceaccounts",
        "system:serviceaccounts:agentcube",
        "system:authenticated",
    ],
}
TENANT = {"username": "alice", "groups": ["tenants", "system:authenticated"]}


def template(
    kind: str, policy: Any, *, name: str = "demo", namespace: str = "team-a"
) -> dict[str, Any]:
    """An AgentRuntime or CodeInterpreter carrying ``policy`` at its networkPolicy path."""
    obj: dict[str, Any] = {
        "apiVersion": kinds.AGENT_RUNTIME.api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }
    if kind == kinds.AGENT_RUNTIME.kind:
        obj["spec"] = {
            "podTemplate": {
                "labels": {"app": "demo"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }
        }
    else:
        obj["spec"] = {"template": {"image": "python:3.12"}, "warmPoolSize": 2}
    if policy is not None:
        parent: dict[str, Any] = obj
        for key in kinds.TEMPLATE_POLICY_PATH[kind][:-1]:
            parent = parent[key]
        parent["networkPolicy"] = copy.deepcopy(policy)
    return obj


def request_for(
    obj: dict[str, Any] | None,
    *,
    kind: kinds.Kind,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    namespace: str = "team-a",
    dry_run: bool = False,
    sub_resource: str | None = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "resource": {"group": kind.group, "version": kind.version, "resource": kind.plural},
        "name": (obj or old or {}).get("metadata", {}).get("name", ""),
        "namespace": namespace,
        "operation": operation,
        "userInfo": copy.deepcopy(user or TENANT),
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return request


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def adm_request() -> Callable[..., dict[str, Any]]:
    return request_for
