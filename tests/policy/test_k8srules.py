"""Raw NetworkPolicy rules are judged as kube-apiserver judges them.

Each case names the Go rule it mirrors (pkg/apis/networking/validation and
apimachinery's label selector validation) and asserts the field path a user
would see in the error.
"""

from __future__ import annotations

from typing import Any

import pytest

from webhook.api.settings import Limits
from webhook.policy.k8srules import (
    dns1123_label_problems,
    label_key_problems,
    label_value_problems,
    port_name_problems,
    validate_egress_rule,
    validate_ingress_rule,
    validate_label_selector,
)

LIMITS = Limits()
P = "spec.template.networkPolicy.custom.ingress[0]"
E = "spec.template.networkPolicy.custom.egress[0]"


def ingress_errors(rule: object, limits: Limits = LIMITS) -> list[str]:
    return [str(e) for e in validate_ingress_rule(rule, P, limits=limits)]


def egress_errors(rule: object, limits: Limits = LIMITS) -> list[str]:
    return [str(e) for e in validate_egress_rule(rule, E, limits=limits)]


def paths(errors: list[Any]) -> list[str]:
    return [e.path for e in errors]


VALID_INGRESS: list[tuple[str, dict[str, Any]]] = [
    ("empty rule: all sources, all ports", {}),
    ("empty lists", {"ports": [], "from": []}),
    ("null fields mean absent", {"ports": None, "from": None}),
    ("port number", {"ports": [{"port": 80}]}),
    ("port range", {"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}]}),
    ("endPort equal to port", {"ports": [{"port": 8000, "endPort": 8000}]}),
    ("bounds", {"ports": [{"port": 1}, {"port": 65535, "endPort": 65535}]}),
    ("all protocols", {"ports": [{"protocol": p, "port": 53} for p in ("TCP", "UDP", "SCTP")]}),
    ("protocol only: all ports of it", {"ports": [{"protocol": "UDP"}]}),
    ("named port", {"ports": [{"port": "http"}]}),
    ("named port 15 chars", {"ports": [{"port": "a23456789012345"}]}),
    ("named port with digits and hyphen", {"ports": [{"port": "h2-c"}]}),
    ("ipBlock v4", {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
    ("ipBlock v6", {"from": [{"ipBlock": {"cidr": "2001:db8::/32"}}]}),
    (
        "ipBlock with except",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
    ),
    ("empty podSelector: every pod", {"from": [{"podSelector": {}}]}),
    ("empty namespaceSelector: every namespace", {"from": [{"namespaceSelector": {}}]}),
    (
        "pod and namespace selectors together",
        {
            "from": [
                {
                    "podSelector": {"matchLabels": {"app": "x"}},
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns"}},
                }
            ]
        },
    ),
    (
        "every operator",
        {
            "from": [
                {
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "a", "operator": "In", "values": ["x", "y"]},
                            {"key": "b", "operator": "NotIn", "values": [""]},
                            {"key": "c", "operator": "Exists"},
                            {"key": "d", "operator": "DoesNotExist", "values": []},
                        ]
                    }
                }
            ]
        },
    ),
    (
        "label keys and values at their limits",
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "example.com/" + "n" * 63: "v" * 63,
                            "A_b.C-9": "",
                            "a.b-c.example/Name": "X.y_z-1",
                        }
                    }
                }
            ]
        },
    ),
]


@pytest.mark.parametrize(("rule"), [r for _, r in VALID_INGRESS], ids=[n for n, _ in VALID_INGRESS])
def test_valid_ingress_rules_have_no_errors(rule: dict[str, Any]) -> None:
    assert ingress_errors(rule) == []


def test_valid_egress_rule_has_no_errors() -> None:
    rule = {
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": "dns-tcp"}],
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            },
            {"ipBlock": {"cidr": "169.254.20.10/32"}},
        ],
    }
    assert egress_errors(rule) == []


