"""SandboxClaims in memory, kept by a list + watch: the pod mutation's ``ClaimLookup``.

The admission request must never wait on an API call, so the claims a claimed warm-pool
pod is looked up against come from an ``Informer`` of SandboxClaims (list, then watch;
resumed, relisted on 410 Gone, backed off on errors), indexed by (namespace, uid): the pod
carries its claim's uid, not its name. Until the first list has landed the cache is not
synced, and ``/readyz`` says so. Claims are watched in the version the cluster serves
(``webhook.kube.discovery``, asked in ``start``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.discovery import discover_kinds
from webhook.kube.informer import Informer, interned
from webhook.kube.rest import Rest

UID_INDEX = "namespace/uid"
logger = logging.getLogger(__name__)


def slim_claim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the pod mutation needs of a claim: its name, namespace, uid and labels."""
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {
            "name": metadata.get("name", ""),
            "namespace": interned(metadata.get("namespace", "")),
            "uid": metadata.get("uid", ""),
            "labels": interned(dict(metadata.get("labels") or {})),
        }
    }


def claim_uid_keys(claim: dict[str, Any]) -> Iterable[str]:
    metadata = claim.get("metadata") or {}
    uid = metadata.get("uid")
    return (f"{metadata.get('namespace', '')}/{uid}",) if uid else ()


class ClaimCache:
    """A ``ClaimLookup`` served from memory, kept current by a background thread.

    ``ClaimCache.over(informer)`` shares an informer of
    SandboxClaims the reconciler already has.
    """

    def __init__(self, rest: Rest) -> None:
        self._rest: Rest | None = rest
        self.informer = Informer(rest, kinds.SANDBOX_CLAIM, slim=slim_claim, name="sandboxclaims")
        self.informer.add_index(UID_INDEX, claim_uid_keys)

    @classmethod
    def over(cls, informer: Informer) -> ClaimCache:
        """Lookups by uid on an informer of SandboxClaims (not started yet) whose ``slim``
        keeps at least what ``slim_claim`` keeps."""
        if informer.kind != kinds.SANDBOX_CLAIM:
            raise ValueError(f"an informer of {informer.kind.kind}, not of SandboxClaims")
        cache = cls.__new__(cls)
        cache._rest = None  # whoever owns the informer picks its version
        cache.informer = informer
        informer.add_index(UID_INDEX, claim_uid_keys)
        return cache

    # ClaimLookup
    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        found = self.informer.by_index(UID_INDEX, f"{namespace}/{uid}")
        return found[0] if found else None

    @property
    def synced(self) -> bool:
        return self.informer.synced

    def wait_synced(self, timeout_seconds: float) -> bool:
        return self.informer.wait_synced(timeout_seconds)

    def start(self) -> None:
        if self._rest is not None:
            try:
                served = discover_kinds(self._rest)
                self.informer.kind = served.get(kinds.SANDBOX_CLAIM, self.informer.kind)
            except errors.ApiError as exc:
                logger.warning("discovery failed (%s): watching SandboxClaims in v1alpha1", exc)
        self.informer.start()

    def stop(self) -> None:
        self.informer.stop()
