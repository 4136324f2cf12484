"""Our checks against the real API server's: what we let through, it accepts.

- Every NetworkPolicy ``python -m webhook render`` builds from a corpus of valid templates is
  accepted by kube-apiserver (server-side dry-run create): a template we admit never yields a
  NetworkPolicy the reconciler cannot create.
- Every CIDR kube-apiserver refuses in a NetworkPolicy ipBlock, ``webhook.policy.cidr`` refuses too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from agentcube_netpol_dev.testdns import DnsServer

from tests.builders import agent_runtime, code_interpreter
from tests.e2e.harness import REPO_ROOT, Kubectl, as_json
from webhook.policy.cidr import CidrProblem, parse_cidr

RENDER_TIMEOUT_S = 30

PORTS = [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 5000, "endPort": 5100}]
SELECTOR = {
    "matchLabels": {"app.kubernetes.io/name": "db"},
    "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["a", "b"]},
        {"key": "canary", "operator": "DoesNotExist"},
    ],
}
VALID_POLICIES: dict[str, dict[str, Any]] = {
    "restricted-bare": {"mode": "Restricted"},
    "restricted-full": {
        "mode": "Restricted",
        "ingress": [{"cidrs": ["10.8.0.0/16", "fd00:8::/64"], "ports": PORTS}],
        "egress": [
            {
                "cidrs": ["0.0.0.0/0"],
                "except": ["10.0.0.0/8", "169.254.169.254/32"],
                "ports": [{"port": 443}, {"protocol": "SCTP", "port": 9000, "endPort": 65535}],
            },
            {"cidrs": ["::/0"], "except": ["fd00:ec2::254/128"]},
            {"cidrs": ["192.168.1.7/32", "2001:db8::/32"]},
        ],
    },
    "restricted-ipv6-forms": {
        "mode": "Restricted",
        "egress": [{"cidrs": ["2001:db8:0:0:0:0:0:0/64", "fe80::/10", "2001:DB8::/48"]}],
    },
    "custom-empty": {"mode": "Custom", "custom": {}},
    "custom-deny-all-egress": {"mode": "Custom", "custom": {"ingress": [], "egress": []}},
    "custom-full": {
        "mode": "Custom",
        "custom": {
            "ingress": [
                {
                    "from": [
                        {"podSelector": SELECTOR},
                        {"namespaceSelector": SELECTOR, "podSelector": {}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": "http-alt"}, {"port": 8080}],
                },
                {},
            ],
            "egress": [
                {
                    "to": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {"to": [{"ipBlock": {"cidr": "::/0"}}], "ports": [{"port": 1, "endPort": 2}]},
            ],
        },
    },
}

# CIDR spellings, canonical and not. The API server's verdict on each is the reference.
CIDRS = [
    "10.0.0.0/8", "10.0.0.1/8", "10.0.0.0/08", "010.0.0.0/8", "10.0.0.0/+8", "10.0.0.0/-1",
    "10.0.0.0/33", "10.0.0.0", "10.0.0/8", "10.0.0.0.0/8", "10.0.0.256/32", " 10.0.0.0/8",
    "10.0.0.0/8 ", "10.0.0.0 /8", "0.0.0.0/0", "255.255.255.255/32", "1.2.3.4/32",
    "192.168.0.0/16", "192.168.0.0/0", "10.0.0.0/", "/8", "", "a.b.c.d/8", "1e1.0.0.0/8",
    "0x0a.0.0.0/8", "10.0.0.0/8/8", "::/0", "::/128", "::1/128", "2001:db8::/32",
    "2001:DB8::/32", "2001:db8::1/32", "2001:0db8::/32", "2001:db8:0:0:0:0:0:0/32",
    "2001:db8::/129", "2001:db8::/032", "::ffff:10.0.0.0/104", "::ffff:0:0/96",
    "::ffff:10.0.0.1/128", "fe80::/10", "fe80::1%eth0/64", "fd00:ec2::254/128",
    "2001:db8:::/32", "2001:db8::g/32", "[2001:db8::]/32", "10.0.0.0/8\n", "\uff110.0.0.0/8",  # a fullwidth digit
]  # fmt: skip


def render(
    template: dict[str, Any], *, sandbox: str, namespace: str, options: tuple[str, ...] = ()
) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "render", "-", "--sandbox", sandbox,
         "--namespace", namespace, *options],
        input=json.dumps(template), capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=RENDER_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"render refused a valid template: {result.stderr}"
    return result.stdout


@pytest.mark.parametrize("policy_name", sorted(VALID_POLICIES))
@pytest.mark.parametrize("make", [code_interpreter, agent_runtime], ids=lambda f: f.__name__)
def test_rendered_network_policy_is_accepted_by_the_api_server(
    kubectl: Kubectl, namespace: str, make: Any, policy_name: str
) -> None:
    template = make("tpl", namespace, VALID_POLICIES[policy_name])

    rendered = render(template, sandbox=f"{policy_name}-x7k2p9qa", namespace=namespace)

    network_policy = yaml.safe_load(rendered)
    assert network_policy["kind"] == "NetworkPolicy"
    result = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=rendered)
    assert result.returncode == 0, f"kube-apiserver refused:\n{rendered}\n{result.stderr}"
    # Nothing of what we built was dropped or defaulted away.
    accepted = json.loads(result.stdout)
    assert accepted["spec"]["podSelector"] == network_policy["spec"]["podSelector"]
    assert len(accepted["spec"].get("egress") or []) == len(
        network_policy["spec"].get("egress") or []
    )
    assert len(accepted["spec"].get("ingress") or []) == len(
        network_policy["spec"].get("ingress") or []
    )


# Settings that change what render builds: the DNS rule and the control-plane peers.
RENDER_OPTIONS = {
    "dns-to-anywhere": ("--dns-to-anywhere",),
    "dns-peer-nodelocal": ("--dns-peer", '{"ipBlock": {"cidr": "169.254.20.10/32"}}'),
    "dns-peer-selectors": (
        "--dns-peer",
        '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}}}',
        "--dns-peer",
        '{"podSelector": {"matchExpressions": [{"key": "k8s-app", "operator": "Exists"}]}}',
    ),
    "other-control-plane": (
        "--agentcube-namespace", "agentcube-system",
        "--router-label", "app.kubernetes.io/name=router",
        "--router-label", "app.kubernetes.io/part-of=agentcube",
        "--workload-manager-label", "app.kubernetes.io/name=workload-manager",
    ),
}  # fmt: skip


@pytest.mark.parametrize("options_name", sorted(RENDER_OPTIONS))
def test_rendered_network_policy_with_other_settings_is_accepted(
    kubectl: Kubectl, namespace: str, options_name: str
) -> None:
    template = code_interpreter("tpl", namespace, VALID_POLICIES["restricted-full"])

    rendered = render(
        template, sandbox="tpl-x7k2p9qa", namespace=namespace,
        options=RENDER_OPTIONS[options_name],
    )  # fmt: skip

    result = kubectl("create", "--dry-run=server", "-f", "-", input=rendered)
    assert result.returncode == 0, f"kube-apiserver refused:\n{rendered}\n{result.stderr}"


def ip_block_policy(cidr: str, namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"cidr-{index}", "namespace": namespace},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": cidr}}]}],
        },
    }


def test_every_cidr_the_api_server_refuses_we_refuse_too(kubectl: Kubectl, namespace: str) -> None:
    refused_by_server = []
    for index, cidr in enumerate(CIDRS):
        result = kubectl(
            "create", "--dry-run=server", "-f", "-",
            input=as_json(ip_block_policy(cidr, namespace, index)),
        )  # fmt: skip
        if result.returncode != 0:
            assert "spec.egress[0].to[0].ipBlock.cidr" in result.stderr, result.stderr
            refused_by_server.append(cidr)

    let_through = [
        cidr for cidr in refused_by_server if not isinstance(parse_cidr(cidr), CidrProblem)
    ]
    assert let_through == [], (
        f"kube-apiserver refuses these, webhook.policy.cidr accepts them: {let_through}"
    )
    # The corpus has teeth: the server refuses a good part of it and accepts the rest.
    assert len(refused_by_server) >= len(CIDRS) // 3
    assert len(refused_by_server) < len(CIDRS)


def test_a_shared_domain_policy_is_stored_exactly_as_built(
    kubectl: Kubectl, namespace: str
) -> None:
    """With egress domains, render prints the sandbox's own policy and the namespace's
    shared domain policy, holding what a DNS server answers now. The API server stores both
    as built: the reconciler compares them by ==, so anything else would rewrite them at
    every pass."""
    policy = {
        "mode": "Restricted",
        "egress": [
            {"domains": ["pypi.test", "files.pypi.test"], "ports": [{"port": 443}]},
            {"domains": ["mirror.corp.test"], "allowAnswersIn": ["10.40.0.0/16"]},
            {"domains": ["gone.test"], "ports": [{"protocol": "UDP", "port": 9000}]},
        ],
    }
    template = code_interpreter("tpl", namespace, policy)
    with DnsServer() as dns:
        dns.set("pypi.test", a=["203.0.113.7", "203.0.113.8"], aaaa=["2001:db8::7"])
        dns.cname("files.pypi.test", "cdn.pypi.test")
        dns.set("cdn.pypi.test", a=["198.51.100.9"])
        dns.set("mirror.corp.test", a=["10.40.0.5", "10.41.0.5", "169.254.169.254"])
        rendered = render(
            template, sandbox="tpl-x7k2p9qa", namespace=namespace,
            options=("--dns-server", dns.address),
        )  # fmt: skip
    own, shared = yaml.safe_load_all(rendered)
    assert shared["spec"]["egress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [
                {"ipBlock": {"cidr": "198.51.100.9/32"}},
                {"ipBlock": {"cidr": "203.0.113.7/32"}},
                {"ipBlock": {"cidr": "203.0.113.8/32"}},
                {"ipBlock": {"cidr": "2001:db8::7/128"}},
            ],
        },
        {"to": [{"ipBlock": {"cidr": "10.40.0.5/32"}}]},
    ]  # gone.test: no address, no rule (never a rule with no peers)
    for built in (own, shared):
        result = kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(built)
        )
        assert result.returncode == 0, f"kube-apiserver refused:\n{built}\n{result.stderr}"
        accepted = json.loads(result.stdout)
        assert accepted["spec"] == built["spec"]
        annotations = accepted["metadata"].get("annotations") or {}
        assert annotations == (built["metadata"].get("annotations") or {})
