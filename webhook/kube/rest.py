"""Raw JSON to and from the Kubernetes API, for any ``Kind``: client-go's dynamic client.

Objects go out and come back as plain dicts (orjson), never through the ``kubernetes``
client's model classes: those cost memory and time at scale and drop fields they do not
know, and a reconciler that compares what it wants with what is there needs the object as
the server sent it. The cluster and its credentials come from ``webhook.kube.kubeconfig``
(kubectl's lookup); the connection pool is this module's own urllib3 ``PoolManager``.

Every refusal is raised as a typed error (``webhook.kube.errors``). A watch is a context
manager whose ``close()`` may be called from any thread and ends the iteration at once,
so the threads that watch stop promptly.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlencode

import orjson
import urllib3
from urllib3.exceptions import HTTPError as TransportError

from webhook import __version__
from webhook.api.kinds import Kind
from webhook.kube import errors
from webhook.kube.kubeconfig import ClusterConfig, Lookup, load
from webhook.kube.workqueue import Clock, TokenBucket

logger = logging.getLogger(__name__)

FIELD_MANAGER = "agentcube-netpol"
REQUEST_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# A watch may be quiet for its whole timeout (no events, bookmarks about once a minute);
# the read timeout is that plus a margin, so a dead connection is noticed, a quiet one not.
WATCH_READ_MARGIN_SECONDS = 30.0
WATCH_TIMEOUT_SECONDS = 300
READ_CHUNK_BYTES = 64 * 1024
# One connection per open watch plus the writers; the client's default (5 x CPUs) makes
# urllib3 drop and reopen TLS connections under a burst of writes.
DEFAULT_MAX_CONNECTIONS = 64

PatchType = Literal["merge", "json", "strategic", "apply"]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    # Server-side apply takes YAML, and JSON is YAML.
    "apply": "application/apply-patch+yaml",
}
JSON = "application/json"
USER_AGENT = f"agentcube-netpol/{__version__}"


def resource_path(kind: Kind, namespace: str | None = None, name: str | None = None) -> str:
    """The URL path of a kind's collection, or of one object in it. A namespace of None or
    "" addresses a cluster-scoped kind, or every namespace when listing."""
    root = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    path = f"{root}/namespaces/{quote(namespace, safe='')}" if namespace else root
    path = f"{path}/{kind.plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a streamed body into lines (a watch sends one JSON event a line)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def decode_events(raw_lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Watch events from their JSON lines; an ERROR event is raised as its typed error
    (``Gone`` when the resourceVersion watched from was compacted away)."""
    for line in raw_lines:
        event = orjson.loads(line)
        if event.get("type") == "ERROR":
            obj = event.get("object")
            raise errors.from_status(obj if isinstance(obj, Mapping) else {})
        yield event


class Watch:
    """An open watch: ``with rest.watch(...) as events: for event in events: ...``.

    ``close()`` may be called from any thread: it shuts the socket down under the reader,
    whose iteration then ends without an error.
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lock = threading.Lock()
        self._closed = False
        self._released = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Iterator[dict[str, Any]]:
        return self._events()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        self._release()

    def _events(self) -> Iterator[dict[str, Any]]:
        try:
            yield from decode_events(lines(self._response.stream(READ_CHUNK_BYTES)))
        except errors.ApiError:
            raise
        except (TransportError, OSError) as exc:
            if self._closed:
                return  # closed under us: the read failed because we asked it to
            raise errors.Unreachable(f"watch broken: {exc}") from exc
        except Exception:
            if self._closed:
                return
            raise
        finally:
            self._release()

    def close(self) -> None:
        """End the watch now, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._released:
                return
            # The reader is blocked in a socket read; close() would wait for it, shutdown()
            # (urllib3 >= 2.3) makes that read return at once.
            try:
                self._response.shutdown()
            except (AttributeError, ValueError, RuntimeError, OSError):
                self._response.close()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            # Whatever state the stream is in, the connection is not reused: a watch ended
            # by the server is cheap to reopen, and a half-read one must not be pooled.
            self._response.close()
            self._response.release_conn()


# client-go logs a request held this long by its client-side rate limit; so do we.
THROTTLE_LOG_SECONDS = 1.0


