"""Which versions of agent-sandbox's kinds the API server serves: asked once, at start.

The answer is the API server's discovery (``/apis/<group>/<version>``), which every
authenticated user may read (no RBAC on CustomResourceDefinitions needed). The choice itself
is ``webhook.api.kinds.served_kinds``: v1beta1 where served (agent-sandbox v0.5 and v1.0),
else v1alpha1 (v0.4). A kind served in neither keeps its v1alpha1 constant, and a warning
says so: its informer then reports the 404 until the CRD is installed and we restart.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from webhook.api import kinds
from webhook.api.kinds import Kind
from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.rest import Rest

logger = logging.getLogger(__name__)


def served_resources(rest: Rest) -> dict[str, set[str]]:
    """Group version -> the plurals served in it, for agent-sandbox's groups and versions."""
    group_versions = sorted(
        {
            f"{kind.group}/{version}"
            for kind in kinds.AGENT_SANDBOX_KINDS
            for version in kinds.AGENT_SANDBOX_VERSIONS
        }
    )
    served: dict[str, set[str]] = {}
    for group_version in group_versions:
        try:
            document = rest.api_resources(group_version)
        except errors.NotFound:
            continue
        served[group_version] = {
            str(resource.get("name", ""))
            for resource in document.get("resources") or []
            if isinstance(resource, dict) and "/" not in str(resource.get("name", ""))
        }
    return served


def discover_kinds(rest: Rest) -> dict[Kind, Kind]:
    """Each of agent-sandbox's kinds in the version this cluster serves (the constant where
    none is served), with one log line naming them."""
    chosen = kinds.served_kinds(served_resources(rest))
    resolved = {kind: chosen.get(kind, kind) for kind in kinds.AGENT_SANDBOX_KINDS}
    missing = [kind.plural for kind in kinds.AGENT_SANDBOX_KINDS if kind not in chosen]
    if missing:
        logger.warning(
            "agent-sandbox serves no %s in %s: watching them in v1alpha1 until a restart",
            ", ".join(missing),
            " or ".join(kinds.AGENT_SANDBOX_VERSIONS),
        )
    logger.info(
        "agent-sandbox kinds in use: %s",
        ", ".join(f"{kind.kind} {kind.api_version}" for kind in resolved.values()),
    )
    return resolved


def claim_label_accepted(rest: Rest, served: dict[Kind, Kind]) -> tuple[bool, str]:
    """Whether agent-sandbox will accept ``runtime.agentcube.io/sandbox-name`` in a claim's
    ``spec.additionalPodMetadata.labels``, and why. v0.4 (SandboxClaims served in v1alpha1
    only) has no allow-list; v0.5+ (v1beta1) accepts the domains of its ConfigMap."""
    if served[kinds.SANDBOX_CLAIM].version != "v1beta1":
        return True, f"SandboxClaims are served in {served[kinds.SANDBOX_CLAIM].version} only"
    where = f"{kinds.AGENT_SANDBOX_NAMESPACE}/{kinds.AGENT_SANDBOX_CONFIG_MAP}"
    try:
        config_map = rest.get(
            kinds.CONFIG_MAP, kinds.AGENT_SANDBOX_NAMESPACE, kinds.AGENT_SANDBOX_CONFIG_MAP
        )
        text = (config_map.get("data") or {}).get(kinds.ALLOWED_LABEL_DOMAINS_KEY)
    except errors.NotFound:
        text = None
    domains = kinds.allowed_label_domains(text)
    accepted = kinds.label_domain_allowed(kinds.LABEL_SANDBOX_NAME, domains)
    return accepted, (
        f"agent-sandbox serves v1beta1 and its allow-list ({where} "
        f"{kinds.ALLOWED_LABEL_DOMAINS_KEY}: {', '.join(domains)}) "
        f"{'covers' if accepted else 'does not cover'} runtime.agentcube.io"
    )


def resolve_claim_label_injection(
    settings: Settings, rest: Rest, served: dict[Kind, Kind] | None = None
) -> Settings:
    """``settings`` with ``claim_label_injection`` "auto" decided against the cluster, and a
    log line saying how claimed pods get their sandbox-name label."""
    setting = settings.claim_label_injection
    if setting == "auto":
        try:
            accepted, why = claim_label_accepted(rest, served or discover_kinds(rest))
        except errors.ApiError as exc:
            accepted, why = False, f"agent-sandbox's allow-list could not be read ({exc})"
        settings = replace(settings, claim_label_injection="on" if accepted else "off")
    else:
        why = f"--claim-label-injection={setting}"
    if settings.claim_label_injection == "on":
        logger.info("claim label injection on: %s; claims get the sandbox-name label", why)
    else:
        logger.warning(
            "claim label injection off: %s; claimed pods are labelled by the pod webhook and "
            "the reconciler instead (add runtime.agentcube.io to agent-sandbox's "
            "allowed-label-domains to label them at adoption)",
            why,
        )
    return settings
