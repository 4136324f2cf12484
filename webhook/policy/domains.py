"""Egress by domain name (README "Egress by domain name"), the pure parts.

- The names: ``domain_problem`` says what is wrong with one, with a suggestion a user
  can copy (``https://api.github.com/repos`` -> ``api.github.com``).
- The entries: ``domain_entries`` reads a valid policy's ``domains`` entries into a
  canonical form; ``domain_set_key`` names a namespace's shared NetworkPolicy for them.
- The answers: ``answer_problem`` says why a resolved address must not be allowed
  (DNS rebinding: a tenant who controls a name points it at the node, the cluster or
  the cloud metadata service).
- The shared NetworkPolicy: ``build_domain_rules`` turns the addresses each name has
  into egress rules of /32 and /128 ipBlocks with the entry's ports.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from webhook.api.networking import DEFAULT_PROTOCOL
from webhook.policy.cidr import CidrProblem, Network, parse_cidr
from webhook.policy.fielderrors import Problem

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Where a domain entry's names are enforced (``--domain-backend``).
BACKEND_RESOLVE = "resolve"  # names resolved into ipBlocks: every NetworkPolicy implementation
BACKEND_CLUSTER_NETWORK_POLICY = "cluster-network-policy"  # ClusterNetworkPolicy domainNames
BACKENDS = (BACKEND_RESOLVE, BACKEND_CLUSTER_NETWORK_POLICY)

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOOSE_LABEL = re.compile(r"[A-Za-z0-9_-]+")


NameProblem = Problem  # what is wrong with a domain name, with the name to write instead


def domain_problem(value: object, *, wildcards: bool) -> NameProblem | None:
    """What is wrong with ``value`` as a domain name of an egress entry; None if nothing.

    A name is a fully qualified DNS name in lowercase RFC 1123 form (letters, digits and
    hyphens; labels of 1-63 characters, not starting or ending with a hyphen; at least two
    labels; the last not all digits), at most 253 characters, a trailing dot optional.
    ``*.`` as the whole leftmost label is a wildcard, allowed only when ``wildcards``
    (the backend enforces names itself; a resolver cannot list a wildcard's names).
    """
    if not isinstance(value, str):
        return NameProblem(f"must be a domain name (a string), not {type(value).__name__}")
    if value == "":
        return NameProblem("must be a domain name such as api.github.com, not empty")
    if any(c.isspace() for c in value):
        stripped = value.strip()
        inner = any(c.isspace() for c in stripped)
        return NameProblem("must not contain whitespace", None if inner else _suggestion(stripped))
    if "/" in value or "@" in value or "?" in value or "#" in value:
        return NameProblem("must be a domain name, not a URL", _host_of(value))
    address = _ip_literal(value)
    if address is not None:
        return NameProblem("is an IP address: allow it with cidrs", host_cidr(address))
    if ":" in value:
        host = value.rsplit(":", 1)[0]
        return NameProblem("must not carry a port: put the port in ports", _suggestion(host))
    if not value.isascii():
        return NameProblem(
            "must be ASCII: write an internationalized name in its xn-- form",
            _punycode(value),
        )
    if value != value.lower():
        return NameProblem("must be lowercase", _suggestion(value.lower()))
    name = value.removesuffix(".")
    if len(name) > MAX_NAME_LENGTH:
        return NameProblem(f"must be at most {MAX_NAME_LENGTH} characters, not {len(name)}")
    labels = name.split(".")
    wildcard = labels[0] == "*"
    if "*" in name and not (wildcard and "*" not in ".".join(labels[1:])):
        return NameProblem("may hold * only as its whole leftmost label (*.example.com)")
    if wildcard and not wildcards:
        return NameProblem(
            "a wildcard cannot be resolved in advance: list the names, or use "
            f"--domain-backend={BACKEND_CLUSTER_NETWORK_POLICY} (a cluster whose network "
            "plugin serves ClusterNetworkPolicy with domainNames)"
        )
    rest = labels[1:] if wildcard else labels
    if len(rest) < 2:
        detail = (
            "a wildcard must cover a name of two labels or more (*.example.com)"
            if wildcard
            else "must be fully qualified (a name with a dot, such as pypi.org)"
        )
        return NameProblem(detail)
    for label in rest:
        if not label:
            return NameProblem("must not have an empty label (two dots in a row)")
        if len(label) > MAX_LABEL_LENGTH:
            return NameProblem(f"has a label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL.fullmatch(label):
            return NameProblem(
                "labels hold only a-z, 0-9 and '-', and neither start nor end with '-'",
            )
    if rest[-1].isdigit():
        return NameProblem("must not end in an all-digit label")
    return None


def canonical_name(name: str) -> str:
    """A valid name as the reconciler keys it: without its trailing dot."""
    return name.removesuffix(".")


def _ip_literal(value: str) -> str | None:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def _host_of(value: str) -> str | None:
    try:
        host = urlsplit(value if "://" in value else f"//{value}").hostname
    except ValueError:  # such as an unclosed [
        return None
    if not host:
        return None
    return _suggestion(host.lower())


def _punycode(value: str) -> str | None:
    try:
        return _suggestion(value.lower().encode("idna").decode("ascii"))
    except UnicodeError:
        return None


def _suggestion(candidate: str) -> str | None:
    """``candidate`` if it is itself a valid name (wildcards allowed), else None."""
    if candidate and domain_problem(candidate, wildcards=True) is None:
        return candidate
    return None


# --- the entries of a policy ---------------------------------------------------------------


@dataclass(frozen=True)
class DomainEntry:
    """One Restricted egress entry with ``domains``, in canonical form."""

    names: tuple[str, ...]  # sorted, without trailing dots, no duplicates
    ports: tuple[tuple[str, int, int | None], ...]  # (protocol, port, endPort), as written
    allow_answers_in: tuple[str, ...]  # canonical CIDRs

    def stored_ports(self) -> list[dict[str, Any]]:
        """The entry's ports in the form kube-apiserver stores (protocol filled in)."""
        result = []
        for protocol, port, end in self.ports:
            item: dict[str, Any] = {"protocol": protocol, "port": port}
            if end is not None:
                item["endPort"] = end
            result.append(item)
        return result

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"domains": list(self.names)}
        if self.ports:
            out["ports"] = self.stored_ports()
        if self.allow_answers_in:
            out["allowAnswersIn"] = list(self.allow_answers_in)
        return out

    @functools.cached_property
    def allowed(self) -> tuple[Network, ...]:
        return tuple(
            n for n in map(parse_cidr, self.allow_answers_in) if not isinstance(n, CidrProblem)
        )


