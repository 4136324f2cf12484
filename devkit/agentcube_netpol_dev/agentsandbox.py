"""The real agent-sandbox controller (sigs.k8s.io/agent-sandbox), run against a ``ControlPlane``.

Built by ``tests/controlplane/build-agent-sandbox.sh`` into a cache folder keyed by version
(``AGENT_SANDBOX_VERSION`` in ``versions.env``): the ``agent-sandbox-controller`` binary, its
four CRDs and its RBAC, all from the same Go module. ``AgentSandboxController`` installs the
CRDs (waiting until they are Established: a controller-runtime manager started before its
kinds are served fails its informers), applies the release's ClusterRoles and bindings, and
starts the controller with ``--extensions`` as the ServiceAccount the release installs
(``system:serviceaccount:agent-sandbox-system:agent-sandbox-controller``, a token from the TokenRequest API), so every write it makes reaches the API server, and our
webhook, as it does in a cluster.

The process runs in its own process group and dies with the thread that started it
(``die_with_parent``); ``stop()`` ends it by PID. Its log is kept, and a failed start raises
``ControlPlaneError`` with its tail.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from agentcube_netpol_dev.controlplane import (
    CACHE_ENV,
    DEFAULT_CACHE_ROOT,
    LOOPBACK,
    STOP_GRACE_S,
    VERSIONS_FILE,
    ControlPlane,
    ControlPlaneError,
    create_ca,
    die_with_parent,
    free_loopback_ports,
    install_crds,
    is_healthy,
    issue_serving_cert,
    log_tail,
    read_versions,
    stop_process_group,
    tls_context,
)

logger = logging.getLogger(__name__)

BUILD_SCRIPT = "tests/controlplane/build-agent-sandbox.sh"
CONTROLLER_BINARY = "agent-sandbox-controller"
COMPLETE_STAMP = ".complete"
CRD_NAMES = (
    "sandboxes.agents.x-k8s.io",
    "sandboxtemplates.extensions.agents.x-k8s.io",
    "sandboxclaims.extensions.agents.x-k8s.io",
    "sandboxwarmpools.extensions.agents.x-k8s.io",
)
# What the release's k8s/ manifests grant the controller; their Deployment and Service are
# left out (the controller runs here as a process).
RBAC_KINDS = frozenset({"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"})
SERVICE_ACCOUNT_NAMESPACE = "agent-sandbox-system"
SERVICE_ACCOUNT_NAME = "agent-sandbox-controller"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{SERVICE_ACCOUNT_NAMESPACE}:{SERVICE_ACCOUNT_NAME}"
TOKEN_DURATION_H = 48  # outlives any test session and a day of `dev`

START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
# controller-runtime logs this once per controller, after its caches have synced.
WORKERS_STARTED = '"Starting workers"'
CONTROLLERS_WITH_EXTENSIONS = 4  # Sandbox, SandboxClaim, SandboxTemplate, SandboxWarmPool
CONTROLLERS_WITHOUT_EXTENSIONS = 1  # Sandbox


# The labels it writes (values: webhook.reconciler.agentsandbox.name_hash of a name).
LABEL_SANDBOX_NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
LABEL_TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
LABEL_POD_TEMPLATE_HASH = "agents.x-k8s.io/sandbox-pod-template-hash"


# --- the build ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSandboxBuild:
    """What build-agent-sandbox.sh leaves in its cache folder."""

    directory: Path
    version: str

    @property
    def controller(self) -> Path:
        return self.directory / CONTROLLER_BINARY

    @property
    def crd_dir(self) -> Path:
        return self.directory / "crds"

    @property
    def rbac_dir(self) -> Path:
        return self.directory / "rbac"


def agent_sandbox_dir_for(cache_root: Path, version: str) -> Path:
    return cache_root / "bin" / f"agent-sandbox-{version}"


def pinned_agent_sandbox_versions(versions_file: Path = VERSIONS_FILE) -> tuple[str, ...]:
    """``AGENT_SANDBOX_VERSIONS`` of versions.env: one release per line, oldest first."""
    listed = read_versions(versions_file).get("AGENT_SANDBOX_VERSIONS", "")
    return tuple(version for version in listed.split(",") if version)


def find_agent_sandbox(
    environ: Mapping[str, str],
    version: str | None = None,
    *,
    versions_file: Path = VERSIONS_FILE,
) -> AgentSandboxBuild:
    """The build of ``version`` (default: ``AGENT_SANDBOX_VERSION``) in the cache;
    ``ControlPlaneError`` naming what is missing and the command that builds it otherwise."""
    if version is None:
        version = read_versions(versions_file).get("AGENT_SANDBOX_VERSION", "")
        if not version:
            raise ControlPlaneError(f"no AGENT_SANDBOX_VERSION in {versions_file}")
    cache_root = Path(environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()
    build = AgentSandboxBuild(agent_sandbox_dir_for(cache_root, version), version)
    missing = []
    if not (build.directory / COMPLETE_STAMP).is_file():
        missing.append(COMPLETE_STAMP)
    if not build.controller.is_file() or not os.access(build.controller, os.X_OK):
        missing.append(CONTROLLER_BINARY)
    if len(list(build.crd_dir.glob("*.yaml"))) < len(CRD_NAMES):
        missing.append("crds/")
    if not list(build.rbac_dir.glob("*.yaml")):
        missing.append("rbac/")
    if missing:
        raise ControlPlaneError(
            f"agent-sandbox {version} is not built in {build.directory} "
            f"(missing: {', '.join(missing)}). Build it with `{BUILD_SCRIPT} {version}` "
            "(a few minutes the first time, instant after)."
        )
    return build


def rbac_manifests(rbac_dir: Path) -> list[dict[str, Any]]:
    """The Namespace, ServiceAccount, ClusterRoles and ClusterRoleBindings of the release."""
    documents: list[dict[str, Any]] = []
    for path in sorted(rbac_dir.glob("*.yaml")):
        documents += [
            doc
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("kind") in RBAC_KINDS
        ]
    return documents


def has_conversion_webhook(version: str) -> bool:
    """v0.5.x serves v1alpha1 through a conversion webhook in the controller (a Service in
    its namespace, certificates it makes itself); v0.4 had none, v1.0 dropped v1alpha1."""
    return version.startswith("v0.5.")


def controller_args(
    *,
    kubeconfig: Path,
    metrics_port: int,
    probe_port: int,
    extensions: bool,
    log_level: str,
    version: str = "",
    webhook_port: int | None = None,
    webhook_cert_dir: Path | None = None,
) -> list[str]:
    """Flags of ``cmd/agent-sandbox-controller`` (v0.4.6, v0.5.6, v1.0.1): loopback ports, no
    leader election (one replica; no Lease to wait for), the kubeconfig flag registered by
    controller-runtime. v0.5's webhook server is off (``--enable-webhook=false``) unless
    ``webhook_port`` is given: on its own it would write certificates under
    /tmp/k8s-webhook-server and patch the CRDs for a Service no process here backs, so its
    CRDs are installed with ``conversion: None``, as its own log asks. With ``webhook_port``
    its conversion webhook serves on that port with the certificate we put in
    ``webhook_cert_dir`` (``--manage-webhook-certs=false``: it writes no Secret and patches no
    CRD; ``AgentSandboxController.install`` points the CRDs at it)."""
    args = [
        f"--kubeconfig={kubeconfig}",
        f"--extensions={'true' if extensions else 'false'}",
        "--leader-elect=false",
        f"--metrics-bind-address={LOOPBACK}:{metrics_port}",
        f"--health-probe-bind-address={LOOPBACK}:{probe_port}",
        f"--zap-log-level={log_level}",
    ]
    if has_conversion_webhook(version):
        if webhook_port is None or webhook_cert_dir is None:
            args.append("--enable-webhook=false")
        else:
            args += [
                f"--webhook-port={webhook_port}",
                f"--webhook-cert-dir={webhook_cert_dir}",
                "--manage-webhook-certs=false",
            ]
    return args


# Where agent-sandbox v0.5+ reads its allow-list of claim pod label domains (the mounted
# ConfigMap agent-sandbox-config in a cluster): a fixed path, so never written on this host.
ALLOW_LIST_DIR = "/etc/sandbox-config"
ALLOW_LIST_FILE = "allowed-label-domains"

# Run in a mount namespace of its own (`unshare -m`, private propagation): /etc there is a
# tmpfs of symlinks to the host's /etc entries (bind-mounted aside first) plus
# sandbox-config/allowed-label-domains. Nothing outside the namespace sees a change.
_WITH_ALLOW_LIST = """set -eu
aside="$1"; allow_list="$2"; shift 2
mkdir -p "$aside"
mount --rbind /etc "$aside"
mount -t tmpfs -o mode=0755 agentcube-netpol-etc /etc
for entry in "$aside"/* "$aside"/.[!.]*; do
  if [ -e "$entry" ] || [ -L "$entry" ]; then ln -s "$entry" "/etc/${entry##*/}"; fi
