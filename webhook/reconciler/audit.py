"""``agentcube-netpol audit``: what in a live cluster leaves a sandbox less isolated than it should be.

The findings are pure: the plan the reconciler would make for every managed
NetworkPolicy over a one-time listing (anything it would write is a finding),
plus the NetworkPolicies of others that select a sandbox pod (policies add up,
so each one can only loosen ours), agent-sandbox templates that manage a
policy of their own for an isolated CodeInterpreter's warm pool, and claim label
injection left off by agent-sandbox's allow-list, and AgentCube CRDs that would drop the
networkPolicy field. A shared domain policy is judged by what it holds (audit resolves
nothing): a name that did not resolve and an answer that was dropped are findings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.policy.selectors import selector_matches
from webhook.reconciler.crdschema import SchemaPlan
from webhook.reconciler.domainplan import DOMAIN_ANSWER_DROPPED, DOMAIN_UNRESOLVED
from webhook.reconciler.plan import (
    LABEL_TEMPLATE_REF_HASH,
    SCHEDULING_GATE,
    all_requests,
    is_managed,
    plan,
    template_mode,
    warm_pool_size,
    with_kind,
)
from webhook.reconciler.sandboxes import View, labels_of, name_of, namespace_of

PROBLEMS = {
    "create": ("missing", "its NetworkPolicy does not exist"),
    "update": ("drifted", "its NetworkPolicy differs from the sandbox's policy"),
    "delete": ("orphaned", "a managed NetworkPolicy that no sandbox needs"),
    "blocked": ("name-taken", "a NetworkPolicy not managed by agentcube-netpol has its name"),
}


DOMAIN_PROBLEMS = {
    DOMAIN_UNRESOLVED: "domain-unresolved",
    DOMAIN_ANSWER_DROPPED: "domain-answer-dropped",
}


@dataclass(frozen=True, order=True)
class Finding:
    namespace: str
    name: str
    problem: str
    detail: str


def sandbox_pods(view: View) -> list[Mapping[str, Any]]:
    return [
        pod
        for pod in view.items(kinds.POD)
        if kinds.LABEL_SANDBOX_NAME in labels_of(pod) or kinds.LABEL_CLAIM_UID in labels_of(pod)
    ]


def audit(
    view: View,
    *,
    settings: Settings,
    network_policies: Iterable[Mapping[str, Any]],
    sandbox_templates: Iterable[Mapping[str, Any]] = (),
) -> list[Finding]:
    """Every finding, sorted; ``network_policies`` are all of them, ours and others'."""
    findings: list[Finding] = []
    for request in all_requests(view):
        the_plan = plan(request, view, settings)
        if the_plan.write in PROBLEMS:
            problem, detail = PROBLEMS[the_plan.write]
            findings.append(Finding(request.namespace, request.name, problem, detail))
        for report in the_plan.reports:
            if report.reason == "FailedClosed":
                findings.append(
                    Finding(request.namespace, request.name, "fails-closed", report.message)
                )
            elif report.reason in DOMAIN_PROBLEMS and the_plan.domain_names is not None:
                # Once, on the shared policy (each sandbox of it hears the same as an Event).
                problem = DOMAIN_PROBLEMS[report.reason]
                findings.append(Finding(request.namespace, request.name, problem, report.message))
        for patch in the_plan.label_pods:
            findings.append(
                Finding(
                    patch.namespace,
                    patch.name,
                    "pod-unlabelled",
                    f"claimed pod of sandbox {request.name} lacks {kinds.LABEL_SANDBOX_NAME}",
                )
            )
        if the_plan.write == "none":
            for patch in the_plan.ungate_pods:
                findings.append(
                    Finding(
                        patch.namespace,
                        patch.name,
                        "pod-gated",
                        f"still held by {SCHEDULING_GATE} though its policy is in place",
                    )
                )
    findings += widening_policies(view, network_policies)
    findings += managed_templates(view, sandbox_templates, settings=settings)
    return sorted(set(findings))


def claim_label_findings(configured: str, decided: str, why: str) -> list[Finding]:
    """``--claim-label-injection=auto`` deciding "off" (agent-sandbox's allow-list lacks our
    domain): claimed pods get their label from us after adoption, not from agent-sandbox at
    it, so a session's pod runs a moment selected by its warm pool's baseline alone; the fix."""
    if configured != "auto" or decided != "off":
        return []
    return [
        Finding(
            kinds.AGENT_SANDBOX_NAMESPACE,
            kinds.AGENT_SANDBOX_CONFIG_MAP,
            "claim-label-not-injected",
            f"{why}: claimed pods are labelled by agentcube-netpol after adoption, not by "
            f"agent-sandbox at adoption; to allow our domain: {kinds.ALLOW_LIST_FIX}",
        )
    ]


