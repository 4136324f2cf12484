"""The NetworkPolicy a sandbox gets (README "The `networkPolicy` field"), as a pure function.

``render``, the reconciler and the tests all call ``build_network_policy``. It
expects a policy that admission validation accepted (``effective_policy``
makes sure of that); it does no I/O and its output depends on its arguments
alone, in a fixed key order, so the same input gives byte-identical YAML.

Its output is in the form kube-apiserver stores (see ``stored_rule``): what a
GET of the created NetworkPolicy returns equals what was built, so the
reconciler can compare desired with actual using ``==`` on ``spec``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from webhook.api.kinds import (
    LABEL_SANDBOX_NAME,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    NETWORK_POLICY,
    TEMPLATE_POLICY_PATH,
    get_path,
)
from webhook.api.networking import DEFAULT_PROTOCOL, DNS_PORT, NAMESPACE_NAME_LABEL
from webhook.api.settings import Limits, Settings
from webhook.policy.cidr import CidrProblem, Network, parse_cidr, strictly_inside
from webhook.policy.domains import is_domain_rule
from webhook.policy.fielderrors import FieldError
from webhook.policy.k8srules import (
    dns1123_label_problems,
    label_key_problems,
    label_value_problems,
    validate_peer,
)
from webhook.policy.override import parse_override
from webhook.policy.validation import (
    MODE_NONE,
    MODE_RESTRICTED,
    MODES,
    describe,
    validate_network_policy,
)

# What a sandbox gets when its override annotation cannot be read: the tightest
# policy there is (control plane in, DNS out, nothing else), never no policy.
FAIL_CLOSED_POLICY: Mapping[str, Any] = {"mode": MODE_RESTRICTED}


class PolicyShapeError(ValueError):
    """The policy is not one admission validation would have accepted."""


def effective_mode(policy: Mapping[str, Any] | None) -> str:
    """None, Restricted or Custom; an absent policy or absent mode is None.

    An unknown mode raises: building no
    policy for a mode we cannot read would open the sandbox up.
    """
    if policy is None:
        return MODE_NONE
    mode = policy.get("mode")
    if mode is None:
        return MODE_NONE
    if mode not in MODES:
        raise PolicyShapeError(f"networkPolicy.mode must be one of {', '.join(MODES)}: {mode!r}")
    return str(mode)


def template_policy(obj: Mapping[str, Any]) -> object:
    """The ``networkPolicy`` value of an AgentRuntime or CodeInterpreter; None if absent.

    The value is returned as stored, whatever its type: ``effective_policy``
    checks it, so a broken one fails closed instead of reading as "no policy".
    """
    path = TEMPLATE_POLICY_PATH.get(str(obj.get("kind")))
    return None if path is None else get_path(obj, path)


def effective_policy(
    template: object,
    override_json: str | None,
    *,
    limits: Limits,
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The policy a sandbox gets and, when the one it should get is broken, why.

    The override annotation (JSON of a ``networkPolicy`` object) replaces the
    template's policy whole, with no merging; it is read by ``parse_override``, as
    admission reads it. Admission refuses a broken policy, but one can still be
    stored while the webhook is down (or was stored before it was installed);
    then this returns ``FAIL_CLOSED_POLICY`` with the reason, so the sandbox is
    isolated rather than opened up, and the caller reports the reason (an Event).
    What this returns, ``build_network_policy`` can build. ``limits`` are the
    webhook's (``Settings.limits``): with other bounds, the reconciler would build
    what the webhook refuses.
    """
    if override_json is not None:
        override, found = parse_override(override_json, limits=limits)
        if found.errors:
            return FAIL_CLOSED_POLICY, f"override annotation is invalid: {describe(found.errors)}"
        return override, None
    errors = validate_network_policy(template, "networkPolicy", limits=limits).errors
    if errors:
        return FAIL_CLOSED_POLICY, f"template networkPolicy is invalid: {describe(errors)}"
    return (template if isinstance(template, Mapping) else None), None


