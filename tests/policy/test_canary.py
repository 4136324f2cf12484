"""The isolation canary: parsed as the flag gives it, and whether a sandbox's NetworkPolicy
lets it through (then its init container has nothing to check)."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.api.settings import Settings
from webhook.policy.builder import build_network_policy
from webhook.policy.canary import format_canary, lets_through, parse_canary

CANARY = ("10.96.0.10", 443)


@pytest.mark.parametrize(
    ("text", "canary", "shown"),
    [
        ("10.96.0.10:443", ("10.96.0.10", 443), "10.96.0.10:443"),
        ("[fd00::a]:9443", ("fd00::a", 9443), "[fd00::a]:9443"),
        ("[FD00:0::A]:1", ("fd00::a", 1), "[fd00::a]:1"),
    ],
)
def test_an_address_and_port_parse_and_print_back(
    text: str, canary: tuple[str, int], shown: str
) -> None:
    assert parse_canary(text) == canary
    assert format_canary(canary) == shown


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.96.0.10", "expected ADDRESS:PORT, got '10.96.0.10'"),
        ("webhook.svc:443", "'webhook.svc' is not an IP address (a name needs DNS"),
        ("10.96.0.10:0", "port '0' is not a number in 1-65535"),
        ("10.96.0.10:https", "port 'https' is not a number in 1-65535"),
        ("127.0.0.1:443", "127.0.0.1 is in the pod itself, not behind its NetworkPolicy"),
        ("0.0.0.0:443", "0.0.0.0 is in the pod itself"),
    ],
)
def test_what_is_not_a_canary_is_refused_saying_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_canary(text)
    assert str(caught.value).startswith(problem)


def egress(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {}, "egress": list(rules), "policyTypes": ["Ingress", "Egress"]}


@pytest.mark.parametrize(
    ("spec", "through"),
    [
        (None, True),  # no policy
        ({"podSelector": {}, "policyTypes": ["Ingress"]}, True),  # egress not restricted
        ({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, False),  # no egress at all
        (egress({}), True),  # every destination, every port
        (egress({"ports": [{"port": 443}]}), True),  # every destination on its port
        (egress({"ports": [{"port": 80}]}), False),
        (egress({"ports": [{"protocol": "UDP", "port": 443}]}), False),
        (egress({"ports": [{"protocol": "TCP"}]}), True),  # every TCP port
        (egress({"ports": [{"port": 400, "endPort": 500}]}), True),
        (egress({"ports": [{"port": 444, "endPort": 500}]}), False),
        (egress({"ports": [{"port": "https"}]}), False),  # a named port is a pod's
        (egress({"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}]}), True),
        (
            egress({"to": [{"ipBlock": {"cidr": "10.96.0.0/12", "except": ["10.96.0.0/24"]}}]}),
            False,
        ),
        (egress({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 53}]}), False),
        (egress({"to": [{"ipBlock": {"cidr": "::/0"}}]}), False),  # another family
        (egress({"to": [{"namespaceSelector": {}}]}), False),  # pods: taken not to match
    ],
)
def test_whether_a_policy_lets_the_canary_through(spec: Any, through: bool) -> None:
    assert lets_through(spec, CANARY) is through


def test_restricted_lets_it_through_only_when_a_listed_cidr_holds_it() -> None:
    def spec(cidrs: list[str]) -> Any:
        policy = {"mode": "Restricted", "egress": [{"cidrs": cidrs}]}
        built = build_network_policy(policy, sandbox="s", namespace="n", settings=Settings())
        assert built is not None
        return built["spec"]

    assert lets_through(spec(["192.168.0.0/16"]), CANARY) is False  # DNS and this CIDR only
    assert lets_through(spec(["10.0.0.0/8"]), CANARY) is True
