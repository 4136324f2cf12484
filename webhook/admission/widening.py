"""NetworkPolicies add up: another policy that selects a sandbox pod can only loosen it.

Two ways that happens, each answered at admission with a warning (or, with
``Settings.deny_widening``, a refusal):
- a NetworkPolicy not managed by agentcube-netpol whose podSelector selects a
  sandbox pod of its namespace (an empty podSelector selects every pod);
- a SandboxTemplate for an isolated CodeInterpreter's warm pool whose
  ``networkPolicyManagement`` is not ``Unmanaged``: agent-sandbox's own
  per-template policy selects ``sandbox-template-ref-hash``, which claimed pods keep.

What sandbox pods exist is read from the reconciler's watch caches through
``SandboxLookup``; never an API call inside the admission request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from webhook.api import kinds
from webhook.policy.selectors import selector_matches


class SandboxLookup(Protocol):
    def sandbox_pods(self, namespace: str) -> list[Mapping[str, Any]]:
        """The sandbox pods of ``namespace`` (objects with metadata.name and labels)."""
        ...

    def isolated_warm_pool(self, namespace: str, name: str) -> bool:
        """True when CodeInterpreter ``name`` has a warm pool and a mode other than None."""
        ...


class NoSandboxes:
    """The lookup of a server that runs without the reconciler's caches: knows nothing."""

    def sandbox_pods(self, namespace: str) -> list[Mapping[str, Any]]:
        return []

    def isolated_warm_pool(self, namespace: str, name: str) -> bool:
        return False


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def network_policy_problem(
    policy: Mapping[str, Any], namespace: str, sandboxes: SandboxLookup
) -> str | None:
    """Why this NetworkPolicy loosens sandbox pods, or None when it selects none."""
    labels = _metadata(policy).get("labels")
    if isinstance(labels, Mapping) and labels.get(kinds.MANAGED_BY_LABEL) == kinds.MANAGED_BY_VALUE:
        return None
    spec = policy.get("spec")
    selector = spec.get("podSelector") if isinstance(spec, Mapping) else None
    selected = sorted(
        str(_metadata(pod).get("name", ""))
        for pod in sandboxes.sandbox_pods(namespace)
        if selector_matches(selector, _pod_labels(pod))
    )
    if not selected:
        return None
    more = f" and {len(selected) - 1} more" if len(selected) > 1 else ""
    return f"spec.podSelector: selects sandbox pod {selected[0]}{more}; its rules loosen their isolation"


def sandbox_template_problem(
    template: Mapping[str, Any], namespace: str, sandboxes: SandboxLookup
) -> str | None:
    spec = template.get("spec")
    management = spec.get("networkPolicyManagement") if isinstance(spec, Mapping) else None
    if management == "Unmanaged":
        return None
    name = str(_metadata(template).get("name", ""))
    if not sandboxes.isolated_warm_pool(namespace, name):
        return None
    # agent-sandbox's own policy selects every pod of the warm pool, claimed ones included.
    shown = management or "Managed (default)"
    return f"spec.networkPolicyManagement: {shown} adds agent-sandbox's policy to every session; set Unmanaged"


def _pod_labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _metadata(pod).get("labels")
    return labels if isinstance(labels, Mapping) else {}
