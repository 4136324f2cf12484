"""Raw ``networking.k8s.io/v1`` NetworkPolicy rules, validated as kube-apiserver does.

A Custom-mode ``networkPolicy`` carries NetworkPolicyIngressRule and
NetworkPolicyEgressRule objects that we later copy, verbatim, into a
NetworkPolicy. Every check here mirrors one in kube-apiserver so that a rule we
admit is a rule the API server accepts; the comments name the Go function each
one follows:

- ``pkg/apis/networking/validation/validation.go``: ValidateNetworkPolicySpec
  (the loops over ports and peers), ValidateNetworkPolicyPort,
  ValidateNetworkPolicyPeer, ValidateIPBlock;
- ``apimachinery/pkg/apis/meta/v1/validation/validation.go``:
  ValidateLabelSelector, ValidateLabelSelectorRequirement, ValidateLabels
  (with ``AllowInvalidLabelValueInSelector`` false, as on CREATE);
- ``apimachinery/pkg/api/validate/content/kube.go``: IsLabelKey (a.k.a.
  IsQualifiedName), IsLabelValue;
- ``apimachinery/pkg/util/validation/validation.go``: IsValidPortNum,
  IsValidPortName, IsDNS1123Subdomain.

Where we are stricter than the API server, it is on purpose and said so:
CIDRs must be canonical (``webhook.policy.cidr``), unknown fields are errors (the API
server would prune or reject them, and a pruned field is a rule the user did
not get), JSON types are checked (the API server's decoder rejects those), and
counts are bounded (``Limits``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeGuard

from webhook.api.networking import MAX_PORT, MIN_PORT, PROTOCOLS
from webhook.api.settings import Limits
from webhook.policy.cidr import cidr_errors, except_errors
from webhook.policy.fielderrors import (
    FieldError,
    did_you_mean,
    join,
    too_many,
    type_name,
    unknown_fields,
)

SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Field names of each networking.k8s.io/v1 type we accept, in Go struct order.
INGRESS_RULE_FIELDS = ("ports", "from")
EGRESS_RULE_FIELDS = ("ports", "to")
PORT_FIELDS = ("protocol", "port", "endPort")
PEER_FIELDS = ("podSelector", "namespaceSelector", "ipBlock")
IP_BLOCK_FIELDS = ("cidr", "except")
LABEL_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
REQUIREMENT_FIELDS = ("key", "operator", "values")

# content/kube.go: labelKeyFmt, labelValueFmt; LabelValueMaxLength, labelKeyMaxLength.
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_NAME_MAX_CHARS = 63
LABEL_VALUE_MAX_CHARS = 63
# util/validation: dns1123SubdomainFmt, DNS1123SubdomainMaxLength.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_SUBDOMAIN_MAX_CHARS = 253
# util/validation: dns1123LabelFmt, DNS1123LabelMaxLength (namespace names).
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL_MAX_CHARS = 63
# util/validation: IsValidPortName (an IANA_SVC_NAME, RFC 6335).
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")
PORT_NAME_MAX_CHARS = 15

_LABEL_NAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_RULE = (
    "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, "
    "'-' or '.', starting and ending with an alphanumeric character"
)


def validate_ingress_rule(rule: object, path: str, *, limits: Limits) -> list[FieldError]:
    """A NetworkPolicyIngressRule: ``ports`` and ``from`` peers."""
    return _validate_rule(rule, path, peers_field="from", limits=limits)


def validate_egress_rule(rule: object, path: str, *, limits: Limits) -> list[FieldError]:
    """A NetworkPolicyEgressRule: ``ports`` and ``to`` peers."""
    return _validate_rule(rule, path, peers_field="to", limits=limits)


def _validate_rule(
    rule: object, path: str, *, peers_field: str, limits: Limits
) -> list[FieldError]:
    # ValidateNetworkPolicySpec: each port, then each peer, of each rule.
    if not isinstance(rule, Mapping):
        return [_not_a(path, "an object", rule)]
    known = INGRESS_RULE_FIELDS if peers_field == "from" else EGRESS_RULE_FIELDS
    errors = unknown_fields(rule, known, path)

    ports_path = join(path, "ports")
    ports = rule.get("ports")
    if ports is not None:
        if not isinstance(ports, list):
            errors.append(_not_a(ports_path, "a list", ports))
        else:
            errors += _too_many(ports_path, ports, limits.max_ports_per_rule, "ports")
            for index, port in enumerate(ports):
                errors += validate_port(port, join(ports_path, index))

    peers_path = join(path, peers_field)
    peers = rule.get(peers_field)
    if peers is not None:
        if not isinstance(peers, list):
            errors.append(_not_a(peers_path, "a list", peers))
        else:
            errors += _too_many(peers_path, peers, limits.max_peers_per_rule, "peers")
            for index, peer in enumerate(peers):
                errors += validate_peer(peer, join(peers_path, index), limits=limits)
    return errors


def validate_port(port: object, path: str) -> list[FieldError]:
    """A NetworkPolicyPort: mirrors ValidateNetworkPolicyPort."""
    if not isinstance(port, Mapping):
        return [_not_a(path, "an object", port)]
    errors = unknown_fields(port, PORT_FIELDS, path)

    protocol = port.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        # field.NotSupported(protocol, ..., [TCP, UDP, SCTP])
        detail = did_you_mean(f"must be one of {', '.join(PROTOCOLS)}", protocol, PROTOCOLS)
        errors.append(FieldError(join(path, "protocol"), detail, protocol))

    port_path = join(path, "port")
    end_port_path = join(path, "endPort")
    number = port.get("port")
    end_port = port.get("endPort")
    if end_port is not None and not _is_int(end_port):
        # endPort is an int32: the API server's decoder refuses anything else.
        errors.append(_not_a(end_port_path, "an integer", end_port))
        end_port = None

    if number is None:
        if end_port is not None:
            errors.append(
                FieldError(
                    end_port_path, "may not be specified when `port` is not specified", end_port
                )
            )
    elif _is_int(number):
        # IsValidPortNum on port; endPort >= port and IsValidPortNum on endPort.
        if not MIN_PORT <= number <= MAX_PORT:
            errors.append(FieldError(port_path, _PORT_RANGE, number))
        if end_port is not None:
            if end_port < number:
                errors.append(
                    FieldError(end_port_path, "must be greater than or equal to `port`", end_port)
                )
            if not MIN_PORT <= end_port <= MAX_PORT:
                errors.append(FieldError(end_port_path, _PORT_RANGE, end_port))
    elif isinstance(number, str):
        # An IntOrString holding a string: a named port (IsValidPortName).
        if end_port is not None:
            errors.append(
                FieldError(
                    end_port_path, "may not be specified when `port` is non-numeric", end_port
                )
            )
        errors += [FieldError(port_path, detail, number) for detail in port_name_problems(number)]
    else:
        errors.append(_not_a(port_path, "an integer or a port name", number))
    return errors


_PORT_RANGE = f"must be between {MIN_PORT} and {MAX_PORT}, inclusive"


def port_name_problems(name: str) -> list[str]:
    """What is wrong with an IANA service name (IsValidPortName); nothing when valid."""
    problems: list[str] = []
    if len(name) > PORT_NAME_MAX_CHARS:
        problems.append(f"must be no more than {PORT_NAME_MAX_CHARS} characters")
    if not _PORT_NAME_CHARS.fullmatch(name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        problems.append("must contain at least one letter (a-z)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def validate_peer(peer: object, path: str, *, limits: Limits) -> list[FieldError]:
    """A NetworkPolicyPeer: mirrors ValidateNetworkPolicyPeer.

    Exactly an ipBlock alone, or a podSelector and/or a namespaceSelector. An
    empty selector (``{}``) is a selector: it matches everything.
    """
    if not isinstance(peer, Mapping):
        return [_not_a(path, "an object", peer)]
    errors = unknown_fields(peer, PEER_FIELDS, path)
    present = [name for name in PEER_FIELDS if peer.get(name) is not None]
    for name in ("podSelector", "namespaceSelector"):
        if name in present:
            errors += validate_label_selector(peer[name], join(path, name), limits=limits)
    if "ipBlock" in present:
        errors += validate_ip_block(peer["ipBlock"], join(path, "ipBlock"), limits=limits)

    if not present:
        errors.append(
            FieldError(path, "must specify a peer (ipBlock, podSelector or namespaceSelector)")
        )
    elif len(present) > 1 and "ipBlock" in present:
        errors.append(FieldError(path, "may not specify both ipBlock and another peer"))
    return errors


def validate_ip_block(block: object, path: str, *, limits: Limits) -> list[FieldError]:
    """An IPBlock: mirrors ValidateIPBlock, with canonical CIDRs (stricter on purpose)."""
    if not isinstance(block, Mapping):
        return [_not_a(path, "an object", block)]
    errors = unknown_fields(block, IP_BLOCK_FIELDS, path)
    cidr = block.get("cidr")
    cidr_path = join(path, "cidr")
    if cidr is None or cidr == "":
        errors.append(FieldError(cidr_path, "is required"))
        return errors
    broken_cidr = cidr_errors(cidr, cidr_path)
    errors += broken_cidr
    excepts = block.get("except")
    except_path = join(path, "except")
    if isinstance(excepts, list):
        errors += _too_many(except_path, excepts, limits.max_except_per_cidr, "entries")
    if isinstance(cidr, str) and not broken_cidr:
        # "must be a strict subset of `cidr`", each except canonical too.
        errors += except_errors(cidr, excepts, except_path)
    elif excepts is not None:
        # The cidr is broken: still report each except that is broken on its own.
        if not isinstance(excepts, list):
            errors.append(_not_a(except_path, "a list of CIDRs", excepts))
        else:
            for index, entry in enumerate(excepts):
                errors += cidr_errors(entry, join(except_path, index))
    return errors


def validate_label_selector(selector: object, path: str, *, limits: Limits) -> list[FieldError]:
    """A LabelSelector: mirrors ValidateLabelSelector (invalid label values refused)."""
    if not isinstance(selector, Mapping):
        return [_not_a(path, "an object", selector)]
    errors = unknown_fields(selector, LABEL_SELECTOR_FIELDS, path)

    labels_path = join(path, "matchLabels")
    labels = selector.get("matchLabels")
    terms = 0
    if labels is not None:
        if not isinstance(labels, Mapping):
            errors.append(_not_a(labels_path, "an object of label keys to values", labels))
        else:
            terms += len(labels)
            # ValidateLabels reports both key and value errors at the map's path.
            for key, value in labels.items():
                errors += [FieldError(labels_path, d, key) for d in label_key_problems(key)]
                if not isinstance(value, str):
                    errors.append(
                        FieldError(
                            labels_path,
                            f"value of {key!r} must be a string, not {type_name(value)}",
                            value,
                        )
                    )
                else:
                    errors += [
                        FieldError(labels_path, d, value) for d in label_value_problems(value)
                    ]

    expressions_path = join(path, "matchExpressions")
    expressions = selector.get("matchExpressions")
    if expressions is not None:
        if not isinstance(expressions, list):
            errors.append(_not_a(expressions_path, "a list", expressions))
        else:
            terms += len(expressions)
            for index, requirement in enumerate(expressions):
                errors += validate_requirement(
                    requirement, join(expressions_path, index), limits=limits
                )
    if terms > limits.max_label_selector_terms:
        errors.append(
            too_many(
                path,
                count=terms,
                limit=limits.max_label_selector_terms,
                noun="matchLabels and matchExpressions",
            )
        )
    return errors


def validate_requirement(requirement: object, path: str, *, limits: Limits) -> list[FieldError]:
    """A LabelSelectorRequirement: mirrors ValidateLabelSelectorRequirement."""
    if not isinstance(requirement, Mapping):
        return [_not_a(path, "an object", requirement)]
    errors = unknown_fields(requirement, REQUIREMENT_FIELDS, path)
    operator = requirement.get("operator")
    values = requirement.get("values")
    values_path = join(path, "values")
    if values is not None and not isinstance(values, list):
        errors.append(_not_a(values_path, "a list of strings", values))
        values = None
    count = len(values or [])

    if operator in ("In", "NotIn"):
        if count == 0:
            errors.append(
                FieldError(values_path, "must be specified when `operator` is 'In' or 'NotIn'")
            )
    elif operator in ("Exists", "DoesNotExist"):
        if count > 0:
            errors.append(
                FieldError(
                    values_path,
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            )
    else:
        detail = "not a valid selector operator; must be one of In, NotIn, Exists, DoesNotExist"
        detail = did_you_mean(detail, operator, SELECTOR_OPERATORS)
        errors.append(FieldError(join(path, "operator"), detail, operator))

    key = requirement.get("key", "")
    errors += [FieldError(join(path, "key"), d, key) for d in label_key_problems(key)]

    if values:
        errors += _too_many(values_path, values, limits.max_label_selector_terms, "values")
        for index, value in enumerate(values):
            value_path = join(values_path, index)
            if not isinstance(value, str):
                errors.append(_not_a(value_path, "a string", value))
                continue
            errors += [FieldError(value_path, d, value) for d in label_value_problems(value)]
    return errors


def label_key_problems(key: object) -> list[str]:
    """What is wrong with a label key (IsLabelKey / IsQualifiedName); nothing when valid."""
    if not isinstance(key, str):
        return [f"must be a string, not {type_name(key)}"]
    parts = key.split("/")
    if len(parts) > 2:
        return [
            "a valid label key is a name with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName'); it has more than one '/'"
        ]
    problems: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems += ["prefix part " + p for p in dns1123_subdomain_problems(prefix)]
    if not name:
        problems.append("name part must be non-empty")
    else:
        if len(name) > LABEL_NAME_MAX_CHARS:
            problems.append(f"name part must be no more than {LABEL_NAME_MAX_CHARS} characters")
        if not _LABEL_NAME.fullmatch(name):
            problems.append("name part " + _LABEL_NAME_RULE)
    return problems


def label_value_problems(value: str) -> list[str]:
    """What is wrong with a label value (IsLabelValue); nothing when valid. Empty is valid."""
    problems: list[str] = []
    if len(value) > LABEL_VALUE_MAX_CHARS:
        problems.append(f"must be no more than {LABEL_VALUE_MAX_CHARS} characters")
    if value and not _LABEL_NAME.fullmatch(value):
        problems.append("a label value must be empty or " + _LABEL_NAME_RULE.removeprefix("must "))
    return problems


def dns1123_subdomain_problems(value: str) -> list[str]:
    """What is wrong with a DNS-1123 subdomain (IsDNS1123Subdomain); nothing when valid."""
    problems: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX_CHARS:
        problems.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX_CHARS} characters")
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(_DNS1123_RULE)
    return problems


def dns1123_label_problems(value: str) -> list[str]:
    """What is wrong with a DNS-1123 label, e.g. a namespace name (IsDNS1123Label)."""
    problems: list[str] = []
    if len(value) > DNS1123_LABEL_MAX_CHARS:
        problems.append(f"must be no more than {DNS1123_LABEL_MAX_CHARS} characters")
    if not _DNS1123_LABEL.fullmatch(value):
        problems.append(
            "must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', "
            "starting and ending with an alphanumeric character"
        )
    return problems


def _too_many(path: str, items: list[object], limit: int, noun: str) -> list[FieldError]:
    if len(items) <= limit:
        return []
    return [too_many(path, count=len(items), limit=limit, noun=noun)]


def _not_a(path: str, what: str, value: object) -> FieldError:
    return FieldError(path, f"must be {what}, not {type_name(value)}", value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
