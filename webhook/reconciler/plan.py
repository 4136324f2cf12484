"""What one reconcile should do: a pure function from the caches to a ``Plan``.

A request names one NetworkPolicy we manage: a sandbox's (named after the
sandbox) or a warm pool's baseline (``netpol-baseline.<CodeInterpreter>``). The
plan says which write brings that NetworkPolicy to the desired state (create,
update, delete or nothing), which of the sandbox's pods then need their
``runtime.agentcube.io/sandbox-name`` label or their scheduling gate lifted, and
what to report. The controller carries it out; nothing here does I/O.

How isolation never has a gap (README "Isolation without a gap"):
- direct path: the pod webhook adds the ``netpol.agentcube.io/network-policy``
  scheduling gate to every pod created with a sandbox-name label; a gated pod is
  never scheduled, so it runs nothing, and the plan lifts the gate only once the
  sandbox's NetworkPolicy is written (or its mode is None);
- warm path: a CodeInterpreter with a warm pool gets a baseline NetworkPolicy that
  selects its warm-pool pods by ``agents.x-k8s.io/sandbox-template-ref-hash`` from
  the moment they exist and lets in only AgentCube's router and workload manager,
  nothing out. A claimed pod keeps that label, so between the claim and its own
  NetworkPolicy it is held by the baseline; since policies add up and the
  baseline allows a subset of every sandbox policy, it never loosens one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.policy.builder import (
    FAIL_CLOSED_POLICY,
    PolicyShapeError,
    build_network_policy,
    control_plane_rule,
    effective_mode,
    effective_policy,
    owner_reference,
    template_policy,
)
from webhook.policy.canary import format_canary, lets_through
from webhook.policy.domains import domain_entries, domain_set_key
from webhook.policy.validation import MODE_NONE
from webhook.reconciler.agentsandbox import name_hash
from webhook.reconciler.domaincache import NameState
from webhook.reconciler.sandboxes import (
    BY_SANDBOX_NAME,
    SandboxRef,
    View,
    annotations_of,
    find_sandbox,
    is_direct_sandbox,
    labels_of,
    name_of,
    namespace_of,
    ns_key,
    pods_of,
    sandbox_names_for,
    uid_of,
)

SCHEDULING_GATE = kinds.SCHEDULING_GATE
BASELINE_PREFIX = "netpol-baseline."
LABEL_ROLE = "netpol.agentcube.io/role"
ROLE_BASELINE = "baseline"
ROLE_SANDBOX = "sandbox"
LABEL_TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"

Write = Literal["create", "update", "delete", "none", "blocked"]


class ReconcileRequest(NamedTuple):
    """One NetworkPolicy we manage, by namespace and name."""

    namespace: str
    name: str

    @property
    def is_baseline(self) -> bool:
        return self.name.startswith(BASELINE_PREFIX)

    @property
    def is_domains(self) -> bool:
        """A namespace's shared domain policy (``netpol-domains.<key>``)."""
        return self.name.startswith(kinds.DOMAIN_POLICY_PREFIX)


def baseline_request(namespace: str, code_interpreter: str) -> ReconcileRequest:
    return ReconcileRequest(namespace, BASELINE_PREFIX + code_interpreter)


