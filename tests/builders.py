"""The objects and AdmissionReviews every tier sends, shaped as AgentCube, agent-sandbox and
kube-apiserver write them. One builder per thing; a test changes what it is about, field by
field, on what these return (each call returns a fresh object).
"""

from __future__ import annotations

import copy
from typing import Any

from webhook.api import kinds

TEAM = "team-a"
REVIEW_UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
ADMISSION_V1 = "admission.k8s.io/v1"

# userInfo as kube-apiserver sends it: AgentCube's workload manager, and a tenant.
AGENTCUBE_SA = {
    "username": "system:serviceaccount:agentcube:workloadmanager",
    "groups": [
        "system:serviceaccounts",
        "system:serviceaccounts:agentcube",
        "system:authenticated",
    ],
}
TENANT = {"username": "alice", "groups": ["tenants", "system:authenticated"]}

Obj = dict[str, Any]


# --- objects ---------------------------------------------------------------------------


def code_interpreter(
    name: str = "demo", namespace: str = TEAM, policy: Any = None, *, warm_pool_size: int = 0
) -> Obj:
    template: Obj = {"image": "python:3.12"}
    if policy is not None:
        template["networkPolicy"] = copy.deepcopy(policy)
    return {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": kinds.CODE_INTERPRETER.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": template, "warmPoolSize": warm_pool_size},
    }


def agent_runtime(name: str = "demo", namespace: str = TEAM, policy: Any = None) -> Obj:
    pod_template: Obj = {
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
            # required by AgentCube's CRD schema
            "targetPort": [{"port": 8080, "protocol": "HTTP", "pathPrefix": "/"}],
            "podTemplate": pod_template,
        },
    }


def template(kind: str, policy: Any, *, name: str = "demo", namespace: str = TEAM) -> Obj:
    """An AgentRuntime or CodeInterpreter (by kind name) carrying ``policy``."""
    if kind == kinds.AGENT_RUNTIME.kind:
        return agent_runtime(name, namespace, policy)
    assert kind == kinds.CODE_INTERPRETER.kind, kind
    return code_interpreter(name, namespace, policy)


def sandbox(
    name: str = "demo-ab12cd34",
    namespace: str = TEAM,
    *,
    annotations: dict[str, str] | None = None,
    workload: str | None = None,
) -> Obj:
    """A Sandbox as AgentCube creates it on the direct path; with ``workload``, labelled with
    its template (workload-name) and a session, as the reconciler finds it."""
    metadata: Obj = {"name": name, "namespace": namespace, "annotations": annotations or {}}
    pod_labels = {kinds.LABEL_SANDBOX_NAME: name}
    if workload is not None:
        metadata["labels"] = {kinds.LABEL_WORKLOAD_NAME: workload, kinds.LABEL_SESSION_ID: "s-1"}
        pod_labels[kinds.LABEL_SESSION_ID] = "s-1"
    return {
        "apiVersion": kinds.SANDBOX.api_version,
        "kind": kinds.SANDBOX.kind,
        "metadata": metadata,
        "spec": {
            "podTemplate": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
            }
        },
    }


def sandbox_claim(
    name: str = "demo-ab12cd34",
    namespace: str = TEAM,
    *,
    template: str = "demo",
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    spec: Obj | None = None,
) -> Obj:
    """A SandboxClaim as AgentCube creates it on the warm-pool path (``uid`` as stored)."""
    metadata: Obj = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {},
        "annotations": annotations or {},
    }
    if uid is not None:
        metadata["uid"] = uid
    return {
        "apiVersion": kinds.SANDBOX_CLAIM.api_version,
        "kind": kinds.SANDBOX_CLAIM.kind,
        "metadata": metadata,
        "spec": spec if spec is not None else {"sandboxTemplateRef": {"name": template}},
    }


def sandbox_pod(name: str = "p", namespace: str = TEAM, *, labels: Any = None) -> Obj:
    """A pod as the Sandbox controller makes it (never scheduled in the tests: no node)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
    }


def claimed_pod(claim_uid: str, name: str = "demo-x7k2p", namespace: str = TEAM) -> Obj:
    """A warm-pool pod after adoption by a claim (DESIGN section 2)."""
    return sandbox_pod(
        name,
        namespace,
        labels={
            kinds.LABEL_CLAIM_UID: claim_uid,
            "agents.x-k8s.io/sandbox-template-ref-hash": "abc",
        },
    )


# --- admission ---------------------------------------------------------------------------


def admission_request(
    obj: Any,
    *,
    kind: kinds.Kind,
    operation: str = "CREATE",
    old: Any = None,
    user: Obj | None = None,
    namespace: str = TEAM,
    dry_run: bool = False,
    sub_resource: str | None = None,
    uid: str = REVIEW_UID,
) -> Obj:
    """An AdmissionRequest as kube-apiserver sends it."""
    named = obj if isinstance(obj, dict) else old if isinstance(old, dict) else {}
    metadata = named.get("metadata")
    name = metadata.get("name", "") if isinstance(metadata, dict) else ""
    request: Obj = {
        "uid": uid,
        "kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "resource": {"group": kind.group, "version": kind.version, "resource": kind.plural},
        "name": name,
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


def admission_review(request: Obj, *, api_version: str = ADMISSION_V1) -> Obj:
    """The AdmissionReview that carries ``request`` (build it with admission_request)."""
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def review_of(obj: Any, *, kind: kinds.Kind, **request_fields: Any) -> Obj:
    """Shorthand: the AdmissionReview of ``admission_request(obj, kind=kind, ...)``."""
    api_version = request_fields.pop("api_version", ADMISSION_V1)
    return admission_review(
        admission_request(obj, kind=kind, **request_fields), api_version=api_version
    )
