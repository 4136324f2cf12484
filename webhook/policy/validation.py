"""Validation of the ``networkPolicy`` object (README "The `networkPolicy` field").

``validate_network_policy`` is pure: a value and its field path in, every error
and warning out. Admission, ``check`` and the override annotation all call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.api.networking import (
    DEFAULT_PROTOCOL,
    DNS_PORT,
    DNS_PORT_NAMES,
    MAX_PORT,
    MIN_PORT,
    PORT_RANGE,
    PROTOCOLS,
)
from webhook.api.settings import Limits
from webhook.policy import k8srules
from webhook.policy.cidr import CidrProblem, Network, except_errors, parse_cidr, reaches
from webhook.policy.domains import METADATA, canonical_name, domain_problem
from webhook.policy.fielderrors import (
    FieldError,
    did_you_mean,
    join,
    too_many,
    type_name,
    unknown_fields,
)

MODE_NONE = "None"
MODE_RESTRICTED = "Restricted"
MODE_CUSTOM = "Custom"
MODES = (MODE_NONE, MODE_RESTRICTED, MODE_CUSTOM)

METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254")

_POLICY_FIELDS = ("mode", "ingress", "egress", "custom")
_RULE_FIELDS = ("cidrs", "except", "ports")
_DOMAIN_RULE_FIELDS = ("domains", "ports", "allowAnswersIn")
# Where a ClusterNetworkPolicy holds the names (Limits.domain_wildcards): its bounds on
# egress rules and on a rule's protocols.
CLUSTER_NETWORK_POLICY_MAX = 25
_PORT_FIELDS = ("protocol", "port", "endPort")
_CUSTOM_FIELDS = ("ingress", "egress")


@dataclass
class Findings:
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)


def validate_network_policy(policy: object, path: str, *, limits: Limits) -> Findings:
    """Every error and warning of a ``networkPolicy`` value found at ``path``."""
    found = Findings()
    if policy is None:
        return found
    if not isinstance(policy, Mapping):
        found.errors.append(FieldError(path, f"must be an object, not {type_name(policy)}", policy))
        return found
    found.errors.extend(unknown_fields(policy, _POLICY_FIELDS, path))

    mode = policy.get("mode", MODE_NONE)
    mode_path = join(path, "mode")
    if mode is None:
        mode = MODE_NONE
    if mode not in MODES:
        detail = did_you_mean(f"must be one of {', '.join(MODES)}", mode, MODES)
        found.errors.append(FieldError(mode_path, detail, mode))
        return found  # which fields belong cannot be told

    for key, owner in (
        ("ingress", MODE_RESTRICTED),
        ("egress", MODE_RESTRICTED),
        ("custom", MODE_CUSTOM),
    ):
        if key in policy and mode != owner:
            found.errors.append(
                FieldError(join(path, key), f"only allowed when mode is {owner}, not {mode}")
            )

    if mode == MODE_RESTRICTED:
        for direction in ("ingress", "egress"):
            if direction in policy:
                found.extend(
                    _validate_simple_rules(
                        policy[direction], join(path, direction), direction, limits
                    )
                )
    elif mode == MODE_CUSTOM:
        found.extend(_validate_custom(policy.get("custom"), join(path, "custom"), limits))
    return found


def _validate_simple_rules(rules: object, path: str, direction: str, limits: Limits) -> Findings:
    found = Findings()
    if not isinstance(rules, list):
        found.errors.append(
            FieldError(path, f"must be a list of rules, not {type_name(rules)}", rules)
        )
        return found
    if len(rules) > limits.max_rules:
        found.errors.append(too_many(path, count=len(rules), limit=limits.max_rules, noun="rules"))
        return found
    for index, rule in enumerate(rules):
        found.extend(_validate_simple_rule(rule, join(path, index), direction, limits))
    if direction == "egress" and not found.errors:
        names = {
            canonical_name(n)
            for rule in rules
            for n in (rule.get("domains") or [])
            if isinstance(rule, Mapping) and isinstance(rule.get("domains"), list)
        }
        if len(names) > limits.max_domains:
            found.errors.append(
                too_many(path, count=len(names), limit=limits.max_domains, noun="domain names")
            )
        entries = sum(1 for rule in rules if isinstance(rule, Mapping) and "domains" in rule)
        if limits.domain_wildcards and entries > CLUSTER_NETWORK_POLICY_MAX:
            found.errors.append(
                too_many(
                    path,
                    count=entries,
                    limit=CLUSTER_NETWORK_POLICY_MAX,
                    noun="entries with domains (a ClusterNetworkPolicy's egress rules)",
                )
            )
    return found


def _validate_simple_rule(rule: object, path: str, direction: str, limits: Limits) -> Findings:
    found = Findings()
    if not isinstance(rule, Mapping):
        found.errors.append(FieldError(path, f"must be an object, not {type_name(rule)}", rule))
        return found
    if "domains" in rule:
        return _validate_domain_rule(rule, path, direction, limits)
    known = _RULE_FIELDS + (("domains",) if direction == "egress" else ())
    found.errors.extend(
        e for e in unknown_fields(rule, known, path) if not e.path.endswith(".allowAnswersIn")
    )
    if "allowAnswersIn" in rule:
        found.errors.append(
            FieldError(join(path, "allowAnswersIn"), "only allowed in an entry with domains")
        )

    cidrs = rule.get("cidrs")
    if cidrs is None and direction == "egress":
        found.errors.append(FieldError(join(path, "cidrs"), "required: cidrs or domains"))
        return found
    networks = _simple_rule_networks(cidrs, join(path, "cidrs"), limits, found.errors)

    excepts = rule.get("except")
    except_path = join(path, "except")
    except_limit = limits.max_except_per_cidr * max(1, len(networks))
    if isinstance(excepts, list) and len(excepts) > except_limit:
        found.errors.append(
            too_many(
                except_path,
                count=len(excepts),
                limit=except_limit,
                noun=f"entries ({limits.max_except_per_cidr} per CIDR)",
            )
        )
    else:
        found.errors.extend(
            except_errors(cidrs if isinstance(cidrs, list) else [], excepts, except_path)
        )

    if "ports" in rule:
        found.errors.extend(_validate_simple_ports(rule["ports"], join(path, "ports"), limits))

    if direction == "egress" and networks:
        excluded = [
            n
            for n in map(parse_cidr, excepts if isinstance(excepts, list) else [])
            if not isinstance(n, CidrProblem)
        ]
        found.warnings.extend(_egress_warnings(networks, excluded, path))
    return found


def _validate_domain_rule(
    rule: Mapping[str, Any], path: str, direction: str, limits: Limits
) -> Findings:
    """An egress entry that names its destinations by DNS: ``domains``, ``ports`` and
    ``allowAnswersIn`` (CIDRs in which answers normally dropped as private are accepted)."""
    found = Findings()
    domains_path = join(path, "domains")
    if direction != "egress":
        found.errors.append(
            FieldError(domains_path, "only allowed in egress entries (a source has no name)")
        )
        return found
    for key in ("cidrs", "except"):
        if key in rule:
            found.errors.append(
                FieldError(
                    join(path, key),
                    "not allowed with domains: an entry takes cidrs or domains, not both",
                )
            )
    found.errors.extend(
        e
        for e in unknown_fields(rule, _DOMAIN_RULE_FIELDS, path)
        if not e.path.endswith((".cidrs", ".except"))
    )
    domains = rule["domains"]
    if not isinstance(domains, list):
        found.errors.append(
            FieldError(
                domains_path, f"must be a list of domain names, not {type_name(domains)}", domains
            )
        )
    elif not domains:
        found.errors.append(FieldError(domains_path, "must have at least one name", domains))
    elif len(domains) > limits.max_domains_per_rule:
        found.errors.append(
            too_many(
                domains_path, count=len(domains), limit=limits.max_domains_per_rule, noun="names"
            )
        )
    else:
        seen: dict[str, int] = {}
        for index, name in enumerate(domains):
            problem = domain_problem(name, wildcards=limits.domain_wildcards)
            if problem is not None:
                found.errors.append(FieldError(join(domains_path, index), problem.message(), name))
                continue
            key = canonical_name(name)
            if key in seen:
                found.errors.append(
                    FieldError(
                        join(domains_path, index),
                        f"duplicate of domains[{seen[key]}]",
                        name,
                    )
                )
            seen.setdefault(key, index)
    if "ports" in rule:
        found.errors.extend(_validate_simple_ports(rule["ports"], join(path, "ports"), limits))
        ports = rule["ports"]
        if (
            limits.domain_wildcards
            and isinstance(ports, list)
            and len(ports) > CLUSTER_NETWORK_POLICY_MAX
        ):
            found.errors.append(
                too_many(
                    join(path, "ports"),
                    count=len(ports),
                    limit=CLUSTER_NETWORK_POLICY_MAX,
                    noun="ports (a ClusterNetworkPolicy rule's protocols)",
                )
            )
    if not rule.get("ports"):
        found.warnings.append(
            f"{path}: no ports: every port of these names' addresses is allowed "
            "(add ports, such as TCP 443)"
        )
    if "allowAnswersIn" in rule:
        found.extend(_validate_allow_answers_in(rule["allowAnswersIn"], path, limits))
    return found


def _validate_allow_answers_in(value: object, path: str, limits: Limits) -> Findings:
    found = Findings()
    allow_path = join(path, "allowAnswersIn")
    if not isinstance(value, list):
        found.errors.append(
            FieldError(allow_path, f"must be a list of CIDRs, not {type_name(value)}", value)
        )
        return found
    if len(value) > limits.max_allow_answers_in:
        found.errors.append(
            too_many(allow_path, count=len(value), limit=limits.max_allow_answers_in, noun="CIDRs")
        )
        return found
    for index, parsed in enumerate(map(parse_cidr, value)):
        if isinstance(parsed, CidrProblem):
            found.errors.append(FieldError(join(allow_path, index), parsed.message(), value[index]))
        elif any(parsed.version == ip.version and ip in parsed for ip in METADATA):
            found.warnings.append(
                f"{join(allow_path, index)}: holds a cloud metadata address; "
                "an answer with it is dropped all the same"
            )
    return found


def _simple_rule_networks(
    cidrs: object, cidrs_path: str, limits: Limits, errors: list[FieldError]
) -> list[Network]:
    """The networks a simple rule's ``cidrs`` names; what is wrong goes to ``errors``."""
    networks: list[Network] = []
    if cidrs is None:
        errors.append(FieldError(cidrs_path, "required: at least one CIDR"))
    elif not isinstance(cidrs, list):
        errors.append(
            FieldError(cidrs_path, f"must be a list of CIDRs, not {type_name(cidrs)}", cidrs)
        )
    elif not cidrs:
        errors.append(FieldError(cidrs_path, "must have at least one CIDR", cidrs))
    elif len(cidrs) > limits.max_cidrs_per_rule:
        errors.append(
            too_many(cidrs_path, count=len(cidrs), limit=limits.max_cidrs_per_rule, noun="CIDRs")
        )
    else:
        for index, parsed in enumerate(map(parse_cidr, cidrs)):
            if isinstance(parsed, CidrProblem):
                errors.append(FieldError(join(cidrs_path, index), parsed.message(), cidrs[index]))
            else:
                networks.append(parsed)
    return networks


