"""``run`` learns who it is and may then lift the gates its own server guards. The real
API server's answer, to a user with no RBAC of its own, is in tests/e2e/test_kube_rest.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.identity import with_own_gate_lifter

DEPLOYED = "system:serviceaccount:agentcube-netpol-system:agentcube-netpol"


class ReviewRest:
    """Answers a SelfSubjectReview with ``answer``, or raises it."""

    def __init__(self, answer: dict[str, Any] | errors.ApiError) -> None:
        self.answer = answer

    def self_subject_review(self) -> dict[str, Any]:
        if isinstance(self.answer, errors.ApiError):
            raise self.answer
        return self.answer


def review(username: str) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "status": {"userInfo": {"username": username, "groups": ["system:authenticated"]}},
    }


def test_our_own_identity_joins_the_configured_lifters() -> None:
    settings = with_own_gate_lifter(Settings(), ReviewRest(review("dev-admin")))  # type: ignore[arg-type]
    assert settings.gate_lifters == (DEPLOYED, "dev-admin")
    again = with_own_gate_lifter(settings, ReviewRest(review("dev-admin")))  # type: ignore[arg-type]
    assert again.gate_lifters == (DEPLOYED, "dev-admin")


@pytest.mark.parametrize(
    "answer",
    [errors.Forbidden("selfsubjectreviews is forbidden"), errors.Unreachable("refused"), {}],
    ids=["refused", "unreachable", "names no user"],
)
def test_without_an_answer_the_configured_lifters_stay_and_a_warning_says_so(
    answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    configured = Settings(gate_lifters=("reconciler",))
    with caplog.at_level(logging.WARNING, logger="webhook.kube.identity"):
        settings = with_own_gate_lifter(configured, ReviewRest(answer))  # type: ignore[arg-type]
    assert settings == configured
    assert "cannot learn our own identity" in caplog.text
    assert "lifted only by reconciler" in caplog.text
