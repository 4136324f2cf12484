"""Typed Kubernetes API errors, raised at the client edge (kopf's ``clients/errors.py``).

Code above the edge catches ``NotFound`` or ``Conflict``, never a status number to compare.
The API server explains a failure in a ``Status`` object
(``{"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": ...}``); the
error carries its code, reason and message, and the class is chosen from the code, with
409 split by reason: ``AlreadyExists`` (a create of a name that exists) is not
``Conflict`` (a write against a stale resourceVersion), and callers handle them apart.

A transport failure (connection refused or reset, a timeout) is ``Unreachable``: the
server said nothing (status 0), and the request may be tried again later. It is an
``ApiError`` too, so one ``except ApiError`` covers whatever the API did or did not do.
"""

# The names are the API server's reasons (as kopf and apimachinery name them), not *Error.
# ruff: noqa: N818

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
HTTP_GONE = 410
HTTP_UNPROCESSABLE = 422
HTTP_TOO_MANY_REQUESTS = 429
HTTP_INTERNAL = 500

REASON_ALREADY_EXISTS = "AlreadyExists"


class ApiError(Exception):
    """The API server refused a request. ``status`` is the HTTP code, ``reason`` the
    Status reason (``NotFound``, ``Conflict``, ...), ``message`` its explanation."""

    default_status = 0
    default_reason = ""

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        self.status: int = self.default_status if status is None else status
        self.reason: str = self.default_reason if reason is None else reason
        self.message: str = message
        self.details: Mapping[str, Any] = details or {}
        # From a Retry-After header or the Status details (429, some 5xx), when given.
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"{self.status} {self.reason}: {message}" if message else self.reason)


class Unauthorized(ApiError):
    default_status = HTTP_UNAUTHORIZED
    default_reason = "Unauthorized"


class Forbidden(ApiError):
    default_status = HTTP_FORBIDDEN
    default_reason = "Forbidden"


class NotFound(ApiError):
    default_status = HTTP_NOT_FOUND
    default_reason = "NotFound"


class Conflict(ApiError):
    """The write was based on a stale resourceVersion (or a precondition failed)."""

    default_status = HTTP_CONFLICT
    default_reason = "Conflict"


class AlreadyExists(ApiError):
    default_status = HTTP_CONFLICT
    default_reason = REASON_ALREADY_EXISTS


class Gone(ApiError):
    """The resourceVersion asked for was compacted away: relist."""

    default_status = HTTP_GONE
    default_reason = "Expired"


class Invalid(ApiError):
    default_status = HTTP_UNPROCESSABLE
    default_reason = "Invalid"


class TooManyRequests(ApiError):
    default_status = HTTP_TOO_MANY_REQUESTS
    default_reason = "TooManyRequests"


class ServerError(ApiError):
    """A 5xx: the server failed, the request may well succeed when tried again."""

    default_status = HTTP_INTERNAL
    default_reason = "InternalError"


class Unreachable(ApiError):
    """No answer: the connection failed or timed out (the request may or may not have
    been carried out)."""

    default_status = 0
    default_reason = "Unreachable"


_BY_STATUS: dict[int, type[ApiError]] = {
    HTTP_UNAUTHORIZED: Unauthorized,
    HTTP_FORBIDDEN: Forbidden,
    HTTP_NOT_FOUND: NotFound,
    HTTP_CONFLICT: Conflict,
    HTTP_GONE: Gone,
    HTTP_UNPROCESSABLE: Invalid,
    HTTP_TOO_MANY_REQUESTS: TooManyRequests,
}


def error_class(status: int, reason: str) -> type[ApiError]:
    if status == HTTP_CONFLICT and reason == REASON_ALREADY_EXISTS:
        return AlreadyExists
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= HTTP_INTERNAL:
        return ServerError
    return ApiError


def from_status(
    status_obj: Mapping[str, Any],
    *,
    http_status: int | None = None,
    http_reason: str = "",
    retry_after_seconds: float | None = None,
) -> ApiError:
    """The typed error for a ``Status`` object: an error body, or a watch ERROR event's
    object. ``http_status`` wins over the Status ``code`` when both are known."""
    code = http_status if http_status is not None else status_obj.get("code")
    status = code if isinstance(code, int) else 0
    reason = str(status_obj.get("reason") or http_reason or "")
    message = str(status_obj.get("message") or http_reason or "")
    details = status_obj.get("details")
    details = details if isinstance(details, Mapping) else {}
    if retry_after_seconds is None and isinstance(details.get("retryAfterSeconds"), int):
        retry_after_seconds = float(details["retryAfterSeconds"])
    cls = error_class(status, reason)
    return cls(
        message,
        status=status,
        reason=reason or cls.default_reason,
        details=details,
        retry_after_seconds=retry_after_seconds,
    )


def from_response(
    status: int,
    body: bytes | str | None,
    *,
    http_reason: str = "",
    retry_after: str | None = None,
) -> ApiError:
    """The typed error for an HTTP error response: its code and (Status JSON) body."""
    parsed: Any = None
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    if not isinstance(parsed, Mapping):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        parsed = {"message": text.strip()[:1000] or http_reason}
    return from_status(
        parsed,
        http_status=status,
        http_reason=http_reason,
        retry_after_seconds=_seconds(retry_after),
    )


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: not worth parsing, the caller backs off anyway