# (case, rule, expected field paths)
INVALID_INGRESS: list[tuple[str, object, list[str]]] = [
    ("rule not an object", ["ports"], [P]),
    ("ports not a list", {"ports": {"port": 80}}, [f"{P}.ports"]),
    ("from not a list", {"from": "10.0.0.0/8"}, [f"{P}.from"]),
    ("unknown rule field", {"to": []}, [f"{P}.to"]),
    ("port entry not an object", {"ports": [80]}, [f"{P}.ports[0]"]),
    # ValidateNetworkPolicyPort
    ("protocol lowercase", {"ports": [{"protocol": "tcp", "port": 1}]}, [f"{P}.ports[0].protocol"]),
    ("protocol ICMP", {"ports": [{"protocol": "ICMP"}]}, [f"{P}.ports[0].protocol"]),
    ("protocol empty", {"ports": [{"protocol": ""}]}, [f"{P}.ports[0].protocol"]),
    ("port 0", {"ports": [{"port": 0}]}, [f"{P}.ports[0].port"]),
    ("port 65536", {"ports": [{"port": 65536}]}, [f"{P}.ports[0].port"]),
    ("port negative", {"ports": [{"port": -1}]}, [f"{P}.ports[0].port"]),
    ("port boolean", {"ports": [{"port": True}]}, [f"{P}.ports[0].port"]),
    ("port float", {"ports": [{"port": 80.5}]}, [f"{P}.ports[0].port"]),
    ("port digits as a string", {"ports": [{"port": "80"}]}, [f"{P}.ports[0].port"]),
    (
        "endPort below port",
        {"ports": [{"port": 8100, "endPort": 8000}]},
        [f"{P}.ports[0].endPort"],
    ),
    ("endPort too big", {"ports": [{"port": 1, "endPort": 65536}]}, [f"{P}.ports[0].endPort"]),
    (
        "endPort below port and out of range: both reported",
        {"ports": [{"port": 10, "endPort": 0}]},
        [f"{P}.ports[0].endPort", f"{P}.ports[0].endPort"],
    ),
    ("endPort without port", {"ports": [{"endPort": 80}]}, [f"{P}.ports[0].endPort"]),
    (
        "endPort with named port",
        {"ports": [{"port": "http", "endPort": 90}]},
        [f"{P}.ports[0].endPort"],
    ),
    ("endPort a string", {"ports": [{"port": 80, "endPort": "90"}]}, [f"{P}.ports[0].endPort"]),
    ("unknown port field", {"ports": [{"port": 80, "end_port": 90}]}, [f"{P}.ports[0].end_port"]),
    # ValidateNetworkPolicyPeer
    ("peer with nothing", {"from": [{}]}, [f"{P}.from[0]"]),
    ("peer with null selectors", {"from": [{"podSelector": None}]}, [f"{P}.from[0]"]),
    (
        "ipBlock with podSelector",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
        [f"{P}.from[0]"],
    ),
    (
        "ipBlock with namespaceSelector",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]},
        [f"{P}.from[0]"],
    ),
    ("peer not an object", {"from": ["10.0.0.0/8"]}, [f"{P}.from[0]"]),
    (
        "unknown peer field, and then no peer",
        {"from": [{"ipblock": {"cidr": "10.0.0.0/8"}}]},
        [f"{P}.from[0].ipblock", f"{P}.from[0]"],
    ),
    # ValidateIPBlock
    ("ipBlock without cidr", {"from": [{"ipBlock": {}}]}, [f"{P}.from[0].ipBlock.cidr"]),
    ("ipBlock empty cidr", {"from": [{"ipBlock": {"cidr": ""}}]}, [f"{P}.from[0].ipBlock.cidr"]),
    (
        "ipBlock cidr with host bits",
        {"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]},
        [f"{P}.from[0].ipBlock.cidr"],
    ),
    (
        "except outside cidr",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]},
        [f"{P}.from[0].ipBlock.except[0]"],
    ),
    (
        "except equal to cidr: not a strict subset",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]},
        [f"{P}.from[0].ipBlock.except[0]"],
    ),
    (
        "except of the other family",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}}]},
        [f"{P}.from[0].ipBlock.except[0]"],
    ),
    (
        "bad cidr and bad except: both reported",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/33", "except": ["10.1.0.1/16"]}}]},
        [f"{P}.from[0].ipBlock.cidr", f"{P}.from[0].ipBlock.except[0]"],
    ),
    (
        "except not a list",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}}]},
        [f"{P}.from[0].ipBlock.except"],
    ),
    (
        "unknown ipBlock field",
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "exceptions": []}}]},
        [f"{P}.from[0].ipBlock.exceptions"],
    ),
]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [(r, e) for _, r, e in INVALID_INGRESS],
    ids=[n for n, _, _ in INVALID_INGRESS],
)
def test_invalid_ingress_rules_name_the_field(rule: object, expected: list[str]) -> None:
    assert paths(validate_ingress_rule(rule, P, limits=LIMITS)) == expected


def test_egress_rules_use_to_not_from() -> None:
    assert paths(validate_egress_rule({"from": []}, E, limits=LIMITS)) == [f"{E}.from"]
    assert paths(validate_egress_rule({"to": [{}]}, E, limits=LIMITS)) == [f"{E}.to[0]"]


