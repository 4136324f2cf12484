"""A real ``python -m webhook serve`` process, reached over verified TLS."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from agentcube_netpol_dev.controlplane import lost_a_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import REPO_ROOT, builders
from tests.readme import console_commands
from webhook.api import kinds
from webhook.api.exitcodes import EXIT_FAILED
from webhook.tls import certs

STARTUP_TIMEOUT_SECONDS = 30.0
RELOAD_TIMEOUT_SECONDS = 15.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0
CHECK_INTERVAL_SECONDS = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    cert_dir: Path
    log: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))

    def request(
        self, method: str, path: str, body: bytes | None = None, *, hostname: str = "localhost"
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            hostname, self.port, context=self.client_context(), timeout=10
        )
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def presented_certificate(self) -> x509.Certificate:
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            self.client_context().wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


PORT_ATTEMPTS = 3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    cert_dir, log = tmp_path / "certs", tmp_path / "serve.log"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        # The port is free when picked; another process may take it before serve binds it.
        port = free_port()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--cert-dir", str(cert_dir),
                    "--cert-check-interval", str(CHECK_INTERVAL_SECONDS),
                ],
                stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        running = Server(process=process, port=port, cert_dir=cert_dir, log=log)
        try:
            if wait_until_ready(running, retry_on_lost_port=attempt < PORT_ATTEMPTS):
                yield running
                return
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_until_ready(server: Server, *, retry_on_lost_port: bool = False) -> bool:
    """True once /readyz answers 200; False if the port was taken (and a retry is allowed)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log.read_text()
            if retry_on_lost_port and lost_a_port(log):
                return False
            pytest.fail(f"serve exited {server.process.returncode}:\n{log}")
        if (server.cert_dir / "ca.crt").exists():
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    return True
            except OSError:
                pass
        time.sleep(0.1)
    pytest.fail(f"serve was not ready in {STARTUP_TIMEOUT_SECONDS} s:\n{server.log.read_text()}")


def review(uid: str) -> dict[str, Any]:
    return builders.review_of(builders.sandbox_pod("pod-1"), kind=kinds.POD, uid=uid)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_serves_healthz_with_its_generated_ca(server: Server, hostname: str) -> None:
    assert server.request("GET", "/healthz", hostname=hostname) == (200, b"ok")
    assert "ca.crt" in server.log.read_text()  # it says where the CA is


def test_answers_an_admission_review_over_tls(server: Server) -> None:
    status, body = server.request("POST", "/validate", orjson.dumps(review("tls-uid")))
    assert status == 200
    answer = orjson.loads(body)
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"] == {"uid": "tls-uid", "allowed": True}
    status, body = server.request("GET", "/metrics")
    assert status == 200
    assert b'agentcube_netpol_admission_requests_total{kind="Pod"' in body


def test_an_unverified_client_is_refused(server: Server) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        context = ssl.create_default_context()  # the system CAs, not ours
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass


def test_presents_a_replaced_certificate_without_a_restart(server: Server) -> None:
    before = server.presented_certificate()
    ca_key = serialization.load_pem_private_key((server.cert_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = certs.KeyPair(
        cert=x509.load_pem_x509_certificate((server.cert_dir / "ca.crt").read_bytes()), key=ca_key
    )
    now = datetime.now(UTC)
    # The same names: a certificate in our directory that lacks one is reissued.
    dns_names, ip_addresses = certs.subject_alt_names(before)
    replacement = certs.create_serving_cert(
        ca,
        dns_names=dns_names,
        ip_addresses=[str(ip) for ip in ip_addresses],
        not_before=now - certs.CLOCK_SKEW_ALLOWANCE,
        not_after=now + certs.SERVING_CERT_VALIDITY,
    )
    certs.write_atomically(server.cert_dir / "tls.key", replacement.key_pem, mode=0o600)
    certs.write_atomically(server.cert_dir / "tls.crt", replacement.cert_pem, mode=0o600)

    deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
    presented = before
    while time.monotonic() < deadline:
        presented = server.presented_certificate()
        if presented.serial_number == replacement.cert.serial_number:
            break
        time.sleep(CHECK_INTERVAL_SECONDS)
    assert presented.serial_number == replacement.cert.serial_number != before.serial_number
    assert server.process.poll() is None  # the same process
    assert server.request("GET", "/healthz") == (200, b"ok")


def test_sigterm_exits_zero_promptly_with_a_keep_alive_connection_open(server: Server) -> None:
    # The API server keeps connections to its webhooks open between requests.
    idle = http.client.HTTPSConnection(
        "localhost", server.port, context=server.client_context(), timeout=10
    )
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b"ok"
    try:
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        assert code == 0, server.log.read_text()
        assert time.monotonic() - started < 5.0
    finally:
        idle.close()


def test_the_readme_curl_gets_ok_from_serve_with_its_defaults(tmp_path: Path) -> None:
    """`make serve` runs `python -m webhook serve`: certificates in ./certs, then the README's
    curl line (on this test's port instead of 9443) answers ok."""
    ((command, shown),) = console_commands((REPO_ROOT / "README.md").read_text(), "curl")
    assert "https://localhost:9443/healthz" in command
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "webhook", "serve", "--port", str(port)],
                cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        running = Server(process=process, port=port, cert_dir=tmp_path / "certs", log=log)
        try:
            if not wait_until_ready(running, retry_on_lost_port=attempt < PORT_ATTEMPTS):
                continue
            result = subprocess.run(
                ["curl", "--silent", "--show-error",
                 *command.replace(":9443/", f":{port}/").split()],
                cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert (result.returncode, result.stdout.splitlines()) == (0, shown), result.stderr
            return
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)


def test_a_port_in_use_exits_failed_and_says_so(tmp_path: Path) -> None:
    """serve exits EXIT_FAILED when it could not start (uvicorn's own code is 3)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "webhook", "serve", "--port", str(port),
             "--cert-dir", str(tmp_path / "certs")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "address already in use" in result.stderr


def test_the_server_stops_cleanly_when_its_manager_is_asked_to(tmp_path: Path) -> None:
    """How `run` stops to be restarted (agent-sandbox's versions changed): exit 0 here."""
    import threading

    from webhook.api.settings import Settings
    from webhook.runtime.programs import admission_server
    from webhook.server.serve import Admission, Listen, Tls

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    manager = admission_server(
        Admission(settings=Settings()),
        Listen(host="127.0.0.1", port=port, sock=sock),
        Tls(cert_dir=tmp_path / "certs", dns_names=["localhost"]),
    )
    timer = threading.Timer(1.0, manager.shut_down, args=("asked by the test",))
    timer.start()
    fired: list[bool] = []

    def last_resort() -> None:  # so a broken stop fails this test instead of hanging it
        fired.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    safety = threading.Timer(30.0, last_resort)
    safety.start()
    try:
        code = manager.run()
    finally:
        timer.cancel()
        safety.cancel()
        sock.close()
    assert (code, fired) == (0, [])
