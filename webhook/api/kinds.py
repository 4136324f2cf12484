"""Names of the objects we work with, kept in one place.

agent-sandbox's four kinds are served in different versions by its releases: v0.4 serves
v1alpha1; v0.5 serves v1beta1 (storage) and v1alpha1 through its conversion webhook; v1.0
serves v1beta1 only. The constants below name them in v1alpha1; ``served_kinds`` picks, from
what the API server serves, the version to watch and write (``webhook.kube.discovery`` asks
it at start).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A kind, addressed in one of its versions. Two Kinds are equal (and hash alike) when
    group, kind and plural are: the same kind in another version is the same kind, so the
    Kind discovery returns finds what was registered under the constant."""

    group: str
    version: str = field(compare=False)
    kind: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


AGENTCUBE_GROUP = "runtime.agentcube.volcano.sh"
SANDBOX_GROUP = "agents.x-k8s.io"
SANDBOX_EXT_GROUP = "extensions.agents.x-k8s.io"

AGENT_RUNTIME = Kind(AGENTCUBE_GROUP, "v1alpha1", "AgentRuntime", "agentruntimes")
CODE_INTERPRETER = Kind(AGENTCUBE_GROUP, "v1alpha1", "CodeInterpreter", "codeinterpreters")
SANDBOX = Kind(SANDBOX_GROUP, "v1alpha1", "Sandbox", "sandboxes")
SANDBOX_TEMPLATE = Kind(SANDBOX_EXT_GROUP, "v1alpha1", "SandboxTemplate", "sandboxtemplates")
SANDBOX_CLAIM = Kind(SANDBOX_EXT_GROUP, "v1alpha1", "SandboxClaim", "sandboxclaims")
SANDBOX_WARM_POOL = Kind(SANDBOX_EXT_GROUP, "v1alpha1", "SandboxWarmPool", "sandboxwarmpools")
POD = Kind("", "v1", "Pod", "pods")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
# sigs.k8s.io/network-policy-api (v0.3.0, experimental channel for domainNames): the shared
# domain policy with --domain-backend=cluster-network-policy.
CLUSTER_NETWORK_POLICY = Kind(
    "policy.networking.k8s.io", "v1beta1", "ClusterNetworkPolicy", "clusternetworkpolicies"
)
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps")
SECRET = Kind("", "v1", "Secret", "secrets")
VALIDATING_WEBHOOK_CONFIGURATION = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingWebhookConfiguration",
    "validatingwebhookconfigurations",
)  # cluster-scoped
MUTATING_WEBHOOK_CONFIGURATION = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "MutatingWebhookConfiguration",
    "mutatingwebhookconfigurations",
)  # cluster-scoped
NODE = Kind("", "v1", "Node", "nodes")  # cluster-scoped: addressed with namespace ""

# agent-sandbox's kinds, and the versions we can read and write them in, preferred first:
# v1beta1 is the storage version from v0.5 on (no conversion webhook on the way), v1alpha1
# the only one before.
AGENT_SANDBOX_KINDS = (SANDBOX, SANDBOX_TEMPLATE, SANDBOX_CLAIM, SANDBOX_WARM_POOL)
AGENT_SANDBOX_VERSIONS = ("v1beta1", "v1alpha1")


def served_kinds(served: Mapping[str, Collection[str]]) -> dict[Kind, Kind]:
    """For each of agent-sandbox's kinds, that kind in the version to watch and write.

    ``served`` maps a group version (``"agents.x-k8s.io/v1beta1"``) to the plurals the API
    server serves in it (its discovery document). A kind served in none of our versions is
    left out: the caller keeps the constant and says so.
    """
    chosen: dict[Kind, Kind] = {}
    for kind in AGENT_SANDBOX_KINDS:
        for version in AGENT_SANDBOX_VERSIONS:
            if kind.plural in served.get(f"{kind.group}/{version}", ()):
                chosen[kind] = replace(kind, version=version)
                break
    return chosen


def versions_in_use(resolved: Mapping[Kind, Kind]) -> dict[str, str]:
    """Kind name -> the version watched and written, for comparing two discoveries (a Kind
    compares equal in every version, so two ``{Kind: Kind}`` maps cannot be compared)."""
    return {kind.kind: resolved.get(kind, kind).version for kind in AGENT_SANDBOX_KINDS}


def version_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """What changed between two ``versions_in_use``, one ``"Kind v1 -> v2"`` each; [] if
    nothing did."""
    return [
        f"{kind.kind} {before.get(kind.kind, '-')} -> {after.get(kind.kind, '-')}"
        for kind in AGENT_SANDBOX_KINDS
        if before.get(kind.kind) != after.get(kind.kind)
    ]


# Where the networkPolicy field lives in each template kind, as a field path.
TEMPLATE_POLICY_PATH: dict[str, tuple[str, ...]] = {
    AGENT_RUNTIME.kind: ("spec", "podTemplate", "networkPolicy"),
    CODE_INTERPRETER.kind: ("spec", "template", "networkPolicy"),
}

