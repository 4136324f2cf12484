"""Which objects are AgentCube sandboxes, and what they hang off: pure functions over dicts.

A sandbox is named by the AgentCube sandbox name, the name its NetworkPolicy
gets and the value of ``runtime.agentcube.io/sandbox-name`` on its pod:

- direct path: a Sandbox labelled ``runtime.agentcube.io/workload-name`` (AgentCube
  made it for an AgentRuntime, or a CodeInterpreter without warm pool); the
  sandbox name is the Sandbox's name and the Sandbox owns the NetworkPolicy;
- warm path: a SandboxClaim whose template reference (v1alpha1) or warm pool reference
  (v1beta1) names a CodeInterpreter;
  the sandbox name is the claim's ``runtime.agentcube.io/sandbox-name`` label,
  else its name, and the claim owns the NetworkPolicy.

The reconciler's caches are read through ``View``; the same index functions
(``INDEXES``) are registered with the informers and with the in-memory view the
unit tests use, so the tests read exactly what the controller reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from webhook.api import kinds
from webhook.api.kinds import Kind

Path = Literal["direct", "warm"]

# Index names, each "<namespace>/<value>".
BY_WORKLOAD = "workload"  # Sandbox: runtime.agentcube.io/workload-name
BY_TEMPLATE = "template"  # SandboxClaim: the CodeInterpreter it was made from
BY_SANDBOX_NAME = "sandbox-name"  # SandboxClaim and Pod: the AgentCube sandbox name
BY_UID = "uid"  # SandboxClaim: its uid
BY_CLAIM_UID = "claim-uid"  # Pod: agents.x-k8s.io/claim-uid
BY_OWNER = "owner"  # Pod and Sandbox: the controller owner's name
BY_NAMESPACE = "namespace"  # Pod: its namespace alone (admission's widening check)
BY_DOMAIN_SET = "domain-set"  # NetworkPolicy: a sandbox's, by its netpol.agentcube.io/domain-set


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _metadata(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    annotations = _metadata(obj).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("name", ""))


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("namespace", ""))


def uid_of(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("uid", ""))


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with ``controller: true``, if any."""
    owners = _metadata(obj).get("ownerReferences")
    if not isinstance(owners, list):
        return None
    for owner in owners:
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            return owner
    return None


def claim_template_name(claim: Mapping[str, Any]) -> str | None:
    """The CodeInterpreter a claim was made from, in either version of SandboxClaim:
    ``spec.sandboxTemplateRef.name`` (v1alpha1, agent-sandbox v0.4) or
    ``spec.warmPoolRef.name`` (v1beta1, v0.5+; the field is required there).

    AgentCube names the SandboxTemplate and the SandboxWarmPool after the CodeInterpreter,
    so either name is the CodeInterpreter's. The claim's spec is authoritative, not its
    ownerReference to the CodeInterpreter: the spec is what agent-sandbox acts on (the
    claimed pod is made from that template, or taken from that pool), so the policy follows
    what the pod is; an ownerReference only drives garbage collection and anyone who may
    create the claim may set either. A claim naming both (a v0.5 cluster converting) is
    read by its template reference, the one a v1alpha1 controller would act on.
    """
    for path in (("spec", "sandboxTemplateRef", "name"), ("spec", "warmPoolRef", "name")):
        name = kinds.get_path(claim, path)
        if isinstance(name, str) and name:
            return name
    return None


def claim_sandbox_name(claim: Mapping[str, Any]) -> str:
    """The AgentCube sandbox name of a claim: its sandbox-name label, else its name."""
    label = labels_of(claim).get(kinds.LABEL_SANDBOX_NAME)
    return label if isinstance(label, str) and label else name_of(claim)


def claim_adopted_sandbox(claim: Mapping[str, Any]) -> str | None:
    """The Sandbox the claim controller gave this claim (label, else status)."""
    label = labels_of(claim).get(kinds.LABEL_CLAIMED_SANDBOX)
    if isinstance(label, str) and label:
        return label
    name = kinds.get_path(claim, ("status", "sandbox", "name"))
    return name if isinstance(name, str) and name else None