def _egress_warnings(networks: list[Network], excluded: list[Network], path: str) -> list[str]:
    warnings = []
    for network in networks:
        if network.prefixlen == 0:
            warnings.append(
                f"{path}: egress to all {'IPv4' if network.version == 4 else 'IPv6'} addresses ({network})"
            )
    for address in METADATA_ADDRESSES:
        if any(reaches(n, excluded, address) for n in networks):
            warnings.append(f"{path}: reaches cloud metadata {address}; add it to except")
    return warnings


def _validate_simple_ports(ports: object, path: str, limits: Limits) -> list[FieldError]:
    if not isinstance(ports, list):
        return [FieldError(path, f"must be a list of ports, not {type_name(ports)}", ports)]
    if len(ports) > limits.max_ports_per_rule:
        return [too_many(path, count=len(ports), limit=limits.max_ports_per_rule, noun="ports")]
    errors: list[FieldError] = []
    for index, port in enumerate(ports):
        port_path = join(path, index)
        if not isinstance(port, Mapping):
            errors.append(FieldError(port_path, f"must be an object, not {type_name(port)}", port))
            continue
        errors.extend(unknown_fields(port, _PORT_FIELDS, port_path))
        protocol = port.get("protocol", DEFAULT_PROTOCOL)
        if protocol not in PROTOCOLS:
            errors.append(
                FieldError(
                    join(port_path, "protocol"),
                    did_you_mean(f"must be one of {', '.join(PROTOCOLS)}", protocol, PROTOCOLS),
                    protocol,
                )
            )
        number = port.get("port")
        number_ok = False
        if number is None:
            errors.append(
                FieldError(join(port_path, "port"), f"required: a port number {PORT_RANGE}")
            )
        elif not is_integer(number):
            detail = f"must be an integer {PORT_RANGE}"
            if isinstance(number, str):
                detail += " (named ports are allowed only in custom rules)"
            errors.append(FieldError(join(port_path, "port"), detail, number))
        elif not MIN_PORT <= number <= MAX_PORT:
            errors.append(FieldError(join(port_path, "port"), f"must be {PORT_RANGE}", number))
        else:
            number_ok = True
        if "endPort" in port:
            end = port["endPort"]
            end_path = join(port_path, "endPort")
            if not is_integer(end):
                errors.append(FieldError(end_path, "must be an integer", end))
            elif end > MAX_PORT:
                errors.append(FieldError(end_path, f"must be at most {MAX_PORT}", end))
            elif number_ok and end < number:
                errors.append(FieldError(end_path, f"must be at least port ({number})", end))
    return errors


