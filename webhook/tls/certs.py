"""Certificates for the HTTPS server, after open-policy-agent/cert-controller.

The functions that make and judge certificates are pure and take the time as an
argument, so validity windows and rotation are tested without waiting. The I/O
layer (``ensure_certificates``) decides, from what is in the certificate
directory, whether to generate, renew or leave alone, and writes atomically.

A directory is *ours* when it holds ``ca.key``: we generated the CA, so we may
renew the serving certificate from it and the caBundle stays valid. Without
``ca.key`` the files came from elsewhere (cert-manager mounts a Secret) and are
never written.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CA_VALIDITY = timedelta(days=3650)
SERVING_CERT_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
# A CA is replaced a year before it expires: longer than any serving certificate it signed
# lives, so the old CA can stay trusted beside the new one until the last of those is gone.
CA_RENEW_BEFORE = timedelta(days=365)
# Certificates start this long before "now", so a peer whose clock is a little
# behind ours still accepts them (cert-controller does the same).
CLOCK_SKEW_ALLOWANCE = timedelta(hours=1)

CA_COMMON_NAME = "agentcube-netpol-ca"
ORGANIZATION = "agentcube-netpol"
LOCAL_DNS_NAMES = ("localhost",)
LOCAL_IP_ADDRESSES = ("127.0.0.1", "::1")

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateError(Exception):
    """The certificate directory is in a state we cannot serve from."""


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class ServingFiles:
    """Where the serving certificate is, and whether we manage it."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None  # the CA to trust, when we generated it
    self_managed: bool


# --- pure functions -------------------------------------------------------------