def test_messages_say_what_is_wrong_and_show_the_value() -> None:
    assert ingress_errors({"ports": [{"port": 0}]}) == [
        f"{P}.ports[0].port: must be between 1 and 65535, inclusive: 0"
    ]
    assert ingress_errors({"ports": [{"protocol": "tcp", "port": 1}]}) == [
        f'{P}.ports[0].protocol: must be one of TCP, UDP, SCTP (did you mean "TCP"?): "tcp"'
    ]
    assert ingress_errors({"ports": [{"port": 8100, "endPort": 8000}]}) == [
        f"{P}.ports[0].endPort: must be greater than or equal to `port`: 8000"
    ]
    assert ingress_errors({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}) == [
        f"{P}.from[0]: may not specify both ipBlock and another peer"
    ]
    assert ingress_errors({"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}) == [
        f"{P}.from[0].ipBlock.cidr: must be a canonical CIDR with no host bits set "
        '(did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
    ]
    assert ingress_errors({"from": [{"podselector": {}}]})[0] == (
        f"{P}.from[0].podselector: unknown field; allowed: podSelector, namespaceSelector, "
        'ipBlock (did you mean "podSelector"?)'
    )


# Label selectors: ValidateLabelSelector / ValidateLabelSelectorRequirement / ValidateLabels.
S = "spec.podTemplate.networkPolicy.custom.egress[1].to[0].podSelector"

INVALID_SELECTORS: list[tuple[str, object, list[str]]] = [
    ("selector not an object", "app=x", [S]),
    ("matchLabels not an object", {"matchLabels": ["app"]}, [f"{S}.matchLabels"]),
    ("label key with space", {"matchLabels": {"my app": "x"}}, [f"{S}.matchLabels"]),
    ("label key starts with dash", {"matchLabels": {"-app": "x"}}, [f"{S}.matchLabels"]),
    ("label key name too long", {"matchLabels": {"a" * 64: "x"}}, [f"{S}.matchLabels"]),
    ("label key empty prefix", {"matchLabels": {"/app": "x"}}, [f"{S}.matchLabels"]),
    ("label key uppercase prefix", {"matchLabels": {"Example.com/app": "x"}}, [f"{S}.matchLabels"]),
    ("label key two slashes", {"matchLabels": {"a/b/c": "x"}}, [f"{S}.matchLabels"]),
    ("label key empty name", {"matchLabels": {"example.com/": "x"}}, [f"{S}.matchLabels"]),
    ("label value too long", {"matchLabels": {"app": "v" * 64}}, [f"{S}.matchLabels"]),
    ("label value ends with dot", {"matchLabels": {"app": "v."}}, [f"{S}.matchLabels"]),
    ("label value with slash", {"matchLabels": {"app": "a/b"}}, [f"{S}.matchLabels"]),
    ("label value a number", {"matchLabels": {"app": 1}}, [f"{S}.matchLabels"]),
    ("matchExpressions not a list", {"matchExpressions": {}}, [f"{S}.matchExpressions"]),
    (
        "In without values",
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        [f"{S}.matchExpressions[0].values"],
    ),
    (
        "NotIn with empty values",
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
        [f"{S}.matchExpressions[0].values"],
    ),
    (
        "Exists with values",
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        [f"{S}.matchExpressions[0].values"],
    ),
    (
        "DoesNotExist with values",
        {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
        [f"{S}.matchExpressions[0].values"],
    ),
    (
        "unknown operator",
        {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
        [f"{S}.matchExpressions[0].operator"],
    ),
    (
        "missing operator and key",
        {"matchExpressions": [{}]},
        [f"{S}.matchExpressions[0].operator", f"{S}.matchExpressions[0].key"],
    ),
    (
        "bad key",
        {"matchExpressions": [{"key": "a b", "operator": "Exists"}]},
        [f"{S}.matchExpressions[0].key"],
    ),
    (
        "bad value in values",
        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "not ok"]}]},
        [f"{S}.matchExpressions[0].values[1]"],
    ),
    (
        "values not strings",
        {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]},
        [f"{S}.matchExpressions[0].values[0]"],
    ),
    (
        "unknown requirement field",
        {"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]},
        [f"{S}.matchExpressions[0].value"],
    ),
    ("unknown selector field", {"matchLabel": {"a": "b"}}, [f"{S}.matchLabel"]),
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [(s, e) for _, s, e in INVALID_SELECTORS],
    ids=[n for n, _, _ in INVALID_SELECTORS],
)
def test_invalid_label_selectors_name_the_field(selector: object, expected: list[str]) -> None:
    assert paths(validate_label_selector(selector, S, limits=LIMITS)) == expected


