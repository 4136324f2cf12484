"""Configuration, read once at the CLI edge into a frozen object.

Nothing else in the package reads the environment or the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from webhook.api.networking import NAMESPACE_NAME_LABEL


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


DEFAULT_DNS_PEERS: tuple[Mapping[str, Any], ...] = (
    {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    },
)


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a NetworkPolicy small (checked at admission)."""

    max_rules: int = 50  # ingress or egress entries, each direction
    max_cidrs_per_rule: int = 50
    max_except_per_cidr: int = 50
    max_ports_per_rule: int = 50
    max_peers_per_rule: int = 50  # custom rules: from/to entries
    max_label_selector_terms: int = 50
    max_annotation_bytes: int = 64 * 1024  # the override annotation's JSON
    max_domains_per_rule: int = 20  # an egress entry's domains
    max_domains: int = 50  # distinct names in one policy
    max_allow_answers_in: int = 20  # an egress entry's allowAnswersIn CIDRs
    # A leftmost "*." label in domains: only where the backend enforces names itself
    # (--domain-backend=cluster-network-policy); a resolver cannot list a wildcard's names.
    domain_wildcards: bool = False


# Whether the claim mutation puts runtime.agentcube.io/sandbox-name into a SandboxClaim's
# spec.additionalPodMetadata.labels: "on", "off", or "auto", which the commands that talk to
# a cluster resolve at start to "on" exactly where agent-sandbox accepts the label
# (webhook.kube.discovery; ``run`` re-resolves it when the allow-list changes). agent-sandbox v0.5+ refuses a claim whose additional pod labels
# are outside its allow-list (the claim goes Ready=False, InvalidMetadata, and gets no
# Sandbox); without the label the pod webhook and the reconciler label the claimed pod.
ClaimLabelInjection = Literal["auto", "on", "off"]

# deploy/'s ServiceAccount (deploy/base/rbac.yaml), the identity ``run`` has in a cluster.
DEFAULT_GATE_LIFTERS: tuple[str, ...] = (
    "system:serviceaccount:agentcube-netpol-system:agentcube-netpol",
)


@dataclass(frozen=True)
class Settings:
    # The AgentCube control plane that must reach every sandbox pod.
    agentcube_namespace: str = "agentcube"
    router_labels: Mapping[str, str] = field(
        default_factory=lambda: _frozen({"app": "agentcube-router"})
    )
    workload_manager_labels: Mapping[str, str] = field(
        default_factory=lambda: _frozen({"app": "workloadmanager"})
    )
    # Restricted mode's DNS rule: these peers on port 53 UDP+TCP. When
    # ``dns_to_anywhere`` is set the rule has no peers (any destination), as
    # agentcube PR #291 did; port 53 to anywhere is an exfiltration channel.
    dns_peers: tuple[Mapping[str, Any], ...] = DEFAULT_DNS_PEERS
    dns_to_anywhere: bool = False
    # Who may set, change or remove the override annotation and a pod's
    # sandbox-name label.
    privileged_groups: tuple[str, ...] = ("system:serviceaccounts:agentcube",)
    privileged_users: tuple[str, ...] = ()
    # Users who may remove the scheduling gate from a sandbox pod besides the privileged
    # ones: the reconciler, which lifts it once the pod's NetworkPolicy exists. ``run`` adds
    # its own identity at start (webhook.kube.identity).
    gate_lifters: tuple[str, ...] = DEFAULT_GATE_LIFTERS
    # A NetworkPolicy or SandboxTemplate that would loosen a sandbox's isolation (policies add
    # up) is admitted with a warning; with this set it is refused.
    deny_widening: bool = False
    claim_label_injection: ClaimLabelInjection = "auto"
    # Hold each direct-path sandbox pod's containers until its NetworkPolicy is enforced:
    # the pod webhook adds an init container (``isolation_canary_image`` running
    # ``agentcube-netpol wait-isolated``) that waits until a TCP connection to this address
    # and port, one the sandbox's policy does not allow, stops getting through. None: off.
    isolation_canary: tuple[str, int] | None = None
    isolation_canary_image: str = ""
    limits: Limits = field(default_factory=Limits)
    # Egress by domain name: where names are enforced ("resolve": into ipBlocks;
    # "cluster-network-policy": ClusterNetworkPolicy domainNames), and ranges whose
    # addresses a name's answer may never add (the cluster's pod and service ranges, the
    # nodes'), beside the built-in private, loopback and link-local ones.
    domain_backend: str = "resolve"
    deny_answers: tuple[str, ...] = ()
