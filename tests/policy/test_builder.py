"""The NetworkPolicy a sandbox gets (README "The `networkPolicy` field")."""

from __future__ import annotations

import copy
import ipaddress
import json
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests import builders
from tests.builders import template
from webhook.admission.decide import validate_override
from webhook.api.settings import Limits, Settings
from webhook.policy.builder import (
    PolicyShapeError,
    build_network_policy,
    effective_mode,
    effective_policy,
    settings_errors,
    template_policy,
)
from webhook.policy.cidr import Network
from webhook.policy.k8srules import validate_egress_rule, validate_ingress_rule
from webhook.policy.validation import validate_network_policy

SETTINGS = Settings()
LIMITS = Limits()

ROUTER_PEER = {
    "podSelector": {"matchLabels": {"app": "agentcube-router"}},
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentcube"}},
}
WORKLOAD_MANAGER_PEER = {
    "podSelector": {"matchLabels": {"app": "workloadmanager"}},
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentcube"}},
}
CONTROL_PLANE_RULE = {"from": [ROUTER_PEER, WORKLOAD_MANAGER_PEER]}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
KUBE_DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_RULE = {"ports": DNS_PORTS, "to": [KUBE_DNS_PEER]}


def build(policy: Any, settings: Settings = SETTINGS, **kwargs: Any) -> dict[str, Any] | None:
    return build_network_policy(
        policy,
        sandbox=kwargs.pop("sandbox", "ci-1-abcd1234"),
        namespace=kwargs.pop("namespace", "team-a"),
        settings=settings,
        **kwargs,
    )


def spec(policy: Any, settings: Settings = SETTINGS) -> dict[str, Any]:
    built = build(policy, settings)
    assert built is not None
    result: dict[str, Any] = built["spec"]
    return result


@pytest.mark.parametrize(
    "policy",
    [None, {}, {"mode": None}, {"mode": "None"}],
    ids=["absent field", "absent mode", "null mode", "mode None"],
)
def test_mode_none_gets_no_network_policy(policy: Any) -> None:
    assert build(policy) is None
    assert effective_mode(policy) == "None"


def test_restricted_with_nothing_lets_in_the_control_plane_and_out_dns_only() -> None:
    assert build({"mode": "Restricted"}) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "ci-1-abcd1234",
            "namespace": "team-a",
            "labels": {
                "app.kubernetes.io/managed-by": "agentcube-netpol",
                "runtime.agentcube.io/sandbox-name": "ci-1-abcd1234",
            },
        },
        "spec": {
            "podSelector": {"matchLabels": {"runtime.agentcube.io/sandbox-name": "ci-1-abcd1234"}},
            "ingress": [CONTROL_PLANE_RULE],
            "egress": [DNS_RULE],
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def test_control_plane_rule_has_no_ports_so_readiness_dials_reach_every_port() -> None:
    for policy in ({"mode": "Restricted"}, {"mode": "Custom"}):
        assert "ports" not in spec(policy)["ingress"][0]


def test_restricted_rules_become_one_rule_each_with_one_ip_block_per_cidr() -> None:
    policy = {
        "mode": "Restricted",
        "ingress": [
            {"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 8080}]},
            {"cidrs": ["192.168.0.0/24", "2001:db8::/64"]},
        ],
        "egress": [
            {
                "cidrs": ["0.0.0.0/0"],
                "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
                "ports": [{"port": 443}, {"protocol": "UDP", "port": 8000, "endPort": 8100}],
            }
        ],
    }
    result = spec(policy)
    assert result["ingress"] == [
        CONTROL_PLANE_RULE,
        {
            "ports": [{"protocol": "TCP", "port": 8080}],
            "from": [{"ipBlock": {"cidr": "10.8.0.0/16"}}],
        },
        {"from": [{"ipBlock": {"cidr": "192.168.0.0/24"}}, {"ipBlock": {"cidr": "2001:db8::/64"}}]},
    ]
    assert result["egress"] == [
        DNS_RULE,
        {
            "ports": [
                {"protocol": "TCP", "port": 443},  # protocol defaults to TCP, written out
                {"protocol": "UDP", "port": 8000, "endPort": 8100},
            ],
            "to": [
                {
                    "ipBlock": {
                        "cidr": "0.0.0.0/0",
                        "except": [
                            "10.0.0.0/8",
                            "172.16.0.0/12",
                            "192.168.0.0/16",
                            "169.254.0.0/16",
                        ],
                    }
                }
            ],
        },
    ]


@pytest.mark.parametrize(
    ("cidrs", "excepts", "expected_blocks"),
    [
        pytest.param(
            ["10.0.0.0/8", "192.168.0.0/16"],
            ["192.168.1.0/24", "10.1.0.0/16", "10.2.0.0/16"],
            [
                {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]},
                {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]},
            ],
            id="IPv4: each except goes to the cidr it lies in",
        ),
        pytest.param(
            ["0.0.0.0/0", "::/0"],
            ["169.254.169.254/32", "fd00:ec2::254/128"],
            [
                {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]},
                {"cidr": "::/0", "except": ["fd00:ec2::254/128"]},
            ],
            id="both families: excepts stay in their family",
        ),
        pytest.param(
            ["2001:db8::/32", "2001:db9::/32"],
            ["2001:db9:1::/48"],
            [{"cidr": "2001:db8::/32"}, {"cidr": "2001:db9::/32", "except": ["2001:db9:1::/48"]}],
            id="IPv6: a cidr with no except has no except field",
        ),
    ],
)
def test_excepts_are_placed_in_the_ip_block_of_the_cidr_that_contains_them(
    cidrs: list[str], excepts: list[str], expected_blocks: list[dict[str, Any]]
) -> None:
    policy = {"mode": "Restricted", "egress": [{"cidrs": cidrs, "except": excepts}]}
    rule = spec(policy)["egress"][1]
    assert rule == {"to": [{"ipBlock": block} for block in expected_blocks]}


