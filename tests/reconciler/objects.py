"""Objects as AgentCube and agent-sandbox make them, for the reconciler's tests."""

from __future__ import annotations

import copy
from typing import Any

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.policy.builder import build_network_policy
from webhook.reconciler.plan import LABEL_ROLE
from webhook.reconciler.snapshot import Snapshot

SETTINGS = Settings()
NS = "team-a"
RESTRICTED = {
    "mode": "Restricted",
    "egress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 443}]}],
}


def meta(
    name: str, *, uid: str = "", labels: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid or f"uid-{name}"}
    if labels:
        out["labels"] = labels
    out.update(extra)
    return out


def interpreter(name: str = "py", policy: Any = RESTRICTED, *, warm: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"image": "python"}}
    if policy is not None:
        spec["template"]["networkPolicy"] = policy
    if warm:
        spec["warmPoolSize"] = warm
    return {"metadata": meta(name), "spec": spec}


def runtime(name: str = "py", policy: Any = RESTRICTED) -> dict[str, Any]:
    return {"metadata": meta(name), "spec": {"podTemplate": {"networkPolicy": policy}}}


def direct_sandbox(
    name: str = "py-abcd1234", workload: str = "py", **annotations: str
) -> dict[str, Any]:
    labels = {kinds.LABEL_WORKLOAD_NAME: workload, kinds.LABEL_SESSION_ID: "s1"}
    extra = {"annotations": annotations} if annotations else {}
    return {"metadata": meta(name, labels=labels, **extra)}


def claim(name: str = "py-claim0001", template: str = "py", **annotations: str) -> dict[str, Any]:
    labels = {kinds.LABEL_SANDBOX_NAME: name, kinds.LABEL_SESSION_ID: "s2"}
    extra = {"annotations": annotations} if annotations else {}
    return {
        "metadata": meta(name, labels=labels, **extra),
        "spec": {"sandboxTemplateRef": {"name": template}},
    }


def pod(
    name: str, labels: dict[str, str], *, owner: str = "", gates: list[str] | None = None
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if owner:
        extra["ownerReferences"] = [
            {"apiVersion": kinds.SANDBOX.api_version, "kind": "Sandbox", "name": owner,
             "uid": f"uid-{owner}", "controller": True}
        ]  # fmt: skip
    out: dict[str, Any] = {"metadata": meta(name, labels=labels, **extra)}
    if gates is not None:
        out["spec"] = {"schedulingGates": [{"name": g} for g in gates]}
    return out


def view(**objects: list[dict[str, Any]]) -> Snapshot:
    by_kind = {
        "interpreters": kinds.CODE_INTERPRETER,
        "runtimes": kinds.AGENT_RUNTIME,
        "sandboxes": kinds.SANDBOX,
        "claims": kinds.SANDBOX_CLAIM,
        "pods": kinds.POD,
        "policies": kinds.NETWORK_POLICY,
        "clusterpolicies": kinds.CLUSTER_NETWORK_POLICY,
    }
    return Snapshot({by_kind[k]: v for k, v in objects.items()})


def expected_policy(
    name: str,
    policy: Any,
    owner: dict[str, Any],
    kind: kinds.Kind,
    pods: list[dict[str, Any]] | tuple[()] = (),
) -> dict[str, Any]:
    """The sandbox's NetworkPolicy, owned by the sandbox and by each of its ``pods``."""
    built = build_network_policy(
        policy,
        sandbox=name,
        namespace=NS,
        settings=SETTINGS,
        owner={**owner, "apiVersion": kind.api_version, "kind": kind.kind},
    )
    assert built is not None
    built["metadata"]["labels"][LABEL_ROLE] = "sandbox"
    built["metadata"]["ownerReferences"] += [
        {"apiVersion": "v1", "kind": "Pod", "name": p["metadata"]["name"],
         "uid": p["metadata"]["uid"]}
        for p in sorted(pods, key=lambda p: p["metadata"]["uid"])
    ]  # fmt: skip
    return built


def stored(policy: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    out = copy.deepcopy(policy)
    out["metadata"]["uid"] = "uid-np"
    out["metadata"]["resourceVersion"] = rv
    return out
