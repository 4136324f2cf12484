"""Validation of the networkPolicy field, on both template kinds (README "The `networkPolicy` field")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import template
from webhook.admission.decide import validate_object
from webhook.api import kinds
from webhook.api.settings import Limits, Settings
from webhook.policy.builder import effective_mode
from webhook.policy.validation import validate_network_policy

KINDS = [
    (kinds.AGENT_RUNTIME.kind, "spec.podTemplate.networkPolicy"),
    (kinds.CODE_INTERPRETER.kind, "spec.template.networkPolicy"),
]

RESTRICTED = {
    "mode": "Restricted",
    "ingress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 8080}]}],
    "egress": [
        {
            "cidrs": ["0.0.0.0/0"],
            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
            "ports": [
                {"protocol": "TCP", "port": 443},
                {"protocol": "TCP", "port": 8000, "endPort": 8100},
            ],
        },
        {"cidrs": ["2001:db8::/32"], "except": ["2001:db8:1::/48"]},
    ],
}


def errors_of(kind: str, policy: Any) -> list[str]:
    return validate_object(template(kind, policy), settings=Settings()).errors


def warnings_of(kind: str, policy: Any) -> list[str]:
    return validate_object(template(kind, policy), settings=Settings()).warnings


@pytest.mark.parametrize(("kind", "base"), KINDS)
@pytest.mark.parametrize(
    "policy",
    [
        None,
        {},
        {"mode": "None"},
        {"mode": "Restricted"},
        RESTRICTED,
        {"mode": "Custom"},
        {"mode": "Custom", "custom": {"ingress": [], "egress": []}},
        {
            "mode": "Custom",
            "custom": {
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}
                ],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [
                            {"protocol": "UDP", "port": 53},
                            {"port": "dns-tcp", "protocol": "TCP"},
                        ],
                    },
                    {
                        "to": [{"ipBlock": {"cidr": "fd00::/8"}}],
                        "ports": [{"port": 8000, "endPort": 9000}],
                    },
                ],
            },
        },
    ],
)
def test_valid_policies_pass(kind: str, base: str, policy: Any) -> None:
    assert errors_of(kind, policy) == []


@pytest.mark.parametrize(("kind", "base"), KINDS)
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"mode": "restricted"},
            [
                '.mode: must be one of None, Restricted, Custom (did you mean "Restricted"?): "restricted"'
            ],
        ),
        (
            {"mode": "Custum"},
            ['.mode: must be one of None, Restricted, Custom (did you mean "Custom"?): "Custum"'],
        ),
        ({"mode": 3}, [".mode: must be one of None, Restricted, Custom: 3"]),
        ("Restricted", [': must be an object, not string: "Restricted"']),
        (
            {"mode": "None", "egress": []},
            [".egress: only allowed when mode is Restricted, not None"],
        ),
        (
            {"mode": "Custom", "ingress": []},
            [".ingress: only allowed when mode is Restricted, not Custom"],
        ),
        (
            {"mode": "Restricted", "custom": {}},
            [".custom: only allowed when mode is Custom, not Restricted"],
        ),
        (
            {"mode": "Restricted", "egres": []},
            [
                '.egres: unknown field; allowed: mode, ingress, egress, custom (did you mean "egress"?)'
            ],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8", "10.0.0.1/8"]}]},
            [
                '.egress[0].cidrs[1]: must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
            ],
        ),
        ({"mode": "Restricted", "egress": [{}]}, [".egress[0].cidrs: required: cidrs or domains"]),
        (
            {"mode": "Restricted", "egress": [{"cidrs": []}]},
            [".egress[0].cidrs: must have at least one CIDR: []"],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": "10.0.0.0/8"}]},
            ['.egress[0].cidrs: must be a list of CIDRs, not string: "10.0.0.0/8"'],
        ),
        (
            {
                "mode": "Restricted",
                "ingress": [{"cidrs": ["10.0.0.0/8"], "except": ["11.0.0.0/8"]}],
            },
            [
                '.ingress[0].except[0]: must be strictly inside one of the rule\'s cidrs: "11.0.0.0/8"'
            ],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": 0}]}]},
            [".egress[0].ports[0].port: must be 1-65535: 0"],
        ),
        (
            {
                "mode": "Restricted",
                "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"protocol": "tcp", "port": 80}]}],
            },
            [
                '.egress[0].ports[0].protocol: must be one of TCP, UDP, SCTP (did you mean "TCP"?): "tcp"'
            ],
        ),
        (
            {
                "mode": "Restricted",
                "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": 9000, "endPort": 8000}]}],
            },
            [".egress[0].ports[0].endPort: must be at least port (9000): 8000"],
        ),
        (
            {
                "mode": "Restricted",
                "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": 80, "endPort": 70000}]}],
            },
            [".egress[0].ports[0].endPort: must be at most 65535: 70000"],
        ),
        (
            {
                "mode": "Restricted",
                "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": "http"}]}],
            },
            [
                '.egress[0].ports[0].port: must be an integer 1-65535 (named ports are allowed only in custom rules): "http"'
            ],
        ),
        (
            {
                "mode": "Restricted",
                "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{"port": True}]}],
            },
            [".egress[0].ports[0].port: must be an integer 1-65535: true"],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"], "ports": [{}]}]},
            [".egress[0].ports[0].port: required: a port number 1-65535"],
        ),
        (
            {"mode": "Custom", "custom": {"egress": {}}},
            [".custom.egress: must be a list of rules, not object: {}"],
        ),
        (
            {"mode": "Custom", "custom": {"egres": []}},
            ['.custom.egres: unknown field; allowed: ingress, egress (did you mean "egress"?)'],
        ),
    ],
)
def test_invalid_policies_name_the_field(
    kind: str, base: str, policy: Any, expected: list[str]
) -> None:
    assert errors_of(kind, policy) == [base + e for e in expected]


@pytest.mark.parametrize(("kind", "base"), KINDS)
def test_every_error_is_reported_at_once(kind: str, base: str) -> None:
    policy = {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.0.0.1/8"]}],
        "egress": [{"cidrs": ["fd00::1/8"], "ports": [{"port": 0, "protocol": "ICMP"}]}],
    }
    assert errors_of(kind, policy) == [
        f'{base}.ingress[0].cidrs[0]: must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"',
        f'{base}.egress[0].cidrs[0]: must be a canonical CIDR with no host bits set (did you mean "fd00::/8"?): "fd00::1/8"',
        f'{base}.egress[0].ports[0].protocol: must be one of TCP, UDP, SCTP: "ICMP"',
        f"{base}.egress[0].ports[0].port: must be 1-65535: 0",
    ]


def test_custom_rules_are_checked_as_kube_apiserver_would() -> None:
    policy = {
        "mode": "Custom",
        "custom": {
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
                {"to": [{"podSelector": {"matchLabels": {"bad key!": "x"}}}]},
                {"ports": [{"port": "http", "endPort": 90}]},
            ]
        },
    }
    errors = errors_of(kinds.CODE_INTERPRETER.kind, policy)
    paths = [e.split(":")[0] for e in errors]
    assert "spec.template.networkPolicy.custom.egress[0].to[0]" in paths
    assert any(
        p.startswith("spec.template.networkPolicy.custom.egress[1].to[0].podSelector.matchLabels")
        for p in paths
    )
    assert "spec.template.networkPolicy.custom.egress[2].ports[0].endPort" in paths


def test_size_bounds_keep_the_network_policy_small() -> None:
    limits = Limits(max_rules=2, max_cidrs_per_rule=2, max_ports_per_rule=1)
    policy = {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.0.0.0/8"]}] * 3,
        "egress": [
            {
                "cidrs": ["10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"],
                "ports": [{"port": 1}, {"port": 2}],
            }
        ],
    }
    errors = [str(e) for e in validate_network_policy(policy, "p", limits=limits).errors]
    assert errors == [
        "p.ingress: must have at most 2 rules, not 3",
        "p.egress[0].cidrs: must have at most 2 CIDRs, not 3",
        "p.egress[0].ports: must have at most 1 ports, not 2",
    ]


def test_default_bounds_are_fifty_of_each() -> None:
    def cidrs(count: int) -> list[str]:
        return [f"10.{i // 256}.{i % 256}.0/24" for i in range(count)]

    def errors(policy: dict[str, Any]) -> list[str]:
        found = validate_network_policy(policy, "p", limits=Settings().limits).errors
        return [str(e) for e in found]

    ok = {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.0.0.0/8"]}] * 50,
        "egress": [{"cidrs": cidrs(50), "ports": [{"port": p} for p in range(1, 51)]}],
    }
    assert errors(ok) == []
    too_many = {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.0.0.0/8"]}] * 51,
        "egress": [{"cidrs": cidrs(51), "ports": [{"port": p} for p in range(1, 52)]}],
    }
    assert errors(too_many) == [
        "p.ingress: must have at most 50 rules, not 51",
        "p.egress[0].cidrs: must have at most 50 CIDRs, not 51",
        "p.egress[0].ports: must have at most 50 ports, not 51",
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RESTRICTED, ["egress[0]: egress to all IPv4 addresses (0.0.0.0/0)"]),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["169.254.0.0/16"]}]},
            ["egress[0]: reaches cloud metadata 169.254.169.254; add it to except"],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["::/0"], "except": ["fd00::/8"]}]},
            ["egress[0]: egress to all IPv6 addresses (::/0)"],
        ),
        (
            {"mode": "Restricted", "egress": [{"cidrs": ["fd00::/8"]}]},
            ["egress[0]: reaches cloud metadata fd00:ec2::254; add it to except"],
        ),
        ({"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"]}]}, []),
        ({"mode": "Custom"}, ["custom.egress: no DNS (port 53) allowed; names will not resolve"]),
        (
            {
                "mode": "Custom",
                "custom": {
                    "egress": [
                        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}
                    ]
                },
            },
            ["custom.egress: no DNS (port 53) allowed; names will not resolve"],
        ),
        (
            {
                "mode": "Custom",
                "custom": {"egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]},
            },
            ["custom.egress[0]: egress to all destinations, cloud metadata 169.254.169.254 too"],
        ),
        (
            {
                "mode": "Custom",
                "custom": {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
            },
            [
                "custom.egress[0].to[0]: egress to all IPv4 addresses (0.0.0.0/0)",
                "custom.egress[0].to[0]: reaches cloud metadata 169.254.169.254; add it to except",
            ],
        ),
    ],
)
def test_warnings_inform_without_denying(policy: Any, expected: list[str]) -> None:
    verdict = validate_object(template(kinds.CODE_INTERPRETER.kind, policy), settings=Settings())
    assert verdict.errors == []
    assert verdict.warnings == ["spec.template.networkPolicy." + w for w in expected]
    assert all(len(w) <= 120 for w in verdict.warnings)


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        (None, "None"),
        ({}, "None"),
        ({"mode": "Custom"}, "Custom"),
        ({"mode": "Restricted"}, "Restricted"),
    ],
)
def test_effective_mode(policy: Any, mode: str) -> None:
    assert effective_mode(policy) == mode
