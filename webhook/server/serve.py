"""``python -m webhook serve``: the admission app over HTTPS with uvicorn.

Certificates are made or checked first (``webhook.tls.certs``); the TLS context is
reloaded in place when the files change, so a rotation needs no restart.
SIGTERM or SIGINT stop accepting, let requests in flight finish, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from webhook.admission.decide import ClaimLookup, NoClaims
from webhook.admission.widening import SandboxLookup
from webhook.api.exitcodes import EXIT_FAILED, EXIT_OK
from webhook.api.settings import Settings
from webhook.kube.cabundle import SYNC_INTERVAL_SECONDS, ClusterTrust
from webhook.server.app import create_app
from webhook.server.metrics import AdmissionMetrics
from webhook.tls.certs import (
    CERT_CHECK_INTERVAL_SECONDS,
    CertificateError,
    CertificateReloader,
    serving_files,
)

logger = logging.getLogger(__name__)

# uvicorn's C HTTP/1.1 parser. Measured with bench/admission.py: the bare endpoint
# used 2.5x less server CPU per request than with h11 (183 vs 451 us) and our
# /validate and /mutate 10-30% less, on the same run.
HTTP_IMPLEMENTATION = "httptools"
# Longer than the API server's idle connection timeout (Go's default is 90 s),
# so it is the client that closes idle connections, never mid-request us.
KEEP_ALIVE_TIMEOUT_SECONDS = 120
GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS = 10
# At shutdown an idle keep-alive connection is closed with a TLS close_notify,
# and asyncio waits for the peer's reply (up to 30 s) before the connection
# counts as closed. A client that is not reading never replies; after this
# long such connections are dropped, so SIGTERM exits in about a second.
IDLE_CLOSE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Listen:
    """Where the server listens. ``sock``: a socket the caller already bound to
    ``host``:``port``, served instead of binding again (a caller that picks a free port
    binds it once, so no other process can take it in between)."""

    host: str
    port: int
    sock: socket.socket | None = None
    http_implementation: str = HTTP_IMPLEMENTATION


@dataclass(frozen=True)
class Tls:
    """The serving certificate: made or checked in ``cert_dir`` for ``dns_names``, looked
    at again every ``check_interval_seconds``; ``trust`` (a cluster without cert-manager)
    keeps the shared CA and the webhooks' caBundle, at start and every few minutes."""

    cert_dir: Path
    dns_names: Sequence[str]
    check_interval_seconds: float = CERT_CHECK_INTERVAL_SECONDS
    trust: ClusterTrust | None = None


@dataclass(frozen=True)
class Admission:
    """What the decisions read. ``claims``: the SandboxClaim lookup of the pod mutation;
    ``sandboxes``: the widening check's (both the reconciler's caches in ``run``);
    ``ready``: a readiness condition beside "certificates loaded"; ``live_settings``: the
    settings read on each request when they change in place."""

    settings: Settings
    claims: ClaimLookup | None = None
    sandboxes: SandboxLookup | None = None
    ready: Callable[[], bool] | None = None
    metrics: AdmissionMetrics | None = None
    live_settings: Callable[[], Settings] | None = None


@dataclass(frozen=True)
class Lifecycle:
    """How it stops. ``stop``: set by the caller to stop it (``run``'s restart);
    on SIGTERM or SIGINT, ``/readyz`` fails at once and ``on_shutdown`` runs (``run``
    releases its Lease there), the server keeps answering for ``drain_seconds`` (so the
    endpoint leaves the Service before the port closes), then stops as uvicorn does:
    requests in flight finish. A second signal stops it at once."""

    stop: threading.Event | None = None
    drain_seconds: float = 0.0
    on_shutdown: Callable[[], None] | None = None