def crd_schema_findings(plans: Iterable[SchemaPlan]) -> list[Finding]:
    """AgentCube's CRDs without our networkPolicy property (or with an older one, or one of
    their own): the API server drops the field from every template. An absent CRD is no
    finding (AgentCube is not installed, so there are no templates)."""
    problems = {
        "patch": "crd-schema-missing",
        "conflict": "crd-schema-conflict",
        "unsupported": "crd-schema-unsupported",
    }
    return [
        Finding("", the_plan.crd, problems[the_plan.state], the_plan.detail)
        for the_plan in plans
        if the_plan.state in problems
    ]


PROBE_NAME = "agentcube-netpol-probe"
PROBE_HOOK = "templates.netpol.agentcube.io"
PROBE_CIDR = "10.0.0.1/8"  # host bits set: the webhook refuses it, naming the field


def webhook_probe(namespace: str) -> dict[str, Any]:
    """A CodeInterpreter our validating webhook must refuse, for a server-side dry run: the
    API server calls the webhook through its Service as for a real create, and stores
    nothing (our webhooks declare sideEffects: None)."""
    return {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": kinds.CODE_INTERPRETER.kind,
        "metadata": {"name": PROBE_NAME, "namespace": namespace},
        "spec": {
            "template": {
                "image": "probe",
                "networkPolicy": {"mode": "Restricted", "egress": [{"cidrs": [PROBE_CIDR]}]},
            }
        },
    }


def probe_findings(namespace: str, refusal: str | None) -> list[Finding]:
    """What the dry run of ``webhook_probe`` tells: ``refusal`` is the API server's message
    (None: it was accepted). Refused by our webhook naming the field: it answers."""
    if refusal is None:
        detail = f"a CodeInterpreter with {PROBE_CIDR} was accepted: {PROBE_HOOK} was not called"
        return [Finding(namespace, PROBE_NAME, "webhook-not-called", detail)]
    if f'"{PROBE_HOOK}" denied the request' in refusal and PROBE_CIDR in refusal:
        return []
    return [Finding(namespace, PROBE_NAME, "webhook-not-answering", refusal)]


def widening_policies(view: View, network_policies: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """NetworkPolicies not ours that select a sandbox pod: each adds to what it may do."""
    pods_by_namespace: dict[str, list[Mapping[str, Any]]] = {}
    for pod in sandbox_pods(view):
        pods_by_namespace.setdefault(namespace_of(pod), []).append(pod)
    findings = []
    for policy in network_policies:
        if is_managed(policy):
            continue
        namespace = namespace_of(policy)
        selector = kinds.get_path(policy, ("spec", "podSelector"))
        selected = sorted(
            name_of(pod)
            for pod in pods_by_namespace.get(namespace, ())
            if selector_matches(selector, labels_of(pod))
        )
        if selected:
            shown = ", ".join(selected[:5]) + (
                f" and {len(selected) - 5} more" if len(selected) > 5 else ""
            )
            findings.append(
                Finding(
                    namespace,
                    name_of(policy),
                    "widens",
                    f"NetworkPolicy selects sandbox pods ({shown}); its allowances add to theirs",
                )
            )
    return findings


def managed_templates(
    view: View, sandbox_templates: Iterable[Mapping[str, Any]], *, settings: Settings
) -> list[Finding]:
    """SandboxTemplates of isolated CodeInterpreters whose own NetworkPolicy agent-sandbox manages.

    agent-sandbox's per-template policy selects ``sandbox-template-ref-hash``,
    which claimed pods keep, so it adds its allowances to every session's.
    """
    findings = []
    for template in sandbox_templates:
        management = kinds.get_path(template, ("spec", "networkPolicyManagement"))
        if management == "Unmanaged":
            continue
        found = view.get(kinds.CODE_INTERPRETER, namespace_of(template), name_of(template))
        if found is None:
            continue
        interpreter = with_kind(found, kinds.CODE_INTERPRETER)
        if warm_pool_size(interpreter) <= 0:
            continue
        if template_mode(interpreter, settings) == "None":
            continue
        findings.append(
            Finding(
                namespace_of(template),
                name_of(template),
                "widens",
                f"SandboxTemplate has networkPolicyManagement {management or 'Managed (default)'}: "
                f"agent-sandbox's own policy selects {LABEL_TEMPLATE_REF_HASH} and adds to "
                "every session's; set it to Unmanaged",
            )
        )
    return findings


def render_text(findings: list[Finding]) -> str:
    if not findings:
        return "no findings: every sandbox is isolated as its policy says\n"
    width_ns = max(len(f.namespace) for f in findings)
    width_name = max(len(f.name) for f in findings)
    width_problem = max(len(f.problem) for f in findings)
    lines = [
        f"{f.namespace:<{width_ns}}  {f.name:<{width_name}}  {f.problem:<{width_problem}}  {f.detail}"
        for f in findings
    ]
    lines.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")
    return "\n".join(lines) + "\n"


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [asdict(f) for f in findings]}, indent=2) + "\n"