def test_empty_ports_list_means_all_ports() -> None:
    policy = {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"], "ports": []}]}
    assert spec(policy)["egress"][1] == {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}


CUSTOM_INGRESS = [
    {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}
]
CUSTOM_EGRESS = [
    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
    {"ports": [{"protocol": "UDP", "port": 53}]},
]


@pytest.mark.parametrize("kind", ["AgentRuntime", "CodeInterpreter"])
def test_custom_copies_the_users_rules_after_the_control_plane(kind: str) -> None:
    policy = {"mode": "Custom", "custom": {"ingress": CUSTOM_INGRESS, "egress": CUSTOM_EGRESS}}
    obj = template(kind, policy)
    result = spec(template_policy(obj))
    assert result["ingress"] == [
        CONTROL_PLANE_RULE,
        # As kube-apiserver stores it: the protocol defaulted to TCP.
        {
            "ports": [{"protocol": "TCP", "port": "http"}],
            "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
        },
    ]
    assert result["egress"] == CUSTOM_EGRESS  # no DNS rule added: the user owns egress


def test_custom_rules_come_out_as_kube_apiserver_stores_them() -> None:
    rule = {
        "from": [
            {
                "podSelector": {"matchLabels": {}, "matchExpressions": []},
                "namespaceSelector": None,
                "ipBlock": None,
            },
            {"namespaceSelector": {"matchLabels": {"z": "1", "a": "2"}}},
            {"ipBlock": {"except": [], "cidr": "10.0.0.0/8"}},
            {
                "podSelector": {
                    "matchExpressions": [
                        {"values": [], "operator": "Exists", "key": "k"},
                        {"operator": "In", "key": "k", "values": ["v"]},
                    ]
                }
            },
        ],
        "ports": [{"port": 80, "protocol": None, "endPort": None}, {"endPort": 90, "port": 85}],
    }
    stored = spec({"mode": "Custom", "custom": {"ingress": [rule, {"ports": [], "from": None}]}})
    assert stored["ingress"][1:] == [
        {
            "ports": [
                {"protocol": "TCP", "port": 80},
                {"protocol": "TCP", "port": 85, "endPort": 90},
            ],
            "from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"a": "2", "z": "1"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8"}},
                {
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "k", "operator": "Exists"},
                            {"key": "k", "operator": "In", "values": ["v"]},
                        ]
                    }
                },
            ],
        },
        {},
    ]
    # Key order too (struct order, map keys sorted), so the YAML reads like kubectl get's.
    assert list(stored["ingress"][1]) == ["ports", "from"]
    assert list(stored["ingress"][1]["from"][1]["namespaceSelector"]["matchLabels"]) == ["a", "z"]


