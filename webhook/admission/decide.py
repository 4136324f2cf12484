"""The admission decision: pure functions from an AdmissionRequest to a response.

No HTTP, no Kubernetes client and no I/O here; the HTTP layer (``webhook.server.app``)
decodes, calls ``validate`` or ``mutate``, and encodes. A dry-run request takes
the same path: nothing here has side effects.

Any JSON may arrive, so nothing here assumes a shape: the request's frame (kind,
operation, userInfo, object, ...) is read by ``read_request``, and a frame of the
wrong types is refused with code 400 naming the field; inside an object, a value
of the wrong type (``metadata: null``, labels that are a list) counts as absent,
as it does for the API server's own objects, and the policy validators report
wrong types as field errors. No input makes a decision raise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from webhook.admission import response
from webhook.admission.widening import (
    NoSandboxes,
    SandboxLookup,
    network_policy_problem,
    sandbox_template_problem,
)
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.api.wire import AdmissionRequest, AdmissionResponse, UserInfo
from webhook.policy.fielderrors import FieldError, show_value, type_name
from webhook.policy.override import OVERRIDE_PATH, override_annotation, parse_override
from webhook.policy.validation import Findings, describe, validate_network_policy

SANDBOX_NAME_LABEL_PATH = f"metadata.labels[{kinds.LABEL_SANDBOX_NAME}]"
SCHEDULING_GATES_PATH = "spec.schedulingGates"
ISOLATION_CANARY_PATH = f"metadata.annotations[{kinds.ANNOTATION_ISOLATION_CANARY}]"

_TEMPLATE_KINDS = {(k.group, k.kind) for k in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER)}
_OVERRIDE_KINDS = {(k.group, k.kind) for k in (kinds.SANDBOX, kinds.SANDBOX_CLAIM)}
_POD = (kinds.POD.group, kinds.POD.kind)
_CLAIM = (kinds.SANDBOX_CLAIM.group, kinds.SANDBOX_CLAIM.kind)
# Objects that could loosen a sandbox's isolation (NetworkPolicies add up): warned or denied.
_WIDENING = {
    (kinds.NETWORK_POLICY.group, kinds.NETWORK_POLICY.kind): network_policy_problem,
    (kinds.SANDBOX_TEMPLATE.group, kinds.SANDBOX_TEMPLATE.kind): sandbox_template_problem,
}


class ClaimLookup(Protocol):
    """Read access to SandboxClaims, served from memory (a watch cache)."""

    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None: ...


class NoClaims:
    """A lookup that knows no claims: pod mutation then changes nothing."""

    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        return None


@dataclass(frozen=True)
class Verdict:
    """What validation of one object found: errors deny, warnings inform."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- reading the request -----------------------------------------------------


@dataclass(frozen=True)
class ReadRequest:
    """The fields of an AdmissionRequest the decisions read, each of the type it must be."""

    uid: str
    group: str
    kind: str
    operation: str
    sub_resource: str
    namespace: str
    name: str
    user: UserInfo
    obj: Mapping[str, Any]  # {} when null
    old: Mapping[str, Any]  # {} when null


class MalformedRequestError(ValueError):
    """A field of the AdmissionRequest has the wrong type (never so from a real API server)."""


def read_request(request: Mapping[str, Any]) -> ReadRequest:
    """The request's fields, checked; ``MalformedRequestError`` names the first wrong one."""
    gvk = _object_or_none(request, "kind")
    user = _object_or_none(request, "userInfo")
    groups = user.get("groups")
    if groups is not None and not (
        isinstance(groups, list) and all(isinstance(g, str) for g in groups)
    ):
        raise MalformedRequestError("request.userInfo.groups must be a list of strings")
    return ReadRequest(
        uid=_text(request, "uid", "request.uid"),
        group=_text(gvk, "group", "request.kind.group"),
        kind=_text(gvk, "kind", "request.kind.kind"),
        operation=_text(request, "operation", "request.operation"),
        sub_resource=_text(request, "subResource", "request.subResource"),
        namespace=_text(request, "namespace", "request.namespace"),
        name=_text(request, "name", "request.name"),
        user={"username": _text(user, "username", "request.userInfo.username"),
              "groups": list(groups or ())},
        obj=_object_or_none(request, "object"),
        old=_object_or_none(request, "oldObject"),
    )  # fmt: skip


