"""In-cluster trust without cert-manager: one CA in a Secret, its bundle in the webhooks.

Every replica of the server needs a serving certificate the API server trusts.
The replicas share one CA, kept in a Secret of our namespace: the first replica
to start creates it (a lost create race just reads the winner's), each replica
writes it into its own ``--cert-dir`` and makes its own serving certificate from
it (``webhook.tls.certs.ensure_certificates``, which also renews it before expiry),
and the CA certificate is written into the ``caBundle`` of every webhook of our
two webhook configurations. ``sync`` is idempotent; the server runs it at start
and then periodically, so a configuration re-applied without a caBundle is
repaired within one period.

A CA within ``CA_RENEW_BEFORE`` of its end is replaced in the Secret (an update at the
resourceVersion read: of two replicas that try at once, one wins and the other takes its
CA). The old CA certificate stays in the Secret (``ca-previous.crt``) and in the caBundle
beside the new one until it expires, so a replica still serving a certificate of the old
CA, until its next sync, is trusted all along.

The decisions (parse a Secret, build a Secret, the caBundle patch) are pure;
``ClusterTrust`` is the thin I/O around them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest
from webhook.tls import certs

logger = logging.getLogger(__name__)

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
PREVIOUS_CA_CERT_KEY = "ca-previous.crt"
SYNC_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True)
class WebhookConfigurations:
    validating: str = "agentcube-netpol"
    mutating: str = "agentcube-netpol"


# --- pure ------------------------------------------------------------------------


def ca_from_secret(data: Mapping[str, str] | None) -> certs.KeyPair | None:
    """The CA a Secret's ``data`` (base64 values) holds, or None if it holds none usable."""
    if not data or CA_CERT_KEY not in data or CA_KEY_KEY not in data:
        return None
    try:
        cert = x509.load_pem_x509_certificate(base64.b64decode(data[CA_CERT_KEY]))
        key = serialization.load_pem_private_key(base64.b64decode(data[CA_KEY_KEY]), password=None)
    except ValueError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    return certs.KeyPair(cert=cert, key=key)


def trust_bundle(data: Mapping[str, str] | None, ca: certs.KeyPair, *, at: datetime) -> bytes:
    """The PEM bundle the webhooks trust: ``ca``, then the Secret's previous CA while it is
    still valid at ``at`` (certificates it signed may still be served)."""
    bundle = ca.cert_pem
    previous = (data or {}).get(PREVIOUS_CA_CERT_KEY)
    if previous:
        try:
            cert = x509.load_pem_x509_certificate(base64.b64decode(previous))
        except ValueError:
            return bundle
        if cert.not_valid_before_utc <= at < cert.not_valid_after_utc and cert != ca.cert:
            bundle += cert.public_bytes(serialization.Encoding.PEM)
    return bundle


def ca_secret(
    *, namespace: str, name: str, ca: certs.KeyPair, previous: certs.KeyPair | None = None
) -> dict[str, Any]:
    """The Secret holding ``ca`` (and the certificate of the CA it replaced, if any)."""
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "agentcube-netpol"},
        },
        "type": "Opaque",
        "data": {
            CA_CERT_KEY: base64.b64encode(ca.cert_pem).decode(),
            CA_KEY_KEY: base64.b64encode(ca.key_pem).decode(),
        },
    }
    if previous is not None:
        secret["data"][PREVIOUS_CA_CERT_KEY] = base64.b64encode(previous.cert_pem).decode()
    return secret


def new_ca(*, at: datetime) -> certs.KeyPair:
    return certs.create_ca(
        common_name=certs.CA_COMMON_NAME,
        not_before=at - certs.CLOCK_SKEW_ALLOWANCE,
        not_after=at + certs.CA_VALIDITY,
    )


def ca_bundle_patch(configuration: Mapping[str, Any], ca_pem: bytes) -> list[dict[str, Any]]:
    """The JSON Patch that sets ``caBundle`` on each webhook that lacks this CA (none: [])."""
    bundle = base64.b64encode(ca_pem).decode()
    patch: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client_config = webhook.get("clientConfig") or {}
        if client_config.get("caBundle") != bundle:
            # A test guards the webhook at this index against a concurrent edit.
            patch.append(
                {"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")}
            )
            patch.append(
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
            )
    return patch


# --- I/O -------------------------------------------------------------------------