def serve(
    admission: Admission, listen: Listen, tls: Tls, lifecycle: Lifecycle = Lifecycle()
) -> int:
    """Serve until a signal (or ``lifecycle.stop``); EXIT_OK after a clean shutdown,
    EXIT_FAILED if it could not start."""
    trust, ready = tls.trust, admission.ready
    if trust is not None and not _first_sync(trust):
        return EXIT_FAILED
    # With ``trust``, the CA is the cluster's (a Secret): only ClusterTrust replaces it.
    reloader = CertificateReloader(tls.cert_dir, dns_names=tls.dns_names, renew_ca=trust is None)
    try:
        reloader.check(at=datetime.now(UTC))
    except CertificateError as exc:
        logger.error("cannot serve: %s", exc)
        return EXIT_FAILED
    ca_file = serving_files(tls.cert_dir).ca_file
    if ca_file is not None:
        logger.info(
            "clients trust the CA in %s, e.g. curl --cacert %s https://localhost:%d/healthz",
            ca_file, ca_file, listen.port,
        )  # fmt: skip

    shutting_down = threading.Event()

    def is_ready() -> bool:
        return not shutting_down.is_set() and reloader.loaded and (ready is None or ready())

    app = create_app(
        settings=admission.settings,
        claims=admission.claims if admission.claims is not None else NoClaims(),
        sandboxes=admission.sandboxes,
        ready=is_ready,
        metrics=admission.metrics,
        live_settings=admission.live_settings,
    )
    config = uvicorn_config(
        app,
        host=listen.host,
        port=listen.port,
        ssl_context=reloader.context,
        http=listen.http_implementation,
    )
    server = _Server(
        config,
        drain_seconds=lifecycle.drain_seconds,
        on_shutdown=lifecycle.on_shutdown,
        shutting_down=shutting_down,
    )
    try:
        asyncio.run(
            _serve_and_watch(
                server,
                reloader,
                tls.check_interval_seconds,
                trust,
                listen.sock,
                stop=lifecycle.stop,
            )
        )
    except SystemExit:
        # uvicorn exits (3 in current releases, 1 in older ones) when it cannot bind; it has
        # logged why. serve exits EXIT_FAILED when it could not start, whatever uvicorn says.
        return EXIT_FAILED
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
    server: uvicorn.Server,
    reloader: CertificateReloader,
    interval_seconds: float,
    trust: ClusterTrust | None,
    sock: socket.socket | None = None,
    *,
    stop: threading.Event | None = None,
) -> None:
    watchers = [asyncio.create_task(watch_certificates(reloader, interval_seconds))]
    if trust is not None:
        watchers.append(asyncio.create_task(keep_trust(trust, SYNC_INTERVAL_SECONDS)))
    if stop is not None:
        watchers.append(asyncio.create_task(stop_when_set(server, stop)))
    try:
        await server.serve(sockets=None if sock is None else [sock])
    finally:
        for watcher in watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


STOP_POLL_SECONDS = 0.2


async def stop_when_set(server: uvicorn.Server, stop: threading.Event) -> None:
    """Shut ``server`` down as SIGTERM would (requests in flight finish) once ``stop`` is set."""
    while not stop.is_set():
        await asyncio.sleep(STOP_POLL_SECONDS)
    server.should_exit = True


# How long a starting server waits for the API server before it gives up (and
# the kubelet restarts it with its own backoff).
TRUST_START_ATTEMPTS = 6
TRUST_START_BACKOFF_SECONDS = 1.0


def _first_sync(trust: ClusterTrust) -> bool:
    delay = TRUST_START_BACKOFF_SECONDS
    for attempt in range(1, TRUST_START_ATTEMPTS + 1):
        try:
            trust.sync(at=datetime.now(UTC))
            return True
        except Exception as exc:  # API errors, network errors, a broken Secret
            if attempt == TRUST_START_ATTEMPTS:
                logger.error("cannot set up the shared CA and caBundle: %s", exc)
                return False
            logger.warning(
                "shared CA and caBundle not set up yet (%s); retrying in %.0fs", exc, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 16.0)
    return False


async def keep_trust(trust: ClusterTrust, interval_seconds: float) -> None:
    """Repair the shared CA files and the caBundle every ``interval_seconds``."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await asyncio.to_thread(trust.sync, at=datetime.now(UTC))
        except Exception:  # the API server may be away; the next round tries again
            logger.exception("shared CA / caBundle sync failed")


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
    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain_seconds: float = 0.0,
        on_shutdown: Callable[[], None] | None = None,
        shutting_down: threading.Event | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.on_shutdown = on_shutdown
        # Set by the first signal; /readyz reads it (serve's is_ready).
        self.shutting_down = shutting_down or threading.Event()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """The first signal: not ready, ``on_shutdown`` (in a thread: this is the event
        loop), and stop after the drain; a second signal, or no drain: stop now."""
        first = not self.shutting_down.is_set()
        self.shutting_down.set()
        if first and self.on_shutdown is not None:
            threading.Thread(target=self._run_on_shutdown, name="on-shutdown", daemon=True).start()
        if first and self.drain_seconds > 0:
            logger.info(
                "%s: not ready now, stopping in %.1fs (a second signal stops at once)",
                signal.Signals(sig).name, self.drain_seconds,
            )  # fmt: skip
            timer = threading.Timer(self.drain_seconds, super().handle_exit, args=(sig, None))
            timer.daemon = True
            timer.start()
            return
        super().handle_exit(sig, frame)

    def _run_on_shutdown(self) -> None:
        try:
            if self.on_shutdown is not None:
                self.on_shutdown()
        except Exception:
            logger.exception("shutdown step failed")

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        drop_idle = loop.call_later(IDLE_CLOSE_GRACE_SECONDS, self._drop_idle_connections)
        try:
            await super().shutdown(sockets)
        finally:
            drop_idle.cancel()

    def _drop_idle_connections(self) -> None:
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            idle = cycle is None or getattr(cycle, "response_complete", False)
            if idle and transport is not None:
                transport.abort()  # a request in flight keeps the graceful timeout
