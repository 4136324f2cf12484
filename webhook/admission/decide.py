"""The admission decision: pure functions from an AdmissionRequest to a response.

No HTTP, no Kubernetes client and no I/O here; the HTTP layer (``webhook.server.app``)
decodes, calls ``validate`` or ``mutate``, and encodes. A dry-run request takes
the same path: nothing here has side effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from webhook.admission import response
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.api.wire import AdmissionRequest, AdmissionResponse, UserInfo
from webhook.policy.fielderrors import FieldError, show_value
from webhook.policy.override import OVERRIDE_PATH, override_annotation, parse_override
from webhook.policy.validation import Findings, describe, validate_network_policy

SANDBOX_NAME_LABEL_PATH = f"metadata.labels[{kinds.LABEL_SANDBOX_NAME}]"

_TEMPLATE_KINDS = {(k.group, k.kind) for k in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER)}
_OVERRIDE_KINDS = {(k.group, k.kind) for k in (kinds.SANDBOX, kinds.SANDBOX_CLAIM)}
_POD = (kinds.POD.group, kinds.POD.kind)
_CLAIM = (kinds.SANDBOX_CLAIM.group, kinds.SANDBOX_CLAIM.kind)


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


# --- validation -------------------------------------------------------------


def validate_object(obj: Mapping[str, Any], *, settings: Settings) -> Verdict:
    """Validate one object as admission would on CREATE by an allowed user (``check``)."""
    group, _, _version = str(obj.get("apiVersion", "")).rpartition("/")
    key = (group, str(obj.get("kind", "")))
    if key in _TEMPLATE_KINDS:
        found = validate_template(obj, kind=key[1], settings=settings)
    elif key in _OVERRIDE_KINDS:
        found = validate_override(override_annotation(obj), settings=settings)
    else:
        found = Findings()
    return Verdict([str(e) for e in found.errors], found.warnings)


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


def validate(request: AdmissionRequest, *, settings: Settings) -> AdmissionResponse:
    """The validating webhook."""
    uid = request.get("uid", "")
    operation = request.get("operation")
    if operation not in ("CREATE", "UPDATE") or request.get("subResource"):
        return response.allowed(uid)
    gvk = request.get("kind") or {}
    key = (gvk.get("group", ""), gvk.get("kind", ""))
    obj = request.get("object") or {}
    old = (request.get("oldObject") or {}) if operation == "UPDATE" else {}
    user = request.get("userInfo") or {}

    if key in _TEMPLATE_KINDS:
        path = kinds.TEMPLATE_POLICY_PATH[key[1]]
        if old and kinds.get_path(old, path) == kinds.get_path(obj, path):
            return response.allowed(uid)  # unchanged: an older invalid value does not block updates
        found = validate_template(obj, kind=key[1], settings=settings)
        return _verdict(uid, key[1], request, found)

    if key in _OVERRIDE_KINDS:
        new_value, old_value = override_annotation(obj), override_annotation(old)
        if new_value == old_value:
            return response.allowed(uid)
        if not is_privileged(user, settings):
            return response.denied(
                uid,
                f"{OVERRIDE_PATH}: {_privilege_problem('set, change or remove the override', user, settings)}",
            )
        return _verdict(uid, key[1], request, validate_override(new_value, settings=settings))

    if key == _POD and operation == "UPDATE":
        old_name = _labels(old).get(kinds.LABEL_SANDBOX_NAME)
        new_name = _labels(obj).get(kinds.LABEL_SANDBOX_NAME)
        if old_name is not None and new_name != old_name and not is_privileged(user, settings):
            action = "remove" if new_name is None else "change"
            return response.denied(
                uid,
                f"{SANDBOX_NAME_LABEL_PATH}: {_privilege_problem(action + ' the label its NetworkPolicy selects on', user, settings)}: {show_value(old_name)}",
            )
    return response.allowed(uid)


def _verdict(uid: str, kind: str, request: AdmissionRequest, found: Findings) -> AdmissionResponse:
    if not found.errors:
        return response.allowed(uid, warnings=found.warnings)
    name = (request.get("object") or {}).get("metadata", {}).get("name") or request.get("name", "")
    return response.denied(
        uid,
        invalid_message(kind, name, found.errors),
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


def _privilege_problem(action: str, user: UserInfo, settings: Settings) -> str:
    allowed = [f"group {g}" for g in settings.privileged_groups] + [
        f"user {u}" for u in settings.privileged_users
    ]
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
    uid = request.get("uid", "")
    if request.get("subResource"):
        return response.allowed(uid)
    gvk = request.get("kind") or {}
    key = (gvk.get("group", ""), gvk.get("kind", ""))
    operation = request.get("operation")
    obj = request.get("object") or {}

    if key == _CLAIM and operation == "CREATE":
        name = _labels(obj).get(kinds.LABEL_SANDBOX_NAME) or (obj.get("metadata") or {}).get("name")
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
        claim_uid = _labels(obj).get(kinds.LABEL_CLAIM_UID)
        if claim_uid:
            namespace = request.get("namespace") or (obj.get("metadata") or {}).get("namespace", "")
            claim = claims.claim_by_uid(namespace, claim_uid)
            # An unknown claim: the reconciler labels the pod once it knows the claim.
            if claim is not None:
                patch += patch_labels(obj, ("metadata", "labels"), pod_labels_for_claim(claim))
        elif operation == "CREATE" and _labels(obj).get(kinds.LABEL_SANDBOX_NAME):
            # Direct path. A claimed pod is held by its warm pool's baseline policy instead.
            patch += patch_scheduling_gate(obj)
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
    if any(isinstance(g, Mapping) and g.get("name") == kinds.SCHEDULING_GATE for g in gates):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": gate}]


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


__all__ = [
    "ClaimLookup",
    "MutationReview",
    "NoClaims",
    "Verdict",
    "mutate",
    "validate",
    "validate_object",
]
