"""A real Kubernetes control plane on this machine, for the end-to-end tests and ``dev``.

What controller-runtime's envtest gives Go operators: etcd and kube-apiserver (and
kube-controller-manager, where garbage collection or namespace deletion matters) started on
free loopback ports with certificates generated here, an admin kubeconfig, and limited users
minted as client certificates for RBAC tests. The binaries come from
``tests/controlplane/build.sh`` (a cache outside the repository, keyed by version) or from
``$KUBEBUILDER_ASSETS``.

Every process runs in its own process group and is stopped on ``stop()``, on leaving the
``with`` block, and at interpreter exit, so a failing test leaves nothing running; the kernel
kills them too if the Python process dies without cleaning up (``die_with_parent``). A failed
start raises ``ControlPlaneError`` with the tail of each process's log, and keeps the work
directory for a closer look.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.tls import certs

logger = logging.getLogger(__name__)

ASSETS_ENV = "KUBEBUILDER_ASSETS"
CACHE_ENV = "AGENTCUBE_NETPOL_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/agentcube-netpol")
BUILD_SCRIPT = "tests/controlplane/build.sh"
NETWORK_POLICY_API_CRDS_SCRIPT = "tests/controlplane/build-network-policy-api-crds.sh"
NETWORK_POLICY_API_CRD = "policy.networking.k8s.io_clusternetworkpolicies.yaml"
# The versions build.sh builds; the cache folder is named after them.
VERSIONS_FILE = Path(__file__).resolve().parent / "versions.env"
ETCD = "etcd"
KUBE_APISERVER = "kube-apiserver"
KUBE_CONTROLLER_MANAGER = "kube-controller-manager"
KUBECTL = "kubectl"
BINARY_NAMES = (ETCD, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBECTL)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.1
# Starts on fresh ports when one was taken between picking and binding it.
PORT_ATTEMPTS = 3
HEALTH_REQUEST_TIMEOUT_S = 2.0
KUBECTL_TIMEOUT_S = 60.0
CRD_ESTABLISHED_TIMEOUT_S = 60.0
CERT_VALIDITY = timedelta(days=7)
CLOCK_SKEW_ALLOWANCE = timedelta(hours=1)
LOG_TAIL_LINES = 30
# Service ClusterIPs are only allocated from this range, never routed: no traffic goes there.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Controllers kube-controller-manager runs: what garbage collection, namespace deletion and
# service accounts need, nothing that would expect nodes or a cloud.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
)

ADMIN_USER = "agentcube-netpol-admin"
MASTERS_GROUP = "system:masters"
CLUSTER_NAME = "agentcube-netpol-dev"


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, started or used."""


# --- locating the binaries -------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


