"""Constructors for admission responses, after controller-runtime's response.go."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson

from webhook.api.wire import AdmissionResponse

# An admission warning longer than this is truncated by the API server.
MAX_WARNING_CHARS = 120


def allowed(uid: str, *, warnings: Sequence[str] = ()) -> AdmissionResponse:
    return _with_warnings({"uid": uid, "allowed": True}, warnings)


def denied(
    uid: str,
    message: str,
    *,
    code: int = 403,
    reason: str = "Forbidden",
    warnings: Sequence[str] = (),
) -> AdmissionResponse:
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": False,
        "status": {"code": code, "reason": reason, "message": message},
    }
    return _with_warnings(response, warnings)


def patched(
    uid: str, patch: Sequence[dict[str, Any]], *, warnings: Sequence[str] = ()
) -> AdmissionResponse:
    """Allowed, with a JSON Patch; no patch at all when ``patch`` is empty."""
    if not patch:
        return allowed(uid, warnings=warnings)
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(orjson.dumps(list(patch))).decode("ascii"),
    }
    return _with_warnings(response, warnings)


def errored(uid: str, code: int, message: str) -> AdmissionResponse:
    """A request we could not decide: refused, with the error as the message."""
    reason = "InternalError" if code >= 500 else "BadRequest"
    return {
        "uid": uid,
        "allowed": False,
        "status": {"code": code, "reason": reason, "message": message},
    }


def _with_warnings(response: AdmissionResponse, warnings: Sequence[str]) -> AdmissionResponse:
    if warnings:
        response["warnings"] = [truncate_warning(w) for w in warnings]
    return response


def truncate_warning(text: str) -> str:
    if len(text) <= MAX_WARNING_CHARS:
        return text
    return text[: MAX_WARNING_CHARS - 3] + "..."