done
mkdir /etc/sandbox-config
cp "$allow_list" /etc/sandbox-config/allowed-label-domains
exec "$@"
"""


def with_allow_list(argv: list[str], *, aside: Path, allow_list: Path) -> list[str]:
    """``argv`` run where ``/etc/sandbox-config/allowed-label-domains`` is ``allow_list``'s
    content, in a mount namespace of its own (root only; the host's /etc is untouched)."""
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _WITH_ALLOW_LIST, "with-allow-list", str(aside), str(allow_list), *argv,
    ]  # fmt: skip


def without_conversion_webhook(crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD whose versions are converted by the API server alone (``strategy: None``)."""
    return {**crd, "spec": {**crd["spec"], "conversion": {"strategy": "None"}}}


def with_conversion_webhook(crd: dict[str, Any], *, url: str, ca_pem: bytes) -> dict[str, Any]:
    """A CRD whose versions the controller's webhook at ``url`` converts (what its own
    startup patch does for the in-cluster Service, here for a loopback URL), trusting
    ``ca_pem``."""
    conversion = crd["spec"].get("conversion") or {}
    webhook = conversion.get("webhook") or {}
    return {
        **crd,
        "spec": {
            **crd["spec"],
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": webhook.get("conversionReviewVersions")
                    or ["v1", "v1beta1"],
                    "clientConfig": {
                        "url": url,
                        "caBundle": base64.b64encode(ca_pem).decode("ascii"),
                    },
                },
            },
        },
    }


class AgentSandboxController:
    """The controller process. Use as a context manager, or ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        build: AgentSandboxBuild,
        control_plane: ControlPlane,
        extensions: bool = True,
        as_service_account: bool = True,
        log_level: str = "info",
        work_dir: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        allowed_label_domains: str | None = None,
        conversion_webhook: bool = False,
    ) -> None:
        self.build = build
        self.control_plane = control_plane
        self.extensions = extensions
        self.as_service_account = as_service_account
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        # v0.5+: the allow-list file's content; None runs it without (its default).
        self.allowed_label_domains = allowed_label_domains
        # v0.5: run its conversion webhook (on a loopback port, our certificate) and install
        # its CRDs with Webhook conversion pointing there, as in a cluster; else conversion None.
        self.conversion_webhook = conversion_webhook and has_conversion_webhook(build.version)
        self.webhook_port = 0
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="agentcube-netpol-as-"))
        self.log_path = self.work_dir / f"{CONTROLLER_BINARY}.log"
        self.probe_port = 0
        self.metrics_port = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def user(self) -> str:
        """The user name the API server sees the controller's requests as."""
        return SERVICE_ACCOUNT_USER if self.as_service_account else "(admin)"

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

    def install(self) -> list[str]:
        """The module's CRDs (Established when this returns) and, as the service account,
        its RBAC. Idempotent (server-side apply); their names."""
        crd_dir = self.build.crd_dir
        if has_conversion_webhook(self.build.version):
            crd_dir = self.work_dir / "crds"
            crd_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.build.crd_dir.glob("*.yaml")):
                crd = yaml.safe_load(path.read_text(encoding="utf-8"))
                if self.conversion_webhook:
                    ca_pem = self._webhook_certificates()
                    url = f"https://{LOOPBACK}:{self.webhook_port}/convert"
                    crd = with_conversion_webhook(crd, url=url, ca_pem=ca_pem)
                else:
                    crd = without_conversion_webhook(crd)
                (crd_dir / path.name).write_text(yaml.safe_dump(crd), encoding="utf-8")
        names = install_crds(self.control_plane, crd_dir)
        missing = sorted(set(CRD_NAMES) - set(names))
        if missing:
            raise ControlPlaneError(f"{self.build.crd_dir} lacks the CRDs {', '.join(missing)}")
        if self.as_service_account:
            manifests = rbac_manifests(self.build.rbac_dir)
            self.control_plane.kubectl(
                "apply",
                "--server-side",
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
            )
        return names

    def start(self) -> None:
        if self.running:
            return
        self.install()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.as_service_account:
            kubeconfig = self._service_account_kubeconfig()
        else:
            kubeconfig = self.control_plane.admin_kubeconfig
        self.metrics_port, self.probe_port = free_loopback_ports(2)
        argv = [
            str(self.build.controller),
            *controller_args(
                kubeconfig=kubeconfig,
                metrics_port=self.metrics_port,
                probe_port=self.probe_port,
                extensions=self.extensions,
                log_level=self.log_level,
                version=self.build.version,
                webhook_port=self.webhook_port if self.conversion_webhook else None,
                webhook_cert_dir=self.webhook_cert_dir if self.conversion_webhook else None,
            ),
        ]
        if self.allowed_label_domains is not None:
            allow_list = self.work_dir / ALLOW_LIST_FILE
            allow_list.write_text(self.allowed_label_domains + "\n", encoding="utf-8")
            argv = with_allow_list(argv, aside=self.work_dir / "host-etc", allow_list=allow_list)
        with self.log_path.open("ab") as log_file:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (only a prctl call; see there)
            )
        atexit.register(self.stop)
        logger.debug(
            "started %s (pid %s), log %s", CONTROLLER_BINARY, self._popen.pid, self.log_path
        )
        try:
            self._wait_started()
        except BaseException:
            self.stop()
            raise

    @property
    def webhook_cert_dir(self) -> Path:
        return self.work_dir / "webhook-certs"

    def _webhook_certificates(self) -> bytes:
        """The conversion webhook's port (picked once) and serving certificate for 127.0.0.1
        in ``webhook_cert_dir`` (made once, as tls.crt and tls.key); the CA's PEM."""
        ca_file = self.webhook_cert_dir / "ca.crt"
        if not self.webhook_port:
            (self.webhook_port,) = free_loopback_ports(1)
        if not ca_file.exists():
            at = datetime.now(UTC)
            ca = create_ca(common_name="agent-sandbox-conversion-webhook-ca", at=at)
            serving = issue_serving_cert(ca, dns_names=[], ip_addresses=[LOOPBACK], at=at)
            self.webhook_cert_dir.mkdir(parents=True, exist_ok=True)
            (self.webhook_cert_dir / "tls.crt").write_bytes(serving.cert_pem)
            (self.webhook_cert_dir / "tls.key").write_bytes(serving.key_pem)
            (self.webhook_cert_dir / "tls.key").chmod(0o600)
            ca_file.write_bytes(ca.cert_pem)
        return ca_file.read_bytes()

    def _service_account_kubeconfig(self) -> Path:
        """A kubeconfig with a token of the release's ServiceAccount (TokenRequest API): the
        API server authenticates the controller as that account, with its groups. (A client
        certificate cannot carry the name: a common name is at most 64 characters.)"""
        token = self.control_plane.kubectl(
            "create",
            "token",
            SERVICE_ACCOUNT_NAME,
            f"--namespace={SERVICE_ACCOUNT_NAMESPACE}",
            f"--duration={TOKEN_DURATION_H}h",
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.control_plane.url,
                        "certificate-authority-data": base64.b64encode(
                            self.control_plane.ca_pem
                        ).decode("ascii"),
                    },
                }
            ],
            "users": [{"name": SERVICE_ACCOUNT_NAME, "user": {"token": token}}],
            "contexts": [
                {
                    "name": SERVICE_ACCOUNT_NAME,
                    "context": {"cluster": "test", "user": SERVICE_ACCOUNT_NAME},
                }
            ],
            "current-context": SERVICE_ACCOUNT_NAME,
        }
        path = self.work_dir / f"{SERVICE_ACCOUNT_NAME}.kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _wait_started(self) -> None:
        """Until /readyz answers and every controller has started its workers (its caches
        synced): from then on a new object is acted upon, not only listed later."""
        expected = (
            CONTROLLERS_WITH_EXTENSIONS if self.extensions else CONTROLLERS_WITHOUT_EXTENSIONS
        )
        ready_url = f"http://{LOOPBACK}:{self.probe_port}/readyz"
        context = tls_context(ca_file=None, client=None)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._popen is not None
            code = self._popen.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{CONTROLLER_BINARY} exited with code {code} while starting; "
                    f"{self.describe_log()}"
                )
            if is_healthy(ready_url, context) and self._workers_started() >= expected:
                return
            time.sleep(POLL_INTERVAL_S)
        raise ControlPlaneError(
            f"{CONTROLLER_BINARY} not started after {self.start_timeout_s:.0f}s "
            f"({self._workers_started()} of {expected} controllers running); {self.describe_log()}"
        )

    def _workers_started(self) -> int:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return 0
        return text.count(WORKERS_STARTED)

    def describe_log(self, lines: int = 40) -> str:
        """The tail of the controller's log, for failure messages."""
        return f"log {self.log_path}:\n{log_tail(self.log_path, lines)}"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to its process group (by PID), SIGKILL after ``grace_s``. The log stays."""
        atexit.unregister(self.stop)
        popen, self._popen = self._popen, None
        if popen is not None:
            stop_process_group(popen, name=CONTROLLER_BINARY, grace_s=grace_s)