def is_domain_rule(rule: object) -> bool:
    return isinstance(rule, Mapping) and "domains" in rule


def domain_entries(policy: Mapping[str, Any] | None) -> tuple[DomainEntry, ...]:
    """The ``domains`` entries of a valid Restricted policy, in canonical form."""
    if policy is None or policy.get("mode") != "Restricted":
        return ()
    entries = []
    for rule in policy.get("egress") or ():
        if not is_domain_rule(rule):
            continue
        names = tuple(sorted({canonical_name(str(n)) for n in rule.get("domains") or ()}))
        ports = tuple(
            (
                str(p.get("protocol") or DEFAULT_PROTOCOL),
                int(p["port"]),
                None if p.get("endPort") is None else int(p["endPort"]),
            )
            for p in rule.get("ports") or ()
            if isinstance(p, Mapping)
        )
        allow = tuple(str(parse_cidr(c)) for c in rule.get("allowAnswersIn") or ())
        entries.append(DomainEntry(names, ports, allow))
    return tuple(entries)


def domain_set_key(namespace: str, entries: Sequence[DomainEntry]) -> str:
    """A short stable name for a namespace's set of domain entries (10 hex digits).

    Sandboxes whose policies hold the same entries, in the same order, share one
    NetworkPolicy for them. The namespace is part of it so the name alone tells sets apart
    in an audit report.
    """
    text = orjson.dumps([namespace, [e.as_json() for e in entries]])
    return hashlib.sha256(text).hexdigest()[:10]


def names_of(entries: Iterable[DomainEntry]) -> set[str]:
    return {name for entry in entries for name in entry.names}


# --- the answers ---------------------------------------------------------------------------

METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))

# Answers that must not become an allowed address unless the entry says so (allowAnswersIn):
# they reach the node, the cluster, the local network or nothing routable. In order: the
# first match names the reason.
_REFUSED_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared address (RFC 6598, carrier NAT)"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "a unique local address (private)"),
    ("ff00::/8", "multicast"),
)
_REFUSED = tuple((ipaddress.ip_network(cidr), why) for cidr, why in _REFUSED_RANGES)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def answer_problem(
    address: str,
    *,
    allowed: Sequence[Network] = (),
    denied: Sequence[Network] = (),
) -> str | None:
    """Why a resolved ``address`` must not be allowed, or None when it may.

    Refused unless inside one of ``allowed`` (the entry's ``allowAnswersIn``): loopback,
    link-local, private, shared, multicast, unspecified and reserved addresses, and
    ``denied`` (the cluster's pod and service ranges and the nodes' addresses, from
    ``--deny-answers``). The cloud metadata addresses are refused always. IPv6 forms that
    carry an IPv4 address (mapped, NAT64) are judged by that address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in METADATA:
        return "the cloud metadata address"
    if any(ip.version == n.version and ip in n for n in allowed):
        return None
    for network in denied:
        if ip.version == network.version and ip in network:
            return f"inside {network}, a range of the cluster (--deny-answers)"
    for network, why in _REFUSED:
        if ip.version == network.version and ip in network:
            return why
    return None


def host_cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def build_domain_rules(
    entries: Sequence[DomainEntry], addresses: Mapping[str, Iterable[str]]
) -> list[dict[str, Any]]:
    """Egress rules for ``entries``: per entry, its ports and one ipBlock per address its
    names have (``addresses``: already judged by ``answer_problem``), IPv4 first, each
    sorted. An entry with no address gets no rule: a rule with no peers would allow every
    destination."""
    rules: list[dict[str, Any]] = []
    for entry in entries:
        found = {ipaddress.ip_address(a) for name in entry.names for a in addresses.get(name, ())}
        if not found:
            continue
        ordered = sorted(found, key=lambda ip: (ip.version, int(ip)))
        rule: dict[str, Any] = {}
        if entry.ports:
            rule["ports"] = entry.stored_ports()
        rule["to"] = [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}} for ip in ordered]
        rules.append(rule)
    return rules


__all__ = [
    "BACKENDS",
    "BACKEND_CLUSTER_NETWORK_POLICY",
    "BACKEND_RESOLVE",
    "DomainEntry",
    "NameProblem",
    "answer_problem",
    "build_domain_rules",
    "domain_entries",
    "domain_problem",
    "domain_set_key",
]