class RateLimiter:
    """client-go's client-side rate limit (``rest.Config`` QPS and Burst): ``qps`` requests a
    second on average, ``burst`` at once; a request over it waits for its token. Watches are
    long-lived and are not counted; lists, gets and writes are."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._bucket = TokenBucket(qps, burst, clock=clock)
        self._lock = threading.Lock()
        self._sleep = sleep

    def wait(self) -> float:
        """Take a token, waiting for it if need be; how long it waited."""
        with self._lock:
            delay = self._bucket.when()
        if delay > 0:
            self._sleep(delay)
        return delay


class Rest:
    """JSON requests for any ``Kind`` to the cluster a ``ClusterConfig`` names; with a
    ``limiter``, at most as fast as it allows (watches aside)."""

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool: urllib3.PoolManager | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.cluster = cluster
        self.limiter = limiter
        self._pool = pool if pool is not None else connection_pool(cluster, max_connections)
        self.timeout_seconds = timeout_seconds
        self._timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=timeout_seconds)

    def with_timeout(self, timeout_seconds: float) -> Rest:
        """The same cluster and connections, another per-request timeout."""
        return Rest(
            self.cluster, timeout_seconds=timeout_seconds, pool=self._pool, limiter=self.limiter
        )

    def unlimited(self) -> Rest:
        """The same cluster and connections with no client-side rate limit: for leader
        election, whose renewals must never queue behind a burst of writes."""
        return Rest(self.cluster, timeout_seconds=self.timeout_seconds, pool=self._pool)

    @classmethod
    def from_config(
        cls,
        kubeconfig: Path | str | None = None,
        *,
        context: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> Rest:
        """From that kubeconfig file (its current context, or ``context``); ``ConfigError``
        when it cannot be used. Commands find theirs with ``kubeconfig.load``."""
        lookup = Lookup(
            kubeconfig=None if kubeconfig is None else Path(kubeconfig), context=context
        )
        return cls(load(lookup), max_connections=max_connections, timeout_seconds=timeout_seconds)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    # Reads.

    def api_resources(self, group_version: str) -> dict[str, Any]:
        """The discovery document (APIResourceList) of ``group/version``; ``NotFound`` when
        the API server does not serve it. Every authenticated user may read it."""
        root = "/api" if "/" not in group_version else "/apis"
        return self._json("GET", f"{root}/{group_version}")

    def self_subject_review(self) -> dict[str, Any]:
        """Who these credentials are to the API server: a SelfSubjectReview, whose
        ``status.userInfo`` has the username and groups. Every authenticated user may
        create one (system:basic-user); nothing is stored."""
        return self._json(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        return self._json("GET", resource_path(kind, namespace, name))

    def list(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """One page of a list: ``items``, and ``metadata.continue`` while more follow."""
        query: builtins.list[tuple[str, str]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if limit is not None:
            query.append(("limit", str(limit)))
        if continue_:
            query.append(("continue", continue_))
        if resource_version is not None:
            query.append(("resourceVersion", resource_version))
        return self._json("GET", resource_path(kind, namespace), query=query)

    def watch(
        self,
        kind: Kind,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        allow_bookmarks: bool = True,
    ) -> Watch:
        """Changes after ``resource_version``, as event dicts (``type``: ADDED, MODIFIED,
        DELETED, BOOKMARK; ``object``). The server ends the watch after ``timeout_seconds``;
        ``Gone`` means that version is no longer kept: list again."""
        query = [("watch", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if allow_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        response = self._send(
            "GET",
            resource_path(kind, namespace),
            query=query,
            timeout=urllib3.Timeout(
                connect=CONNECT_TIMEOUT_SECONDS,
                read=timeout_seconds + WATCH_READ_MARGIN_SECONDS,
            ),
            stream=True,
        )
        return Watch(response)

    # Writes.

    def create(
        self,
        kind: Kind,
        namespace: str,
        body: Mapping[str, Any],
        *,
        field_manager: str = FIELD_MANAGER,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            resource_path(kind, namespace),
            query=_write_query(field_manager, dry_run=dry_run),
            body=body,
        )

    def replace(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        field_manager: str = FIELD_MANAGER,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT the whole object. With ``metadata.resourceVersion`` in ``body`` the write
        fails with ``Conflict`` if the object changed since it was read."""
        return self._json(
            "PUT",
            resource_path(kind, namespace, name),
            query=_write_query(field_manager, dry_run=dry_run),
            body=body,
        )

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        patch_type: PatchType,
        field_manager: str = FIELD_MANAGER,
        force: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """``apply`` is server-side apply: ``patch`` is the whole object as this field
        manager wants it; ``force`` takes over fields another manager owns."""
        query = _write_query(field_manager, dry_run=dry_run)
        if force:
            if patch_type != "apply":
                raise ValueError("force is only meaningful for server-side apply")
            query.append(("force", "true"))
        return self._json(
            "PATCH",
            resource_path(kind, namespace, name),
            query=query,
            body=patch,
            content_type=PATCH_CONTENT_TYPES[patch_type],
        )

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation_policy: Literal["Foreground", "Background", "Orphan"] | None = None,
    ) -> None:
        """Delete; with ``uid`` or ``resource_version``, only that very object in that very
        version (``Conflict`` otherwise), so a delete decided on a stale read cannot remove
        an object recreated in the meantime."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value is not None
        }
        if preconditions:
            options["preconditions"] = preconditions
        if propagation_policy is not None:
            options["propagationPolicy"] = propagation_policy
        self._json("DELETE", resource_path(kind, namespace, name), body=options)

    # The wire.

    def _json(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        response = self._send(method, path, query=query, body=body, content_type=content_type)
        data: bytes = response.data
        if not data:
            return {}
        decoded = orjson.loads(data)
        return decoded if isinstance(decoded, dict) else {"value": decoded}

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        timeout: urllib3.Timeout | None = None,
        stream: bool = False,
    ) -> Any:
        if self.limiter is not None and not stream:
            waited = self.limiter.wait()
            if waited >= THROTTLE_LOG_SECONDS:
                logger.info(
                    "waited %.1fs for the client-side rate limit (--kube-api-qps): %s %s",
                    waited, method, path,
                )  # fmt: skip
        headers: dict[str, Any] = {"Accept": JSON, "User-Agent": USER_AGENT}
        encoded = None
        if body is not None:
            headers["Content-Type"] = content_type
            encoded = orjson.dumps(body)
        # A bearer token, refreshed when it has an expiry; client certificates are in the
        # pool's TLS settings.
        authorization = self.cluster.authorization()
        if authorization:
            headers["Authorization"] = authorization
        url = f"{self.cluster.host}{path}"
        if query:
            url = f"{url}?{urlencode(query)}"
        try:
            response = self._pool.request(
                method,
                url,
                body=encoded,
                headers=headers,
                timeout=timeout or self._timeout,
                preload_content=not stream,
            )
        except (TransportError, OSError) as exc:
            raise errors.Unreachable(f"{method} {path}: {exc}") from exc
        if not 200 <= response.status < 300:
            data = response.data if not stream else response.read()
            if stream:
                response.release_conn()
            raise errors.from_response(
                response.status,
                data,
                http_reason=response.reason or "",
                retry_after=response.headers.get("Retry-After"),
            )
        return response


def connection_pool(cluster: ClusterConfig, max_connections: int) -> urllib3.PoolManager:
    """The TLS connection pool for ``cluster``. urllib3 retries nothing (``retries=False``):
    a failed request is an ``Unreachable`` or a typed error, and whoever sent it decides
    whether and when to try again (the informers, the work queue, leader election)."""
    tls: dict[str, Any] = {}
    if cluster.verify:
        tls["cert_reqs"] = "CERT_REQUIRED"
        if cluster.ca_file:
            tls["ca_certs"] = cluster.ca_file
        if cluster.tls_server_name:
            tls["server_hostname"] = cluster.tls_server_name
    else:
        tls["cert_reqs"] = "CERT_NONE"
    if cluster.cert_file:
        tls["cert_file"] = cluster.cert_file
    if cluster.key_file:
        tls["key_file"] = cluster.key_file
    return urllib3.PoolManager(num_pools=4, maxsize=max_connections, retries=False, **tls)


def _write_query(field_manager: str, *, dry_run: bool) -> builtins.list[tuple[str, str]]:
    query = [("fieldManager", field_manager)]
    if dry_run:
        query.append(("dryRun", "All"))
    return query