def test_custom_rules_are_copies_not_shared_with_the_template() -> None:
    policy = {"mode": "Custom", "custom": {"ingress": CUSTOM_INGRESS, "egress": CUSTOM_EGRESS}}
    before = copy.deepcopy(policy)
    built = build(policy)
    assert built is not None
    built["spec"]["egress"][0]["to"][0]["ipBlock"]["except"].append("10.2.0.0/16")
    built["spec"]["ingress"][1]["ports"].clear()
    assert policy == before


@pytest.mark.parametrize(
    "custom",
    [None, {}, {"ingress": []}, {"egress": []}],
    ids=["custom absent", "custom empty", "only ingress", "egress empty"],
)
def test_custom_without_egress_denies_all_egress(custom: Any) -> None:
    policy: dict[str, Any] = {"mode": "Custom"}
    if custom is not None:
        policy["custom"] = custom
    result = spec(policy)
    assert "egress" not in result  # stored so; policyTypes Egress with no rule denies all
    assert result["policyTypes"] == ["Ingress", "Egress"]
    assert result["ingress"] == [CONTROL_PLANE_RULE]


def test_settings_move_the_control_plane_and_its_labels() -> None:
    settings = Settings(
        agentcube_namespace="acube",
        router_labels=MappingProxyType({"app.kubernetes.io/name": "router", "tier": "edge"}),
        workload_manager_labels=MappingProxyType({"app.kubernetes.io/name": "wm"}),
    )
    namespace = {"matchLabels": {"kubernetes.io/metadata.name": "acube"}}
    assert spec({"mode": "Restricted"}, settings)["ingress"][0] == {
        "from": [
            {
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/name": "router", "tier": "edge"}
                },
                "namespaceSelector": namespace,
            },
            {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "wm"}},
                "namespaceSelector": namespace,
            },
        ]
    }


def test_dns_peers_are_configurable_for_example_nodelocal_dns() -> None:
    node_local = {"ipBlock": {"cidr": "169.254.20.10/32"}}
    settings = Settings(dns_peers=(node_local, KUBE_DNS_PEER))
    assert spec({"mode": "Restricted"}, settings)["egress"][0] == {
        "ports": DNS_PORTS,
        "to": [node_local, KUBE_DNS_PEER],
    }


def test_dns_to_anywhere_drops_the_peers() -> None:
    settings = Settings(dns_to_anywhere=True)
    assert spec({"mode": "Restricted"}, settings)["egress"][0] == {"ports": DNS_PORTS}


def test_dns_settings_do_not_touch_custom_egress() -> None:
    settings = Settings(dns_to_anywhere=True)
    assert "egress" not in spec({"mode": "Custom"}, settings)