@dataclass(frozen=True)
class PodPatch:
    """Labels to set on a pod, or scheduling gates to leave it with."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    gates: tuple[Mapping[str, Any], ...] | None = None  # None: gates untouched
    # Written with the gates: the isolation canary, for a pod the webhook gave the isolation
    # init container (webhook.policy.canary).
    canary: str | None = None


@dataclass(frozen=True)
class Report:
    """An Event to record on ``regarding`` (an object with apiVersion, kind, metadata)."""

    regarding: Mapping[str, Any]
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Plan:
    request: ReconcileRequest
    write: Write
    desired: Mapping[str, Any] | None  # the NetworkPolicy to create or to update to
    current: Mapping[str, Any] | None  # the NetworkPolicy as cached
    # After a successful write: pods to label (warm path) and to ungate (direct path).
    label_pods: tuple[PodPatch, ...] = ()
    ungate_pods: tuple[PodPatch, ...] = ()
    # Pods past their gate whose isolation canary no longer matches the sandbox's policy:
    # their init container runs again if the node recreates the pod's sandbox.
    canary_pods: tuple[PodPatch, ...] = ()
    reports: tuple[Report, ...] = ()
    regarding: Mapping[str, Any] | None = None  # where write Events go
    # A shared domain policy's plan: the names it needs resolved (the controller tells the
    # resolver's tracker); None for every other plan.
    domain_names: frozenset[str] | None = None
    # The object written, when it is not the request's NetworkPolicy: a ClusterNetworkPolicy
    # (--domain-backend=cluster-network-policy) is cluster-scoped and named otherwise.
    kind: kinds.Kind = kinds.NETWORK_POLICY
    object_name: str | None = None

    @property
    def target(self) -> tuple[kinds.Kind, str, str]:
        """What the write addresses: kind, namespace ("" when cluster-scoped), name."""
        if self.kind == kinds.CLUSTER_NETWORK_POLICY:
            return self.kind, "", self.object_name or self.request.name
        return self.kind, self.request.namespace, self.object_name or self.request.name

    @property
    def merge_patch(self) -> dict[str, Any]:
        """The JSON merge patch of an update: our labels, owner and spec, at the cached version."""
        assert self.desired is not None and self.current is not None
        spec = dict(self.desired["spec"])
        for key in self.current.get("spec") or {}:
            spec.setdefault(key, None)  # fields we no longer want are removed
        metadata = self.desired["metadata"]
        patch: dict[str, Any] = {
            "metadata": {
                "resourceVersion": (self.current.get("metadata") or {}).get("resourceVersion"),
                "labels": dict(metadata.get("labels") or {}),
                "ownerReferences": list(metadata.get("ownerReferences") or []),
            },
            "spec": spec,
        }
        if metadata.get("annotations"):
            patch["metadata"]["annotations"] = dict(metadata["annotations"])
        return patch


def is_managed(network_policy: Mapping[str, Any]) -> bool:
    return labels_of(network_policy).get(kinds.MANAGED_BY_LABEL) == kinds.MANAGED_BY_VALUE


def in_sync(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """True when ``current`` already is ``desired``: spec, our labels and the owner.

    Labels others added are theirs to keep; a label of ours edited or removed
    is drift, like an edited rule.
    """
    current_labels = labels_of(current)
    ours = (desired.get("metadata") or {}).get("labels") or {}
    current_annotations = annotations_of(current)
    our_annotations = (desired.get("metadata") or {}).get("annotations") or {}
    return (
        current.get("spec") == desired.get("spec")
        and all(current_labels.get(k) == v for k, v in ours.items())
        and all(current_annotations.get(k) == v for k, v in our_annotations.items())
        and (current.get("metadata") or {}).get("ownerReferences")
        == (desired.get("metadata") or {}).get("ownerReferences")
    )


def update_reason(decided: Plan) -> str:
    """Why an update was written, for its Event: the owners only (a sandbox's pods came or
    went), a shared domain policy following its names and sandboxes, or drift."""
    if decided.request.is_domains:
        return "now holds its names' current addresses and sandboxes (or it was edited)"
    desired, current = decided.desired or {}, decided.current or {}
    owners_only = in_sync(
        {**desired, "metadata": {**(desired.get("metadata") or {}), "ownerReferences": None}},
        {**current, "metadata": {**(current.get("metadata") or {}), "ownerReferences": None}},
    )
    if owners_only:
        return "now owned by the sandbox's pods too: it stays while they run"
    return "brought back to the sandbox's policy (it was edited, or the policy changed)"


def choose_write(desired: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> Write:
    if current is not None and not is_managed(current):
        # Someone else's NetworkPolicy has the name: never take it over or delete it.
        return "blocked"
    if desired is None:
        return "delete" if current is not None else "none"
    if current is None:
        return "create"
    return "none" if in_sync(desired, current) else "update"


def with_kind(obj: Mapping[str, Any], kind: kinds.Kind) -> dict[str, Any]:
    """``obj`` with apiVersion and kind set (cached objects may lack them). An apiVersion
    of the kind's group that the object already carries is kept: it is the version the
    cluster served it in (v1beta1 on agent-sandbox v0.5+), which an ownerReference must name."""
    api_version = obj.get("apiVersion")
    if not (isinstance(api_version, str) and api_version.startswith(f"{kind.group}/")):
        api_version = kind.api_version
    return {**obj, "apiVersion": api_version, "kind": kind.kind}


def plan(
    request: ReconcileRequest,
    view: View,
    settings: Settings,
    states: Callable[[str], NameState | None] | None = None,
) -> Plan:
    """``states``: each domain name's addresses (the reconciler's tracker); without it, a
    shared domain policy is planned from what it holds (``audit``)."""
    if request.is_baseline:
        return plan_baseline(request, view, settings)
    if request.is_domains:
        from webhook.reconciler.domainplan import plan_domains  # it builds on this module

        return plan_domains(request, view, settings, states)
    return plan_sandbox(request, view, settings)


def sandbox_policy(
    ref: SandboxRef, view: View, settings: Settings
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The sandbox's effective networkPolicy, and why it fails closed if it does."""
    template = _template(ref, view)
    if template is None and ref.override is None:
        return FAIL_CLOSED_POLICY, (
            f"template {ref.template_name!r} not found in namespace {ref.namespace}; "
            "isolating as Restricted"
        )
    value = template_policy(template) if template is not None else None
    return effective_policy(value, ref.override, limits=settings.limits)


