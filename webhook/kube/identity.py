"""Who this process is to the API server, asked once at start (a SelfSubjectReview).

``run`` lifts the scheduling gate from direct-path sandbox pods, and its own admission
server refuses that to anyone not in ``Settings.gate_lifters``. The default there is
deploy/'s ServiceAccount; asking the API server makes ``run`` under any other identity (a
renamed ServiceAccount, ``dev``'s admin) lift its gates all the same, with no flag to keep
in step. Every authenticated user may ask (system:basic-user).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.rest import Rest

logger = logging.getLogger(__name__)


def own_username(rest: Rest) -> str | None:
    """The username of ``rest``'s credentials (None if the answer names none); ``ApiError``
    when the API server refuses to say."""
    review = rest.self_subject_review()
    status: Any = review.get("status")
    user: Any = status.get("userInfo") if isinstance(status, dict) else None
    name: Any = user.get("username") if isinstance(user, dict) else None
    return name if isinstance(name, str) and name else None


def with_own_gate_lifter(settings: Settings, rest: Rest) -> Settings:
    """``settings`` whose ``gate_lifters`` include this process's own identity, so the
    reconciler beside the server may lift the gates the server guards. When the API server
    cannot say, the configured ones alone, with a warning."""
    try:
        name = own_username(rest)
        problem = "it names no user"
    except errors.ApiError as exc:
        name, problem = None, str(exc)
    if name is None:
        logger.warning(
            "cannot learn our own identity (SelfSubjectReview: %s); sandbox pods' scheduling "
            "gate may be lifted only by %s and privileged users",
            problem,
            ", ".join(settings.gate_lifters) or "no other user",
        )
        return settings
    if name in settings.gate_lifters:
        logger.info("running as %s, a gate lifter", name)
        return settings
    logger.info("running as %s: added to the gate lifters", name)
    return replace(settings, gate_lifters=(*settings.gate_lifters, name))