def test_label_selector_messages_show_the_offending_key_or_value() -> None:
    (key_error,) = validate_label_selector({"matchLabels": {"my app": "x"}}, S, limits=LIMITS)
    assert str(key_error).startswith(f"{S}.matchLabels: name part must consist of")
    assert str(key_error).endswith(': "my app"')
    (value_error,) = validate_label_selector({"matchLabels": {"app": "v."}}, S, limits=LIMITS)
    assert str(value_error).endswith(': "v."')
    (operator_error,) = validate_label_selector(
        {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}, S, limits=LIMITS
    )
    assert '(did you mean "In"?)' in str(operator_error)


@pytest.mark.parametrize(
    "name",
    ["http", "h2c", "a23456789012345", "dns-tcp", "x1", "1x"],
)
def test_iana_service_names_accepted(name: str) -> None:
    assert port_name_problems(name) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a234567890123456", "must be no more than 15 characters"),
        ("HTTP", "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        ("8080", "must contain at least one letter (a-z)"),
        ("dns--tcp", "must not contain consecutive hyphens"),
        ("-http", "must not begin or end with a hyphen"),
        ("http-", "must not begin or end with a hyphen"),
        ("", "must contain at least one letter (a-z)"),
    ],
)
def test_iana_service_names_refused(name: str, problem: str) -> None:
    assert problem in port_name_problems(name)


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("app", True),
        ("kubernetes.io/metadata.name", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("x" * 253 + "/a", True),  # the prefix may have 253 characters
        ("x" * 254 + "/a", False),
        ("-a", False),
        ("a-", False),
        ("a_b", True),
        ("", False),
        ("é", False),
        ("a\n", False),  # no trailing-newline loophole
    ],
)
def test_label_keys(key: str, ok: bool) -> None:
    assert (label_key_problems(key) == []) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("a", True),
        ("A.b_c-1", True),
        ("v" * 63, True),
        ("v" * 64, False),
        ("_a", False),
        ("a\n", False),
        ("a b", False),
    ],
)
def test_label_values(value: str, ok: bool) -> None:
    assert (label_value_problems(value) == []) is ok


def test_limits_bound_ports_peers_excepts_and_selector_terms() -> None:
    small = Limits(
        max_ports_per_rule=2,
        max_peers_per_rule=2,
        max_except_per_cidr=1,
        max_label_selector_terms=2,
    )
    rule = {
        "ports": [{"port": 1}, {"port": 2}, {"port": 3}],
        "from": [
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}},
            {
                "podSelector": {
                    "matchLabels": {"a": "1", "b": "2"},
                    "matchExpressions": [{"key": "c", "operator": "Exists"}],
                }
            },
            {"namespaceSelector": {}},
        ],
    }
    errors = validate_ingress_rule(rule, P, limits=small)
    assert paths(errors) == [
        f"{P}.ports",
        f"{P}.from",
        f"{P}.from[0].ipBlock.except",
        f"{P}.from[1].podSelector",
    ]
    assert [str(e) for e in errors] == [
        f"{P}.ports: must have at most 2 ports, not 3",
        f"{P}.from: must have at most 2 peers, not 3",
        f"{P}.from[0].ipBlock.except: must have at most 1 entries, not 2",
        f"{P}.from[1].podSelector: must have at most 2 matchLabels and matchExpressions, not 3",
    ]
    assert ingress_errors(rule) == []  # the default limits are roomier


def test_every_error_is_reported_at_once() -> None:
    rule = {
        "ports": [{"protocol": "ICMP", "port": 0}],
        "from": [{}, {"ipBlock": {"cidr": "10.0.0.1/8"}}],
    }
    assert paths(validate_ingress_rule(rule, P, limits=LIMITS)) == [
        f"{P}.ports[0].protocol",
        f"{P}.ports[0].port",
        f"{P}.from[0]",
        f"{P}.from[1].ipBlock.cidr",
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("agentcube", True), ("a", True), ("a-1", True), ("x" * 63, True), ("x" * 64, False),
     ("A", False), ("a.b", False), ("-a", False), ("a_b", False), ("", False)],
)  # fmt: skip
def test_namespace_names(name: str, ok: bool) -> None:
    assert (dns1123_label_problems(name) == []) is ok
