"""Raw NetworkPolicy rules: our verdict is kube-apiserver's (e2e tier).

The tables of tests/policy/test_k8srules.py, and rules drawn at random from tricky parts, are
put in a NetworkPolicy and dry-run created (fieldValidation=Strict) on the kube-apiserver the
suite builds. Our verdict must be the server's: a rule we admit and the server refuses is a
sandbox that starts without its policy; the reverse is a user refused for nothing.
"""

from __future__ import annotations

import base64
import json
import random
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentcube_netpol_dev.controlplane import ControlPlane

from tests import FIXTURES
from tests.policy.test_k8srules import INVALID_INGRESS, INVALID_SELECTORS, LIMITS, VALID_INGRESS
from webhook.api.settings import Settings
from webhook.cli.offline import load_objects
from webhook.policy.builder import build_network_policy, effective_policy, template_policy
from webhook.policy.k8srules import validate_egress_rule, validate_ingress_rule


class DryRun:
    """Dry-run creates of NetworkPolicies on a real kube-apiserver, as its admin."""

    def __init__(self, control_plane: ControlPlane, work_dir: Path) -> None:
        config = yaml.safe_load(control_plane.admin_kubeconfig.read_text())
        user = config["users"][0]["user"]
        cert, key = work_dir / "admin.crt", work_dir / "admin.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        self.context = ssl.create_default_context(cafile=str(control_plane.ca_file))
        self.context.load_cert_chain(str(cert), str(key))
        self.url = (
            f"{control_plane.url}/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
            "?dryRun=All&fieldValidation=Strict"
        )

    def create(self, policy: dict[str, Any]) -> dict[str, Any]:
        """The NetworkPolicy as the server would store it; HTTPError if refused."""
        request = urllib.request.Request(
            self.url,
            data=json.dumps(policy).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            stored: dict[str, Any] = json.loads(response.read())
            return stored

    def accepts(self, direction: str, rule: object) -> tuple[bool, str]:
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "agreement"},
            "spec": {"podSelector": {}, direction: [rule], "policyTypes": [direction.title()]},
        }
        try:
            self.create(policy)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise
            return False, str(json.loads(exc.read()).get("message", ""))
        return True, ""


