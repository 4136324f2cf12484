"""How long the reconcile workers hold after an API error (``controller.hold_seconds``)."""

from __future__ import annotations

import pytest

from webhook.kube import errors
from webhook.reconciler.controller import hold_seconds


def test_retry_after_is_honoured_up_to_a_minute() -> None:
    assert hold_seconds(errors.TooManyRequests("busy", retry_after_seconds=2), 0) == 2
    assert hold_seconds(errors.ServerError("busy", status=503, retry_after_seconds=5), 3) == 5
    assert hold_seconds(errors.TooManyRequests("busy", retry_after_seconds=3600), 0) == 60


@pytest.mark.parametrize("error", [errors.ServerError("down"), errors.Unreachable("refused")])
def test_a_failing_server_without_retry_after_backs_off_doubling_to_30_s(
    error: errors.ApiError,
) -> None:
    holds = [hold_seconds(error, n) for n in range(1, 9)]
    assert holds == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert hold_seconds(error, 10_000) == 30  # an outage of hours: no overflow


@pytest.mark.parametrize(
    "error", [errors.Conflict("stale"), errors.Forbidden("rbac"), errors.Invalid("bad")]
)
def test_other_errors_hold_nobody(error: errors.ApiError) -> None:
    assert hold_seconds(error, 1) is None
