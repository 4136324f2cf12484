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


def sandbox_template(
    name: str = "demo",
    namespace: str = TEAM,
    *,
    image: str = "python:3.12",
    management: str | None = "Unmanaged",
) -> Obj:
    """The SandboxTemplate AgentCube makes for a CodeInterpreter with a warm pool: named after
    it, no AgentCube label in its pod metadata, agent-sandbox's own NetworkPolicy turned off
    (``management``; None leaves the field out: agent-sandbox's default, Managed)."""
    spec: Obj = {
        "podTemplate": {"spec": {"containers": [{"name": "code-interpreter", "image": image}]}}
    }
    if management is not None:
        spec = {"networkPolicyManagement": management, **spec}
    return {
        "apiVersion": kinds.SANDBOX_TEMPLATE.api_version,
        "kind": kinds.SANDBOX_TEMPLATE.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def sandbox_warm_pool(name: str = "demo", namespace: str = TEAM, *, replicas: int = 1) -> Obj:
    """The SandboxWarmPool AgentCube makes beside ``sandbox_template``, of the same name."""
    return {
        "apiVersion": kinds.SANDBOX_WARM_POOL.api_version,
        "kind": kinds.SANDBOX_WARM_POOL.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": name}},
    }


# The versions agent-sandbox's releases are written in: v0.4 v1alpha1, v0.5 and v1.0 v1beta1.
# The builders above make v1alpha1; ``in_version`` gives the other shape.
AGENT_SANDBOX_VERSIONS = ("v1alpha1", "v1beta1")


def in_version(obj: Obj, version: str) -> Obj:
    """An agent-sandbox object (as the builders make it, in v1alpha1) as written in
    ``version``. v1beta1 (agent-sandbox v0.5+) differs where AgentCube's objects touch it: a
    SandboxClaim names its warm pool (``spec.warmPoolRef``, required; AgentCube names the pool
    after the template) instead of the template (``spec.sandboxTemplateRef``), and a Sandbox's
    ``spec.replicas`` is ``spec.operatingMode``. The SandboxTemplate and SandboxWarmPool keep
    their shape. Any other field is kept; a fresh object."""
    out = copy.deepcopy(obj)
    group = str(obj["apiVersion"]).rpartition("/")[0]
    assert group in (kinds.SANDBOX_GROUP, kinds.SANDBOX_EXT_GROUP), obj["apiVersion"]
    out["apiVersion"] = f"{group}/{version}"
    spec = out.get("spec")
    if version == "v1alpha1" or not isinstance(spec, dict):
        return out
    if obj["kind"] == kinds.SANDBOX_CLAIM.kind and "sandboxTemplateRef" in spec:
        out["spec"] = {"warmPoolRef": {"name": spec["sandboxTemplateRef"]["name"]}}
        out["spec"].update((k, v) for k, v in spec.items() if k != "sandboxTemplateRef")
    if obj["kind"] == kinds.SANDBOX.kind and "replicas" in spec:
        spec["operatingMode"] = "Running" if spec.pop("replicas") else "Suspended"
    return out


def sandbox_pod(name: str = "p", namespace: str = TEAM, *, labels: Any = None) -> Obj:
    """A pod as the Sandbox controller makes it (never scheduled in the tests: no node)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
    }


def claimed_pod(claim_uid: str, name: str = "demo-x7k2p", namespace: str = TEAM) -> Obj:
    """A warm-pool pod after adoption by a claim (README "A warm-pool session in `dev`")."""
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
    # The object comes in the version the request names (a rule lists each version we read).
    group, _, version = str(named.get("apiVersion", "")).rpartition("/")
    version = version if group == kind.group and version else kind.version
    request: Obj = {
        "uid": uid,
        "kind": {"group": kind.group, "version": version, "kind": kind.kind},
        "resource": {"group": kind.group, "version": version, "resource": kind.plural},
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