def build_network_policy(
    policy: Mapping[str, Any] | None,
    *,
    sandbox: str,
    namespace: str,
    settings: Settings,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The NetworkPolicy for one sandbox, or None when its effective mode is None.

    ``owner`` is the Sandbox (direct path) or SandboxClaim (warm path) as an
    object (``apiVersion``, ``kind``, ``metadata.name``, ``metadata.uid``) or as
    a flat ``{apiVersion, kind, name, uid}``; it becomes the controller
    ownerReference so the garbage collector removes the policy with it.
    """
    mode = effective_mode(policy)
    if mode == MODE_NONE or policy is None:
        return None

    # Rules as written (custom ones straight from the user); stored_rule() copies each.
    ingress: list[object] = [control_plane_rule(settings)]
    egress: list[object]
    if mode == MODE_RESTRICTED:
        ingress += [_simple_rule(rule, "from") for rule in _list(policy.get("ingress"))]
        egress = [dns_rule(settings)]
        # Entries with domains are not here: their addresses are in the namespace's shared
        # domain policy (webhook.reconciler.domainplan), which adds them to this one.
        egress += [
            _simple_rule(rule, "to")
            for rule in _list(policy.get("egress"))
            if not is_domain_rule(rule)
        ]
    else:
        custom = policy.get("custom") or {}
        if not isinstance(custom, Mapping):
            raise PolicyShapeError("networkPolicy.custom must be an object")
        ingress += _list(custom.get("ingress"))
        egress = list(_list(custom.get("egress")))

    metadata: dict[str, Any] = {
        "name": sandbox,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, LABEL_SANDBOX_NAME: sandbox},
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": metadata,
        "spec": _omit_empty(
            {
                "podSelector": {"matchLabels": {LABEL_SANDBOX_NAME: sandbox}},
                "ingress": [stored_rule(rule, "from") for rule in ingress],
                # Empty (Custom without egress): absent, as stored; with policyTypes
                # Egress it still means no egress at all.
                "egress": [stored_rule(rule, "to") for rule in egress],
                "policyTypes": ["Ingress", "Egress"],
            }
        ),
    }


# --- the form kube-apiserver stores ----------------------------------------------------------
#
# The API server defaults a port's protocol to TCP (SetDefaults_NetworkPolicyPort), drops
# null and empty optional fields (omitempty on every list, map and pointer of
# networking/v1's types), and writes fields in struct order and map keys sorted. The builder
# writes rules that way too, so the NetworkPolicy it makes is the one a GET returns and the
# reconciler can compare desired with actual by ==. Custom rules are copied field by field,
# their meaning untouched.


def stored_rule(rule: object, peers_field: str) -> dict[str, Any]:
    """A NetworkPolicy{Ingress,Egress}Rule in stored form: ports, then from/to."""
    rule = _mapping(rule, "a rule")
    return _omit_empty(
        {
            "ports": [_stored_port(port) for port in _list(rule.get("ports"))],
            peers_field: [_stored_peer(peer) for peer in _list(rule.get(peers_field))],
        }
    )


def _stored_port(port: object) -> dict[str, Any]:
    port = _mapping(port, "a port")
    return _omit_empty(
        {
            "protocol": port.get("protocol") or DEFAULT_PROTOCOL,
            "port": port.get("port"),
            "endPort": port.get("endPort"),
        }
    )


def _stored_peer(peer: object) -> dict[str, Any]:
    peer = _mapping(peer, "a peer")
    stored: dict[str, Any] = {}
    for name in ("podSelector", "namespaceSelector"):
        if peer.get(name) is not None:
            stored[name] = _stored_selector(peer[name])
    block = peer.get("ipBlock")
    if block is not None:
        block = _mapping(block, "an ipBlock")
        stored["ipBlock"] = _omit_empty(
            {"cidr": block.get("cidr"), "except": list(_list(block.get("except")))}
        )
    return stored


def _stored_selector(selector: object) -> dict[str, Any]:
    selector = _mapping(selector, "a label selector")
    labels = _mapping(selector.get("matchLabels") or {}, "matchLabels")
    expressions = [
        _omit_empty(
            {
                "key": expression.get("key"),
                "operator": expression.get("operator"),
                "values": list(_list(expression.get("values"))),
            }
        )
        for expression in (
            _mapping(e, "a selector requirement") for e in _list(selector.get("matchExpressions"))
        )
    ]
    return _omit_empty(
        {
            "matchLabels": {key: labels[key] for key in sorted(labels)},
            "matchExpressions": expressions,
        }
    )


def _omit_empty(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in fields.items() if value is not None and value not in ([], {})
    }


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyShapeError(f"{what} must be an object, not {type(value).__name__}")
    return value


def control_plane_rule(settings: Settings) -> dict[str, Any]:
    """Ingress rule 0: the AgentCube router and workload manager, on every port.

    The workload manager TCP-dials each of the sandbox's ports to check
    readiness, so this rule has no ``ports``. Each peer carries both selectors,
    so it matches those pods in the AgentCube namespace only.
    """
    namespace_selector = {"matchLabels": {NAMESPACE_NAME_LABEL: settings.agentcube_namespace}}
    return {
        "from": [
            {
                "podSelector": {"matchLabels": dict(labels)},
                "namespaceSelector": copy.deepcopy(namespace_selector),
            }
            for labels in (settings.router_labels, settings.workload_manager_labels)
        ]
    }


def dns_rule(settings: Settings) -> dict[str, Any]:
    """Restricted egress rule 0: DNS on UDP and TCP 53, to the configured peers."""
    rule: dict[str, Any] = {
        "ports": [
            {"protocol": "UDP", "port": DNS_PORT},
            {"protocol": "TCP", "port": DNS_PORT},
        ]
    }
    if not settings.dns_to_anywhere:
        rule["to"] = [_plain(peer) for peer in settings.dns_peers]
    return rule


def settings_errors(settings: Settings) -> list[FieldError]:
    """What in the policy options would make NetworkPolicies kube-apiserver refuses.

    The control-plane labels and namespace and the DNS peers go into every
    NetworkPolicy; a bad one (``--router-label "my app=x"``) must stop the
    command at startup, not fail every sandbox later. Paths name the option.
    """
    errors = [
        FieldError("--agentcube-namespace", problem, settings.agentcube_namespace)
        for problem in dns1123_label_problems(settings.agentcube_namespace)
    ]
    for option, labels in (
        ("--router-label", settings.router_labels),
        ("--workload-manager-label", settings.workload_manager_labels),
    ):
        for key, value in labels.items():
            shown = f"{key}={value}"
            errors += [FieldError(option, p, shown) for p in label_key_problems(key)]
            errors += [FieldError(option, p, shown) for p in label_value_problems(value)]
    if not settings.dns_to_anywhere:
        for index, peer in enumerate(settings.dns_peers):
            errors += validate_peer(_plain(peer), f"--dns-peer[{index}]", limits=settings.limits)
    if settings.isolation_canary is not None and not settings.isolation_canary_image.strip():
        # Every gated sandbox pod would get an init container the API server refuses.
        errors.append(
            FieldError(
                "--isolation-canary-image",
                "must name an image when --isolation-canary is given",
                settings.isolation_canary_image,
            )
        )
    return errors


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    metadata = owner.get("metadata")
    source = metadata if isinstance(metadata, Mapping) else owner
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": source["name"],
        "uid": source["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _simple_rule(rule: object, peers_field: str) -> dict[str, Any]:
    """A Restricted ``ingress``/``egress`` entry as a NetworkPolicy rule.

    One ipBlock per cidr, carrying the ``except`` entries that lie inside it,
    each CIDR in its RFC 5952 text form; ``ports`` absent (or empty) means all
    ports, so the rule has none. Custom rules, by contrast, are copied verbatim.
    """
    if not isinstance(rule, Mapping):
        raise PolicyShapeError(f"a simple rule must be an object, not {type(rule).__name__}")
    networks = [_network(c) for c in _list(rule.get("cidrs"))]
    excepts = [_network(e) for e in _list(rule.get("except"))]
    blocks: list[dict[str, Any]] = []
    for network in networks:
        # str() is the RFC 5952 form kube-apiserver prefers: it warns on any other
        # IPv6 spelling (such as 2001:0db8::/32) at every create and update.
        block: dict[str, Any] = {"cidr": str(network)}
        inside = [str(e) for e in excepts if strictly_inside(e, network)]
        if inside:
            block["except"] = inside
        blocks.append({"ipBlock": block})

    result: dict[str, Any] = {}
    ports = [_simple_port(port) for port in _list(rule.get("ports"))]
    if ports:
        result["ports"] = ports
    result[peers_field] = blocks
    return result


def _simple_port(port: object) -> dict[str, Any]:
    if not isinstance(port, Mapping):
        raise PolicyShapeError(f"a port must be an object, not {type(port).__name__}")
    if port.get("port") is None:
        raise PolicyShapeError("a simple rule's port needs a port number")
    result: dict[str, Any] = {
        "protocol": port.get("protocol") or DEFAULT_PROTOCOL,
        "port": port["port"],
    }
    if port.get("endPort") is not None:
        result["endPort"] = port["endPort"]
    return result


def _network(text: object) -> Network:
    # parse_cidr caches by text: sandboxes of one template share their CIDRs.
    parsed = parse_cidr(text)
    if isinstance(parsed, CidrProblem):
        raise PolicyShapeError(f"{text!r}: {parsed.message()}")
    return parsed


def _list(value: object) -> Sequence[object]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise PolicyShapeError(f"expected a list, not {type(value).__name__}")
    return value


def _plain(value: object) -> Any:
    """A deep copy made of plain dicts and lists (settings hold read-only mappings)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)