def _text(parent: Mapping[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRequestError(f"{where} must be a string, not {type_name(value)}")
    return value


def _object_or_none(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedRequestError(
            f"request.{key} must be an object or null, not {type_name(value)}"
        )
    return value


def _malformed(request: Mapping[str, Any], problem: str) -> AdmissionResponse:
    uid = request.get("uid")
    return response.errored(
        uid if isinstance(uid, str) else "", 400, f"malformed AdmissionRequest: {problem}"
    )


# JSON a few hundred levels deep (orjson reads up to 1024) passes Python's recursion limit
# when compared or shown; no object our webhooks match is deeper than a few dozen.
TOO_DEEP = "an object is nested too deeply to be read"


# --- validation -------------------------------------------------------------


def validate_object(obj: Mapping[str, Any], *, settings: Settings) -> Verdict:
    """Validate one object as admission would on CREATE by an allowed user (``check``).

    Offline nothing stands before admission, so for a SandboxClaim ``check`` also asks what
    agent-sandbox's CRD schema would (the API server refuses the claim before the webhook
    sees it): the reference to what it claims from, which changed between versions.
    """
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    key = (group, str(obj.get("kind", "")))
    if key in _TEMPLATE_KINDS:
        found = validate_template(obj, kind=key[1], settings=settings)
    elif key in _OVERRIDE_KINDS:
        found = validate_override(override_annotation(obj), settings=settings)
        if key == _CLAIM:
            found.errors[:0] = claim_reference_errors(obj, version)
    else:
        found = Findings()
    return Verdict([str(e) for e in found.errors], found.warnings)


# What a SandboxClaim claims from, by version, as agent-sandbox's CRDs require it: a
# template in v1alpha1 (v0.4), a warm pool in v1beta1 (v0.5+, where AgentCube names the pool
# after the template). The reconciler reads either (reconciler.sandboxes.claim_template_name).
CLAIM_REFERENCE = {
    "v1alpha1": ("sandboxTemplateRef", "SandboxTemplate"),
    "v1beta1": ("warmPoolRef", "SandboxWarmPool"),
}


def claim_reference_errors(claim: Mapping[str, Any], version: str) -> list[FieldError]:
    """A SandboxClaim of ``version`` that names nothing to claim from, or names it in the
    other version's field (a v1alpha1 claim moved to v1beta1 by its apiVersion alone)."""
    wanted = CLAIM_REFERENCE.get(version)
    if wanted is None:
        return []  # a version we do not know: the API server's to judge
    field_name, kind = wanted
    spec = claim.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    errors = []
    for other, (other_field, _other_kind) in CLAIM_REFERENCE.items():
        if other != version and other_field in spec:
            errors.append(
                FieldError(
                    f"spec.{other_field}",
                    f"not a field of SandboxClaim {version} (it is {other}'s): "
                    f"name the {kind} in spec.{field_name}.name",
                )
            )
    name = kinds.get_path(spec, (field_name, "name"))
    if not isinstance(name, str) or not name:
        errors.append(
            FieldError(
                f"spec.{field_name}.name",
                f"required: the {kind} the claim takes its sandbox from",
                *(() if name is None else (name,)),
            )
        )
    return errors


def validate_template(obj: Mapping[str, Any], *, kind: str, settings: Settings) -> Findings:
    """The ``networkPolicy`` of an AgentRuntime or CodeInterpreter."""
    path = kinds.TEMPLATE_POLICY_PATH[kind]
    value = kinds.get_path(obj, path)
    return validate_network_policy(value, ".".join(path), limits=settings.limits)


def validate_override(value: str | None, *, settings: Settings) -> Findings:
    """The per-session override annotation: the JSON of a ``networkPolicy``."""
    if value is None:
        return Findings()
    _policy, found = parse_override(value, limits=settings.limits)
    return found


def validate(
    request: AdmissionRequest, *, settings: Settings, sandboxes: SandboxLookup | None = None
) -> AdmissionResponse:
    """The validating webhook. ``sandboxes``: the reconciler's caches, for the widening check."""
    try:
        return _validate(
            read_request(request),
            settings=settings,
            sandboxes=sandboxes if sandboxes is not None else NoSandboxes(),
        )
    except MalformedRequestError as exc:
        return _malformed(request, str(exc))
    except RecursionError:
        return _malformed(request, TOO_DEEP)


def _validate(
    req: ReadRequest, *, settings: Settings, sandboxes: SandboxLookup
) -> AdmissionResponse:
    if req.operation not in ("CREATE", "UPDATE") or req.sub_resource:
        return response.allowed(req.uid)
    key = (req.group, req.kind)
    validator = _VALIDATORS.get(key) or (_validate_widening if key in _WIDENING else None)
    if validator is None:
        return response.allowed(req.uid)
    old = req.old if req.operation == "UPDATE" else {}
    return validator(req, old, settings, sandboxes)


def _validate_template(
    req: ReadRequest, old: Mapping[str, Any], settings: Settings, sandboxes: SandboxLookup
) -> AdmissionResponse:
    """AgentRuntime and CodeInterpreter: the ``networkPolicy`` field."""
    path = kinds.TEMPLATE_POLICY_PATH[req.kind]
    if old and kinds.get_path(old, path) == kinds.get_path(req.obj, path):
        return response.allowed(req.uid)  # unchanged: an older invalid value does not block updates
    return _verdict(req, validate_template(req.obj, kind=req.kind, settings=settings))


def _validate_override(
    req: ReadRequest, old: Mapping[str, Any], settings: Settings, sandboxes: SandboxLookup
) -> AdmissionResponse:
    """Sandbox and SandboxClaim: the override annotation, and who may touch it."""
    new_value, old_value = override_annotation(req.obj), override_annotation(old)
    if new_value == old_value:
        return response.allowed(req.uid)
    if not is_privileged(req.user, settings):
        return response.denied(
            req.uid,
            f"{OVERRIDE_PATH}: {_privilege_problem('set, change or remove the override', req.user, settings)}",
        )
    return _verdict(req, validate_override(new_value, settings=settings))


def _validate_widening(
    req: ReadRequest, old: Mapping[str, Any], settings: Settings, sandboxes: SandboxLookup
) -> AdmissionResponse:
    """NetworkPolicy and SandboxTemplate: what would loosen a sandbox (warned or refused)."""
    problem = _WIDENING[(req.group, req.kind)](req.obj, req.namespace, sandboxes)
    if problem is None:
        return response.allowed(req.uid)
    if settings.deny_widening:
        name = _metadata_text(req.obj, "name") or req.name
        return response.denied(
            req.uid, f'{req.kind} "{name}" is forbidden: {problem}', code=403, reason="Forbidden"
        )
    return response.allowed(req.uid, warnings=[problem])


def _validate_pod(
    req: ReadRequest, old: Mapping[str, Any], settings: Settings, sandboxes: SandboxLookup
) -> AdmissionResponse:
    """Pod UPDATE: the sandbox-name label, the scheduling gate and the isolation canary are
    only the privileged users' (and the gate lifters') to change."""
    uid, obj, user = req.uid, req.obj, req.user
    if req.operation != "UPDATE":
        return response.allowed(uid)
    old_name = _label(old, kinds.LABEL_SANDBOX_NAME)
    new_name = _label(obj, kinds.LABEL_SANDBOX_NAME)
    if old_name is not None and new_name != old_name and not is_privileged(user, settings):
        action = "remove" if new_name is None else "change"
        return response.denied(
            uid,
            f"{SANDBOX_NAME_LABEL_PATH}: {_privilege_problem(action + ' the label its NetworkPolicy selects on', user, settings)}: {show_value(old_name)}",
        )
    if (
        kinds.has_scheduling_gate(old)
        and not kinds.has_scheduling_gate(obj)
        and not may_lift_gate(user, settings)
    ):
        return response.denied(
            uid,
            f"{SCHEDULING_GATES_PATH}: {_privilege_problem(f'remove the gate {kinds.SCHEDULING_GATE}', user, settings, gate_lifters=True)}: it comes off once the sandbox's NetworkPolicy exists",
        )
    if _annotation(old, kinds.ANNOTATION_ISOLATION_CANARY) != _annotation(
        obj, kinds.ANNOTATION_ISOLATION_CANARY
    ) and not may_lift_gate(user, settings):
        return response.denied(
            uid,
            f"{ISOLATION_CANARY_PATH}: {_privilege_problem('set, change or remove the isolation canary', user, settings, gate_lifters=True)}: the reconciler writes it as it lifts the gate",
        )
    return response.allowed(uid)


Validator = Callable[[ReadRequest, Mapping[str, Any], Settings, SandboxLookup], AdmissionResponse]
# What /validate checks, by (group, kind); the widening kinds are in _WIDENING.
_VALIDATORS: dict[tuple[str, str], Validator] = {
    **{key: _validate_template for key in _TEMPLATE_KINDS},
    **{key: _validate_override for key in _OVERRIDE_KINDS},
    _POD: _validate_pod,
}


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    """The annotation's value; None when absent or not a string."""
    value = kinds.get_path(obj, ("metadata", "annotations", key))
    return value if isinstance(value, str) else None


def _verdict(req: ReadRequest, found: Findings) -> AdmissionResponse:
    if not found.errors:
        return response.allowed(req.uid, warnings=found.warnings)
    name = _metadata_text(req.obj, "name") or req.name
    return response.denied(
        req.uid,
        invalid_message(req.kind, name, found.errors),
        code=422,
        reason="Invalid",
        warnings=found.warnings,
    )


def invalid_message(kind: str, name: str, errors: Sequence[FieldError]) -> str:
    """``CodeInterpreter "ci" is invalid: <error>; <error>`` (every error at once)."""
    return f'{kind} "{name}" is invalid: {describe(errors)}'


def is_privileged(user: UserInfo, settings: Settings) -> bool:
    return user.get("username") in settings.privileged_users or any(
        group in settings.privileged_groups for group in user.get("groups") or ()
    )


def may_lift_gate(user: UserInfo, settings: Settings) -> bool:
    """Whether ``user`` may take our scheduling gate off a pod: the reconciler, or an admin."""
    return user.get("username") in settings.gate_lifters or is_privileged(user, settings)


def _privilege_problem(
    action: str, user: UserInfo, settings: Settings, *, gate_lifters: bool = False
) -> str:
    allowed = [f"group {g}" for g in settings.privileged_groups] + [
        f"user {u}" for u in settings.privileged_users
    ]
    if gate_lifters and settings.gate_lifters:
        lifters = " or ".join(settings.gate_lifters)
        allowed.insert(0, f"agentcube-netpol's reconciler (user {lifters})")
    return f"only {' or '.join(allowed) or 'nobody'} may {action}; {user.get('username', 'this user')!s} may not"


# --- mutation ---------------------------------------------------------------


# What ``mutate`` reads of an AdmissionReview, and nothing more. The HTTP layer
# decodes /mutate bodies with this schema (msgspec skips everything else without
# building it): a claimed pod's UPDATE carries two ~15 KB pods of which the
# mutation needs the labels. Every field ``mutate`` reads must be declared here;
# tests/admission/test_mutation_input.py checks that the answer is the same either way.
class _MutationMetadata(TypedDict, total=False):
    name: Any
    namespace: Any
    uid: Any
    labels: Any


class _MutationSpec(TypedDict, total=False):
    additionalPodMetadata: Any
    schedulingGates: Any


class _MutationObject(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    metadata: _MutationMetadata | None
    spec: _MutationSpec | None


class _MutationRequest(TypedDict, total=False):
    uid: Any
    kind: Any
    resource: Any
    subResource: Any
    name: Any
    namespace: Any
    operation: Any
    userInfo: Any
    dryRun: Any
    object: _MutationObject | None


class MutationReview(TypedDict, total=False):
    """The parts of an AdmissionReview that ``mutate`` reads."""

    apiVersion: Any
    kind: Any
    request: _MutationRequest | None


def mutate(
    request: AdmissionRequest, *, settings: Settings, claims: ClaimLookup
) -> AdmissionResponse:
    """The mutating webhook: label what a NetworkPolicy must select."""
    try:
        return _mutate(read_request(request), settings=settings, claims=claims)
    except MalformedRequestError as exc:
        return _malformed(request, str(exc))
    except RecursionError:
        return _malformed(request, TOO_DEEP)


def inject_claim_label(settings: Settings, claim: Mapping[str, Any]) -> bool:
    """Whether the claim mutation adds the sandbox-name label to the claim's
    ``spec.additionalPodMetadata.labels``. "auto" not resolved against a cluster (no
    ``--watch-claims``): only into v1alpha1 claims, the version of the one release without
    an allow-list (v0.4); a v0.5 cluster converting v1alpha1 is told by resolving "auto"."""
    if settings.claim_label_injection == "auto":
        return str(claim.get("apiVersion", "")).endswith("/v1alpha1")
    return settings.claim_label_injection == "on"


def _mutate(req: ReadRequest, *, settings: Settings, claims: ClaimLookup) -> AdmissionResponse:
    uid = req.uid
    if req.sub_resource:
        return response.allowed(uid)
    key = (req.group, req.kind)
    operation = req.operation
    obj = req.obj

    if key == _CLAIM and operation == "CREATE":
        if not inject_claim_label(settings, obj):
            return response.allowed(uid)  # the pod webhook and the reconciler label the pod
        name = _label(obj, kinds.LABEL_SANDBOX_NAME) or _metadata_text(obj, "name")
        if not name:
            return response.allowed(uid)  # generateName: nothing to select on yet
        return response.patched(
            uid,
            patch_labels(
                obj, ("spec", "additionalPodMetadata", "labels"), {kinds.LABEL_SANDBOX_NAME: name}
            ),
        )

    if key == _POD and operation in ("CREATE", "UPDATE"):
        patch: list[dict[str, Any]] = []
        claim_uid = _label(obj, kinds.LABEL_CLAIM_UID)
        if claim_uid:
            namespace = req.namespace or _metadata_text(obj, "namespace")
            claim = claims.claim_by_uid(namespace, claim_uid)
            # An unknown claim: the reconciler labels the pod once it knows the claim.
            if claim is not None:
                patch += patch_labels(obj, ("metadata", "labels"), pod_labels_for_claim(claim))
        elif operation == "CREATE" and _label(obj, kinds.LABEL_SANDBOX_NAME):
            # Direct path. A claimed pod is held by its warm pool's baseline policy instead.
            patch += patch_scheduling_gate(obj)
            if settings.isolation_canary is not None:
                patch += patch_isolation_hold(obj, settings)
        return response.patched(uid, patch) if patch else response.allowed(uid)

    return response.allowed(uid)


def patch_scheduling_gate(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Hold a sandbox pod at creation until its NetworkPolicy is in place.

    A gated pod is not scheduled, so it runs nothing; the reconciler lifts the
    gate once the sandbox's NetworkPolicy exists (or its mode is None). Gates
    can only be added when a pod is created, which is why this is a mutation.
    """
    gate = {"name": kinds.SCHEDULING_GATE}
    spec = pod.get("spec")
    gates = spec.get("schedulingGates") if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping):
        return [{"op": "add", "path": "/spec", "value": {"schedulingGates": [gate]}}]
    if not isinstance(gates, list):
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [gate]}]
    if kinds.has_scheduling_gate(pod):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": gate}]


def isolation_container(settings: Settings) -> dict[str, Any]:
    """The init container that holds a sandbox pod's containers until its NetworkPolicy is
    enforced (webhook.policy.canary). It reads the canary from the pod's annotation, which
    the reconciler writes as it lifts the gate: the container starts after that, so the
    downward API gives it the value written. Locked down as the restricted Pod Security
    Standard asks, so it never stands in the way of a namespace that enforces it."""
    field_path = f"metadata.annotations['{kinds.ANNOTATION_ISOLATION_CANARY}']"
    return {
        "name": kinds.ISOLATION_CONTAINER,
        "image": settings.isolation_canary_image,
        "command": ["agentcube-netpol", "wait-isolated"],
        "env": [
            {
                "name": kinds.ISOLATION_CANARY_ENV,
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}},
            }
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def patch_isolation_hold(pod: Mapping[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """With ``--isolation-canary``: the isolation init container first among the pod's init
    containers (before any of the tenant's: none of its code runs unisolated), and the canary
    annotation empty (a value the pod came with is the tenant's, not the reconciler's)."""
    spec = pod.get("spec")
    init = spec.get("initContainers") if isinstance(spec, Mapping) else None
    container = isolation_container(settings)
    ours = [
        isinstance(c, Mapping) and c.get("name") == kinds.ISOLATION_CONTAINER
        for c in (init if isinstance(init, list) else ())
    ]
    ops: list[dict[str, Any]]
    if isinstance(init, list) and ours and ours[0] and init[0] == container:
        ops = []  # reinvoked: in place already
    elif isinstance(init, list) and any(ours):
        # One of that name the pod came with (not ours, or not first): ours replaces it.
        others = [c for c, mine in zip(init, ours, strict=True) if not mine]
        ops = [{"op": "replace", "path": "/spec/initContainers", "value": [container, *others]}]
    elif isinstance(init, list) and init:
        ops = [{"op": "add", "path": "/spec/initContainers/0", "value": container}]
    elif isinstance(spec, Mapping):
        ops = [{"op": "add", "path": "/spec/initContainers", "value": [container]}]
    else:
        return []  # no spec: the API server refuses the pod anyway
    return ops + patch_labels(
        pod, ("metadata", "annotations"), {kinds.ANNOTATION_ISOLATION_CANARY: ""}
    )


def pod_labels_for_claim(claim: Mapping[str, Any]) -> dict[str, str]:
    """The labels a pod adopted by ``claim`` must carry."""
    labels = _labels(claim)
    wanted = {
        kinds.LABEL_SANDBOX_NAME: labels.get(kinds.LABEL_SANDBOX_NAME) or claim["metadata"]["name"]
    }
    session = labels.get(kinds.LABEL_SESSION_ID)
    if session:
        wanted[kinds.LABEL_SESSION_ID] = session
    return wanted


def patch_labels(
    obj: Mapping[str, Any], path: Sequence[str], wanted: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The JSON Patch that sets ``wanted`` in the map at ``path`` of ``obj``.

    Written out rather than diffed with ``jsonpatch.make_patch``: the diff and
    the deep copies it needs were 88% of the mutation's CPU time, and the
    operations are few and fixed: ``add`` the first missing map on the way (with
    everything below it), ``replace`` a leaf that is not a map, else ``add`` or
    ``replace`` each label that differs. Only add and replace, never a test or
    remove; no change, no patch. tests/admission/test_decide.py checks that applying it
    gives what ``make_patch`` would have.
    """
    node: Any = obj
    pointer = ""
    for depth, key in enumerate(path):
        pointer += "/" + _escape(key)
        if not isinstance(node, Mapping) or key not in node:
            value: Any = dict(wanted)
            for outer in reversed(path[depth + 1 :]):
                value = {outer: value}
            return [{"op": "add", "path": pointer, "value": value}]
        child = node[key]
        if not isinstance(child, Mapping):
            value = dict(wanted)
            for outer in reversed(path[depth + 1 :]):
                value = {outer: value}
            return [{"op": "replace", "path": pointer, "value": value}]
        node = child
    patch = []
    for key, value in wanted.items():
        if key not in node:
            patch.append({"op": "add", "path": f"{pointer}/{_escape(key)}", "value": value})
        elif node[key] != value:
            patch.append({"op": "replace", "path": f"{pointer}/{_escape(key)}", "value": value})
    return patch


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901): ``~`` is ``~0``, ``/`` is ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


# --- helpers ------------------------------------------------------------------


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = kinds.get_path(obj, ("metadata", "labels"))
    return labels if isinstance(labels, Mapping) else {}


def _label(obj: Mapping[str, Any], key: str) -> str | None:
    """The label's value; None when absent or not a string."""
    value = _labels(obj).get(key)
    return value if isinstance(value, str) else None


def _metadata_text(obj: Mapping[str, Any], key: str) -> str:
    value = kinds.get_path(obj, ("metadata", key))
    return value if isinstance(value, str) else ""


__all__ = [
    "ClaimLookup",
    "MalformedRequestError",
    "MutationReview",
    "NoClaims",
    "ReadRequest",
    "Verdict",
    "mutate",
    "read_request",
    "validate",
    "validate_object",
]