@pytest.mark.parametrize(
    "owner",
    [
        {
            "apiVersion": "agents.x-k8s.io/v1alpha1",
            "kind": "Sandbox",
            "name": "ci-1-abcd1234",
            "uid": "u-1",
        },
        {
            "apiVersion": "agents.x-k8s.io/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "ci-1-abcd1234", "uid": "u-1", "namespace": "team-a"},
            "spec": {},
        },
    ],
    ids=["flat reference", "whole object"],
)
def test_owner_becomes_a_blocking_controller_reference(owner: dict[str, Any]) -> None:
    built = build({"mode": "Restricted"}, owner=owner)
    assert built is not None
    assert built["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "agents.x-k8s.io/v1alpha1",
            "kind": "Sandbox",
            "name": "ci-1-abcd1234",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_claim_owner_on_the_warm_path() -> None:
    claim = builders.sandbox_claim("ci-1-abcd1234", uid="claim-uid")
    built = build({"mode": "Custom"}, owner=claim)
    assert built is not None
    (reference,) = built["metadata"]["ownerReferences"]
    assert (reference["kind"], reference["uid"]) == ("SandboxClaim", "claim-uid")


def test_no_owner_no_owner_references() -> None:
    built = build({"mode": "Restricted"})
    assert built is not None
    assert "ownerReferences" not in built["metadata"]


def test_same_input_gives_byte_identical_yaml() -> None:
    policy = {
        "mode": "Restricted",
        "egress": [{"cidrs": ["0.0.0.0/0", "::/0"], "except": ["fd00::/8", "10.0.0.0/8"]}],
    }
    first = yaml.safe_dump(build(policy), sort_keys=False)
    again = yaml.safe_dump(build(json.loads(json.dumps(policy))), sort_keys=False)
    assert first == again
    # Settings hold read-only mappings; the result must still be plain data.
    assert yaml.safe_dump(build(policy, Settings(dns_peers=(MappingProxyType(KUBE_DNS_PEER),))))


def test_invalid_mode_raises_rather_than_opening_the_sandbox() -> None:
    with pytest.raises(PolicyShapeError, match="Restrcited"):
        build({"mode": "Restrcited"})


@pytest.mark.parametrize("kind", ["AgentRuntime", "CodeInterpreter"])
def test_template_policy_reads_the_field_of_each_kind(kind: str) -> None:
    policy = {"mode": "Restricted"}
    assert template_policy(template(kind, policy)) == policy


def test_template_policy_absent_or_other_kind() -> None:
    runtime = template("AgentRuntime", None)
    assert "networkPolicy" not in runtime["spec"]["podTemplate"]
    assert template_policy(runtime) is None
    assert template_policy({"kind": "CodeInterpreter", "spec": None}) is None
    # A CodeInterpreter's policy is not read from an AgentRuntime's path.
    wrong_place = template("CodeInterpreter", None)
    wrong_place["spec"]["podTemplate"] = {"networkPolicy": {"mode": "Restricted"}}
    assert template_policy(wrong_place) is None
    assert (
        template_policy({"kind": "Deployment", "spec": {"template": {"networkPolicy": {}}}}) is None
    )


def test_override_replaces_the_template_policy_whole() -> None:
    template_value = {"mode": "Restricted", "egress": [{"cidrs": ["0.0.0.0/0"]}]}
    override = {"mode": "Restricted", "ingress": [{"cidrs": ["10.0.0.0/8"]}]}
    policy, error = effective_policy(template_value, json.dumps(override), limits=LIMITS)
    assert (policy, error) == (override, None)
    assert "egress" not in policy  # no merging


def test_override_can_turn_isolation_off_or_on() -> None:
    assert effective_policy({"mode": "Restricted"}, '{"mode": "None"}', limits=LIMITS) == (
        {"mode": "None"},
        None,
    )
    assert effective_policy(None, '{"mode": "Custom"}', limits=LIMITS) == ({"mode": "Custom"}, None)


def test_no_override_keeps_the_template_policy() -> None:
    assert effective_policy({"mode": "Custom"}, None, limits=LIMITS) == ({"mode": "Custom"}, None)
    assert effective_policy(None, None, limits=LIMITS) == (None, None)


# Unreadable means {mode: Restricted}, never "no policy".
RESTRICTED_NOTHING_EXTRA = {"mode": "Restricted"}


@pytest.mark.parametrize("text", ["{mode: Restricted}", "", '"Restricted"', "[]", "null"])
def test_unreadable_override_fails_closed_with_the_reason(text: str) -> None:
    policy, error = effective_policy(None, text, limits=LIMITS)
    assert policy == RESTRICTED_NOTHING_EXTRA
    assert error is not None and "override annotation" in error
    built = build(policy)
    assert built is not None
    assert built["spec"]["egress"] == [DNS_RULE]
    assert built["spec"]["ingress"] == [CONTROL_PLANE_RULE]


def test_invalid_override_fails_closed_and_names_the_field() -> None:
    override = json.dumps({"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]})
    policy, error = effective_policy({"mode": "None"}, override, limits=LIMITS)
    assert policy == RESTRICTED_NOTHING_EXTRA
    assert error == (
        "override annotation is invalid: "
        "metadata.annotations[runtime.agentcube.io/network-policy].egress[0].cidrs[0]: "
        'must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
    )


OVERRIDE = "metadata.annotations[runtime.agentcube.io/network-policy]"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{" + " " * 70000 + "}", f"{OVERRIDE}: must be at most 65536 bytes, not 70002"),
        ('{"mode": "Restricted"} x', f"{OVERRIDE}: must be the JSON of a networkPolicy object"),
        ("[]", f"{OVERRIDE}: must be a JSON object, not array: []"),
        ('{"mode": "Open"}', f"{OVERRIDE}.mode: must be one of None, Restricted, Custom"),
    ],
    ids=["too-large", "not-json", "not-an-object", "invalid"],
)
def test_the_reconciler_refuses_an_override_as_the_webhook_does(value: str, message: str) -> None:
    """One parser: what the webhook refuses the reconciler fails closed on, same words."""
    webhook = validate_override(value, settings=SETTINGS).errors
    assert str(webhook[0]).startswith(message)
    policy, reason = effective_policy(None, value, limits=LIMITS)
    assert policy == RESTRICTED_NOTHING_EXTRA
    assert reason == "override annotation is invalid: " + "; ".join(map(str, webhook))


def test_the_reconciler_reads_an_override_with_the_limits_it_is_given() -> None:
    two_rules = json.dumps({"mode": "Restricted", "ingress": [{"cidrs": ["10.0.0.0/8"]}] * 2})
    _, reason = effective_policy(None, two_rules, limits=Limits(max_rules=1))
    assert (
        reason
        == f"override annotation is invalid: {OVERRIDE}.ingress: must have at most 1 rules, not 2"
    )
    _, reason = effective_policy(
        None, '{"mode": "Restricted"}', limits=Limits(max_annotation_bytes=20)
    )
    assert reason == f"override annotation is invalid: {OVERRIDE}: must be at most 20 bytes, not 22"


def test_invalid_template_policy_stored_while_the_webhook_was_down_fails_closed() -> None:
    policy, error = effective_policy({"mode": "Nne"}, None, limits=LIMITS)
    assert policy == RESTRICTED_NOTHING_EXTRA
    assert error is not None
    assert error.startswith("template networkPolicy is invalid: networkPolicy.mode: must be one of")


def test_whatever_effective_policy_returns_can_be_built() -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"mode": "Custom", "custom": {"egress": [{"to": [{}]}]}}, None),
        (None, '{"mode": "Restricted", "ingress": [{"cidrs": [], "ports": [{}]}]}'),
        ({"mode": "Restricted", "egress": "everything"}, None),
        ({"mode": "Restricted"}, '{"mode": "Custom", "custom": []}'),
    ]
    for template_value, override in cases:
        policy, error = effective_policy(template_value, override, limits=LIMITS)
        assert error is not None
        assert build(policy) is not None


