"""The admission decision: pure functions from an AdmissionRequest to a response.

No HTTP, no Kubernetes client and no I/O here; the HTTP layer (``webhook.app``)
decodes, calls ``validate`` or ``mutate``, and encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from webhook import response
from webhook.settings import Settings
from webhook.wire import AdmissionRequest, AdmissionResponse


class ClaimLookup(Protocol):
    """Read access to SandboxClaims, served from memory (a watch cache)."""

    def claim_by_uid(self, namespace: str, uid: str) -> dict[str, Any] | None: ...


class NoClaims:
    """A lookup that knows no claims: pod mutation then changes nothing."""

    def claim_by_uid(self, namespace: str, uid: str) -> dict[str, Any] | None:
        return None


@dataclass(frozen=True)
class Verdict:
    """What validation of one object found: errors deny, warnings inform."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validate_object(obj: dict[str, Any], *, settings: Settings) -> Verdict:
    """Validate one stored object as admission would on CREATE (used by ``check``)."""
    # TODO(core): filled in by the validation work.
    return Verdict()


def validate(request: AdmissionRequest, *, settings: Settings) -> AdmissionResponse:
    """The validating webhook."""
    # TODO(core): filled in by the validation work.
    return response.allowed(request.get("uid", ""))


def mutate(
    request: AdmissionRequest, *, settings: Settings, claims: ClaimLookup
) -> AdmissionResponse:
    """The mutating webhook."""
    # TODO(core): filled in by the mutation work.
    return response.allowed(request.get("uid", ""))
