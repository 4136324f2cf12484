"""The objects the end-to-end tests send, shaped as AgentCube and agent-sandbox write them."""

from __future__ import annotations

import copy
from typing import Any

from webhook.api import kinds


def code_interpreter(name: str, namespace: str, policy: Any | None) -> dict[str, Any]:
    template: dict[str, Any] = {"image": "python:3.12"}
    if policy is not None:
        template["networkPolicy"] = copy.deepcopy(policy)
    return {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": kinds.CODE_INTERPRETER.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": template, "warmPoolSize": 0},
    }


def agent_runtime(name: str, namespace: str, policy: Any | None) -> dict[str, Any]:
    pod_template: dict[str, Any] = {
        "labels": {"app": name},
        "spec": {"containers": [{"name": "agent", "image": "python:3.12"}]},
    }
    if policy is not None:
        pod_template["networkPolicy"] = copy.deepcopy(policy)
    return {
        "apiVersion": kinds.AGENT_RUNTIME.api_version,
        "kind": kinds.AGENT_RUNTIME.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetPort": [{"port": 8080, "protocol": "HTTP", "pathPrefix": "/"}],
            "podTemplate": pod_template,
        },
    }


def sandbox(
    name: str, namespace: str, *, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": kinds.SANDBOX.api_version,
        "kind": kinds.SANDBOX.kind,
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "podTemplate": {
                "metadata": {"labels": {kinds.LABEL_SANDBOX_NAME: name}},
                "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
            }
        },
    }


def sandbox_claim(
    name: str,
    namespace: str,
    *,
    template: str = "demo",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": kinds.SANDBOX_CLAIM.api_version,
        "kind": kinds.SANDBOX_CLAIM.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"sandboxTemplateRef": {"name": template}},
    }


def sandbox_pod(name: str, namespace: str, *, labels: dict[str, str]) -> dict[str, Any]:
    """A pod as the Sandbox controller makes it (never scheduled here: no node exists)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
    }
