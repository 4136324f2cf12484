"""Certificates: pure functions with the time passed in, then the files they leave."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from webhook.tls import certs
from webhook.tls.certs import (
    CertificateError,
    CertificateReloader,
    create_ca,
    create_serving_cert,
    ensure_certificates,
    needs_rotation,
    valid_for,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# What an admin relies on, written out here rather than imported from certs.py: a serving
# certificate lasts a year and is renewed a month before it expires; the CA lasts ten years.
SERVING_CERT_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
RENEWAL_DUE = NOW + timedelta(days=335)  # 365 - 30: the first moment ours is renewed
CA_VALIDITY = timedelta(days=3650)
SERVICE_NAMES = ["webhook.agentcube-netpol-system.svc"]


def make_ca(at: datetime = NOW) -> certs.KeyPair:
    return create_ca(common_name="test-ca", not_before=at, not_after=at + CA_VALIDITY)


def make_serving(ca: certs.KeyPair, at: datetime = NOW) -> certs.KeyPair:
    return create_serving_cert(
        ca,
        dns_names=["localhost", *SERVICE_NAMES],
        ip_addresses=["127.0.0.1", "::1"],
        not_before=at,
        not_after=at + SERVING_CERT_VALIDITY,
    )


# --- pure functions -------------------------------------------------------------


def test_ca_is_a_p256_ca_with_the_asked_window() -> None:
    ca = make_ca()
    assert ca.key.curve.name == "secp256r1"
    assert ca.cert.not_valid_before_utc == NOW
    assert ca.cert.not_valid_after_utc == NOW + timedelta(days=3650)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True


def test_serving_cert_names_hosts_and_addresses() -> None:
    ca = make_ca()
    serving = make_serving(ca)
    dns_names, ip_addresses = certs.subject_alt_names(serving.cert)
    assert dns_names == ["localhost", *SERVICE_NAMES]
    assert ip_addresses == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert serving.cert.issuer == ca.cert.subject
    usage = serving.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_serving_cert_needs_a_name() -> None:
    with pytest.raises(ValueError, match="at least one"):
        create_serving_cert(make_ca(), dns_names=[], ip_addresses=[], not_before=NOW, not_after=NOW)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),  # another spelling of ::1
        ("webhook.agentcube-netpol-system.svc", True),
        ("example.com", False),
        ("127.0.0.2", False),
    ],
)
def test_valid_for_hosts(host: str, expected: bool) -> None:
    ca = make_ca()
    assert valid_for(make_serving(ca).cert, ca.cert, hosts=[host], at=NOW) is expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (NOW - timedelta(seconds=1), False),  # not yet valid
        (NOW, True),
        (NOW + SERVING_CERT_VALIDITY - timedelta(seconds=1), True),
        (NOW + SERVING_CERT_VALIDITY, False),  # expired
    ],
)
def test_valid_for_window(at: datetime, expected: bool) -> None:
    ca = make_ca()
    assert valid_for(make_serving(ca).cert, ca.cert, hosts=["localhost"], at=at) is expected


def test_valid_for_another_ca_is_false() -> None:
    serving = make_serving(make_ca())
    assert not valid_for(serving.cert, make_ca().cert, hosts=["localhost"], at=NOW)


@pytest.mark.parametrize(
    ("at", "due"),
    [
        (NOW - timedelta(minutes=1), True),  # not valid yet: replace it
        (NOW, False),
        (NOW + timedelta(days=335) - timedelta(seconds=1), False),
        (NOW + timedelta(days=335), True),
        (NOW + SERVING_CERT_VALIDITY + timedelta(days=1), True),
    ],
)
def test_needs_rotation(at: datetime, due: bool) -> None:
    pem = make_serving(make_ca()).cert_pem
    assert needs_rotation(pem, at=at, renew_before=RENEW_BEFORE) is due


def test_unreadable_cert_needs_rotation() -> None:
    assert needs_rotation(b"not a certificate", at=NOW, renew_before=RENEW_BEFORE)


# --- ensure_certificates --------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generates_ca_and_serving_cert_in_an_empty_dir(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    files = ensure_certificates(cert_dir, dns_names=SERVICE_NAMES, at=NOW)
    assert files.self_managed
    assert files.ca_file == cert_dir / "ca.crt"
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert mode(cert_dir / "ca.key") == 0o600
    assert mode(cert_dir / "tls.key") == 0o600
    assert mode(cert_dir / "tls.crt") == 0o600
    hosts = ["localhost", "127.0.0.1", "::1", *SERVICE_NAMES]
    cert, ca = load_cert(cert_dir / "tls.crt"), load_cert(cert_dir / "ca.crt")
    assert valid_for(cert, ca, hosts=hosts, at=NOW)
    # Backdated a little for clock skew, valid for the serving validity after that.
    assert cert.not_valid_before_utc < NOW
    assert cert.not_valid_after_utc == NOW + SERVING_CERT_VALIDITY


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory; raises ``ssl.SSLCertVerificationError`` on a bad cert."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname=hostname)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, outgoing, peer_incoming in (
            (client_side, client_out, server_in),
            (server_side, server_out, client_in),
        ):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_incoming.write(outgoing.read())
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", *SERVICE_NAMES])
def test_a_verifying_tls_client_accepts_the_generated_pair(tmp_path: Path, hostname: str) -> None:
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=datetime.now(UTC))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    handshake(server, client, hostname)


def test_a_verifying_tls_client_refuses_an_unlisted_name(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, dns_names=[], at=datetime.now(UTC))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "example.com")


def test_not_due_leaves_files_alone(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW + timedelta(days=300))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_due_renews_from_the_same_ca(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    old = load_cert(tmp_path / "tls.crt")
    later = RENEWAL_DUE + timedelta(hours=1)  # a month before expiry, not at it

    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=later)

    new = load_cert(tmp_path / "tls.crt")
    assert new.serial_number != old.serial_number
    assert (tmp_path / "ca.crt").read_bytes() == ca_before  # the caBundle stays valid
    assert valid_for(new, load_cert(tmp_path / "ca.crt"), hosts=["localhost"], at=later)
    assert new.not_valid_after_utc == later + SERVING_CERT_VALIDITY
    assert certs.key_matches_cert(
        (tmp_path / "tls.crt").read_bytes(), (tmp_path / "tls.key").read_bytes()
    )
    assert mode(tmp_path / "tls.key") == 0o600


def test_a_new_dns_name_reissues_from_the_same_ca(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    ensure_certificates(tmp_path, dns_names=[*SERVICE_NAMES, "extra.example"], at=NOW)
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    cert = load_cert(tmp_path / "tls.crt")
    assert valid_for(cert, load_cert(tmp_path / "ca.crt"), hosts=["extra.example"], at=NOW)


def test_missing_serving_cert_reuses_an_existing_ca(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, dns_names=[], at=NOW)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    (tmp_path / "tls.crt").unlink()
    (tmp_path / "tls.key").unlink()
    ensure_certificates(tmp_path, dns_names=[], at=NOW)
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "tls.crt").exists()


def write_foreign_pair(directory: Path, *, at: datetime) -> dict[str, bytes]:
    """What cert-manager mounts: ca.crt, tls.crt, tls.key and no ca.key."""
    directory.mkdir(exist_ok=True)
    ca = make_ca(at)
    serving = make_serving(ca, at)
    contents = {"ca.crt": ca.cert_pem, "tls.crt": serving.cert_pem, "tls.key": serving.key_pem}
    for name, data in contents.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o444)
    return contents


def test_foreign_certs_are_never_touched_even_when_expired(tmp_path: Path) -> None:
    contents = write_foreign_pair(tmp_path, at=NOW)
    long_after = NOW + SERVING_CERT_VALIDITY + timedelta(days=10)
    files = ensure_certificates(tmp_path, dns_names=["something.else"], at=long_after)
    assert not files.self_managed
    assert files.ca_file is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == contents
    assert all(mode(tmp_path / name) == 0o444 for name in contents)


def test_foreign_half_pair_is_an_error_not_a_new_cert(tmp_path: Path) -> None:
    write_foreign_pair(tmp_path, at=NOW)
    (tmp_path / "tls.key").unlink()
    with pytest.raises(CertificateError, match=r"tls\.key is missing"):
        ensure_certificates(tmp_path, dns_names=[], at=NOW)
    assert not (tmp_path / "tls.key").exists()


def test_write_atomically_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "file"
    certs.write_atomically(target, b"one", mode=0o600)
    certs.write_atomically(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two"
    assert mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# --- reloading ------------------------------------------------------------------


def served_serial(reloader: CertificateReloader) -> int:
    pem = reloader.loaded_cert_pem
    assert pem is not None
    return x509.load_pem_x509_certificate(pem).serial_number


def test_reloader_renews_our_cert_before_expiry_without_waiting(tmp_path: Path) -> None:
    reloader = CertificateReloader(tmp_path, dns_names=[])
    assert reloader.check(at=NOW)
    first = served_serial(reloader)
    assert not reloader.check(at=NOW + timedelta(days=100))  # nothing due
    assert not reloader.check(at=RENEWAL_DUE - timedelta(minutes=1))
    assert served_serial(reloader) == first
    assert reloader.check(at=RENEWAL_DUE)  # 30 days before expiry
    assert served_serial(reloader) != first
    assert served_serial(reloader) == load_cert(tmp_path / "tls.crt").serial_number


def test_reloader_picks_up_a_replaced_foreign_pair(tmp_path: Path) -> None:
    write_foreign_pair(tmp_path, at=NOW)
    reloader = CertificateReloader(tmp_path, dns_names=[])
    assert reloader.check(at=NOW)
    first = served_serial(reloader)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).unlink()
    write_foreign_pair(tmp_path, at=NOW)  # cert-manager rotated the Secret
    assert reloader.check(at=NOW)
    assert served_serial(reloader) != first
    assert not (tmp_path / "ca.key").exists()


def test_reloader_keeps_serving_through_a_half_written_rotation(tmp_path: Path) -> None:
    write_foreign_pair(tmp_path, at=NOW)
    reloader = CertificateReloader(tmp_path, dns_names=[])
    reloader.check(at=NOW)
    first = served_serial(reloader)
    other = make_serving(make_ca())
    (tmp_path / "tls.crt").chmod(0o644)
    (tmp_path / "tls.crt").write_bytes(other.cert_pem)  # the key is still the old one

    assert not reloader.check(at=NOW)
    assert served_serial(reloader) == first

    (tmp_path / "tls.key").chmod(0o644)
    (tmp_path / "tls.key").write_bytes(other.key_pem)
    assert reloader.check(at=NOW)
    assert served_serial(reloader) == other.cert.serial_number


def test_reloader_refuses_to_start_on_a_broken_pair(tmp_path: Path) -> None:
    write_foreign_pair(tmp_path, at=NOW)
    (tmp_path / "tls.key").chmod(0o644)
    (tmp_path / "tls.key").write_bytes(make_serving(make_ca()).key_pem)
    with pytest.raises(CertificateError, match="does not match"):
        CertificateReloader(tmp_path, dns_names=[]).check(at=NOW)


# --- the CA's own end -------------------------------------------------------------

CA_RENEW_BEFORE = timedelta(days=365)  # a year: longer than any serving certificate lives


def test_a_ca_a_year_from_its_end_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW)
    old_ca = load_cert(tmp_path / "ca.crt")
    not_yet = NOW + CA_VALIDITY - CA_RENEW_BEFORE - timedelta(days=1)
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=not_yet)
    assert load_cert(tmp_path / "ca.crt") == old_ca

    due = NOW + CA_VALIDITY - CA_RENEW_BEFORE + timedelta(days=1)
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=due)

    new_ca = load_cert(tmp_path / "ca.crt")
    assert new_ca != old_ca
    assert new_ca.not_valid_after_utc > old_ca.not_valid_after_utc
    assert valid_for(load_cert(tmp_path / "tls.crt"), new_ca, hosts=["localhost"], at=due)
    assert "must trust the new" in caplog.text


def test_a_ca_kept_by_the_cluster_is_never_replaced_locally_nor_reissued_in_a_loop(
    tmp_path: Path,
) -> None:
    """ClusterTrust owns the CA (a Secret): locally, a CA near its end stays, and the serving
    certificate, already cut short to the CA's end, is not reissued at every check."""
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=NOW, renew_ca=False)
    ca = load_cert(tmp_path / "ca.crt")
    near_end = ca.not_valid_after_utc - timedelta(days=20)
    ensure_certificates(tmp_path, dns_names=SERVICE_NAMES, at=near_end, renew_ca=False)
    assert load_cert(tmp_path / "ca.crt") == ca
    cut_short = load_cert(tmp_path / "tls.crt")
    assert cut_short.not_valid_after_utc == ca.not_valid_after_utc
    ensure_certificates(
        tmp_path, dns_names=SERVICE_NAMES, at=near_end + timedelta(hours=1), renew_ca=False
    )
    assert load_cert(tmp_path / "tls.crt") == cut_short