def test_a_template_policy_of_the_wrong_type_fails_closed_not_open() -> None:
    obj = template("CodeInterpreter", "Restricted")
    assert template_policy(obj) == "Restricted"
    policy, error = effective_policy(template_policy(obj), None, limits=LIMITS)
    assert policy == RESTRICTED_NOTHING_EXTRA
    assert error is not None and "networkPolicy: must be an object" in error


def test_restricted_cidrs_come_out_in_the_form_kube_apiserver_does_not_warn_about() -> None:
    policy = {
        "mode": "Restricted",
        "egress": [
            {
                "cidrs": ["2001:0DB8:0001:0000:0000:0000:0000:0000/48", "64:ff9b::10.0.0.0/120"],
                "except": ["2001:db8:1:0:0:0:0:0/64"],
            }
        ],
    }
    assert spec(policy)["egress"][1]["to"] == [
        {"ipBlock": {"cidr": "2001:db8:1::/48", "except": ["2001:db8:1::/64"]}},
        {"ipBlock": {"cidr": "64:ff9b::a00:0/120"}},
    ]


def test_custom_cidrs_stay_as_written() -> None:
    rule = {"to": [{"ipBlock": {"cidr": "2001:0db8::/32"}}]}
    assert spec({"mode": "Custom", "custom": {"egress": [rule]}})["egress"] == [rule]


def test_default_settings_make_valid_network_policies() -> None:
    assert settings_errors(SETTINGS) == []


