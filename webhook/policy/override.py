"""The per-session override annotation (README "The `networkPolicy` field"), read in one place.

``runtime.agentcube.io/network-policy`` on a Sandbox (direct path) or SandboxClaim
(warm path) holds the JSON of a ``networkPolicy`` object that replaces the
template's policy whole. Admission refuses a bad one; the reconciler, which may
meet one stored while the webhook was down, fails closed on it. Both read it
with ``parse_override``, so what the webhook refuses the reconciler never builds,
with the same size bound and the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from webhook.api.kinds import ANNOTATION_NETWORK_POLICY, get_path
from webhook.api.settings import Limits
from webhook.policy.fielderrors import FieldError, too_long, type_name
from webhook.policy.validation import Findings, validate_network_policy

# The field path errors in the override name (the API server's own form for a map key).
OVERRIDE_PATH = f"metadata.annotations[{ANNOTATION_NETWORK_POLICY}]"


def override_annotation(obj: Mapping[str, Any]) -> str | None:
    """The override annotation's value on a Sandbox or SandboxClaim; None when absent."""
    annotations = get_path(obj, ("metadata", "annotations"))
    if not isinstance(annotations, Mapping):
        return None
    value = annotations.get(ANNOTATION_NETWORK_POLICY)
    return value if isinstance(value, str) else None


def parse_override(value: str, *, limits: Limits) -> tuple[dict[str, Any] | None, Findings]:
    """The policy an override annotation holds, with every error and warning in it.

    The policy is None when there is any error: too large, not JSON, not an object,
    or a ``networkPolicy`` that validation refuses.
    """
    size_bytes = len(value.encode("utf-8", "surrogatepass"))
    if size_bytes > limits.max_annotation_bytes:
        error = too_long(
            OVERRIDE_PATH, size_bytes=size_bytes, limit_bytes=limits.max_annotation_bytes
        )
        return None, Findings([error])
    try:
        policy = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        detail = f"must be the JSON of a networkPolicy object ({exc})"
        return None, Findings([FieldError(OVERRIDE_PATH, detail, value)])
    if not isinstance(policy, dict):
        detail = f"must be a JSON object, not {type_name(policy)}"
        return None, Findings([FieldError(OVERRIDE_PATH, detail, policy)])
    found = validate_network_policy(policy, OVERRIDE_PATH, limits=limits)
    return (None if found.errors else policy), found
