"""The reconciler's decisions, as pure functions over plain dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
    runtime,
    stored,
    view,
)
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.reconciler.agentsandbox import name_hash
from webhook.reconciler.plan import (
    SCHEDULING_GATE,
    ReconcileRequest,
    baseline_request,
    plan,
)
from webhook.reconciler.sandboxes import sandbox_names_for

# --- direct path ------------------------------------------------------------------------------


def test_a_direct_sandbox_of_a_restricted_template_gets_its_policy_created() -> None:
    sandbox = direct_sandbox()
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox]),
        SETTINGS,
    )
    assert result.write == "create"
    assert result.desired == expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX)
    owner = result.desired["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox", "name": "py-abcd1234",
        "uid": "uid-py-abcd1234", "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip
    assert result.desired["spec"]["podSelector"] == {
        "matchLabels": {"runtime.agentcube.io/sandbox-name": "py-abcd1234"}
    }


def test_an_agent_runtime_template_is_found_by_workload_name_too() -> None:
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(runtimes=[runtime()], sandboxes=[direct_sandbox()]),
        SETTINGS,
    )
    assert result.write == "create"
    assert not result.reports


def test_nothing_is_written_when_the_stored_policy_is_the_desired_one() -> None:
    sandbox = direct_sandbox()
    desired = expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX)
    current = stored(desired)
    current["metadata"]["labels"]["team"] = "someone-elses-label"  # theirs to keep
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox], policies=[current]),
        SETTINGS,
    )
    assert result.write == "none"


def test_an_edited_policy_is_brought_back_at_the_version_that_was_read() -> None:
    sandbox = direct_sandbox()
    current = stored(expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX), rv="42")
    current["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    current["spec"]["ingress"] = [{}]
    current["spec"]["podSelector"] = {}
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox], policies=[current]),
        SETTINGS,
    )
    assert result.write == "update"
    patch = result.merge_patch
    assert patch["metadata"]["resourceVersion"] == "42"
    assert result.desired is not None
    assert patch["spec"] == result.desired["spec"]


def test_a_merge_patch_removes_rules_the_desired_policy_no_longer_has() -> None:
    sandbox = direct_sandbox()
    custom = {"mode": "Custom", "custom": {"ingress": [{"ports": [{"port": 8080}]}]}}
    current = stored(expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX))
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter(policy=custom)], sandboxes=[sandbox], policies=[current]),
        SETTINGS,
    )
    assert result.write == "update"
    assert result.merge_patch["spec"]["egress"] is None  # Custom without egress: none at all


def test_mode_none_deletes_a_policy_left_from_before_and_creates_nothing() -> None:
    sandbox = direct_sandbox()
    current = stored(expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX))
    none = interpreter(policy={"mode": "None"})
    assert (
        plan(
            ReconcileRequest(NS, "py-abcd1234"),
            view(interpreters=[none], sandboxes=[sandbox], policies=[current]),
            SETTINGS,
        ).write
        == "delete"
    )
    assert (
        plan(
            ReconcileRequest(NS, "py-abcd1234"),
            view(interpreters=[none], sandboxes=[sandbox]),
            SETTINGS,
        ).write
        == "none"
    )
    absent = interpreter(policy=None)
    assert (
        plan(
            ReconcileRequest(NS, "py-abcd1234"),
            view(interpreters=[absent], sandboxes=[sandbox]),
            SETTINGS,
        ).write
        == "none"
    )


def test_the_override_annotation_replaces_the_template_policy_whole() -> None:
    override = {"mode": "Restricted", "egress": [{"cidrs": ["192.0.2.0/24"]}]}
    sandbox = direct_sandbox(**{kinds.ANNOTATION_NETWORK_POLICY: json.dumps(override)})
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox]),
        SETTINGS,
    )
    assert result.desired == expected_policy("py-abcd1234", override, sandbox, kinds.SANDBOX)
    cidrs = [
        p["ipBlock"]["cidr"]
        for r in result.desired["spec"]["egress"]
        for p in r.get("to", [])
        if "ipBlock" in p
    ]
    assert cidrs == ["192.0.2.0/24"]


def test_an_override_of_mode_none_opens_the_sandbox_up() -> None:
    sandbox = direct_sandbox(**{kinds.ANNOTATION_NETWORK_POLICY: '{"mode": "None"}'})
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox]),
        SETTINGS,
    )
    assert result.write == "none"
    assert result.desired is None


@pytest.mark.parametrize(
    "override", ['{"mode": "Restricted"', '["not", "an", "object"]', '{"mode": "Restrictd"}']
)
def test_a_broken_override_fails_closed_and_says_why(override: str) -> None:
    sandbox = direct_sandbox(**{kinds.ANNOTATION_NETWORK_POLICY: override})
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter(policy=None)], sandboxes=[sandbox]),
        SETTINGS,
    )
    assert result.write == "create"
    assert result.desired == expected_policy(
        "py-abcd1234", {"mode": "Restricted"}, sandbox, kinds.SANDBOX
    )
    [report] = result.reports
    assert report.reason == "FailedClosed" and report.warning
    assert "override annotation" in report.message


def test_a_sandbox_whose_template_is_gone_fails_closed() -> None:
    sandbox = direct_sandbox()
    result = plan(ReconcileRequest(NS, "py-abcd1234"), view(sandboxes=[sandbox]), SETTINGS)
    assert result.desired == expected_policy(
        "py-abcd1234", {"mode": "Restricted"}, sandbox, kinds.SANDBOX
    )
    assert "template 'py' not found" in result.reports[0].message


def test_an_agent_runtime_and_code_interpreter_of_one_name_are_told_apart_by_the_owner() -> None:
    open_runtime = runtime(policy={"mode": "None"})
    sandbox = direct_sandbox()
    ambiguous = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], runtimes=[open_runtime], sandboxes=[sandbox]),
        SETTINGS,
    )
    assert ambiguous.write == "create"  # fails closed rather than guess
    assert ambiguous.reports and ambiguous.reports[0].reason == "FailedClosed"

    owned = direct_sandbox()
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": kinds.AGENT_RUNTIME.api_version,
            "kind": "AgentRuntime",
            "name": "py",
            "uid": "uid-py",
        }
    ]
    decided = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], runtimes=[open_runtime], sandboxes=[owned]),
        SETTINGS,
    )
    assert decided.write == "none" and not decided.reports  # the AgentRuntime's None


def test_an_orphaned_managed_policy_is_deleted_and_someone_elses_is_never_touched() -> None:
    sandbox = direct_sandbox()
    ours = stored(expected_policy("py-gone0000", RESTRICTED, sandbox, kinds.SANDBOX))
    assert (
        plan(ReconcileRequest(NS, "py-gone0000"), view(policies=[ours]), SETTINGS).write == "delete"
    )

    theirs = {
        "metadata": meta("py-abcd1234", labels={"app": "tenant"}),
        "spec": {"podSelector": {}},
    }
    gated = pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}, gates=[SCHEDULING_GATE])
    blocked = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox], policies=[theirs], pods=[gated]),
        SETTINGS,
    )
    assert blocked.write == "blocked"
    assert blocked.ungate_pods == ()  # the pod stays gated: its policy is not in place
    assert blocked.reports[-1].reason == "PolicyNameTaken"
    assert (
        plan(ReconcileRequest(NS, "py-abcd1234"), view(policies=[theirs]), SETTINGS).write
        == "blocked"
    )


def test_a_gated_direct_pod_is_ungated_with_its_other_gates_kept() -> None:
    gated = pod(
        "py-abcd1234",
        {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"},
        owner="py-abcd1234",
        gates=["example.com/quota", SCHEDULING_GATE],
    )
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[direct_sandbox()], pods=[gated]),
        SETTINGS,
    )
    [patch] = result.ungate_pods
    assert patch.name == "py-abcd1234" and patch.uid == "uid-py-abcd1234"
    assert patch.gates == ({"name": "example.com/quota"},)


def test_a_pod_whose_sandbox_is_not_known_yet_is_not_ungated() -> None:
    gated = pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}, gates=[SCHEDULING_GATE])
    result = plan(ReconcileRequest(NS, "py-abcd1234"), view(pods=[gated]), SETTINGS)
    assert result.ungate_pods == ()


# --- warm path --------------------------------------------------------------------------------


def test_a_claim_gets_a_policy_it_owns_and_its_unlabelled_claimed_pod_gets_labelled() -> None:
    the_claim = claim()
    claimed = pod("py-pool-x1", {kinds.LABEL_CLAIM_UID: "uid-py-claim0001"}, owner="py-pool-x1")
    labelled = pod(
        "other",
        {
            kinds.LABEL_CLAIM_UID: "uid-py-claim0001",
            kinds.LABEL_SANDBOX_NAME: "py-claim0001",
            kinds.LABEL_SESSION_ID: "s2",
        },
    )
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(interpreters=[interpreter(warm=2)], claims=[the_claim], pods=[claimed, labelled]),
        SETTINGS,
    )
    assert result.write == "create"
    assert result.desired == expected_policy(
        "py-claim0001", RESTRICTED, the_claim, kinds.SANDBOX_CLAIM, [claimed, labelled]
    )
    # Owned by the claim, and by each of its pods: it outlives them all.
    owners = result.desired["metadata"]["ownerReferences"]
    assert [(o["kind"], o.get("controller", False)) for o in owners] == [
        ("SandboxClaim", True),
        ("Pod", False),
        ("Pod", False),
    ]
    [patch] = result.label_pods
    assert patch.name == "py-pool-x1"
    assert dict(patch.labels) == {
        kinds.LABEL_SANDBOX_NAME: "py-claim0001",
        kinds.LABEL_SESSION_ID: "s2",
    }


def test_a_claimed_pod_without_claim_uid_is_found_through_the_adopted_sandbox() -> None:
    the_claim = claim()
    the_claim["metadata"]["labels"][kinds.LABEL_CLAIMED_SANDBOX] = "py-pool-x1"
    claimed = pod("py-pool-x1", {"app": "x"}, owner="py-pool-x1")
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(interpreters=[interpreter(warm=2)], claims=[the_claim], pods=[claimed]),
        SETTINGS,
    )
    assert [p.name for p in result.label_pods] == ["py-pool-x1"]


def test_the_claim_override_replaces_the_template() -> None:
    the_claim = claim(**{kinds.ANNOTATION_NETWORK_POLICY: '{"mode": "None"}'})
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(interpreters=[interpreter(warm=1)], claims=[the_claim]),
        SETTINGS,
    )
    assert result.write == "none"


def test_a_claim_of_a_template_that_is_not_a_code_interpreter_fails_closed() -> None:
    result = plan(
        ReconcileRequest(NS, "py-claim0001"),
        view(runtimes=[runtime(policy={"mode": "None"})], claims=[claim()]),
        SETTINGS,
    )
    assert result.write == "create"
    assert result.reports[0].reason == "FailedClosed"


# --- the warm pool's baseline -----------------------------------------------------------------


def test_an_isolated_warm_pool_gets_a_baseline_selecting_its_pods_by_template_hash() -> None:
    result = plan(baseline_request(NS, "py"), view(interpreters=[interpreter(warm=3)]), SETTINGS)
    assert result.write == "create"
    assert result.desired is not None
    assert result.desired["metadata"]["name"] == "netpol-baseline.py"
    spec = result.desired["spec"]
    assert spec["podSelector"] == {
        "matchLabels": {"agents.x-k8s.io/sandbox-template-ref-hash": name_hash("py")}
    }
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in spec  # nothing out
    sandbox_policy = expected_policy("s", RESTRICTED, direct_sandbox(), kinds.SANDBOX)
    assert spec["ingress"] == [sandbox_policy["spec"]["ingress"][0]]  # the control plane only
    assert result.desired["metadata"]["ownerReferences"][0]["kind"] == "CodeInterpreter"


@pytest.mark.parametrize(
    "code_interpreter",
    [
        interpreter(warm=0),
        interpreter(policy={"mode": "None"}, warm=3),
        interpreter(policy=None, warm=3),
    ],
    ids=["no warm pool", "mode None", "no policy"],
)
def test_no_baseline_where_the_warm_pool_is_not_isolated(code_interpreter: dict[str, Any]) -> None:
    assert (
        plan(baseline_request(NS, "py"), view(interpreters=[code_interpreter]), SETTINGS).write
        == "none"
    )


def test_a_baseline_whose_code_interpreter_is_gone_is_deleted() -> None:
    built = plan(
        baseline_request(NS, "py"), view(interpreters=[interpreter(warm=3)]), SETTINGS
    ).desired
    assert built is not None
    result = plan(baseline_request(NS, "py"), view(policies=[stored(dict(built))]), SETTINGS)
    assert result.write == "delete"


def test_the_name_hash_is_agent_sandboxs_fnv1a() -> None:
    # Values from Go's hash/fnv New32a, formatted %08x as agent-sandbox's NameHash does.
    assert name_hash("") == "811c9dc5"
    assert name_hash("python-sandbox") == "2367cb79"
    assert name_hash("codeinterpreter-ü") == "ed4479a2"


# --- what a change bears on -------------------------------------------------------------------


def test_a_template_change_reaches_every_sandbox_made_from_it() -> None:
    snapshot = view(
        interpreters=[interpreter(warm=1)],
        sandboxes=[
            direct_sandbox("py-aaaa1111"),
            direct_sandbox("py-bbbb2222"),
            direct_sandbox("other-cccc3333", workload="other"),
        ],
        claims=[claim("py-claim0001"), claim("x-claim", template="other")],
    )
    names = sandbox_names_for(kinds.CODE_INTERPRETER, interpreter(), snapshot)
    assert names == ["py-aaaa1111", "py-bbbb2222", "py-claim0001"]


def test_a_pod_change_reaches_its_sandbox_by_label_or_by_claim() -> None:
    snapshot = view(claims=[claim()])
    unlabelled = pod("p", {kinds.LABEL_CLAIM_UID: "uid-py-claim0001"})
    assert sandbox_names_for(kinds.POD, unlabelled, snapshot) == ["py-claim0001"]
    direct = pod("q", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"})
    assert sandbox_names_for(kinds.POD, direct, snapshot) == ["py-abcd1234"]


# --- saying that claim label injection is off ------------------------------------------------


def _labelling(injection: str, *, before: dict[str, str], after: dict[str, str]) -> list[Any]:
    from dataclasses import replace

    from webhook.reconciler.plan import claim_label_reports

    the_view = view(interpreters=[interpreter(warm=2)], claims=[claim()])
    old = pod("py-pool-x1", before, owner="py-pool-x1")
    new = pod("py-pool-x1", after, owner="py-pool-x1")
    settings = replace(SETTINGS, claim_label_injection=injection)
    return claim_label_reports(old, new, the_view, settings)


CLAIMED = {kinds.LABEL_CLAIM_UID: "uid-py-claim0001"}
LABELLED = {**CLAIMED, kinds.LABEL_SANDBOX_NAME: "py-claim0001"}


def test_with_injection_off_the_claim_hears_that_its_pod_was_labelled_by_us() -> None:
    [report] = _labelling("off", before=CLAIMED, after=LABELLED)
    assert report.reason == "ClaimLabelNotInjected"
    assert (report.regarding["kind"], report.regarding["metadata"]["name"]) == (
        "SandboxClaim",
        "py-claim0001",
    )
    assert "py-pool-x1" in report.message
    assert kinds.ALLOW_LIST_FIX in report.message
    assert not report.warning


@pytest.mark.parametrize(
    ("injection", "before", "after"),
    [
        ("on", CLAIMED, LABELLED),  # agent-sandbox labelled it at adoption
        ("off", LABELLED, LABELLED),  # a resync or another change: no new labelling
        ("off", CLAIMED, CLAIMED),  # not labelled yet
        ("off", CLAIMED, {**CLAIMED, kinds.LABEL_SANDBOX_NAME: "no-such-claim"}),
    ],
    ids=["injection on", "already labelled", "not labelled", "no claim of that name"],
)
def test_no_claim_label_event_otherwise(
    injection: str, before: dict[str, str], after: dict[str, str]
) -> None:
    assert _labelling(injection, before=before, after=after) == []


def test_a_pod_added_or_deleted_is_no_labelling() -> None:
    from webhook.reconciler.plan import claim_label_reports

    the_view = view(interpreters=[interpreter(warm=2)], claims=[claim()])
    labelled = pod("py-pool-x1", LABELLED, owner="py-pool-x1")
    off = Settings(claim_label_injection="off")
    assert claim_label_reports(None, labelled, the_view, off) == []
    assert claim_label_reports(labelled, None, the_view, off) == []


# --- the isolation canary, written as the gate is lifted --------------------------------------

HOLD = Settings(isolation_canary=("10.9.0.5", 9443))


def held_pod() -> dict[str, Any]:
    """A direct-path pod as the webhook made it with --isolation-canary: gated, canary empty."""
    gated = pod(
        "py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}, owner="py-abcd1234",
        gates=[SCHEDULING_GATE],
    )  # fmt: skip
    gated["metadata"]["annotations"] = {kinds.ANNOTATION_ISOLATION_CANARY: ""}
    return gated


@pytest.mark.parametrize(
    ("policy", "canary"),
    [
        (RESTRICTED, "10.9.0.5:9443"),  # its CIDR is 10.8.0.0/16: the canary is refused
        ({"mode": "Restricted", "egress": [{"cidrs": ["10.9.0.0/16"]}]}, ""),  # let through
        ({"mode": "None"}, ""),  # no policy: nothing to check
    ],
    ids=["refused by the policy", "let through by the policy", "mode None"],
)
def test_the_pod_is_told_what_to_check_as_its_gate_is_lifted(policy: Any, canary: str) -> None:
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter(policy=policy)], sandboxes=[direct_sandbox()],
             pods=[held_pod()]),
        HOLD,
    )  # fmt: skip
    [patch] = result.ungate_pods
    assert patch.gates == ()
    assert patch.canary == canary


def test_a_pod_without_the_init_container_gets_no_canary() -> None:
    """Created before --isolation-canary was on (or by a webhook without it): the reconciler
    writes no annotation the pod has not got."""
    gated = held_pod()
    del gated["metadata"]["annotations"]
    result = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[direct_sandbox()], pods=[gated]),
        HOLD,
    )
    [patch] = result.ungate_pods
    assert patch.canary is None


def test_a_running_pod_whose_canary_no_longer_fits_its_policy_gets_the_new_one() -> None:
    """The sandbox's policy changed to let the canary through after the pod started: if the
    node recreates the pod's sandbox, its init container must not wait for a refusal that
    will never come. And back, when the policy refuses it again."""
    running = held_pod()
    running["spec"] = {}
    running["metadata"]["annotations"][kinds.ANNOTATION_ISOLATION_CANARY] = "10.9.0.5:9443"
    opens = {"mode": "Restricted", "egress": [{"cidrs": ["10.9.0.0/16"]}]}

    def canary_patches(policy: Any, pod: dict[str, Any]) -> list[str | None]:
        result = plan(
            ReconcileRequest(NS, "py-abcd1234"),
            view(interpreters=[interpreter(policy=policy)], sandboxes=[direct_sandbox()],
                 pods=[pod]),
            HOLD,
        )  # fmt: skip
        assert result.ungate_pods == ()
        return [patch.canary for patch in result.canary_pods]

    assert canary_patches(RESTRICTED, running) == []  # as it should be: nothing to write
    assert canary_patches(opens, running) == [""]
    running["metadata"]["annotations"][kinds.ANNOTATION_ISOLATION_CANARY] = ""
    assert canary_patches(RESTRICTED, running) == ["10.9.0.5:9443"]
    assert canary_patches(opens, running) == []


def test_a_policy_outlives_its_deleted_sandbox_while_its_pod_exists() -> None:
    """Deleting a Sandbox does not open its pod in the seconds it takes to stop: the pod
    is an owner of the policy (the garbage collector waits for it), and the reconciler
    does not delete the policy as an orphan while it exists."""
    sandbox = direct_sandbox()
    the_pod = pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}, owner="py-abcd1234")
    made = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], sandboxes=[sandbox], pods=[the_pod]),
        SETTINGS,
    )
    assert made.desired is not None
    policy = stored(made.desired)
    assert {"apiVersion": "v1", "kind": "Pod", "name": "py-abcd1234", "uid": "uid-py-abcd1234"} in (
        policy["metadata"]["ownerReferences"]
    )
    after_delete = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], pods=[the_pod], policies=[policy]),
        SETTINGS,
    )
    assert after_delete.write == "none"
    # A pod of the same name but another uid is another pod: the policy goes.
    recreated = {**the_pod, "metadata": {**the_pod["metadata"], "uid": "uid-new"}}
    gone = plan(
        ReconcileRequest(NS, "py-abcd1234"),
        view(interpreters=[interpreter()], pods=[recreated], policies=[policy]),
        SETTINGS,
    )
    assert gone.write == "delete"


def test_an_update_s_event_says_why_it_was_written() -> None:
    from webhook.reconciler.plan import update_reason

    sandbox = direct_sandbox()
    before = stored(expected_policy("py-abcd1234", RESTRICTED, sandbox, kinds.SANDBOX))
    pods = [pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"})]
    world = view(interpreters=[interpreter()], sandboxes=[sandbox], pods=pods, policies=[before])
    decided = plan(ReconcileRequest(NS, "py-abcd1234"), world, SETTINGS)
    assert decided.write == "update"  # its pod came: an owner more, nothing else
    assert update_reason(decided) == "now owned by the sandbox's pods too: it stays while they run"
    edited = json.loads(json.dumps(before))
    edited["spec"]["egress"] = []
    world = view(interpreters=[interpreter()], sandboxes=[sandbox], policies=[edited])
    decided = plan(ReconcileRequest(NS, "py-abcd1234"), world, SETTINGS)
    assert update_reason(decided) == (
        "brought back to the sandbox's policy (it was edited, or the policy changed)"
    )
