"""The serving certificate rotated, and then the CA replaced, while the API server sends
admission requests at a steady rate: not one fails.

`serve` reloads its TLS context in place when the files change (--cert-check-interval
0.5 s here); the CA is replaced the way an operator (or `--ca-secret`'s keeper) does it:
the caBundle first holds both CAs, then the new certificate is served, then the old CA
leaves the caBundle.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests import builders
from tests.e2e.deployed import deploy_manifests, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer
from webhook.cli.serve import SERVICE_NAME, SERVICE_NAMESPACE, serving_dns_names
from webhook.tls import certs

NAMESPACE = "rotation"
CHECK_INTERVAL = "0.5"
SETTLE_S = 3.0  # a few reloads' worth of requests on each side of a change


@pytest.fixture(scope="module")
def served(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, WebhookServer]]:
    work = tmp_path_factory.mktemp("rotation")
    with ControlPlane(binaries=binaries) as control_plane:
        install_crds(control_plane, CRD_DIR)
        server = WebhookServer(
            cert_dir=work / "certs",
            log_path=work / "serve.log",
            extra_args=(f"--cert-check-interval={CHECK_INTERVAL}",),
        )
        server.start()
        try:
            install_webhooks(
                control_plane,
                deploy_manifests(control_plane),
                base_url=server.url,
                ca_pem=server.ca_pem,
            )
            Kubectl(control_plane).ok("create", "namespace", NAMESPACE)
            yield control_plane, server
        finally:
            server.stop()


def served_serial(server: WebhookServer) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def set_ca_bundle(kubectl: Kubectl, pem: bytes) -> None:
    import base64

    bundle = base64.b64encode(pem).decode()
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        configuration = kubectl.get(kind, "agentcube-netpol")
        for hook in configuration["webhooks"]:
            hook["clientConfig"]["caBundle"] = bundle
        kubectl.ok("replace", "-f", "-", input=json.dumps(configuration))


def write_pair(directory: Path, ca: certs.KeyPair, *, with_ca_files: bool) -> int:
    now = datetime.now(UTC)
    # The names serve asks for (else it would reissue the certificate itself at once).
    serving = certs.create_serving_cert(
        ca,
        dns_names=[
            *certs.LOCAL_DNS_NAMES,
            *serving_dns_names([], service=SERVICE_NAME, namespace=SERVICE_NAMESPACE),
        ],
        ip_addresses=list(certs.LOCAL_IP_ADDRESSES),
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=300),  # beyond serve's own renewal window
    )
    if with_ca_files:
        certs.write_atomically(directory / "ca.key", ca.key_pem, mode=0o600)
        certs.write_atomically(directory / "ca.crt", ca.cert_pem, mode=0o644)
    certs.write_atomically(directory / "tls.key", serving.key_pem, mode=0o600)
    certs.write_atomically(directory / "tls.crt", serving.cert_pem, mode=0o600)
    return serving.cert.serial_number


def wait_serving(server: WebhookServer, serial: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if served_serial(server) == serial:
            return
        time.sleep(0.1)
    pytest.fail("the new certificate was never served")


def test_rotations_under_steady_load_fail_no_admission(
    served: tuple[ControlPlane, WebhookServer],
) -> None:
    control_plane, server = served
    kubectl = Kubectl(control_plane)
    stop = threading.Event()
    results: list[tuple[float, bool, str]] = []

    def load() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            body = builders.code_interpreter(
                f"py{index}",
                NAMESPACE,
                {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"]}]},
            )
            result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body))
            results.append((time.monotonic(), result.returncode == 0, result.stderr))

    loader = threading.Thread(target=load, name="load")
    loader.start()
    try:
        time.sleep(SETTLE_S)
        old_ca = certs.KeyPair(
            cert=x509.load_pem_x509_certificate(server.ca_file.read_bytes()),
            key=serialization.load_pem_private_key(  # type: ignore[arg-type]
                (server.cert_dir / "ca.key").read_bytes(), password=None
            ),
        )
        # 1. A new serving certificate from the same CA.
        wait_serving(server, write_pair(server.cert_dir, old_ca, with_ca_files=False))
        time.sleep(SETTLE_S)
        # 2. A new CA: trusted beside the old one first, then served, then alone.
        now = datetime.now(UTC)
        new_ca = certs.create_ca(
            common_name="new", not_before=now, not_after=now + timedelta(days=3650)
        )  # beyond serve's CA renewal window (a year)
        set_ca_bundle(kubectl, new_ca.cert_pem + old_ca.cert_pem)
        time.sleep(SETTLE_S)
        wait_serving(server, write_pair(server.cert_dir, new_ca, with_ca_files=True))
        time.sleep(SETTLE_S)
        set_ca_bundle(kubectl, new_ca.cert_pem)
        time.sleep(SETTLE_S)
    finally:
        stop.set()
        loader.join()
    failed = [stderr for _, ok, stderr in results if not ok]
    print(f"rotation under load: {len(results)} admissions, {len(failed)} failed")
    assert failed == [], failed[:3]
    assert len(results) >= 20