class ClusterTrust:
    """Keeps the shared CA Secret, the local CA files and the webhooks' caBundle in step."""

    def __init__(
        self,
        rest: Rest,
        *,
        namespace: str,
        secret_name: str,
        cert_dir: Path,
        configurations: WebhookConfigurations,
    ) -> None:
        self._rest = rest  # the edge: only this class talks to the API
        self.namespace = namespace
        self.secret_name = secret_name
        self.cert_dir = cert_dir
        self.configurations = configurations

    def sync(self, *, at: datetime) -> certs.KeyPair:
        """Make sure the CA exists and is current, is in ``cert_dir`` and in every
        webhook's caBundle (with the CA it replaced, while that is still valid)."""
        ca, data = self._shared_ca(at=at)
        self._write_local(ca)
        self._inject(trust_bundle(data, ca, at=at))
        return ca

    def _shared_ca(self, *, at: datetime) -> tuple[certs.KeyPair, Mapping[str, str] | None]:
        secret = self._read_secret()
        if secret is not None:
            ca = ca_from_secret(secret.get("data"))
            if ca is None:
                raise certs.CertificateError(
                    f"Secret {self.namespace}/{self.secret_name} holds no usable "
                    f"{CA_CERT_KEY}/{CA_KEY_KEY}; delete it to have a new CA made"
                )
            if certs.needs_rotation(ca.cert_pem, at=at, renew_before=certs.CA_RENEW_BEFORE):
                return self._rotate(secret, ca, at=at)
            return ca, secret.get("data")
        ca = new_ca(at=at)
        body = ca_secret(namespace=self.namespace, name=self.secret_name, ca=ca)
        try:
            self._rest.create(kinds.SECRET, self.namespace, body)
            logger.info("created the CA Secret %s/%s", self.namespace, self.secret_name)
            return ca, body["data"]
        except errors.AlreadyExists:
            pass
        # Another replica created it first: use theirs.
        return self._theirs()

    def _rotate(
        self, secret: Mapping[str, Any], old: certs.KeyPair, *, at: datetime
    ) -> tuple[certs.KeyPair, Mapping[str, str] | None]:
        ca = new_ca(at=at)
        body = ca_secret(namespace=self.namespace, name=self.secret_name, ca=ca, previous=old)
        body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
        try:
            self._rest.replace(kinds.SECRET, self.namespace, self.secret_name, body)
        except errors.Conflict:
            return self._theirs()  # another replica replaced it first
        logger.warning(
            "the CA in Secret %s/%s expires at %s: replaced it with a new one (valid until %s); "
            "the webhooks trust both until the old one expires",
            self.namespace,
            self.secret_name,
            old.cert.not_valid_after_utc.isoformat(),
            ca.cert.not_valid_after_utc.isoformat(),
        )
        return ca, body["data"]

    def _theirs(self) -> tuple[certs.KeyPair, Mapping[str, str] | None]:
        secret = self._read_secret()
        data = secret.get("data") if secret is not None else None
        shared = ca_from_secret(data)
        if shared is None:
            raise certs.CertificateError(f"Secret {self.namespace}/{self.secret_name} vanished")
        return shared, data

    def _read_secret(self) -> dict[str, Any] | None:
        try:
            return self._rest.get(kinds.SECRET, self.namespace, self.secret_name)
        except errors.NotFound:
            return None

    def _write_local(self, ca: certs.KeyPair) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        ca_cert_file = self.cert_dir / certs.CA_CERT_FILE
        if ca_cert_file.exists() and ca_cert_file.read_bytes() == ca.cert_pem:
            return
        certs.write_atomically(
            self.cert_dir / certs.CA_KEY_FILE, ca.key_pem, mode=certs.PRIVATE_FILE_MODE
        )
        certs.write_atomically(ca_cert_file, ca.cert_pem, mode=certs.PUBLIC_FILE_MODE)
        # A serving certificate from another CA must go: ensure_certificates makes a new one.
        for name in (certs.CERT_FILE, certs.KEY_FILE):
            (self.cert_dir / name).unlink(missing_ok=True)
        logger.info("wrote the shared CA to %s", ca_cert_file)

    def _inject(self, bundle_pem: bytes) -> None:
        for kind, name in (
            (kinds.VALIDATING_WEBHOOK_CONFIGURATION, self.configurations.validating),
            (kinds.MUTATING_WEBHOOK_CONFIGURATION, self.configurations.mutating),
        ):
            try:
                configuration = self._rest.get(kind, "", name)
            except errors.NotFound:
                logger.warning("webhook configuration %s not found; no caBundle written", name)
                continue
            ops = ca_bundle_patch(configuration, bundle_pem)
            if ops:
                self._rest.patch(kind, "", name, ops, patch_type="json")
                logger.info("wrote the caBundle into %d webhooks of %s", len(ops) // 2, name)


def parse_secret_ref(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name)."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


__all__: Sequence[str] = [
    "ClusterTrust",
    "WebhookConfigurations",
    "ca_bundle_patch",
    "ca_from_secret",
    "ca_secret",
    "parse_secret_ref",
]