def create_ca(*, common_name: str, not_before: datetime, not_after: datetime) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def create_serving_cert(
    ca: KeyPair,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> KeyPair:
    """A server certificate signed by ``ca``, valid for the given names and addresses."""
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def needs_rotation(cert_pem: bytes, *, at: datetime, renew_before: timedelta) -> bool:
    """True when the certificate is unreadable, not yet valid, or expires within ``renew_before``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return True
    return at < cert.not_valid_before_utc or at >= cert.not_valid_after_utc - renew_before


def valid_for(
    cert: x509.Certificate, ca: x509.Certificate, *, hosts: Iterable[str], at: datetime
) -> bool:
    """True when ``cert`` is signed by ``ca``, within its validity at ``at``, and names every host."""
    if not cert.not_valid_before_utc <= at < cert.not_valid_after_utc:
        return False
    if not ca.not_valid_before_utc <= at < ca.not_valid_after_utc:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    dns_names, ip_addresses = subject_alt_names(cert)
    return all(_host_matches(host, dns_names, ip_addresses) for host in hosts)


def subject_alt_names(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ip_addresses: list[IPAddress] = [
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return san.get_values_for_type(x509.DNSName), ip_addresses


def _host_matches(host: str, dns_names: list[str], ip_addresses: list[IPAddress]) -> bool:
    try:
        return ipaddress.ip_address(host) in ip_addresses
    except ValueError:
        return host.lower() in (name.lower() for name in dns_names)


def key_matches_cert(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when both parse and the private key belongs to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return cert.public_key() == key.public_key()


# --- I/O ------------------------------------------------------------------------


def ensure_certificates(
    cert_dir: Path, *, dns_names: Sequence[str], at: datetime, renew_ca: bool = True
) -> ServingFiles:
    """Make ``cert_dir`` hold a serving certificate good at ``at``, if it is ours to make.

    - no ``tls.crt``/``tls.key``: generate them (and a CA, unless ``ca.crt`` and
      ``ca.key`` are already there) for localhost, 127.0.0.1, ::1 and ``dns_names``;
    - ours (``ca.key`` present) and due for rotation, or missing a requested name:
      a new serving certificate from the same CA, so the caBundle stays valid;
    - ours and the CA within ``CA_RENEW_BEFORE`` of its end: a new CA and serving
      certificate, with a warning (clients must trust the new ``ca.crt``); unless
      ``renew_ca`` is False: the CA is someone else's to replace (``ClusterTrust`` keeps
      the cluster's in a Secret and writes it here), and the serving certificate is not
      reissued again and again against a CA that cannot give it a longer life;
    - not ours: used as they are; nothing is written.
    """
    files = serving_files(cert_dir)
    cert_present, key_present = files.cert_file.exists(), files.key_file.exists()
    wanted_dns = _unique([*LOCAL_DNS_NAMES, *dns_names])

    if not files.self_managed:
        if cert_present and key_present:
            return files
        if cert_present or key_present:
            missing = files.key_file if cert_present else files.cert_file
            raise CertificateError(f"{missing} is missing and {cert_dir} has no {CA_KEY_FILE}")

    if cert_present and key_present and files.self_managed:
        ca = _load_key_pair(cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE)
        if renew_ca and needs_rotation(ca.cert_pem, at=at, renew_before=CA_RENEW_BEFORE):
            ca = _existing_or_new_ca(cert_dir, at=at)
        else:
            cert_pem = files.cert_file.read_bytes()
            if not _serving_cert_due(cert_pem, files.key_file.read_bytes(), ca, wanted_dns, at):
                return files
            logger.info("renewing the serving certificate in %s from the same CA", cert_dir)
    else:
        ca = _existing_or_new_ca(cert_dir, at=at, renew=renew_ca)

    serving = create_serving_cert(
        ca,
        dns_names=wanted_dns,
        ip_addresses=LOCAL_IP_ADDRESSES,
        not_before=at - CLOCK_SKEW_ALLOWANCE,
        not_after=min(at + SERVING_CERT_VALIDITY, ca.cert.not_valid_after_utc),
    )
    # Key first: a reader that sees the new certificate also finds its key.
    write_atomically(files.key_file, serving.key_pem, mode=PRIVATE_FILE_MODE)
    write_atomically(files.cert_file, serving.cert_pem, mode=PRIVATE_FILE_MODE)
    logger.info(
        "wrote serving certificate %s (valid until %s) for %s",
        files.cert_file,
        serving.cert.not_valid_after_utc.isoformat(),
        ", ".join(wanted_dns),
    )
    return serving_files(cert_dir)


def serving_files(cert_dir: Path) -> ServingFiles:
    self_managed = (cert_dir / CA_KEY_FILE).exists()
    return ServingFiles(
        cert_file=cert_dir / CERT_FILE,
        key_file=cert_dir / KEY_FILE,
        ca_file=cert_dir / CA_CERT_FILE if self_managed else None,
        self_managed=self_managed,
    )


def _serving_cert_due(
    cert_pem: bytes, key_pem: bytes, ca: KeyPair, dns_names: Sequence[str], at: datetime
) -> bool:
    if not key_matches_cert(cert_pem, key_pem):
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return True
    if not valid_for(cert, ca.cert, hosts=[*dns_names, *LOCAL_IP_ADDRESSES], at=at):
        return True
    if not needs_rotation(cert_pem, at=at, renew_before=RENEW_BEFORE):
        return False
    # Due, but a certificate that already ends with its CA cannot be given a longer life
    # by that CA: reissuing it would only repeat at every check. The CA's renewal fixes it.
    return cert.not_valid_after_utc < ca.cert.not_valid_after_utc


def _existing_or_new_ca(cert_dir: Path, *, at: datetime, renew: bool = True) -> KeyPair:
    ca_cert_file, ca_key_file = cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE
    if ca_cert_file.exists() and ca_key_file.exists():
        ca = _load_key_pair(ca_cert_file, ca_key_file)
        if not renew or not needs_rotation(ca.cert_pem, at=at, renew_before=CA_RENEW_BEFORE):
            return ca
        logger.warning(
            "the CA in %s expires at %s: making a new one; clients (the webhooks' caBundle "
            "among them) must trust the new %s",
            cert_dir,
            ca.cert.not_valid_after_utc.isoformat(),
            ca_cert_file,
        )
    cert_dir.mkdir(parents=True, exist_ok=True)
    ca = create_ca(
        common_name=CA_COMMON_NAME,
        not_before=at - CLOCK_SKEW_ALLOWANCE,
        not_after=at + CA_VALIDITY,
    )
    write_atomically(ca_key_file, ca.key_pem, mode=PRIVATE_FILE_MODE)
    write_atomically(ca_cert_file, ca.cert_pem, mode=PUBLIC_FILE_MODE)
    logger.info("wrote a new CA to %s", ca_cert_file)
    return ca


def _load_key_pair(cert_file: Path, key_file: Path) -> KeyPair:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"cannot load {cert_file} and {key_file}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_file} is not an ECDSA key")
    return KeyPair(cert=cert, key=key)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    The temporary file is created with ``mode`` already set, so a private key is
    never readable by others, not even for a moment.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(name for name in names if name))


# --- the serving TLS context, reloaded in place ---------------------------------

# How often the server looks at its certificate files. cert-manager renews weeks
# before expiry and the kubelet takes up to a minute or so to update a mounted
# Secret, so seconds are plenty; a look is two small reads.
CERT_CHECK_INTERVAL_SECONDS = 10.0


def new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CertificateReloader:
    """Keeps one ``ssl.SSLContext`` serving the current tls.crt/tls.key.

    The server hands this context to the listening socket once; ``check`` loads
    a new pair into the same context when the files' content changes (cert-manager
    rotated the Secret) and, when the directory is ours, renews our certificate
    before it expires. New connections get the new certificate; open ones keep
    theirs. A pair that does not load (a half-written rotation, a key that does
    not match) is skipped and the old one stays until the next check.
    """

    def __init__(
        self,
        cert_dir: Path,
        *,
        dns_names: Sequence[str],
        context: ssl.SSLContext | None = None,
        renew_ca: bool = True,
    ) -> None:
        self.cert_dir = cert_dir
        self.dns_names = tuple(dns_names)
        self.renew_ca = renew_ca
        self.context = context if context is not None else new_server_context()
        self._loaded: tuple[bytes, bytes] | None = None
        self._not_after: datetime | None = None
        self._last_failure: str | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def loaded_cert_pem(self) -> bytes | None:
        return self._loaded[0] if self._loaded is not None else None

    @property
    def not_after(self) -> datetime | None:
        """When the certificate being served expires (None before the first load)."""
        return self._not_after

    def check(self, *, at: datetime) -> bool:
        """Renew or reload as needed; True when a new certificate was loaded."""
        try:
            files = ensure_certificates(
                self.cert_dir, dns_names=self.dns_names, at=at, renew_ca=self.renew_ca
            )
            pair = (files.cert_file.read_bytes(), files.key_file.read_bytes())
        except (OSError, CertificateError) as exc:
            return self._failed(f"cannot read the certificate files: {exc}")
        if pair == self._loaded:
            return False
        if not key_matches_cert(*pair):
            return self._failed(f"{files.key_file} does not match {files.cert_file} (yet)")
        try:
            # A scratch context first: a failed load_cert_chain can leave a
            # context with a certificate and no key.
            load_pem_pair(new_server_context(), *pair)
            load_pem_pair(self.context, *pair)
        except (OSError, ssl.SSLError) as exc:
            return self._failed(f"cannot load {files.cert_file}: {exc}")
        first = self._loaded is None
        self._loaded, self._last_failure = pair, None
        cert = x509.load_pem_x509_certificate(pair[0])
        self._not_after = cert.not_valid_after_utc
        logger.info(
            "%s serving certificate %s (serial %x, valid until %s)",
            "loaded" if first else "reloaded",
            files.cert_file,
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
        )
        return True

    def _failed(self, message: str) -> bool:
        if self._loaded is None:
            raise CertificateError(message)
        if message != self._last_failure:  # once per problem, not every few seconds
            logger.warning("%s; still serving the previous certificate", message)
            self._last_failure = message
        return False


def load_pem_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` from bytes already read, so what was checked is what loads."""
    with _private_file(cert_pem) as cert_path, _private_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` that only this process can read: memory on Linux."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("agentcube-netpol-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # mode 0700
        path = Path(directory) / "pem"
        path.write_bytes(data)
        yield str(path)
