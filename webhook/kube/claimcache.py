"""SandboxClaims in memory, kept by a list + watch: the pod mutation's ``ClaimLookup``.

The admission request must never wait on an API call, so the claims a claimed
warm-pool pod is looked up against are listed once and then followed with a
watch. The watch ends now and then (server timeout, a dropped connection) and
resumes from the last resourceVersion; when the API server answers 410 Gone
(that version was compacted away) the cache relists, as client-go's reflector
does. API errors back off exponentially. Until the first list has landed the
cache is not synced, and ``/readyz`` says so.

What an event does to the index is pure (``ClaimIndex.apply``); ``ClaimCache``
is the thin I/O around it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from kubernetes.client import ApiException

from webhook.api import kinds

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300  # the server ends each watch after this; we resume
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
HTTP_GONE = 410
READ_CHUNK_BYTES = 64 * 1024

Key = tuple[str, str]  # (namespace, uid)


class WatchExpiredError(Exception):
    """The resourceVersion we watch from is gone: relist."""


def slim_claim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the pod mutation needs of a claim: its name, namespace, uid and labels."""
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", ""),
            "uid": metadata.get("uid", ""),
            "labels": dict(metadata.get("labels") or {}),
        }
    }


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("uid", ""))


@dataclass
class ClaimIndex:
    """Claims by (namespace, uid), and the resourceVersion they are current at."""

    claims: dict[Key, dict[str, Any]] = field(default_factory=dict)
    resource_version: str = ""

    @classmethod
    def from_list(cls, claim_list: Mapping[str, Any]) -> ClaimIndex:
        claims = {_key(item): slim_claim(item) for item in claim_list.get("items") or []}
        version = str((claim_list.get("metadata") or {}).get("resourceVersion", ""))
        return cls(claims=claims, resource_version=version)

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event; raises ``WatchExpiredError`` on 410 Gone."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise WatchExpiredError(str(obj.get("message", "resource version expired")))
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self.claims[_key(obj)] = slim_claim(obj)
        elif kind == "DELETED":
            self.claims.pop(_key(obj), None)
        elif kind != "BOOKMARK":
            logger.debug("ignoring watch event of type %s", kind)
            return
        if version:
            self.resource_version = str(version)


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a streamed body into lines (a watch sends one JSON event a line)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class ClaimCache:
    """A ``ClaimLookup`` served from memory, kept current by a background thread."""

    def __init__(self, custom_objects_api: Any) -> None:
        """``custom_objects_api``: a ``kubernetes.client.CustomObjectsApi``."""
        self._api = custom_objects_api
        self._index = ClaimIndex()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None

    # ClaimLookup
    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        return self._index.claims.get((namespace, uid))

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_seconds: float) -> bool:
        return self._synced.wait(timeout_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="claim-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            # The watch thread is blocked reading the socket; close() would wait for it,
            # shutdown() (urllib3 >= 2.3) makes that read return at once.
            shutdown = getattr(response, "shutdown", None)
            if callable(shutdown):
                shutdown()
            else:
                response.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        relist = True
        while not self._stopping.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                self._watch()
                backoff = BACKOFF_INITIAL_SECONDS  # a watch that ended normally: resume
            except WatchExpiredError as exc:
                logger.info("claim watch expired (%s); relisting", exc)
                relist = True
            except Exception as exc:
                if self._stopping.is_set():
                    break
                logger.warning("claim watch failed: %s; retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                # A broken watch resumes from the last version (relist is still
                # set if it was the list that failed); 410 says when it cannot.

    def _list(self) -> None:
        claim_list = self._api.list_cluster_custom_object(
            kinds.SANDBOX_CLAIM.group, kinds.SANDBOX_CLAIM.version, kinds.SANDBOX_CLAIM.plural
        )
        # Swapped whole: a lookup sees the old index or the new one, never a half.
        self._index = ClaimIndex.from_list(claim_list)
        self._synced.set()
        logger.info(
            "listed %d SandboxClaims at resourceVersion %s",
            len(self._index.claims),
            self._index.resource_version,
        )

    def _watch(self) -> None:
        try:
            self._response = self._api.list_cluster_custom_object(
                kinds.SANDBOX_CLAIM.group,
                kinds.SANDBOX_CLAIM.version,
                kinds.SANDBOX_CLAIM.plural,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=self._index.resource_version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == HTTP_GONE:
                raise WatchExpiredError(str(exc.reason)) from None
            raise
        try:
            for line in lines(self._response.stream(READ_CHUNK_BYTES)):
                self._index.apply(orjson.loads(line))
        finally:
            self._response.release_conn()
            self._response = None
