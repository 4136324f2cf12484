"""`audit`'s findings over a listing of a cluster: what leaves a sandbox less isolated."""

from __future__ import annotations

import json
from typing import Any

from tests.reconciler.objects import (
    NS,
    RESTRICTED,
    SETTINGS,
    claim,
    direct_sandbox,
    expected_policy,
    interpreter,
    meta,
    pod,
    stored,
    view,
)
from webhook.api import kinds
from webhook.policy.selectors import selector_matches
from webhook.reconciler.audit import Finding, audit, render_json, render_text


def healthy() -> dict[str, list[dict[str, Any]]]:
    sandbox = direct_sandbox()
    pods = [pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"})]
    return {
        "interpreters": [interpreter()],
        "sandboxes": [sandbox],
        "pods": pods,
        "policies": [
            stored(expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX, pods))
        ],
    }


def findings(objects: dict[str, list[dict[str, Any]]], **extra: Any) -> list[Finding]:
    return audit(
        view(**objects), settings=SETTINGS, network_policies=objects.get("policies", []), **extra
    )


def test_a_cluster_where_every_sandbox_is_isolated_has_no_findings() -> None:
    assert findings(healthy()) == []
    assert render_text([]).startswith("no findings")


def test_missing_drifted_and_orphaned_policies_are_findings() -> None:
    missing = healthy()
    missing["policies"] = []
    assert [f.problem for f in findings(missing)] == ["missing"]

    drifted = healthy()
    drifted["policies"][0]["spec"]["egress"] = []
    assert [f.problem for f in findings(drifted)] == ["drifted"]

    orphaned = healthy()
    orphaned["sandboxes"] = []
    # While its pod exists the policy stays (the pod may still run): no finding.
    assert findings(orphaned) == []
    orphaned["pods"] = []
    assert [(f.name, f.problem) for f in findings(orphaned)] == [("py-abcd1234", "orphaned")]


def test_a_claimed_pod_without_its_label_is_a_finding() -> None:
    the_claim = claim()
    pods = [pod("py-pool-x1", {kinds.LABEL_CLAIM_UID: "uid-py-claim0001"})]
    policy = stored(
        expected_policy("py-claim0001", RESTRICTED, the_claim, kinds.SANDBOX_CLAIM, pods)
    )
    objects = {
        "interpreters": [interpreter()],
        "claims": [the_claim],
        "pods": pods,
        "policies": [policy],
    }
    [finding] = findings(objects)
    assert (finding.name, finding.problem) == ("py-pool-x1", "pod-unlabelled")


def test_a_tenant_policy_selecting_sandbox_pods_widens_them() -> None:
    objects = healthy()
    allow_all = {
        "metadata": meta("allow-all", labels={"team": "a"}),
        "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]},
    }
    elsewhere = {
        "metadata": {**meta("web-only"), "namespace": "other"},
        "spec": {"podSelector": {}},
    }
    web = {"metadata": meta("web"), "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}
    objects["policies"] += [allow_all, elsewhere, web]
    [finding] = findings(objects)
    assert (finding.namespace, finding.name, finding.problem) == (NS, "allow-all", "widens")
    assert "py-abcd1234" in finding.detail


def test_a_managed_sandbox_template_of_an_isolated_warm_pool_widens_it() -> None:
    objects = healthy()
    objects["interpreters"] = [interpreter(warm=2)]
    baseline = audit(view(**objects), settings=SETTINGS, network_policies=objects["policies"])
    assert [f.problem for f in baseline] == ["missing"]  # the warm pool's baseline
    managed = {"metadata": meta("py"), "spec": {}}
    unmanaged = {"metadata": meta("py"), "spec": {"networkPolicyManagement": "Unmanaged"}}
    found = findings(objects, sandbox_templates=[managed])
    assert [f.problem for f in found] == ["missing", "widens"]
    assert "Managed (default)" in found[1].detail
    assert findings(objects, sandbox_templates=[unmanaged]) == baseline


def test_findings_read_as_a_table_and_as_json() -> None:
    found = [Finding(NS, "py-abcd1234", "missing", "its NetworkPolicy does not exist")]
    text = render_text(found)
    assert "team-a  py-abcd1234  missing  its NetworkPolicy does not exist" in text
    assert text.endswith("1 finding\n")
    assert json.loads(render_json(found)) == {
        "findings": [
            {"namespace": NS, "name": "py-abcd1234", "problem": "missing",
             "detail": "its NetworkPolicy does not exist"}
        ]
    }  # fmt: skip


def test_label_selectors_match_as_kubernetes_matches_them() -> None:
    labels = {"app": "py", "tier": "sandbox"}
    assert selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"app": "py"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "web"}}, labels)

    def expr(op: str, *values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": "tier", "operator": op, "values": list(values)}]}

    assert selector_matches(expr("In", "sandbox", "x"), labels)
    assert not selector_matches(expr("NotIn", "sandbox"), labels)
    assert selector_matches(expr("Exists"), labels)
    assert not selector_matches(expr("DoesNotExist"), labels)
    assert selector_matches(expr("DoesNotExist"), {"app": "py"})
    assert not selector_matches(expr("Bogus"), labels)


def test_auto_deciding_off_is_a_finding_with_the_one_line_fix() -> None:
    from webhook.reconciler.audit import claim_label_findings

    [finding] = claim_label_findings("auto", "off", "the allow-list does not cover it")
    assert (finding.namespace, finding.name, finding.problem) == (
        "agent-sandbox-system",
        "agent-sandbox-config",
        "claim-label-not-injected",
    )
    assert kinds.ALLOW_LIST_FIX in finding.detail
    assert claim_label_findings("auto", "on", "covered") == []
    assert claim_label_findings("off", "off", "--claim-label-injection=off") == []  # chosen


def test_the_webhook_probe_tells_answering_from_unreachable_from_not_called() -> None:
    from webhook.reconciler.audit import probe_findings, webhook_probe

    probe = webhook_probe("agents")
    assert probe["metadata"] == {"name": "agentcube-netpol-probe", "namespace": "agents"}
    refused = (
        'admission webhook "templates.netpol.agentcube.io" denied the request: '
        'spec.template.networkPolicy.egress[0].cidrs[0]: Invalid value: "10.0.0.1/8": host bits set'
    )
    assert probe_findings("agents", refused) == []
    [down] = probe_findings(
        "agents",
        'Internal error occurred: failed calling webhook "templates.netpol.agentcube.io": '
        "connect: connection refused",
    )
    assert (down.problem, "connection refused" in down.detail) == ("webhook-not-answering", True)
    [skipped] = probe_findings("agents", None)
    assert skipped.problem == "webhook-not-called"
