"""Egress by domain name in the reconciler's plans: one shared NetworkPolicy per namespace and
domain set, the sandbox's own policy pointing at it, and the gate waiting for both."""

from __future__ import annotations

import json
from typing import Any

from tests.reconciler.objects import (
    NS,
    SETTINGS,
    direct_sandbox,
    interpreter,
    pod,
    stored,
    view,
)
from webhook.api import kinds
from webhook.api.settings import Limits, Settings
from webhook.policy.domains import domain_entries, domain_set_key
from webhook.reconciler.domaincache import NameState
from webhook.reconciler.domainplan import selected_names, status_of
from webhook.reconciler.plan import SCHEDULING_GATE, ReconcileRequest, plan, requests_for

DOMAINS = {
    "mode": "Restricted",
    "egress": [
        {"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 443}]},
        {"domains": ["pypi.org", "files.pythonhosted.org"], "ports": [{"port": 443}]},
        {"domains": ["mirror.corp.example"], "allowAnswersIn": ["10.40.0.0/16"]},
    ],
}
KEY = domain_set_key(NS, domain_entries(DOMAINS))
SHARED = ReconcileRequest(NS, f"netpol-domains.{KEY}")
ANSWERS = {
    "pypi.org": NameState(("151.101.0.223", "2a04:4e42::223"), {}, None),
    "files.pythonhosted.org": NameState(("151.101.0.223", "146.75.92.223"), {}, None),
    "mirror.corp.example": NameState(("10.40.0.5", "10.41.0.5"), {}, None),
}


def states(answers: dict[str, NameState]) -> Any:
    return answers.get


def sandbox_world(*names: str, **extra: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    world: dict[str, list[dict[str, Any]]] = {
        "interpreters": [interpreter("py", DOMAINS)],
        "sandboxes": [direct_sandbox(n) for n in names],
        "pods": [
            pod(f"{n}-pod", {kinds.LABEL_SANDBOX_NAME: n}, gates=[SCHEDULING_GATE]) for n in names
        ],
    }
    for key, items in extra.items():
        world.setdefault(key, []).extend(items)
    return world


def own_policies(world: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each sandbox's own NetworkPolicy, as the API server stores it after the create."""
    out = []
    for sandbox in world["sandboxes"]:
        name = sandbox["metadata"]["name"]
        decided = plan(ReconcileRequest(NS, name), view(**world), SETTINGS)
        assert decided.desired is not None
        out.append(stored(decided.desired))
    return out


def test_the_sandbox_s_own_policy_names_its_domain_set_and_holds_no_domain_rule() -> None:
    world = sandbox_world("py-1")
    decided = plan(ReconcileRequest(NS, "py-1"), view(**world), SETTINGS)
    assert decided.write == "create"
    assert decided.desired is not None
    assert decided.desired["metadata"]["labels"][kinds.LABEL_DOMAIN_SET] == KEY
    egress = decided.desired["spec"]["egress"]
    assert len(egress) == 2  # DNS, then the cidrs entry; the names are in the shared policy
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.8.0.0/16"}}]
    # The pod waits: the shared policy does not exist yet.
    assert decided.ungate_pods == ()


def test_the_shared_policy_selects_the_sandboxes_of_the_set_and_allows_only_their_names() -> None:
    world = sandbox_world("py-1", "py-2")
    world["policies"] = own_policies(world)
    decided = plan(SHARED, view(**world), SETTINGS, states(ANSWERS))
    assert decided.write == "create"
    assert decided.domain_names == {"pypi.org", "files.pythonhosted.org", "mirror.corp.example"}
    desired = decided.desired
    assert desired is not None
    assert desired["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "agentcube-netpol",
        "netpol.agentcube.io/role": "domains",
    }
    assert desired["spec"] == {
        "podSelector": {
            "matchExpressions": [
                {"key": kinds.LABEL_SANDBOX_NAME, "operator": "In", "values": ["py-1", "py-2"]}
            ]
        },
        "egress": [
            {
                "ports": [{"protocol": "TCP", "port": 443}],
                "to": [
                    {"ipBlock": {"cidr": "146.75.92.223/32"}},
                    {"ipBlock": {"cidr": "151.101.0.223/32"}},
                    {"ipBlock": {"cidr": "2a04:4e42::223/128"}},
                ],
            },
            {"to": [{"ipBlock": {"cidr": "10.40.0.5/32"}}]},  # allowAnswersIn; 10.41 dropped
        ],
        "policyTypes": ["Egress"],  # it adds egress only: ingress stays the sandbox's own
    }
    status = status_of(desired)
    assert status["mirror.corp.example"] == {
        "addresses": ["10.40.0.5", "10.41.0.5"],
        "dropped": {"10.41.0.5": "a private address (RFC 1918)"},
    }
    assert json.loads(desired["metadata"]["annotations"][kinds.ANNOTATION_DOMAINS])[0] == {
        "domains": ["files.pythonhosted.org", "pypi.org"],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_names_not_resolved_yet_are_pending_and_open_nothing() -> None:
    world = sandbox_world("py-1")
    world["policies"] = own_policies(world)
    decided = plan(SHARED, view(**world), SETTINGS, states({}))
    assert decided.desired is not None
    assert "egress" not in decided.desired["spec"]  # Egress with no rule: adds nothing
    assert status_of(decided.desired)["pypi.org"] == {"pending": True}


def test_the_pods_are_released_once_the_shared_policy_selects_them_with_every_answer() -> None:
    world = sandbox_world("py-1")
    world["policies"] = own_policies(world)
    pending = plan(SHARED, view(**world), SETTINGS, states({})).desired
    assert pending is not None
    with_pending = {**world, "policies": [*world["policies"], stored(pending)]}
    assert plan(ReconcileRequest(NS, "py-1"), view(**with_pending), SETTINGS).ungate_pods == ()

    answered = plan(SHARED, view(**world), SETTINGS, states(ANSWERS)).desired
    assert answered is not None
    ready = {**world, "policies": [*world["policies"], stored(answered)]}
    decided = plan(ReconcileRequest(NS, "py-1"), view(**ready), SETTINGS)
    assert decided.write == "none"
    assert [p.name for p in decided.ungate_pods] == ["py-1-pod"]


def test_a_rotation_is_one_write_for_every_sandbox_that_shares_the_names() -> None:
    names = [f"py-{i}" for i in range(100)]
    world = sandbox_world(*names)
    world["policies"] = own_policies(world)
    before = plan(SHARED, view(**world), SETTINGS, states(ANSWERS)).desired
    assert before is not None
    world["policies"].append(stored(before))
    rotated = {**ANSWERS, "pypi.org": NameState(("151.101.64.223",), {}, None)}
    writes = [
        plan(ReconcileRequest(NS, n), view(**world), SETTINGS, states(rotated)).write for n in names
    ]
    assert set(writes) == {"none"}
    assert plan(SHARED, view(**world), SETTINGS, states(rotated)).write == "update"
    assert plan(SHARED, view(**world), SETTINGS, states(ANSWERS)).write == "none"


def test_the_shared_policy_goes_when_no_sandbox_policy_names_its_set() -> None:
    world = sandbox_world("py-1")
    shared = plan(
        SHARED, view(**{**world, "policies": own_policies(world)}), SETTINGS, states(ANSWERS)
    ).desired
    assert shared is not None
    gone = {"interpreters": world["interpreters"], "policies": [stored(shared)]}
    assert plan(SHARED, view(**gone), SETTINGS, states(ANSWERS)).write == "delete"


def test_a_sandbox_gone_whose_pod_remains_stays_selected() -> None:
    world = sandbox_world("py-1")
    policies = own_policies(world)
    # The Sandbox is deleted; its pod is still terminating, so its own policy stays, and the
    # shared one keeps selecting it, with the entries it was written with.
    shared = plan(SHARED, view(**{**world, "policies": policies}), SETTINGS, states(ANSWERS))
    assert shared.desired is not None
    remaining = {
        "pods": world["pods"],
        "policies": [*policies, stored(shared.desired)],
    }
    decided = plan(SHARED, view(**remaining), SETTINGS, states(ANSWERS))
    assert decided.write == "none"
    assert decided.desired is not None and selected_names(decided.desired) == ["py-1"]


def test_dropped_answers_and_names_that_do_not_resolve_are_reported() -> None:
    world = sandbox_world("py-1")
    world["policies"] = own_policies(world)
    failing = {
        **ANSWERS,
        "pypi.org": NameState((), {}, "nxdomain"),
        "files.pythonhosted.org": NameState(("169.254.169.254",), {}, None),
    }
    first = plan(SHARED, view(**world), SETTINGS, states(failing)).desired
    assert first is not None
    world["policies"].append(stored(first))
    decided = plan(SHARED, view(**world), SETTINGS, states(failing))
    messages = sorted((r.reason, r.message) for r in decided.reports)
    assert messages == [
        (
            "DomainAnswerDropped",
            "files.pythonhosted.org answered 169.254.169.254, the cloud metadata address: not "
            "allowed (allowAnswersIn on the entry admits a private range; the metadata "
            "address never)",
        ),
        (
            "DomainAnswerDropped",
            "mirror.corp.example answered 10.41.0.5, a private address (RFC 1918): not allowed "
            "(allowAnswersIn on the entry admits a private range; the metadata address never)",
        ),
        (
            "DomainUnresolved",
            "pypi.org did not resolve (nxdomain): egress to it is closed; retried",
        ),
    ]
    assert all(r.warning for r in decided.reports)
    assert decided.desired is not None
    assert [rule.get("to") for rule in decided.desired["spec"]["egress"]] == [
        [{"ipBlock": {"cidr": "10.40.0.5/32"}}]
    ]  # nothing for pypi.org, nothing for the metadata answer
    # The sandbox is told too.
    sandbox = plan(ReconcileRequest(NS, "py-1"), view(**world), SETTINGS)
    assert {r.reason for r in sandbox.reports} == {"DomainUnresolved", "DomainAnswerDropped"}


def test_deny_answers_drops_the_cluster_s_ranges() -> None:
    world = sandbox_world("py-1")
    world["policies"] = own_policies(world)
    settings = Settings(deny_answers=("151.101.0.0/16",))
    decided = plan(SHARED, view(**world), settings, states(ANSWERS))
    assert decided.desired is not None
    blocks = [p["ipBlock"]["cidr"] for p in decided.desired["spec"]["egress"][0]["to"]]
    assert blocks == ["146.75.92.223/32", "2a04:4e42::223/128"]


def test_changes_queue_the_shared_policy_and_the_sandboxes_waiting_on_it() -> None:
    world = sandbox_world("py-1", "py-2")
    policies = own_policies(world)
    snapshot = view(**{**world, "policies": policies})
    assert requests_for(kinds.NETWORK_POLICY, policies[0], snapshot) == {
        ReconcileRequest(NS, "py-1"),
        SHARED,
    }
    shared = plan(SHARED, snapshot, SETTINGS, states(ANSWERS)).desired
    assert shared is not None
    world["pods"][1]["spec"] = {}  # py-2's pod is released already
    snapshot = view(**{**world, "policies": [*policies, stored(shared)]})
    assert requests_for(kinds.NETWORK_POLICY, stored(shared), snapshot) == {
        SHARED,
        ReconcileRequest(NS, "py-1"),
    }


# --- audit ------------------------------------------------------------------------------------


def test_audit_reads_a_shared_policy_by_what_it_holds_and_reports_its_names() -> None:
    from webhook.reconciler.audit import Finding, audit

    world = sandbox_world("py-1")
    world["pods"][0]["spec"] = {}  # released
    world["policies"] = own_policies(world)
    failing = {**ANSWERS, "pypi.org": NameState((), {}, "nxdomain")}
    shared = plan(SHARED, view(**world), SETTINGS, states(failing)).desired
    assert shared is not None
    world["policies"].append(stored(shared))
    snapshot = view(**world)
    found = audit(snapshot, settings=SETTINGS, network_policies=world["policies"])
    assert [(f.name, f.problem) for f in found] == [
        (SHARED.name, "domain-answer-dropped"),  # mirror.corp.example's 10.41.0.5
        (SHARED.name, "domain-unresolved"),
    ]
    # A shared policy that lost a member is drift, like any other.
    world["policies"][-1]["spec"]["podSelector"]["matchExpressions"][0]["values"] = []
    found = audit(view(**world), settings=SETTINGS, network_policies=world["policies"])
    assert (
        Finding(NS, SHARED.name, "drifted", "its NetworkPolicy differs from the sandbox's policy")
        in found
    )


# --- the native backend: ClusterNetworkPolicy ----------------------------------------------------

CNP_SETTINGS = Settings(
    domain_backend="cluster-network-policy", limits=Limits(domain_wildcards=True)
)
WILDCARD = {
    "mode": "Restricted",
    "egress": [
        {"domains": ["api.github.com", "*.githubusercontent.com"], "ports": [{"port": 443}]},
        {"domains": ["dns.example.com"], "ports": [{"protocol": "UDP", "port": 53},
                                                   {"port": 8000, "endPort": 8100}]},
    ],
}  # fmt: skip
WILDCARD_KEY = domain_set_key(NS, domain_entries(WILDCARD))
CNP_REQUEST = ReconcileRequest(NS, f"netpol-domains.{WILDCARD_KEY}")


def cnp_world(*names: str) -> dict[str, list[dict[str, Any]]]:
    world = sandbox_world(*names)
    world["interpreters"] = [interpreter("py", WILDCARD)]
    out = []
    for sandbox in world["sandboxes"]:
        decided = plan(
            ReconcileRequest(NS, sandbox["metadata"]["name"]), view(**world), CNP_SETTINGS
        )
        assert decided.desired is not None
        out.append(stored(decided.desired))
    world["policies"] = out
    return world


def test_the_native_backend_writes_one_cluster_network_policy_holding_the_names() -> None:
    world = cnp_world("py-1", "py-2")
    decided = plan(CNP_REQUEST, view(**world), CNP_SETTINGS)
    assert decided.write == "create"
    assert decided.target == (
        kinds.CLUSTER_NETWORK_POLICY,
        "",
        f"netpol-domains.{NS}.{WILDCARD_KEY}",
    )
    assert decided.domain_names == frozenset()  # nothing to resolve
    desired = decided.desired
    assert desired is not None
    assert desired["apiVersion"] == "policy.networking.k8s.io/v1beta1"
    assert desired["metadata"]["labels"][kinds.LABEL_DOMAIN_NAMESPACE] == NS
    assert desired["spec"] == {
        "tier": "Admin",
        "priority": 1000,
        "subject": {
            "pods": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                "podSelector": {
                    "matchExpressions": [
                        {"key": kinds.LABEL_SANDBOX_NAME, "operator": "In",
                         "values": ["py-1", "py-2"]}
                    ]
                },
            }
        },
        "egress": [
            {
                "name": "domains-0",
                "action": "Accept",
                "to": [{"domainNames": ["*.githubusercontent.com", "api.github.com"]}],
                "protocols": [{"tcp": {"destinationPort": {"number": 443}}}],
            },
            {
                "name": "domains-1",
                "action": "Accept",
                "to": [{"domainNames": ["dns.example.com"]}],
                "protocols": [
                    {"udp": {"destinationPort": {"number": 53}}},
                    {"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}},
                ],
            },
        ],
    }  # fmt: skip


def test_with_the_native_backend_a_pod_waits_until_the_cluster_policy_selects_it() -> None:
    world = cnp_world("py-1")
    assert plan(ReconcileRequest(NS, "py-1"), view(**world), CNP_SETTINGS).ungate_pods == ()
    shared = plan(CNP_REQUEST, view(**world), CNP_SETTINGS).desired
    assert shared is not None
    snapshot = view(**world, clusterpolicies=[stored(shared)])
    decided = plan(ReconcileRequest(NS, "py-1"), snapshot, CNP_SETTINGS)
    assert [p.name for p in decided.ungate_pods] == ["py-1-pod"]
    # Its changes reach the shared request and the pods that wait on it.
    assert requests_for(kinds.CLUSTER_NETWORK_POLICY, stored(shared), snapshot) == {
        CNP_REQUEST,
        ReconcileRequest(NS, "py-1"),
    }
    assert plan(CNP_REQUEST, snapshot, CNP_SETTINGS).write == "none"


def test_switching_to_the_native_backend_deletes_the_resolved_shared_policy_first() -> None:
    world = cnp_world("py-1")
    before = Settings(limits=Limits(domain_wildcards=True))  # the resolving backend's shape
    resolved = plan(CNP_REQUEST, view(**world), before, states({})).desired
    assert resolved is not None
    world["policies"].append(stored(resolved))
    decided = plan(CNP_REQUEST, view(**world), CNP_SETTINGS)
    assert decided.write == "delete"
    assert decided.target == (kinds.NETWORK_POLICY, NS, CNP_REQUEST.name)


def test_the_native_backend_s_policy_goes_with_the_last_sandbox() -> None:
    world = cnp_world("py-1")
    shared = plan(CNP_REQUEST, view(**world), CNP_SETTINGS).desired
    assert shared is not None
    gone = {"interpreters": world["interpreters"], "clusterpolicies": [stored(shared)]}
    decided = plan(CNP_REQUEST, view(**gone), CNP_SETTINGS)
    assert decided.write == "delete"
    assert decided.target[0] == kinds.CLUSTER_NETWORK_POLICY


def test_a_member_s_own_policy_changing_in_its_spec_only_does_not_replan_the_shared_one() -> None:
    import copy

    from webhook.reconciler.plan import requests_for_change

    world = sandbox_world("py-1")
    (own,) = own_policies(world)
    snapshot = view(**{**world, "policies": [own]})
    edited = copy.deepcopy(own)
    edited["spec"]["egress"] = []  # drift: its own reconcile puts it back; the set is the same
    assert requests_for_change(kinds.NETWORK_POLICY, own, edited, snapshot) == {
        ReconcileRequest(NS, "py-1")
    }
    # Created, deleted or moved to another set: the shared policies hear of it.
    assert SHARED in requests_for_change(kinds.NETWORK_POLICY, None, own, snapshot)
    assert SHARED in requests_for_change(kinds.NETWORK_POLICY, own, None, snapshot)
    moved = copy.deepcopy(own)
    moved["metadata"]["labels"][kinds.LABEL_DOMAIN_SET] = "0000000000"
    assert requests_for_change(kinds.NETWORK_POLICY, own, moved, snapshot) >= {
        SHARED,
        ReconcileRequest(NS, "netpol-domains.0000000000"),
    }