def _template(ref: SandboxRef, view: View) -> Mapping[str, Any] | None:
    """The AgentRuntime or CodeInterpreter the sandbox was made from.

    Warm path: always a CodeInterpreter (only they have warm pools). Direct path:
    the template whose name is the Sandbox's workload-name; AgentCube names both
    kinds from one namespace of names, so when both exist the Sandbox's own
    ownerReference decides, and without one the sandbox fails closed.
    """
    if ref.template_name is None:
        return None
    found = {}
    for kind in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER):
        if ref.path == "warm" and kind != kinds.CODE_INTERPRETER:
            continue
        obj = view.get(kind, ref.namespace, ref.template_name)
        if obj is not None:
            found[kind.kind] = with_kind(obj, kind)
    if len(found) == 1:
        return next(iter(found.values()))
    for owner in (ref.owner.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(owner, Mapping) and owner.get("kind") in found:
            return found[str(owner["kind"])]
    return None  # none, or ambiguous: fail closed


def plan_sandbox(request: ReconcileRequest, view: View, settings: Settings) -> Plan:
    current = view.get(kinds.NETWORK_POLICY, request.namespace, request.name)
    ref = find_sandbox(view, request.namespace, request.name)
    if ref is None:
        # No sandbox by that name: an orphan of ours is deleted (the garbage collector
        # does this too, once its owners are gone; this covers a policy that lost them),
        # but not while a pod it was made for still exists: that pod may still run.
        if current is not None and is_managed(current) and owning_pods_remain(current, view):
            return Plan(request, "none", None, current)
        return Plan(request, choose_write(None, current), None, current)

    regarding = with_kind(ref.owner, ref.owner_kind)
    policy, reason = sandbox_policy(ref, view, settings)
    reports: list[Report] = []
    if reason is not None:
        reports.append(Report(regarding, "FailedClosed", reason, warning=True))
    try:
        desired = build_network_policy(
            policy,
            sandbox=ref.name,
            namespace=ref.namespace,
            settings=settings,
            owner=regarding,
        )
    except PolicyShapeError as exc:  # validated already; kept for a policy stored broken
        reports.append(Report(regarding, "FailedClosed", str(exc), warning=True))
        desired = build_network_policy(
            FAIL_CLOSED_POLICY,
            sandbox=ref.name,
            namespace=ref.namespace,
            settings=settings,
            owner=regarding,
        )
    domains_ready = True
    if desired is not None:
        desired["metadata"]["labels"][LABEL_ROLE] = ROLE_SANDBOX
        desired["metadata"]["ownerReferences"] += pod_owner_references(ref, view)
        key = _domain_key(ref.namespace, policy)
        if key is not None:
            from webhook.reconciler.domainplan import (
                domain_reports,
                sandbox_domains_ready,
                status_of,
            )

            desired["metadata"]["labels"][kinds.LABEL_DOMAIN_SET] = key
            domains_ready, shared = sandbox_domains_ready(
                view, ref.namespace, ref.name, key, settings
            )
            reports += domain_reports(regarding, status_of(shared))
    write = choose_write(desired, current)
    if write == "blocked":
        reports.append(
            Report(
                regarding,
                "PolicyNameTaken",
                f"NetworkPolicy {request.name} exists and is not managed by agentcube-netpol; "
                "the sandbox's pods stay gated until it is renamed or removed",
                warning=True,
            )
        )
    # A blocked write leaves the pods as they are: their policy is not in place. Nor is it
    # while the shared domain policy does not yet hold this sandbox and its names' answers.
    ungate, recanary = (
        ([], []) if write == "blocked" else _pod_patches(ref, view, _canary_for(desired, settings))
    )
    if not domains_ready:
        ungate = []
    return Plan(
        request,
        write,
        desired,
        current,
        label_pods=tuple(_label_patches(ref, view)),
        ungate_pods=tuple(ungate),
        canary_pods=tuple(recanary),
        reports=tuple(reports),
        regarding=regarding,
    )


def _domain_key(namespace: str, policy: Mapping[str, Any] | None) -> str | None:
    entries = domain_entries(policy)
    return domain_set_key(namespace, entries) if entries else None


def pod_owner_references(ref: SandboxRef, view: View) -> list[dict[str, Any]]:
    """The sandbox's pods as owners of its NetworkPolicy, beside the sandbox itself.

    The garbage collector deletes an object only once every owner is gone: deleting a
    Sandbox (or a claim) leaves its policy in place for as long as one of its pods exists,
    terminating ones included, so a pod never runs its last seconds unselected. Not
    controllers, and blockOwnerDeletion unset: deleting a pod waits on nothing."""
    return [
        {"apiVersion": "v1", "kind": "Pod", "name": name_of(pod), "uid": uid_of(pod)}
        for pod in pods_of(ref, view)
    ]


def owning_pods_remain(policy: Mapping[str, Any], view: View) -> bool:
    """Whether a pod named among ``policy``'s owners still exists (same uid)."""
    namespace = namespace_of(policy)
    for owner in (policy.get("metadata") or {}).get("ownerReferences") or []:
        if not isinstance(owner, Mapping) or owner.get("kind") != "Pod":
            continue
        pod = view.get(kinds.POD, namespace, str(owner.get("name", "")))
        if pod is not None and uid_of(pod) == owner.get("uid"):
            return True
    return False


def _label_patches(ref: SandboxRef, view: View) -> list[PodPatch]:
    """Warm path: claimed pods still missing their sandbox-name (the webhook was down)."""
    if ref.path != "warm":
        return []
    wanted = {kinds.LABEL_SANDBOX_NAME: ref.name}
    session = labels_of(ref.owner).get(kinds.LABEL_SESSION_ID)
    if isinstance(session, str) and session:
        wanted[kinds.LABEL_SESSION_ID] = session
    patches = []
    for pod in pods_of(ref, view):
        labels = labels_of(pod)
        missing = {k: v for k, v in wanted.items() if k not in labels}
        if missing:
            patches.append(
                PodPatch(pod["metadata"]["namespace"], name_of(pod), uid_of(pod), labels=missing)
            )
    return patches


CLAIM_LABEL_NOT_INJECTED = "ClaimLabelNotInjected"


def claim_label_reports(
    old_pod: Mapping[str, Any] | None,
    new_pod: Mapping[str, Any] | None,
    view: View,
    settings: Settings,
) -> list[Report]:
    """With claim label injection off, the Event that says so on a claim, the moment its pod
    gets the sandbox-name label (from the pod webhook or the reconciler, not from agent-sandbox
    at adoption). One per labelling of a claimed pod: a resync or a relist changes no label."""
    if settings.claim_label_injection != "off" or old_pod is None or new_pod is None:
        return []
    name = labels_of(new_pod).get(kinds.LABEL_SANDBOX_NAME)
    if not name or kinds.LABEL_SANDBOX_NAME in labels_of(old_pod):
        return []
    ref = find_sandbox(view, namespace_of(new_pod), name)
    if ref is None or ref.path != "warm":
        return []
    return [
        Report(
            with_kind(ref.owner, kinds.SANDBOX_CLAIM),
            CLAIM_LABEL_NOT_INJECTED,
            f"pod {name_of(new_pod)} was labelled {kinds.LABEL_SANDBOX_NAME} by agentcube-netpol "
            f"after adoption: claim label injection is off (agent-sandbox's "
            f"{kinds.ALLOWED_LABEL_DOMAINS_KEY} lacks runtime.agentcube.io, or "
            f"--claim-label-injection=off). To have it labelled at adoption: "
            f"{kinds.ALLOW_LIST_FIX}",
        )
    ]


def _canary_for(desired: Mapping[str, Any] | None, settings: Settings) -> str:
    """What the isolation init container of this sandbox's pods is to check: the canary,
    unless the sandbox's policy lets it through (or there is none): then nothing ("")."""
    canary = settings.isolation_canary
    if canary is None or lets_through(desired["spec"] if desired else None, canary):
        return ""
    return format_canary(canary)


def _pod_patches(ref: SandboxRef, view: View, canary: str) -> tuple[list[PodPatch], list[PodPatch]]:
    """The sandbox's gated pods to release (with ``canary``, when the webhook gave them the
    isolation init container), and its released pods whose canary is not ``canary``."""
    ungate, recanary = [], []
    for pod in pods_of(ref, view):
        namespace = pod["metadata"]["namespace"]
        annotations = pod["metadata"].get("annotations") or {}
        held = kinds.ANNOTATION_ISOLATION_CANARY in annotations
        if kinds.has_scheduling_gate(pod):
            remaining = tuple(
                g
                for g in kinds.get_path(pod, ("spec", "schedulingGates"))
                if not (isinstance(g, Mapping) and g.get("name") == SCHEDULING_GATE)
            )
            ungate.append(
                PodPatch(
                    namespace,
                    name_of(pod),
                    uid_of(pod),
                    gates=remaining,
                    canary=canary if held else None,
                )
            )
        elif held and annotations[kinds.ANNOTATION_ISOLATION_CANARY] != canary:
            recanary.append(PodPatch(namespace, name_of(pod), uid_of(pod), canary=canary))
    return ungate, recanary


def warm_pool_size(code_interpreter: Mapping[str, Any]) -> int:
    size = kinds.get_path(code_interpreter, ("spec", "warmPoolSize"))
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def template_mode(template: Mapping[str, Any], settings: Settings) -> str:
    policy, _reason = effective_policy(template_policy(template), None, limits=settings.limits)
    try:
        return effective_mode(policy)
    except PolicyShapeError:
        return "Restricted"


def build_baseline(code_interpreter: Mapping[str, Any], *, settings: Settings) -> dict[str, Any]:
    """The warm pool's baseline: its pods let in the AgentCube control plane, nothing else."""
    name = name_of(code_interpreter)
    namespace = str((code_interpreter.get("metadata") or {}).get("namespace", ""))
    return {
        "apiVersion": kinds.NETWORK_POLICY.api_version,
        "kind": kinds.NETWORK_POLICY.kind,
        "metadata": {
            "name": BASELINE_PREFIX + name,
            "namespace": namespace,
            "labels": {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY_VALUE, LABEL_ROLE: ROLE_BASELINE},
            "ownerReferences": [owner_reference(code_interpreter)],
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_TEMPLATE_REF_HASH: name_hash(name)}},
            "ingress": [control_plane_rule(settings)],
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def plan_baseline(request: ReconcileRequest, view: View, settings: Settings) -> Plan:
    current = view.get(kinds.NETWORK_POLICY, request.namespace, request.name)
    name = request.name.removeprefix(BASELINE_PREFIX)
    found = view.get(kinds.CODE_INTERPRETER, request.namespace, name)
    if found is None:
        return Plan(request, choose_write(None, current), None, current)
    interpreter = with_kind(found, kinds.CODE_INTERPRETER)
    isolated = warm_pool_size(interpreter) > 0 and template_mode(interpreter, settings) != MODE_NONE
    desired = build_baseline(interpreter, settings=settings) if isolated else None
    return Plan(request, choose_write(desired, current), desired, current, regarding=interpreter)


# --- which requests a change bears on -----------------------------------------------------------


def requests_for(
    kind: kinds.Kind, obj: Mapping[str, Any] | None, view: View
) -> set[ReconcileRequest]:
    """The managed NetworkPolicies whose desired state may depend on ``obj``."""
    if obj is None:
        return set()
    namespace = namespace_of(obj)
    if kind == kinds.CLUSTER_NETWORK_POLICY:  # a shared domain policy, cluster-scoped
        labels = labels_of(obj)
        namespace = labels.get(kinds.LABEL_DOMAIN_NAMESPACE, "")
        key = labels.get(kinds.LABEL_DOMAIN_SET)
        if not (is_managed(obj) and namespace and key):
            return set()
        return {
            ReconcileRequest(namespace, kinds.DOMAIN_POLICY_PREFIX + key),
            *_gated_members(namespace, obj, view),
        }
    if kind == kinds.NETWORK_POLICY:
        requests = {ReconcileRequest(namespace, name_of(obj))}
        key = labels_of(obj).get(kinds.LABEL_DOMAIN_SET)
        if key and is_managed(obj):  # a sandbox's own: its domain set's shared policy
            requests.add(ReconcileRequest(namespace, kinds.DOMAIN_POLICY_PREFIX + key))
        if name_of(obj).startswith(kinds.DOMAIN_POLICY_PREFIX) and is_managed(obj):
            requests |= _gated_members(namespace, obj, view)
        return requests
    requests = {ReconcileRequest(namespace, n) for n in sandbox_names_for(kind, obj, view)}
    if kind == kinds.CODE_INTERPRETER:
        requests.add(baseline_request(namespace, name_of(obj)))
    return requests


_MEMBERSHIP_LABELS = (
    kinds.MANAGED_BY_LABEL,
    LABEL_ROLE,
    kinds.LABEL_SANDBOX_NAME,
    kinds.LABEL_DOMAIN_SET,
)


def requests_for_change(
    kind: kinds.Kind,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    view: View,
) -> set[ReconcileRequest]:
    """What a change from ``old`` to ``new`` bears on: ``requests_for`` both, except that a
    sandbox's own NetworkPolicy changed in its spec only (not in what makes it a member of a
    domain set) does not queue that set's shared policy: with a thousand sandboxes sharing
    it, each such change would re-plan it over all of them for nothing."""
    requests = requests_for(kind, old, view) | requests_for(kind, new, view)
    if (
        kind == kinds.NETWORK_POLICY
        and old is not None
        and new is not None
        and not name_of(new).startswith(kinds.DOMAIN_POLICY_PREFIX)
    ):
        key = labels_of(new).get(kinds.LABEL_DOMAIN_SET)
        same = all(labels_of(old).get(k) == labels_of(new).get(k) for k in _MEMBERSHIP_LABELS)
        if key and same:
            requests.discard(ReconcileRequest(namespace_of(new), kinds.DOMAIN_POLICY_PREFIX + key))
    return requests


def _gated_members(namespace: str, shared: Mapping[str, Any], view: View) -> set[ReconcileRequest]:
    """The sandboxes a shared domain policy selects whose pods still wait on it."""
    from webhook.reconciler.domainplan import selected_names

    return {
        ReconcileRequest(namespace, name)
        for name in selected_names(shared)
        if any(
            kinds.has_scheduling_gate(pod)
            for pod in view.by_index(kinds.POD, BY_SANDBOX_NAME, ns_key(namespace, name))
        )
    }


def all_requests(view: View) -> set[ReconcileRequest]:
    """Every NetworkPolicy that exists or should: for a full pass, or an audit."""
    requests: set[ReconcileRequest] = set()
    for kind in (kinds.NETWORK_POLICY, kinds.CLUSTER_NETWORK_POLICY):
        for obj in view.items(kind):
            if is_managed(obj):
                requests |= requests_for(kind, obj, view)
    for obj in view.items(kinds.SANDBOX):
        if is_direct_sandbox(obj):
            requests.add(ReconcileRequest(namespace_of(obj), name_of(obj)))
    for kind in (kinds.SANDBOX_CLAIM, kinds.POD, kinds.CODE_INTERPRETER):
        for obj in view.items(kind):
            requests |= requests_for(kind, obj, view)
    return requests