def read_versions(versions_file: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of build.sh's versions.env (comments and blanks ignored)."""
    versions: dict[str, str] = {}
    for line in versions_file.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if sep:
            versions[key.strip()] = value.strip()
    return versions


def cache_root(environ: Mapping[str, str]) -> Path:
    """Where the builds are cached: ``$AGENTCUBE_NETPOL_CACHE``, else ~/.cache/agentcube-netpol."""
    return Path(environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()


def cache_dir_for(cache_root: Path, versions: Mapping[str, str]) -> Path:
    return cache_root / "bin" / f"{versions['K8S_VERSION']}-{versions['ETCD_VERSION']}"


def find_binaries(environ: Mapping[str, str], *, versions_file: Path = VERSIONS_FILE) -> Binaries:
    """The binaries in ``$KUBEBUILDER_ASSETS``, else in build.sh's cache folder.

    Raises ``ControlPlaneError`` naming what is missing and how to get it.
    """
    assets = environ.get(ASSETS_ENV)
    if assets:
        directory = Path(assets)
        origin = f"{ASSETS_ENV}={assets}"
    else:
        if not versions_file.is_file():
            raise ControlPlaneError(
                f"no {ASSETS_ENV} set and no {versions_file} to find build.sh's cache: "
                f"set {ASSETS_ENV} to a directory holding {', '.join(BINARY_NAMES)}"
            )
        directory = cache_dir_for(cache_root(environ), read_versions(versions_file))
        origin = f"the build cache {directory}"
    missing = [
        name
        for name in BINARY_NAMES
        if not (directory / name).is_file() or not os.access(directory / name, os.X_OK)
    ]
    if missing:
        raise ControlPlaneError(
            f"control-plane binaries missing from {origin}: {', '.join(missing)}. "
            f"Build them with `{BUILD_SCRIPT}` from a checkout of agentcube-netpol (about 20 "
            f"minutes the first time, seconds after), or set {ASSETS_ENV} to a directory "
            f"holding {', '.join(BINARY_NAMES)}."
        )
    return Binaries(directory)


def network_policy_api_crds(
    environ: Mapping[str, str], *, versions_file: Path = VERSIONS_FILE
) -> Path:
    """The directory holding the ClusterNetworkPolicy CRD (sigs.k8s.io/network-policy-api at
    ``NETWORK_POLICY_API_VERSION``, experimental channel: domainNames peers) as
    ``tests/controlplane/build-network-policy-api-crds.sh`` caches it, for ``install_crds``.

    Raises ``ControlPlaneError`` naming the script when it is not there.
    """
    version = read_versions(versions_file).get("NETWORK_POLICY_API_VERSION", "")
    if not version:
        raise ControlPlaneError(f"no NETWORK_POLICY_API_VERSION in {versions_file}")
    directory = cache_root(environ) / "crds" / f"network-policy-api-{version}"
    if (
        not (directory / ".complete").is_file()
        or not (directory / NETWORK_POLICY_API_CRD).is_file()
    ):
        raise ControlPlaneError(
            f"network-policy-api {version} CRDs missing from {directory}: "
            f"`make controlplane` copies them ({NETWORK_POLICY_API_CRDS_SCRIPT}, seconds)"
        )
    return directory


# --- certificates (pure: the time is an argument) --------------------------------------------
# The CA and the API server's serving certificate come from webhook.tls.certs, like the webhook's.


@dataclass(frozen=True)
class Credential:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(*, common_name: str, at: datetime) -> certs.KeyPair:
    return certs.create_ca(
        common_name=common_name,
        not_before=at - CLOCK_SKEW_ALLOWANCE,
        not_after=at + CERT_VALIDITY,
    )


def issue_serving_cert(
    ca: certs.KeyPair, *, dns_names: Sequence[str], ip_addresses: Sequence[str], at: datetime
) -> Credential:
    pair = certs.create_serving_cert(
        ca,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        not_before=at - CLOCK_SKEW_ALLOWANCE,
        not_after=at + CERT_VALIDITY,
    )
    return Credential(cert_pem=pair.cert_pem, key_pem=pair.key_pem)


def issue_client_cert(
    ca: certs.KeyPair, *, user: str, groups: Sequence[str] = (), at: datetime
) -> Credential:
    """A client certificate signed by ``ca``: to kube-apiserver (``--client-ca-file``) the
    common name is the user name and each organization a group."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(at + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Credential(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def create_service_account_key() -> Credential:
    """The key kube-apiserver signs service-account tokens with; ``cert_pem`` is the public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Credential(cert_pem=public_pem, key_pem=_key_pem(key))


def kubeconfig(*, server_url: str, ca_pem: bytes, user: str, client: Credential) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user (client certificate) and a current context."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server_url, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": user,
    }


# File names in the control plane's pki/ directory (``--cert-dir`` of kube-apiserver).
PKI_CA_CERT = certs.CA_CERT_FILE
PKI_SERVING_CERT = "apiserver.crt"
PKI_SERVING_KEY = "apiserver.key"
PKI_ADMIN_CERT = "admin.crt"
PKI_ADMIN_KEY = "admin.key"
PKI_SERVICE_ACCOUNT_PUBLIC = "sa.pub"
PKI_SERVICE_ACCOUNT_KEY = "sa.key"


@dataclass(frozen=True)
class Pki:
    """The control plane's CA, API server certificate, admin user and service-account key."""

    ca: certs.KeyPair
    serving: Credential
    admin: Credential
    service_account: Credential

    def files(self) -> dict[str, bytes]:
        """Contents by file name in the pki/ directory."""
        return {
            PKI_CA_CERT: self.ca.cert_pem,
            PKI_SERVING_CERT: self.serving.cert_pem,
            PKI_SERVING_KEY: self.serving.key_pem,
            PKI_ADMIN_CERT: self.admin.cert_pem,
            PKI_ADMIN_KEY: self.admin.key_pem,
            PKI_SERVICE_ACCOUNT_PUBLIC: self.service_account.cert_pem,
            PKI_SERVICE_ACCOUNT_KEY: self.service_account.key_pem,
        }

    def write(self, directory: Path) -> None:
        """Each file readable by this user only."""
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, data in self.files().items():
            (directory / file_name).write_bytes(data)
            (directory / file_name).chmod(0o600)


def create_pki(*, at: datetime) -> Pki:
    """A fresh PKI, valid from ``at`` (minus the skew allowance) for ``CERT_VALIDITY``."""
    ca = create_ca(common_name="agentcube-netpol-control-plane-ca", at=at)
    serving = issue_serving_cert(
        ca,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=(LOOPBACK, str(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE)[1])),
        at=at,
    )
    return Pki(
        ca=ca,
        serving=serving,
        admin=issue_client_cert(ca, user=ADMIN_USER, groups=(MASTERS_GROUP,), at=at),
        service_account=create_service_account_key(),
    )


