"""The isolation canary: an address a sandbox's NetworkPolicy does not let through.

Kubernetes lets a pod's containers start before a NetworkPolicy implementation enforces the
policy that selects it: kube-router, for one, programs a pod's rules once the kubelet has
reported its IP, and the kubelet reports it after the containers started. With
``--isolation-canary`` the pod webhook puts an init container first in each gated sandbox pod
(``agentcube-netpol wait-isolated``) that connects to the canary again and again: while it
gets through, the policy is not enforced yet; once it is refused, it is, and the app
containers start. The reconciler hands the address to the pod (an annotation the init
container reads) only when the sandbox's policy does not let it through; otherwise there is
nothing the init container could tell, and it lets the pod start at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from webhook.api.networking import DEFAULT_PROTOCOL, MAX_PORT, MIN_PORT
from webhook.policy.cidr import CidrProblem, parse_cidr, reaches

Canary = tuple[str, int]  # an IP address, a TCP port


def parse_canary(text: str) -> Canary:
    """``ADDRESS:PORT`` (``[ADDRESS]:PORT`` for IPv6) as given to ``--isolation-canary``.

    An IP address, not a name: a sandbox whose policy refuses DNS could not resolve one.
    Raises ``ValueError`` with a message for the user."""
    address, sep, port_text = text.rpartition(":")
    if not sep or not address:
        raise ValueError(f"expected ADDRESS:PORT, got {text!r}")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f"{address!r} is not an IP address (a name needs DNS, which a sandbox may not have)"
        ) from None
    if not port_text.isdigit() or not MIN_PORT <= int(port_text) <= MAX_PORT:
        raise ValueError(f"port {port_text!r} is not a number in {MIN_PORT}-{MAX_PORT}")
    if ip.is_unspecified or ip.is_loopback:
        raise ValueError(f"{address} is in the pod itself, not behind its NetworkPolicy")
    return str(ip), int(port_text)


def format_canary(canary: Canary) -> str:
    address, port = canary
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def lets_through(spec: Mapping[str, Any] | None, canary: Canary) -> bool:
    """Whether a NetworkPolicy ``spec`` surely lets a TCP connection to ``canary`` out of the
    pods it selects (``None``: no policy, everything does).

    Peers that select pods or namespaces, and named ports, are taken not to match: they
    match pods, and the canary's pod is not known here. If one does select it, the init
    container keeps getting through, and after its timeout it fails saying so."""
    if spec is None:
        return True
    policy_types = spec.get("policyTypes")
    if isinstance(policy_types, list) and "Egress" not in policy_types:
        return True
    address, port = canary
    for rule in spec.get("egress") or ():
        if not isinstance(rule, Mapping) or not _port_matches(rule.get("ports"), port):
            continue
        peers = rule.get("to")
        if not peers:
            return True  # to every destination
        if any(_block_reaches(peer, address) for peer in peers):
            return True
    return False


def _port_matches(ports: object, port: int) -> bool:
    if not ports:
        return True  # every port
    for entry in ports if isinstance(ports, list) else ():
        if not isinstance(entry, Mapping) or entry.get("protocol", DEFAULT_PROTOCOL) != "TCP":
            continue
        value = entry.get("port")
        if value is None:
            return True  # every TCP port
        if isinstance(value, int) and not isinstance(value, bool):
            end = entry.get("endPort")
            last = end if isinstance(end, int) and not isinstance(end, bool) else value
            if value <= port <= last:
                return True
    return False


def _block_reaches(peer: object, address: str) -> bool:
    block = peer.get("ipBlock") if isinstance(peer, Mapping) else None
    if not isinstance(block, Mapping):
        return False
    cidr = parse_cidr(block.get("cidr"))
    if isinstance(cidr, CidrProblem):
        return False
    excepts = [
        e for e in map(parse_cidr, block.get("except") or ()) if not isinstance(e, CidrProblem)
    ]
    return reaches(cidr, excepts, address)
