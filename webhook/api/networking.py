"""Facts of ``networking.k8s.io/v1`` that validation, the builder and the tests share.

Said once here: a simple rule and a raw rule accept the same protocols and port
bounds, and the DNS port the builder opens is the one the warnings look for.
"""

from __future__ import annotations

# NetworkPolicyPort.protocol: the values kube-apiserver supports, and its default
# (SetDefaults_NetworkPolicyPort).
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_PROTOCOL = "TCP"

# IsValidPortNum: a port, and an endPort, lie in this range.
MIN_PORT = 1
MAX_PORT = 65535
PORT_RANGE = f"{MIN_PORT}-{MAX_PORT}"

# Restricted mode always allows DNS (UDP and TCP); Custom egress without it gets a warning.
DNS_PORT = 53
# IANA service names a named port may use for DNS.
DNS_PORT_NAMES = ("domain", "dns", "dns-tcp")

# The label every namespace carries with its own name (Kubernetes >= 1.22): how a peer
# selects one namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