def test_settings_that_kube_apiserver_would_refuse_are_named_by_option() -> None:
    settings = Settings(
        agentcube_namespace="AgentCube",
        router_labels=MappingProxyType({"app": "router", "my app": "x"}),
        workload_manager_labels=MappingProxyType({"app": "-wm"}),
        dns_peers=({"ipBlock": {"cidr": "169.254.20.10/24"}}, {"podSelector": {"matchLabels": []}}),
        isolation_canary=("10.96.0.10", 443),
        isolation_canary_image=" ",
    )
    assert [(e.path, e.value) for e in settings_errors(settings)] == [
        ("--agentcube-namespace", "AgentCube"),
        ("--router-label", "my app=x"),
        ("--workload-manager-label", "app=-wm"),
        ("--dns-peer[0].ipBlock.cidr", "169.254.20.10/24"),
        ("--dns-peer[1].podSelector.matchLabels", []),
        ("--isolation-canary-image", " "),  # the init container would be refused
    ]
    # With DNS to anywhere, the peers are not used, so not checked.
    anywhere = Settings(dns_peers=settings.dns_peers, dns_to_anywhere=True)
    assert settings_errors(anywhere) == []


# --- properties over random valid Restricted policies ----------------------------------------


@st.composite
def networks(draw: st.DrawFn) -> Network:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(min_value=0, max_value=bits))
    address = draw(st.integers(min_value=0, max_value=2**bits - 1))
    return ipaddress.ip_network((address, prefix), strict=False)


@st.composite
def simple_rules(draw: st.DrawFn) -> dict[str, Any]:
    cidrs = draw(st.lists(networks(), min_size=1, max_size=4))
    excepts = []
    for parent in draw(st.lists(st.sampled_from(cidrs), max_size=4)):
        if parent.prefixlen == parent.max_prefixlen:
            continue
        prefix = draw(st.integers(min_value=parent.prefixlen + 1, max_value=parent.max_prefixlen))
        excepts.append(draw(st.sampled_from(list(_first_subnets(parent, prefix)))))
    rule: dict[str, Any] = {"cidrs": [str(c) for c in cidrs]}
    if excepts:
        rule["except"] = [str(e) for e in excepts]
    ports = draw(
        st.lists(
            st.fixed_dictionaries(
                {"port": st.integers(1, 65535)},
                optional={"protocol": st.sampled_from(["TCP", "UDP", "SCTP"])},
            ),
            max_size=3,
        )
    )
    if ports:
        rule["ports"] = ports
    return rule


def _first_subnets(parent: Network, prefix: int) -> list[Network]:
    """A few subnets of ``parent`` (first, last, one inside), without listing them all."""
    size = 1 << (parent.max_prefixlen - prefix)
    count = 1 << (prefix - parent.prefixlen)
    base = int(parent.network_address)
    return [
        ipaddress.ip_network((base + index * size, prefix))
        for index in sorted({0, count // 2, count - 1})
    ]


@given(
    ingress=st.lists(simple_rules(), max_size=3),
    egress=st.lists(simple_rules(), max_size=3),
)
@settings(max_examples=150, deadline=None)
def test_any_valid_restricted_policy_builds_rules_kube_apiserver_accepts(
    ingress: list[dict[str, Any]], egress: list[dict[str, Any]]
) -> None:
    policy = {"mode": "Restricted", "ingress": ingress, "egress": egress}
    assume(not validate_network_policy(policy, "p", limits=SETTINGS.limits).errors)
    built = build(policy)
    assert built is not None
    result = built["spec"]
    assert len(result["ingress"]) == 1 + len(ingress)
    assert len(result["egress"]) == 1 + len(egress)
    for index, rule in enumerate(result["ingress"]):
        assert validate_ingress_rule(rule, f"ingress[{index}]", limits=SETTINGS.limits) == []
    for index, rule in enumerate(result["egress"]):
        assert validate_egress_rule(rule, f"egress[{index}]", limits=SETTINGS.limits) == []
    pairs = [
        *zip(ingress, result["ingress"][1:], strict=True),
        *zip(egress, result["egress"][1:], strict=True),
    ]
    for source, rule in pairs:
        blocks = [peer["ipBlock"] for peer in rule.get("from", rule.get("to"))]
        assert [b["cidr"] for b in blocks] == source["cidrs"]
        placed = sorted(e for b in blocks for e in b.get("except", []))
        assert placed == sorted(source.get("except", []))  # each except once, none lost
        for block in blocks:
            cidr = ipaddress.ip_network(block["cidr"])
            for entry in block.get("except", []):
                inner = ipaddress.ip_network(entry)
                assert inner.version == cidr.version and inner.subnet_of(cidr)  # type: ignore[arg-type]
    assert yaml.safe_dump(build(policy), sort_keys=False) == yaml.safe_dump(built, sort_keys=False)
