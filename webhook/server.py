"""``python -m webhook serve``: the admission app over HTTPS with uvicorn.

Certificates are made or checked first (``webhook.certs``); the TLS context is
reloaded in place when the files change, so a rotation needs no restart.
SIGTERM or SIGINT stop accepting, let requests in flight finish, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from webhook.admission import ClaimLookup, NoClaims
from webhook.app import create_app
from webhook.certs import (
    CERT_CHECK_INTERVAL_SECONDS,
    CertificateError,
    CertificateReloader,
    serving_files,
)
from webhook.settings import Settings

logger = logging.getLogger(__name__)

# The pure-Python HTTP/1.1 parser; bench/admission.py compares it with httptools.
HTTP_IMPLEMENTATION = "h11"
# Longer than the API server's idle connection timeout (Go's default is 90 s),
# so it is the client that closes idle connections, never mid-request us.
KEEP_ALIVE_TIMEOUT_SECONDS = 120
GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS = 10
EXIT_OK = 0
EXIT_FAILED = 1


def serve(
    *,
    settings: Settings,
    host: str,
    port: int,
    cert_dir: Path,
    dns_names: Sequence[str],
    claims: ClaimLookup | None = None,
    ready: Callable[[], bool] | None = None,
    cert_check_interval_seconds: float = CERT_CHECK_INTERVAL_SECONDS,
    http_implementation: str = HTTP_IMPLEMENTATION,
) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if it could not start.

    ``claims`` is the SandboxClaim lookup for pod mutation (the reconciler's
    watch cache plugs in here); ``ready`` adds a readiness condition (caches
    synced) to "certificates loaded".
    """
    reloader = CertificateReloader(cert_dir, dns_names=dns_names)
    try:
        reloader.check(at=datetime.now(UTC))
    except CertificateError as exc:
        logger.error("cannot serve: %s", exc)
        return EXIT_FAILED
    ca_file = serving_files(cert_dir).ca_file
    if ca_file is not None:
        logger.info(
            "clients trust the CA in %s, e.g. curl --cacert %s https://localhost:%d/healthz",
            ca_file, ca_file, port,
        )  # fmt: skip

    def is_ready() -> bool:
        return reloader.loaded and (ready is None or ready())

    app = create_app(
        settings=settings, claims=claims if claims is not None else NoClaims(), ready=is_ready
    )
    config = uvicorn_config(
        app, host=host, port=port, ssl_context=reloader.context, http=http_implementation
    )
    server = _Server(config)
    try:
        asyncio.run(_serve_and_watch(server, reloader, cert_check_interval_seconds))
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        return int(exc.code) if isinstance(exc.code, int) else EXIT_FAILED
    if not server.started:
        return EXIT_FAILED
    logger.info("stopped")
    return EXIT_OK


def uvicorn_config(
    app: Any, *, host: str, port: int, ssl_context: ssl.SSLContext, http: str = HTTP_IMPLEMENTATION
) -> uvicorn.Config:
    """The server settings ``serve`` uses (the benchmark's bare endpoint uses them too)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS,
    )
    config.load()
    # Replaces the context uvicorn would build from files: the listening socket
    # then uses the one the certificate watcher reloads in place.
    config.ssl = ssl_context
    return config


def run_server(config: uvicorn.Config) -> bool:
    """Run until SIGTERM/SIGINT; whether it started (uvicorn exits 1 when it cannot bind)."""
    server = _Server(config)
    asyncio.run(server.serve())
    return bool(server.started)


async def _serve_and_watch(
    server: uvicorn.Server, reloader: CertificateReloader, interval_seconds: float
) -> None:
    watcher = asyncio.create_task(watch_certificates(reloader, interval_seconds))
    try:
        await server.serve()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def watch_certificates(reloader: CertificateReloader, interval_seconds: float) -> None:
    """Check the certificate files every ``interval_seconds`` until cancelled.

    The check runs on the event loop thread, between requests: the SSL context
    is not changed under a handshake running in another thread.
    """
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            reloader.check(at=datetime.now(UTC))
        except Exception:  # never let the watcher die: the old certificate still serves
            logger.exception("certificate check failed")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version raises the signal again after the graceful
        # shutdown, so the process dies of SIGTERM; a shutdown we asked for
        # should exit 0, which is what Kubernetes and shells expect.
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
