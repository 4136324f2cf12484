"""Names of the objects we work with, kept in one place.

agent-sandbox v0.5+ serves v1beta1; moving to it is a change of the versions here
(and of the claim's template reference, ``spec.sandboxTemplateRef`` in v1alpha1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
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
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
NODE = Kind("", "v1", "Node", "nodes")  # cluster-scoped: addressed with namespace ""

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
ANNOTATION_POD_NAME = "agents.x-k8s.io/pod-name"

# Ours.
# The scheduling gate the pod webhook puts on a sandbox pod at creation; the reconciler
# lifts it once the sandbox's NetworkPolicy is in place, so the pod never runs unisolated.
SCHEDULING_GATE = "netpol.agentcube.io/network-policy"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "agentcube-netpol"


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


def get_path(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (map keys) in ``obj``; None where the path breaks off."""
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node