def is_integer(value: object) -> bool:
    """A JSON integer (booleans are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_custom(custom: object, path: str, limits: Limits) -> Findings:
    found = Findings()
    if custom is None:
        # Custom with nothing: the control plane may reach the pod, nothing else;
        # egress is denied entirely, DNS included.
        found.warnings.append(f"{path}.egress: no DNS (port 53) allowed; names will not resolve")
        return found
    if not isinstance(custom, Mapping):
        found.errors.append(FieldError(path, f"must be an object, not {type_name(custom)}", custom))
        return found
    found.errors.extend(unknown_fields(custom, _CUSTOM_FIELDS, path))
    for direction, validate_rule in (
        ("ingress", k8srules.validate_ingress_rule),
        ("egress", k8srules.validate_egress_rule),
    ):
        rules = custom.get(direction)
        rules_path = join(path, direction)
        if rules is None:
            continue
        if not isinstance(rules, list):
            found.errors.append(
                FieldError(rules_path, f"must be a list of rules, not {type_name(rules)}", rules)
            )
            continue
        if len(rules) > limits.max_rules:
            found.errors.append(
                too_many(rules_path, count=len(rules), limit=limits.max_rules, noun="rules")
            )
            continue
        for index, rule in enumerate(rules):
            found.errors.extend(validate_rule(rule, join(rules_path, index), limits=limits))
    egress = custom.get("egress")
    if isinstance(egress, list) and not found.errors:
        found.warnings.extend(_custom_egress_warnings(egress, join(path, "egress")))
    elif egress is None:
        found.warnings.append(f"{path}.egress: no DNS (port 53) allowed; names will not resolve")
    return found


def _custom_egress_warnings(rules: list[Any], path: str) -> list[str]:
    warnings = []
    allows_dns = False
    for index, rule in enumerate(rules):
        rule_path = join(path, index)
        peers = rule.get("to") or []
        ports = rule.get("ports") or []
        if not ports or any(_port_allows(p, DNS_PORT) for p in ports):
            allows_dns = True
        if not peers:
            warnings.append(
                f"{rule_path}: egress to all destinations, cloud metadata {METADATA_ADDRESSES[0]} too"
            )
            continue
        for peer_index, peer in enumerate(peers):
            block = peer.get("ipBlock")
            if not block:
                continue
            network = parse_cidr(block.get("cidr"))
            if isinstance(network, CidrProblem):
                continue
            excluded = [
                n
                for n in map(parse_cidr, block.get("except") or [])
                if not isinstance(n, CidrProblem)
            ]
            peer_path = join(join(rule_path, "to"), peer_index)
            warnings.extend(_egress_warnings([network], excluded, peer_path))
    if not allows_dns:
        warnings.append(f"{path}: no DNS (port 53) allowed; names will not resolve")
    return warnings


def _port_allows(port: Mapping[str, Any], number: int) -> bool:
    value = port.get("port")
    if value is None:
        return True  # all ports of the protocol
    if isinstance(value, str):
        return value in DNS_PORT_NAMES
    end = port.get("endPort", value)
    return bool(value <= number <= end)


def describe(errors: Iterable[FieldError]) -> str:
    return "; ".join(str(e) for e in errors)


__all__ = [
    "MODES",
    "Findings",
    "validate_network_policy",
]