# --- command lines (pure) ----------------------------------------------------------------------


def etcd_args(*, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    """A single-member etcd on loopback, for a throwaway store."""
    return [
        f"--data-dir={data_dir}",
        "--name=default",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        # A throwaway store: fsync would only slow the tests down.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(*, etcd_url: str, port: int, pki: Path) -> list[str]:
    """kube-apiserver on loopback ``port``, with the files ``Pki.write`` put in ``pki``."""
    return [
        f"--etcd-servers={etcd_url}",
        f"--secure-port={port}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / PKI_SERVING_CERT}",
        f"--tls-private-key-file={pki / PKI_SERVING_KEY}",
        f"--client-ca-file={pki / PKI_CA_CERT}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / PKI_SERVICE_ACCOUNT_PUBLIC}",
        f"--service-account-signing-key-file={pki / PKI_SERVICE_ACCOUNT_KEY}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--authorization-mode=Node,RBAC",
        # No kubelet runs pods here, and fresh test namespaces have no default
        # ServiceAccount until the controller makes one: the ServiceAccount plugin
        # would only make pod creation racy. The webhooks stay on (default plugins).
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        # The kubernetes Service's endpoint would be the loopback address, which the
        # endpoint reconciler refuses; nothing here reaches the API server through it.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def controller_manager_args(
    *,
    kubeconfig: Path,
    port: int,
    cert_dir: Path,
    pki: Path,
    controllers: Sequence[str] = CONTROLLERS,
) -> list[str]:
    """kube-controller-manager with only ``controllers``, no leader election."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--secure-port={port}",
        f"--bind-address={LOOPBACK}",
        f"--cert-dir={cert_dir}",
        f"--controllers={','.join(controllers)}",
        f"--service-account-private-key-file={pki / PKI_SERVICE_ACCOUNT_KEY}",
        f"--root-ca-file={pki / PKI_CA_CERT}",
        "--leader-elect=false",
        "--profiling=false",
    ]


# --- processes ----------------------------------------------------------------------------


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held together, then released).

    Another process may take one before it is bound again: ``ControlPlane.start`` retries on
    new ports when that happens; a server in this process binds once instead
    (``bound_loopback_socket``).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def bound_loopback_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:``port`` (0: any free port), ready to listen on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def lost_a_port(message: str) -> bool:
    """Whether a start failed because a port was taken between picking and binding it."""
    return "address already in use" in message.lower()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """In a child before exec: the kernel sends it SIGKILL when the thread that started it
    dies, so even a parent killed with SIGKILL (no atexit, no finally) leaves nothing behind.
    Start control planes from a thread that outlives them (the main thread in practice)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Process:
    """One binary in its own process group, its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, *, append: bool = False
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("ab" if append else "wb") as log_file:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (only a prctl call; see there)
            )
        logger.debug("started %s (pid %s), log %s", name, self.popen.pid, log_path)

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def resident_memory_bytes(self) -> int:
        """VmRSS of the process, 0 when it is gone."""
        try:
            status = Path(f"/proc/{self.popen.pid}/status").read_text(encoding="ascii")
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_process_group(self.popen, name=self.name, grace_s=grace_s)


def stop_process_group(
    popen: subprocess.Popen[bytes], *, name: str, grace_s: float = STOP_GRACE_S
) -> None:
    """SIGTERM to the process group a process leads, SIGKILL after ``grace_s``; then reaps it.

    The final SIGKILL also ends whatever the process left behind in its group.
    """
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %ss; killing it", name, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


def tls_context(*, ca_file: Path | None, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    if ca_file is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(certfile=str(client[0]), keyfile=str(client[1]))
    return context


def is_healthy(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_REQUEST_TIMEOUT_S, context=context) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


# --- the control plane ---------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback ports.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        *,
        binaries: Binaries,
        with_controller_manager: bool = False,
        work_dir: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        apiserver_extra_args: Sequence[str] = (),
        extra_controllers: Sequence[str] = (),
    ) -> None:
        """``apiserver_extra_args``: more kube-apiserver flags (the deployed tier's egress
        proxy and endpoint routing); ``extra_controllers``: kube-controller-manager's
        controllers beside ``CONTROLLERS`` (deployments, replica sets, endpoints)."""
        self.binaries = binaries
        self.with_controller_manager = with_controller_manager
        self.apiserver_extra_args = tuple(apiserver_extra_args)
        self.extra_controllers = tuple(extra_controllers)
        self.start_timeout_s = start_timeout_s
        self._owns_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="agentcube-netpol-cp-"))
        self._processes: list[_Process] = []
        self._ca: certs.KeyPair | None = None
        self.api_port = 0
        self.etcd_url = ""
        self.started_in_s = 0.0
        self._users_made = 0

    # -- paths and addresses

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "pki" / PKI_CA_CERT

    @property
    def admin_kubeconfig(self) -> Path:
        return self.work_dir / "admin.kubeconfig"

    @property
    def ca_pem(self) -> bytes:
        if self._ca is None:
            raise ControlPlaneError("the control plane is not started")
        return self._ca.cert_pem

    # -- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        started_at = time.monotonic()
        atexit.register(self.stop)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start()
                break
            except ControlPlaneError as exc:
                self._stop_processes()
                if attempt == PORT_ATTEMPTS or not lost_a_port(str(exc)):
                    raise
                logger.warning("a port was taken before it was bound; starting on new ports")
                shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)
            except BaseException:
                self._stop_processes()
                raise
        self.started_in_s = time.monotonic() - started_at
        logger.info(
            "control plane ready at %s in %.1fs (work dir %s)",
            self.url,
            self.started_in_s,
            self.work_dir,
        )

    def _start(self) -> None:
        pki_dir = self.work_dir / "pki"
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        pki = create_pki(at=datetime.now(UTC))
        pki.write(pki_dir)
        self._ca = pki.ca

        etcd_client_port, etcd_peer_port, self.api_port, kcm_port = free_loopback_ports(4)
        etcd_url = self.etcd_url = f"http://{LOOPBACK}:{etcd_client_port}"
        self._spawn(
            ETCD,
            etcd_args(
                data_dir=self.work_dir / "etcd",
                client_url=etcd_url,
                peer_url=f"http://{LOOPBACK}:{etcd_peer_port}",
            ),
        )
        self._spawn(KUBE_APISERVER, self._apiserver_argv())
        self._write_kubeconfig(self.admin_kubeconfig, ADMIN_USER, pki.admin)
        self._wait_apiserver()
        if self.with_controller_manager:
            self._spawn(
                KUBE_CONTROLLER_MANAGER,
                controller_manager_args(
                    kubeconfig=self.admin_kubeconfig,
                    port=kcm_port,
                    cert_dir=self.work_dir / "kcm",
                    pki=pki_dir,
                    controllers=(*CONTROLLERS, *self.extra_controllers),
                ),
            )
            # Its serving certificate is self-signed in --cert-dir; /healthz is anonymous.
            self._wait_healthy(
                KUBE_CONTROLLER_MANAGER,
                f"https://{LOOPBACK}:{kcm_port}/healthz",
                tls_context(ca_file=None, client=None),
            )

    def _apiserver_argv(self) -> list[str]:
        return [
            *apiserver_args(etcd_url=self.etcd_url, port=self.api_port, pki=self.work_dir / "pki"),
            *self.apiserver_extra_args,
        ]

    def _wait_apiserver(self) -> None:
        pki_dir = self.work_dir / "pki"
        self._wait_healthy(
            KUBE_APISERVER,
            f"{self.url}/readyz",
            tls_context(
                ca_file=self.ca_file, client=(pki_dir / PKI_ADMIN_CERT, pki_dir / PKI_ADMIN_KEY)
            ),
        )

    def restart_apiserver(self, *, down_s: float = 0.0, grace_s: float = 3.0) -> None:
        """Stop kube-apiserver (SIGTERM, as a rolling restart of the control plane does; its
        watches would hold it for long: SIGKILL after ``grace_s``), leave it down ``down_s``,
        and start it again on the same port over the same etcd: every client's connections
        and watches break, nothing stored is lost."""
        [apiserver] = [p for p in self._processes if p.name == KUBE_APISERVER]
        apiserver.stop(grace_s)
        time.sleep(down_s)
        restarted = _Process(KUBE_APISERVER, apiserver.argv, apiserver.log_path, append=True)
        self._processes[self._processes.index(apiserver)] = restarted
        self._wait_apiserver()

    def etcd_revision(self) -> int:
        """etcd's current revision (the resourceVersion of the latest write)."""
        header = self._etcd("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]
        return int(header["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to ``revision`` (default: the current one), through its
        own API: a watch or list from an older resourceVersion then gets 410 Gone from the
        API server. Returns the revision compacted to."""
        revision = self.etcd_revision() if revision is None else revision
        self._etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def _etcd(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.etcd_url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
            return answer

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        argv = [str(self.binaries.path(name)), *args]
        self._processes.append(_Process(name, argv, self.work_dir / "logs" / f"{name}.log"))

    def _wait_healthy(self, name: str, url: str, context: ssl.SSLContext) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for process in self._processes:
                code = process.exit_code()
                if code is not None:
                    raise ControlPlaneError(
                        f"{process.name} exited with code {code} while waiting for {name}; "
                        f"{self._describe_logs()}"
                    )
            if is_healthy(url, context):
                return
            time.sleep(POLL_INTERVAL_S)
        raise ControlPlaneError(
            f"{name} not healthy at {url} after {self.start_timeout_s:.0f}s; "
            f"{self._describe_logs()}"
        )

    def _describe_logs(self) -> str:
        parts = [f"logs kept in {self.work_dir / 'logs'}"]
        for process in self._processes:
            parts.append(
                f"--- last lines of {process.log_path.name} ---\n{log_tail(process.log_path)}"
            )
        return "\n".join(parts)

    def _stop_processes(self) -> None:
        while self._processes:
            # Reverse start order: clients of the API server first, etcd last.
            self._processes.pop().stop()

    def stop(self) -> None:
        """Stops every process and removes the work directory (kept after a failed start)."""
        atexit.unregister(self.stop)
        had_processes = bool(self._processes)
        self._stop_processes()
        if had_processes and self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [process.popen.pid for process in self._processes]

    def resident_memory_bytes(self) -> dict[str, int]:
        """Resident memory of each running process, by binary name."""
        return {process.name: process.resident_memory_bytes() for process in self._processes}

    # -- users and kubectl

    def _write_kubeconfig(self, path: Path, user: str, client: Credential) -> None:
        config = kubeconfig(server_url=self.url, ca_pem=self.ca_pem, user=user, client=client)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)

    def mint_user(self, name: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for user ``name`` in ``groups`` (client certificate), with no rights
        beyond what RBAC grants that user or groups (system:authenticated included)."""
        if self._ca is None:
            raise ControlPlaneError("the control plane is not started")
        client = issue_client_cert(self._ca, user=name, groups=groups, at=datetime.now(UTC))
        self._users_made += 1
        path = self.work_dir / f"user-{self._users_made}.kubeconfig"
        self._write_kubeconfig(path, name, client)
        return path

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the built kubectl (same version as the server) as admin or as a minted user.

        With ``check``, a non-zero exit raises ``ControlPlaneError`` with kubectl's stderr.
        """
        argv = [
            str(self.binaries.path(KUBECTL)),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            # Discovery cached per control plane: ~/.kube/cache is keyed by host:port, and a
            # port reused by a later control plane serving other versions of agent-sandbox's
            # CRDs would make kubectl ask for kinds this one does not serve.
            f"--cache-dir={self.work_dir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result


# --- installing the manifests --------------------------------------------------------------------


def load_manifests(path: Path, *, control_plane: ControlPlane) -> list[dict[str, Any]]:
    """Objects of a kustomization (rendered with the built kubectl), a directory of YAML files
    or one YAML file."""
    if not path.exists():
        raise ControlPlaneError(f"no manifests at {path}")
    if (path / "kustomization.yaml").is_file() or (path / "kustomization.yml").is_file():
        text = control_plane.kubectl("kustomize", str(path)).stdout
        return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    documents: list[dict[str, Any]] = []
    for file in files:
        documents += [
            doc
            for doc in yaml.safe_load_all(file.read_text(encoding="utf-8"))
            if isinstance(doc, dict)
        ]
    return documents


WEBHOOK_CONFIGURATION_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


def point_webhooks_at(
    configuration: Mapping[str, Any], *, base_url: str, ca_pem: bytes
) -> dict[str, Any]:
    """A copy of a webhook configuration whose webhooks call ``base_url`` instead of an
    in-cluster Service, trusting ``ca_pem`` (as envtest's WebhookInstallOptions does): each
    ``clientConfig.service`` becomes ``clientConfig.url = base_url + service.path``."""
    rewritten: dict[str, Any] = json.loads(json.dumps(configuration))
    annotations = rewritten.get("metadata", {}).get("annotations") or {}
    # cert-manager's CA injector has nothing to inject here.
    annotations.pop("cert-manager.io/inject-ca-from", None)
    ca_bundle = base64.b64encode(ca_pem).decode("ascii")
    for webhook in rewritten.get("webhooks") or []:
        client_config = webhook.setdefault("clientConfig", {})
        service = client_config.pop("service", None)
        if service is not None:
            client_config["url"] = base_url.rstrip("/") + (service.get("path") or "/")
        client_config["caBundle"] = ca_bundle
    return rewritten


def install_crds(control_plane: ControlPlane, crd_dir: Path) -> list[str]:
    """Applies the CRDs in ``crd_dir`` and waits until each is Established; their names."""
    crds = [
        doc
        for doc in load_manifests(crd_dir, control_plane=control_plane)
        if doc.get("kind") == "CustomResourceDefinition"
    ]
    if not crds:
        raise ControlPlaneError(f"no CustomResourceDefinition in {crd_dir}")
    names = [str(crd["metadata"]["name"]) for crd in crds]
    control_plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_list_of(crds)))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        f"--timeout={CRD_ESTABLISHED_TIMEOUT_S:.0f}s",
        *[f"customresourcedefinition/{name}" for name in names],
        timeout_s=CRD_ESTABLISHED_TIMEOUT_S + 10,
    )
    return names


def install_webhooks(
    control_plane: ControlPlane,
    manifests: Iterable[Mapping[str, Any]],
    *,
    base_url: str,
    ca_pem: bytes,
) -> list[dict[str, Any]]:
    """Applies the webhook configurations among ``manifests``, rewritten to call ``base_url``;
    returns what was applied."""
    configurations = [
        point_webhooks_at(doc, base_url=base_url, ca_pem=ca_pem)
        for doc in manifests
        if doc.get("kind") in WEBHOOK_CONFIGURATION_KINDS
    ]
    if not configurations:
        raise ControlPlaneError("no webhook configuration among the manifests")
    control_plane.kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps(_list_of(configurations))
    )
    return configurations


def _list_of(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


@contextlib.contextmanager
def running_control_plane(
    environ: Mapping[str, str], *, with_controller_manager: bool = False
) -> Iterator[ControlPlane]:
    """A started control plane with the binaries ``find_binaries(environ)`` finds."""
    with ControlPlane(
        binaries=find_binaries(environ), with_controller_manager=with_controller_manager
    ) as control_plane:
        yield control_plane