def is_direct_sandbox(sandbox: Mapping[str, Any]) -> bool:
    """A Sandbox AgentCube created itself (not one of a warm pool)."""
    labels = labels_of(sandbox)
    return bool(labels.get(kinds.LABEL_WORKLOAD_NAME)) and (
        kinds.LABEL_WARM_POOL_SANDBOX not in labels and kinds.LABEL_CLAIM_UID not in labels
    )


@dataclass(frozen=True)
class SandboxRef:
    """One AgentCube sandbox: where it came from and who owns its NetworkPolicy."""

    namespace: str
    name: str  # the AgentCube sandbox name = the NetworkPolicy's name
    path: Path
    owner: Mapping[str, Any]  # the Sandbox (direct) or SandboxClaim (warm)
    template_name: str | None  # workload-name (direct) or the claim's template (warm)

    @property
    def override(self) -> str | None:
        value = annotations_of(self.owner).get(kinds.ANNOTATION_NETWORK_POLICY)
        return value if isinstance(value, str) else None

    @property
    def owner_kind(self) -> Kind:
        return kinds.SANDBOX if self.path == "direct" else kinds.SANDBOX_CLAIM


class View(Protocol):
    """Read-only caches: the informers in the controller, dicts in the tests."""

    def get(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def by_index(self, kind: Kind, index: str, value: str) -> list[Mapping[str, Any]]: ...

    def items(self, kind: Kind) -> list[Mapping[str, Any]]: ...


def ns_key(namespace: str, value: str) -> str:
    return f"{namespace}/{value}"


def _one(obj: Mapping[str, Any], value: object) -> list[str]:
    return [ns_key(namespace_of(obj), value)] if isinstance(value, str) and value else []


IndexFunction = Callable[[Mapping[str, Any]], Iterable[str]]

INDEXES: dict[Kind, dict[str, IndexFunction]] = {
    kinds.SANDBOX: {
        BY_WORKLOAD: lambda o: _one(o, labels_of(o).get(kinds.LABEL_WORKLOAD_NAME)),
        BY_OWNER: lambda o: _one(o, (controller_of(o) or {}).get("name")),
    },
    kinds.SANDBOX_CLAIM: {
        BY_TEMPLATE: lambda o: _one(o, claim_template_name(o)),
        BY_SANDBOX_NAME: lambda o: _one(o, claim_sandbox_name(o)),
        BY_UID: lambda o: _one(o, uid_of(o)),
    },
    kinds.NETWORK_POLICY: {
        BY_DOMAIN_SET: lambda o: _one(o, labels_of(o).get(kinds.LABEL_DOMAIN_SET)),
    },
    kinds.POD: {
        BY_SANDBOX_NAME: lambda o: _one(o, labels_of(o).get(kinds.LABEL_SANDBOX_NAME)),
        BY_CLAIM_UID: lambda o: _one(o, labels_of(o).get(kinds.LABEL_CLAIM_UID)),
        BY_OWNER: lambda o: _one(o, (controller_of(o) or {}).get("name")),
        BY_NAMESPACE: lambda o: [namespace_of(o)],
    },
}


def find_sandbox(view: View, namespace: str, name: str) -> SandboxRef | None:
    """The AgentCube sandbox of that name, direct path first; None if there is none."""
    sandbox = view.get(kinds.SANDBOX, namespace, name)
    if sandbox is not None and is_direct_sandbox(sandbox):
        return SandboxRef(
            namespace=namespace,
            name=name,
            path="direct",
            owner=sandbox,
            template_name=labels_of(sandbox).get(kinds.LABEL_WORKLOAD_NAME),
        )
    claims = view.by_index(kinds.SANDBOX_CLAIM, BY_SANDBOX_NAME, ns_key(namespace, name))
    # Two claims naming one sandbox cannot both own its policy; the oldest uid order
    # is arbitrary but stable, so the choice never flaps between reconciles.
    for claim in sorted(claims, key=uid_of):
        if claim_template_name(claim) is not None:
            return SandboxRef(
                namespace=namespace,
                name=name,
                path="warm",
                owner=claim,
                template_name=claim_template_name(claim),
            )
    return None


def sandbox_names_for(kind: Kind, obj: Mapping[str, Any], view: View) -> list[str]:
    """The sandbox names (in ``obj``'s namespace) whose NetworkPolicy ``obj`` bears on."""
    namespace = namespace_of(obj)
    if kind == kinds.SANDBOX:
        if is_direct_sandbox(obj):
            return [name_of(obj)]
        # An adopted warm-pool Sandbox: its claim controls it.
        owner = controller_of(obj)
        if owner is not None and owner.get("kind") == kinds.SANDBOX_CLAIM.kind:
            claim = view.get(kinds.SANDBOX_CLAIM, namespace, str(owner.get("name", "")))
            if claim is not None:
                return [claim_sandbox_name(claim)]
        return []
    if kind == kinds.SANDBOX_CLAIM:
        return [claim_sandbox_name(obj)]
    if kind == kinds.POD:
        names = []
        label = labels_of(obj).get(kinds.LABEL_SANDBOX_NAME)
        if isinstance(label, str) and label:
            names.append(label)
        claim_uid = labels_of(obj).get(kinds.LABEL_CLAIM_UID)
        if isinstance(claim_uid, str) and claim_uid:
            for claim in view.by_index(kinds.SANDBOX_CLAIM, BY_UID, ns_key(namespace, claim_uid)):
                names.append(claim_sandbox_name(claim))
        # A pod of a Sandbox a claim adopted, whatever labels it carries (v0.5.x may leave
        # claim-uid off): its Sandbox's claim.
        owner = controller_of(obj)
        if owner is not None and owner.get("kind") == kinds.SANDBOX.kind:
            sandbox = view.get(kinds.SANDBOX, namespace, str(owner.get("name", "")))
            if sandbox is not None and not is_direct_sandbox(sandbox):
                names += sandbox_names_for(kinds.SANDBOX, sandbox, view)
        return sorted(set(names))
    if kind == kinds.NETWORK_POLICY:
        return [name_of(obj)]
    if kind in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER):
        template = name_of(obj)
        names = [
            name_of(s)
            for s in view.by_index(kinds.SANDBOX, BY_WORKLOAD, ns_key(namespace, template))
            if is_direct_sandbox(s)
        ]
        if kind == kinds.CODE_INTERPRETER:
            names += [
                claim_sandbox_name(c)
                for c in view.by_index(
                    kinds.SANDBOX_CLAIM, BY_TEMPLATE, ns_key(namespace, template)
                )
            ]
        return sorted(set(names))
    return []


def pods_of(ref: SandboxRef, view: View) -> list[Mapping[str, Any]]:
    """The sandbox's pods: labelled with its name, or (warm path) claimed by its claim.

    A claimed pod is found by its ``agents.x-k8s.io/claim-uid`` label, or, where
    agent-sandbox left that label off (v0.5.x), as the pod of the Sandbox the
    claim adopted.
    """
    namespace = ref.namespace
    found: dict[str, Mapping[str, Any]] = {}
    for pod in view.by_index(kinds.POD, BY_SANDBOX_NAME, ns_key(namespace, ref.name)):
        found[uid_of(pod)] = pod
    if ref.path == "warm":
        for pod in view.by_index(kinds.POD, BY_CLAIM_UID, ns_key(namespace, uid_of(ref.owner))):
            found[uid_of(pod)] = pod
        adopted = claim_adopted_sandbox(ref.owner)
        if adopted is not None:
            for pod in view.by_index(kinds.POD, BY_OWNER, ns_key(namespace, adopted)):
                owner = controller_of(pod) or {}
                if owner.get("kind") == kinds.SANDBOX.kind:
                    found[uid_of(pod)] = pod
    return [found[uid] for uid in sorted(found)]
