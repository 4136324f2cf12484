"""The admission app over HTTPS with uvicorn, as a runnable of the manager.

Certificates are made or checked first (``webhook.tls.certs``); the TLS context is
reloaded in place when the files change, so a rotation needs no restart. The manager
(``webhook.runtime``) owns the signals and stops the server: it stops accepting and
lets requests in flight finish.
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
from webhook.api.lifecycle import StartError
from webhook.api.settings import Settings
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
    at again every ``check_interval_seconds``. ``renew_ca``: false when the CA is the
    cluster's (``--ca-secret``: only ``ClusterTrust`` replaces it)."""

    cert_dir: Path
    dns_names: Sequence[str]
    check_interval_seconds: float = CERT_CHECK_INTERVAL_SECONDS
    renew_ca: bool = True


@dataclass(frozen=True)
class Admission:
    """What the decisions read. ``claims``: the SandboxClaim lookup of the pod mutation;
    ``sandboxes``: the widening check's (both the shared caches in ``run``);
    ``not_ready``: why ``/readyz`` fails (the manager's checks), empty when ready;
    ``live_settings``: the settings read on each request when they change in place."""

    settings: Settings
    claims: ClaimLookup | None = None
    sandboxes: SandboxLookup | None = None
    not_ready: Callable[[], Sequence[str]] | None = None
    metrics: AdmissionMetrics | None = None
    live_settings: Callable[[], Settings] | None = None


STARTUP_TIMEOUT_SECONDS = 30.0
STOP_JOIN_SECONDS = GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS + IDLE_CLOSE_GRACE_SECONDS + 5


class WebhookServer:
    """The admission app over HTTPS, as a runnable of the manager: ``start`` checks (or
    makes) the certificate and returns once the port is open; ``stop`` closes the port and
    lets requests in flight finish. It runs its own event loop on a thread, and leaves
    the signals to the manager. ``certificates`` is its readiness check."""

    name = "webhook server"

    def __init__(self, admission: Admission, listen: Listen, tls: Tls) -> None:
        self._admission = admission
        self._listen = listen
        self._tls = tls
        self._reloader = CertificateReloader(
            tls.cert_dir, dns_names=tls.dns_names, renew_ca=tls.renew_ca
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def certificates(self) -> str | None:
        return None if self._reloader.loaded else "not loaded"

    def start(self, on_failure: Callable[[str], None]) -> None:
        try:
            self._reloader.check(at=datetime.now(UTC))
        except CertificateError as exc:
            raise StartError(f"cannot serve: {exc}") from None
        ca_file = serving_files(self._tls.cert_dir).ca_file
        if ca_file is not None:
            logger.info(
                "clients trust the CA in %s, e.g. curl --cacert %s https://localhost:%d/healthz",
                ca_file, ca_file, self._listen.port,
            )  # fmt: skip
        admission = self._admission
        metrics = admission.metrics if admission.metrics is not None else AdmissionMetrics()
        metrics.track_certificate(lambda: self._reloader.not_after)
        app = create_app(
            settings=admission.settings,
            claims=admission.claims if admission.claims is not None else NoClaims(),
            sandboxes=admission.sandboxes,
            not_ready=admission.not_ready or self._own_not_ready,
            metrics=metrics,
            live_settings=admission.live_settings,
        )
        config = uvicorn_config(
            app,
            host=self._listen.host,
            port=self._listen.port,
            ssl_context=self._reloader.context,
            http=self._listen.http_implementation,
        )
        server = self._server = _Server(config)
        ended = threading.Event()

        def serve() -> None:
            try:
                asyncio.run(
                    _serve_and_watch(
                        server, self._reloader, self._tls.check_interval_seconds, self._listen.sock
                    )
                )
            except SystemExit:  # uvicorn could not bind; it has logged why
                pass
            except Exception as exc:
                logger.exception("the webhook server failed")
                if server.started:
                    on_failure(str(exc))
                    return
            finally:
                ended.set()
            if server.started and not self._stopping.is_set():
                on_failure("the server stopped on its own")

        self._thread = threading.Thread(target=serve, name="webhook-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started and not ended.wait(0.05):
            if time.monotonic() > deadline:
                raise StartError(
                    f"the server did not open {self._listen.host}:{self._listen.port} "
                    f"in {STARTUP_TIMEOUT_SECONDS:.0f}s"
                )
        if not server.started:
            raise StartError(f"cannot listen on {self._listen.host}:{self._listen.port}")

    def _own_not_ready(self) -> list[str]:
        why = self.certificates()
        return [] if why is None else [f"certificates: {why}"]

    def stop(self) -> None:
        """Close the port; requests in flight finish (at most the graceful timeout)."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_JOIN_SECONDS)


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
    """Run until SIGTERM/SIGINT; whether it started (the benchmark's bare endpoint)."""
    server = _Server(config, own_signals=True)
    asyncio.run(server.serve())
    return bool(server.started)


async def _serve_and_watch(
    server: uvicorn.Server,
    reloader: CertificateReloader,
    interval_seconds: float,
    sock: socket.socket | None = None,
) -> None:
    watcher = asyncio.create_task(watch_certificates(reloader, interval_seconds))
    try:
        await server.serve(sockets=None if sock is None else [sock])
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
    def __init__(self, config: uvicorn.Config, *, own_signals: bool = False) -> None:
        super().__init__(config)
        self._own_signals = own_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Under the manager the signals are the manager's: it stops the server itself.
        # Alone (the benchmark's bare endpoint), SIGTERM and SIGINT stop it; uvicorn's own
        # version raises the signal again after the graceful shutdown, so the process would
        # die of SIGTERM, where a shutdown we asked for should exit 0.
        if not self._own_signals:
            yield
            return
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