@pytest.fixture(scope="module")
def apiserver(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    return DryRun(control_plane, tmp_path_factory.mktemp("apiserver"))


def disagreements(apiserver: DryRun, cases: list[tuple[str, object]]) -> list[str]:
    found = []
    for direction, rule in cases:
        if direction == "ingress":
            ours = validate_ingress_rule(rule, "spec.ingress[0]", limits=LIMITS)
        else:
            ours = validate_egress_rule(rule, "spec.egress[0]", limits=LIMITS)
        theirs, message = apiserver.accepts(direction, rule)
        if theirs != (not ours):
            verdict = "accepts" if theirs else f"refuses ({message})"
            found.append(f"{json.dumps(rule)}: kube-apiserver {verdict}; we say {ours}")
    return found


@pytest.mark.e2e
def test_kube_apiserver_agrees_with_every_table_above(apiserver: DryRun) -> None:
    cases: list[tuple[str, object]] = [("ingress", rule) for _, rule in VALID_INGRESS]
    cases += [("ingress", rule) for _, rule, _ in INVALID_INGRESS]
    cases += [("ingress", {"from": [{"podSelector": s}]}) for _, s, _ in INVALID_SELECTORS]
    cases += [("egress", {"from": []}), ("egress", {"to": [{}]})]
    assert disagreements(apiserver, cases) == []


# Parts of rules, good and bad; a draw takes a bad part now and then, so that most rules
# carry zero or one fault and each fault is judged on its own.
GOOD_PARTS: dict[str, list[Any]] = {
    "key": ["a", "A", "a/b", "a.b/c", "a_b", "1", "x" * 63, "example.com/" + "x" * 63],
    "value": ["", "a", "a_b", "a.b", "A", "x" * 63, "1"],
    "port": [1, 80, 65535, "http", "a-b", "a" * 15, None],
    "end_port": [None, None, None, 80, 65535],
    "protocol": [None, "TCP", "UDP", "SCTP"],
    "cidr": ["10.0.0.0/8", "::/0", "2001:db8::/32", "2001:DB8::/32", "1.2.3.4/32", "0.0.0.0/0",
             "10.1.0.0/16", "10.1.2.0/24", "64:ff9b::1.2.3.0/120"],
    "operator": ["In", "NotIn", "Exists", "DoesNotExist"],
}  # fmt: skip
BAD_PARTS: dict[str, list[Any]] = {
    "key": ["-a", "a-", "_a", "a..b/c", "A.com/b", "a/", "/a", "a/b/c", "x" * 64, "é", "a b", "",
            "a:b", "a\n", "x" * 254 + "/a"],
    "value": ["-a", "a-", "x" * 64, "a b", "a/b", "é", "_", "a\n", 1],
    "port": [0, 65536, -1, "HTTP", "80", "a--b", "-a", "a" * 16, "", True, 1.5, 2**31],
    "end_port": [0, 65536, "90", 79],
    "protocol": ["tcp", "ICMP", ""],
    "cidr": ["10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/08", "::ffff:10.0.0.0/104", "fe80::%1/64",
             " 10.0.0.0/8", "10.0.0.0", "10.0.0.0/33", "::/129", "1.2.3/24", "2001:db8::/+32",
             "", "2001:db8::1/32"],
    "operator": ["in", "Equals", ""],
}  # fmt: skip


class RuleDraw:
    def __init__(self, seed: int, bad_rate: float) -> None:
        self.random = random.Random(seed)
        self.bad_rate = bad_rate

    def part(self, name: str) -> Any:
        bad = self.random.random() < self.bad_rate
        return self.random.choice(BAD_PARTS[name] if bad else GOOD_PARTS[name])

    def selector(self) -> dict[str, Any]:
        selector: dict[str, Any] = {}
        if self.random.random() < 0.6:
            count = self.random.randint(0, 2)
            selector["matchLabels"] = {self.part("key"): self.part("value") for _ in range(count)}
        if self.random.random() < 0.5:
            expressions = []
            for _ in range(self.random.randint(1, 2)):
                expression: dict[str, Any] = {
                    "key": self.part("key"),
                    "operator": self.part("operator"),
                }
                if expression["operator"] in ("In", "NotIn") or self.random.random() < 0.1:
                    count = self.random.randint(0 if self.random.random() < 0.1 else 1, 2)
                    expression["values"] = [self.part("value") for _ in range(count)]
                expressions.append(expression)
            selector["matchExpressions"] = expressions
        return selector

    def peer(self) -> dict[str, Any]:
        peer: dict[str, Any] = {}
        if self.random.random() < 0.4:
            block: dict[str, Any] = {"cidr": self.part("cidr")}
            if self.random.random() < 0.5:
                block["except"] = [self.part("cidr") for _ in range(self.random.randint(1, 2))]
            peer["ipBlock"] = block
            if self.random.random() < 0.05:
                peer["podSelector"] = self.selector()
            return peer
        if self.random.random() < 0.7:
            peer["podSelector"] = self.selector()
        if self.random.random() < 0.5:
            peer["namespaceSelector"] = self.selector()
        return peer

    def port(self) -> dict[str, Any]:
        port: dict[str, Any] = {}
        for field, part in (("protocol", "protocol"), ("port", "port"), ("endPort", "end_port")):
            value = self.part(part)
            if value is not None:
                port[field] = value
        return port

    def rule(self, peers_field: str) -> dict[str, Any]:
        rule: dict[str, Any] = {}
        if self.random.random() < 0.6:
            rule["ports"] = [self.port() for _ in range(self.random.randint(1, 2))]
        if self.random.random() < 0.8:
            rule[peers_field] = [self.peer() for _ in range(self.random.randint(1, 2))]
        return rule


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [1, 2])
def test_kube_apiserver_agrees_on_random_rules(apiserver: DryRun, seed: int) -> None:
    draw = RuleDraw(seed, bad_rate=0.04)
    cases: list[tuple[str, object]] = []
    for index in range(400):
        direction = "ingress" if index % 2 else "egress"
        cases.append((direction, draw.rule("from" if direction == "ingress" else "to")))
    valid = sum(
        not validate_ingress_rule(r, "r", limits=LIMITS) for d, r in cases if d == "ingress"
    )
    valid += sum(not validate_egress_rule(r, "r", limits=LIMITS) for d, r in cases if d == "egress")
    assert 0.2 * len(cases) < valid < 0.8 * len(cases), "the draw must mix good and bad rules"
    assert disagreements(apiserver, cases) == []


@pytest.mark.e2e
def test_kube_apiserver_stores_the_built_network_policy_unchanged(apiserver: DryRun) -> None:
    """What the builder makes is what a GET returns, so the reconciler can compare with ==.

    Custom policies from the random draw (valid ones only) and the fixture corpus, through a
    dry-run create: the stored spec must equal the built spec, key order included.
    """
    draw = RuleDraw(7, bad_rate=0.0)
    policies: list[dict[str, Any]] = []
    while len(policies) < 100:
        ingress, egress = draw.rule("from"), draw.rule("to")
        if validate_ingress_rule(ingress, "r", limits=LIMITS) or validate_egress_rule(
            egress, "r", limits=LIMITS
        ):
            continue
        custom = {"ingress": [ingress], "egress": [egress] if len(policies) % 3 else []}
        policies.append({"mode": "Custom", "custom": custom})
    for path in sorted((FIXTURES / "valid").iterdir()):
        for item in load_objects(str(path)):
            policy, error = effective_policy(template_policy(item.obj), None, limits=LIMITS)
            assert error is None
            policies.append(dict(policy or {}))
    changed = []
    for policy in policies:
        built = build_network_policy(
            policy, sandbox="sb-1-abcd1234", namespace="default", settings=Settings()
        )
        if built is None:
            continue
        stored = apiserver.create(built)
        if json.dumps(stored["spec"]) != json.dumps(built["spec"]):
            changed.append(
                f"built {json.dumps(built['spec'])}\nstored {json.dumps(stored['spec'])}"
            )
    assert changed == []