# Labels and annotations AgentCube and agent-sandbox set.
LABEL_SESSION_ID = "runtime.agentcube.io/session-id"
LABEL_WORKLOAD_NAME = "runtime.agentcube.io/workload-name"
LABEL_SANDBOX_NAME = "runtime.agentcube.io/sandbox-name"
ANNOTATION_NETWORK_POLICY = "runtime.agentcube.io/network-policy"

LABEL_CLAIM_UID = "agents.x-k8s.io/claim-uid"
LABEL_CLAIMED_SANDBOX = "agents.x-k8s.io/sandbox-name"
LABEL_WARM_POOL_SANDBOX = "agents.x-k8s.io/warm-pool-sandbox"
LABEL_TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
ANNOTATION_POD_NAME = "agents.x-k8s.io/pod-name"

# agent-sandbox v0.5+ accepts a label in a claim's spec.additionalPodMetadata only if its
# domain is on an allow-list: the allowed-label-domains key of the ConfigMap
# agent-sandbox-config in the controller's namespace (mounted at
# /etc/sandbox-config/allowed-label-domains), comma or newline separated, suffix match;
# sandbox.users.io alone when absent or empty (extensions/controllers/sandboxclaim_controller.go).
AGENT_SANDBOX_NAMESPACE = "agent-sandbox-system"
AGENT_SANDBOX_CONFIG_MAP = "agent-sandbox-config"
ALLOWED_LABEL_DOMAINS_KEY = "allowed-label-domains"
DEFAULT_ALLOWED_LABEL_DOMAINS = ("sandbox.users.io",)


# The one-line change that lets agent-sandbox v0.5+ accept our label (as the README says).
ALLOW_LIST_FIX = (
    f"kubectl -n {AGENT_SANDBOX_NAMESPACE} patch configmap {AGENT_SANDBOX_CONFIG_MAP} "
    f'--type merge -p \'{{"data":{{"{ALLOWED_LABEL_DOMAINS_KEY}":'
    f'"sandbox.users.io,runtime.agentcube.io"}}}}\''
)


def allowed_label_domains(text: str | None) -> tuple[str, ...]:
    """The allow-list as agent-sandbox reads it from ``text`` (the ConfigMap value)."""
    domains = tuple(
        d.strip().lower() for d in (text or "").replace("\r", "\n").replace(",", "\n").split("\n")
    )
    return tuple(d for d in domains if d) or DEFAULT_ALLOWED_LABEL_DOMAINS


def label_domain_allowed(label: str, domains: Sequence[str]) -> bool:
    """Whether agent-sandbox v0.5+ accepts ``label`` in a claim's additionalPodMetadata."""
    domain, slash, _name = label.partition("/")
    if not slash:
        return False
    domain = domain.lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)


# Ours.
# The scheduling gate the pod webhook puts on a sandbox pod at creation; the reconciler
# lifts it once the sandbox's NetworkPolicy is in place, so the pod never runs unisolated.
SCHEDULING_GATE = "netpol.agentcube.io/network-policy"
# With --isolation-canary: the init container the pod webhook puts first in a gated sandbox
# pod, and the annotation it reads (through the downward API) for the address to try. The
# webhook sets the annotation empty; the reconciler writes the address as it lifts the gate,
# or leaves it empty when the sandbox's policy lets that address through (nothing to check).
ISOLATION_CONTAINER = "netpol-wait-isolated"
ANNOTATION_ISOLATION_CANARY = "netpol.agentcube.io/isolation-canary"
ISOLATION_CANARY_ENV = "NETPOL_ISOLATION_CANARY"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "agentcube-netpol"

# Egress by domain name: a namespace's sandboxes whose policies hold the same ``domains``
# entries share one NetworkPolicy, ``netpol-domains.<key>``, that allows what the names
# resolve to; each sandbox's own NetworkPolicy carries the key as a label, and the shared
# one selects them by sandbox name. Its annotations hold the entries and, per name, the
# addresses it holds, those leaving (grace window) and the last lookup's error.
DOMAIN_POLICY_PREFIX = "netpol-domains."
LABEL_DOMAIN_SET = "netpol.agentcube.io/domain-set"
ANNOTATION_DOMAINS = "netpol.agentcube.io/domains"
ANNOTATION_DOMAIN_STATUS = "netpol.agentcube.io/domain-status"
LABEL_DOMAIN_NAMESPACE = "netpol.agentcube.io/namespace"  # a ClusterNetworkPolicy's sandboxes'


def kind_of(group: str, kind: str) -> Kind | None:
    """The known Kind for an admission request's ``kind`` group and name, if any."""
    for known in (
        AGENT_RUNTIME,
        CODE_INTERPRETER,
        SANDBOX,
        SANDBOX_TEMPLATE,
        SANDBOX_CLAIM,
        SANDBOX_WARM_POOL,
        POD,
        NETWORK_POLICY,
    ):
        if known.group == group and known.kind == kind:
            return known
    return None


def has_scheduling_gate(pod: Mapping[str, Any]) -> bool:
    """Whether ``pod`` is held by our scheduling gate (gates of others do not count)."""
    gates = get_path(pod, ("spec", "schedulingGates"))
    return isinstance(gates, list) and any(
        isinstance(g, Mapping) and g.get("name") == SCHEDULING_GATE for g in gates
    )


def get_path(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (map keys) in ``obj``; None where the path breaks off."""
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node
