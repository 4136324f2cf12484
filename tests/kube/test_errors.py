"""The API server's Status bodies become typed errors a caller can catch by name."""

from __future__ import annotations

import orjson
import pytest

from webhook.kube import errors


def status(code: int, reason: str, message: str, **details: object) -> bytes:
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (404, "NotFound", errors.NotFound),
        (409, "Conflict", errors.Conflict),
        (409, "AlreadyExists", errors.AlreadyExists),
        (410, "Expired", errors.Gone),
        (403, "Forbidden", errors.Forbidden),
        (401, "Unauthorized", errors.Unauthorized),
        (422, "Invalid", errors.Invalid),
        (429, "TooManyRequests", errors.TooManyRequests),
        (500, "InternalError", errors.ServerError),
        (503, "ServiceUnavailable", errors.ServerError),
        (400, "BadRequest", errors.ApiError),
    ],
)
def test_each_status_becomes_its_error(code: int, reason: str, expected: type) -> None:
    error = errors.from_response(code, status(code, reason, "what happened"))
    assert type(error) is expected
    assert (error.status, error.reason, error.message) == (code, reason, "what happened")
    assert "what happened" in str(error)


def test_already_exists_is_not_a_conflict_on_a_stale_version() -> None:
    exists = errors.from_response(409, status(409, "AlreadyExists", 'leases "x" already exists'))
    stale = errors.from_response(
        409, status(409, "Conflict", "the object has been modified; please apply your changes")
    )
    assert not isinstance(exists, errors.Conflict)
    assert not isinstance(stale, errors.AlreadyExists)


def test_a_body_that_is_not_a_status_keeps_its_text() -> None:
    error = errors.from_response(502, b"<html>bad gateway</html>", http_reason="Bad Gateway")
    assert isinstance(error, errors.ServerError)
    assert error.message == "<html>bad gateway</html>"
    empty = errors.from_response(404, None, http_reason="Not Found")
    assert isinstance(empty, errors.NotFound)
    assert empty.message == "Not Found"


def test_retry_after_from_header_or_details() -> None:
    from_header = errors.from_response(429, status(429, "TooManyRequests", "slow"), retry_after="3")
    assert from_header.retry_after_seconds == 3.0
    from_details = errors.from_response(
        429, status(429, "TooManyRequests", "slow", retryAfterSeconds=7)
    )
    assert from_details.retry_after_seconds == 7.0


def test_a_watch_error_event_status_becomes_gone() -> None:
    error = errors.from_status(
        {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    )
    assert isinstance(error, errors.Gone)
    assert error.message == "too old resource version"
