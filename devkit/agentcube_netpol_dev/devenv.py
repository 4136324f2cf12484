"""``python -m webhook dev``: a newcomer's playground on a real control plane.

Starts etcd, kube-apiserver and kube-controller-manager (``agentcube_netpol_dev.controlplane``),
installs the CRDs, starts the real agent-sandbox controller and a stand-in kubelet (unless
``--without-agent-sandbox``; with ``--dataplane`` its pods are network namespaces on a
dataplane where kube-router enforces the NetworkPolicies, ``agentcube_netpol_dev.devdataplane``),
runs the admission server and the reconciler (``run``'s manager) in this process and
registers the webhook configurations against it (both from the package's manifests, which
deploy/ builds on), writes the admin kubeconfig once all of that is ready, and runs until
Ctrl-C or SIGTERM; then stops everything and removes the kubeconfig (it would point at a
server that is gone).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from agentcube_netpol_dev.agentsandbox import (
    AgentSandboxBuild,
    AgentSandboxController,
    find_agent_sandbox,
)
from agentcube_netpol_dev.controlplane import (
    KUBECTL,
    LOOPBACK,
    VERSIONS_FILE,
    Binaries,
    ControlPlane,
    ControlPlaneError,
    bound_loopback_socket,
    find_binaries,
    install_crds,
    install_webhooks,
    is_healthy,
    load_manifests,
    read_versions,
    tls_context,
)
from agentcube_netpol_dev.dataplane import Dataplane, DataplaneError, check_prerequisites
from agentcube_netpol_dev.devdataplane import DNS_NAMES, EXTERNAL_HOSTS, POD_PORT, DevNetwork
from agentcube_netpol_dev.kubelet import FakeKubelet
from agentcube_netpol_dev.testdns import DnsServer
from webhook.api.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from webhook.api.kinds import AGENTCUBE_GROUP
from webhook.api.settings import Settings
from webhook.kube.discovery import resolve_claim_label_injection
from webhook.kube.identity import with_own_gate_lifter
from webhook.kube.rest import Rest
from webhook.manifests import CRDS_DIR, WEBHOOKS_DIR
from webhook.tls.certs import CA_CERT_FILE

logger = logging.getLogger(__name__)

SERVER_READY_TIMEOUT_S = 30.0
LEASE_NAMESPACE = "default"  # the reconciler's Lease; the namespace every cluster has
POLL_INTERVAL_S = 0.1

EXAMPLE = """\
apiVersion: runtime.agentcube.volcano.sh/v1alpha1
kind: CodeInterpreter
metadata: {name: demo, namespace: default}
spec:
  template:
    image: python:3.12
    networkPolicy:
      mode: Restricted
      egress: [{cidrs: ["10.0.0.1/8"]}]"""


def agentcube_crds(control_plane: ControlPlane, directory: Path) -> Path:
    """``directory`` holding the package's CRDs (as its kustomization renders them) of
    AgentCube's own group only."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = [
        doc
        for doc in load_manifests(CRDS_DIR, control_plane=control_plane)
        if (doc.get("spec") or {}).get("group") == AGENTCUBE_GROUP
    ]
    (directory / "agentcube.yaml").write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return directory


def banner(
    *,
    kubeconfig: Path,
    control_plane: ControlPlane,
    webhook_url: str,
    agent_sandbox: str | None,
    dataplane: str | None = None,
) -> str:
    """What ``dev`` prints once ready; ``dataplane``: the prefix of its network namespaces."""
    versions = read_versions(VERSIONS_FILE) if VERSIONS_FILE.is_file() else {}
    sandbox_line = (
        f"agent-sandbox {agent_sandbox} controller and a stand-in "
        "kubelet: warm pools fill, claims are adopted, pods run"
        if agent_sandbox is not None
        else "no agent-sandbox controller (--without-agent-sandbox)"
    )
    kubectl = control_plane.binaries.path(KUBECTL)
    if dataplane is not None:
        hosts = ", ".join(
            f"{address} (:{', :'.join(str(p) for p in ports)})" for address, ports in EXTERNAL_HOSTS
        )
        names = ", ".join(f"{name} {address}" for name, address in DNS_NAMES)
        sandbox_line += f"""
  dataplane   kube-router enforces the NetworkPolicies on pods that are network namespaces
              ({dataplane}*), each answering http on :{POD_PORT}; outside the cluster:
              {hosts}.
              Names (egress domains resolve with them): {names}.
              A pod's commands to try are printed when it starts and when its policies change."""
    return f"""
agentcube-netpol dev is ready.
  API server  {control_plane.url}  (kube-apiserver {versions.get("K8S_VERSION", "")})
  webhook     {webhook_url}  (/validate, /mutate; its log and the reconciler's are this terminal)
  kubectl     {kubectl}  (same version as the server)
  {sandbox_line}
Templates are validated; each isolated sandbox gets its NetworkPolicy from the reconciler.

Try:
  export KUBECONFIG={kubeconfig.resolve()}
  alias kubectl={kubectl}
  kubectl get crds
  kubectl apply -f - <<'EOF'
{EXAMPLE}
EOF
  (refused: the CIDR has host bits set; fix it to 10.0.0.0/8 and apply again)
  kubectl apply -f examples/dev/warm-pool.yaml    # a CodeInterpreter with a warm pool, as AgentCube sets it up
  kubectl apply -f examples/dev/session.yaml      # a session claims a warm sandbox
  kubectl get networkpolicy -w                    # its NetworkPolicy appears

Ctrl-C stops everything it started and removes {kubeconfig}.
"""


def run_dev(
    *,
    kubeconfig: Path,
    port: int,
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO = sys.stdout,
    with_agent_sandbox: bool = True,
    agent_sandbox_version: str | None = None,
    with_dataplane: bool = False,
) -> int:
    """Run the playground until interrupted; 0 after a clean stop, 5 if it could not start
    (2: ``with_dataplane`` without the agent-sandbox controller and its kubelet).

    ``environ`` is where ``KUBEBUILDER_ASSETS`` / ``AGENTCUBE_NETPOL_CACHE`` are read from
    (the CLI passes ``os.environ``; the dataplane's kube-router is looked up in the process's
    own environment).
    """
    found = _preflight(
        environ or {},
        with_agent_sandbox=with_agent_sandbox,
        agent_sandbox_version=agent_sandbox_version,
        with_dataplane=with_dataplane,
    )
    if isinstance(found, int):
        return found
    binaries, build = found
    try:
        # Bound here, served by the server: no other process can take it in between.
        webhook_socket = bound_loopback_socket(port or 0)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", LOOPBACK, port, exc)
        return EXIT_FAILED
    work_dir = Path(tempfile.mkdtemp(prefix="agentcube-netpol-dev-"))
    # Until the manager takes the signals over, SIGTERM cleans up as Ctrl-C does.
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            cluster = _start_cluster(
                stack, binaries, build, work_dir, with_dataplane=with_dataplane, stdout=stdout
            )
            return _serve(
                cluster,
                settings,
                webhook_socket,
                cert_dir=work_dir / "webhook-certs",
                kubeconfig=kubeconfig,
                stdout=stdout,
            )
    except (ControlPlaneError, DataplaneError) as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        webhook_socket.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
        kubeconfig.unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        logger.info("dev control plane stopped")


def _preflight(
    environ: Mapping[str, str],
    *,
    with_agent_sandbox: bool,
    agent_sandbox_version: str | None,
    with_dataplane: bool,
) -> tuple[Binaries, AgentSandboxBuild | None] | int:
    """The binaries to run, or the exit code that says why they cannot run."""
    if with_dataplane and not with_agent_sandbox:
        logger.error("--dataplane runs the stand-in kubelet's pods: drop --without-agent-sandbox")
        return EXIT_USAGE
    try:
        if with_dataplane:
            check_prerequisites()
        binaries = find_binaries(environ)
        build = find_agent_sandbox(environ, agent_sandbox_version) if with_agent_sandbox else None
    except DataplaneError as exc:
        logger.error("dev --dataplane cannot start: %s", exc)
        return EXIT_FAILED
    except ControlPlaneError as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    return binaries, build


@dataclass(frozen=True)
class _Cluster:
    control_plane: ControlPlane
    rest: Rest
    agent_sandbox: str | None  # its version, when its controller runs
    dataplane: str | None  # the prefix of the dataplane's network namespaces
    dns: str | None = None  # the playground's DNS server (HOST:PORT), with the dataplane


def _start_cluster(
    stack: contextlib.ExitStack,
    binaries: Binaries,
    build: AgentSandboxBuild | None,
    work_dir: Path,
    *,
    with_dataplane: bool,
    stdout: TextIO,
) -> _Cluster:
    """The control plane with the CRDs, agent-sandbox's controller and a kubelet (a
    stand-in, or with ``with_dataplane`` one whose pods are network namespaces), each
    stopped when ``stack`` unwinds."""
    control_plane = stack.enter_context(
        ControlPlane(
            binaries=binaries, with_controller_manager=True, work_dir=work_dir / "control-plane"
        )
    )
    if build is None:
        install_crds(control_plane, CRDS_DIR)
    else:
        # AgentCube's CRDs from the package, agent-sandbox's four from the release
        # (v1.0 serves no v1alpha1: the package's would be in the way).
        install_crds(control_plane, agentcube_crds(control_plane, work_dir / "crds"))
        stack.enter_context(
            AgentSandboxController(
                build=build, control_plane=control_plane, work_dir=work_dir / "as"
            )
        )
    rest = Rest.from_config(control_plane.admin_kubeconfig)
    dataplane_prefix: str | None = None
    dns: str | None = None
    if build is not None and with_dataplane:
        kubelet, network = _start_dataplane(stack, control_plane, rest, work_dir, stdout)
        stack.enter_context(kubelet)
        dataplane_prefix = network.dataplane.prefix
        # Names for the hosts outside: what run resolves egress domains with.
        server = stack.enter_context(DnsServer())
        for name, address in DNS_NAMES:
            server.set(name, a=[address], ttl=30)
        dns = server.address
    elif build is not None:
        stack.enter_context(FakeKubelet(_core_v1(control_plane)))
    return _Cluster(
        control_plane=control_plane,
        rest=rest,
        agent_sandbox=None if build is None else build.version,
        dataplane=dataplane_prefix,
        dns=dns,
    )


def _serve(
    cluster: _Cluster,
    settings: Settings,
    webhook_socket: socket.socket,
    *,
    cert_dir: Path,
    kubeconfig: Path,
    stdout: TextIO,
) -> int:
    """``run``'s manager on ``cluster`` (caches, reconciler, server), and a last part that
    registers the webhooks once the server is ready, writes the kubeconfig and says so;
    until Ctrl-C or SIGTERM."""
    from webhook.runtime.manager import Manager, Task  # uvicorn only when serving
    from webhook.runtime.programs import DomainOptions, Lease, add_reconciler, add_webhook_server
    from webhook.server.metrics import AdmissionMetrics
    from webhook.server.serve import Admission, Listen, Tls

    rest = cluster.rest
    webhook_port = int(webhook_socket.getsockname()[1])
    webhook_url = f"https://{LOOPBACK}:{webhook_port}"
    manifests = load_manifests(WEBHOOKS_DIR, control_plane=cluster.control_plane)
    metrics = AdmissionMetrics()
    settings = with_own_gate_lifter(resolve_claim_label_injection(settings, rest), rest)
    manager = Manager()
    shared = add_reconciler(
        manager,
        rest=rest,
        settings=settings,
        registry=metrics.registry,
        lease=Lease(namespace=LEASE_NAMESPACE),
        domains=DomainOptions(server=cluster.dns),
    )
    add_webhook_server(
        manager,
        Admission(
            settings=settings, claims=shared.caches, sandboxes=shared.caches, metrics=metrics
        ),
        Listen(host=LOOPBACK, port=webhook_port, sock=webhook_socket),
        Tls(cert_dir=cert_dir, dns_names=["localhost"]),
    )
    # The webhook configurations need the server's CA, which the server makes when it
    # starts: a thread registers them once it answers, then hands over.
    stop_waiting = threading.Event()
    registrar = threading.Thread(
        target=_register_when_ready,
        kwargs={
            "cluster": cluster,
            "manifests": manifests,
            "webhook_url": webhook_url,
            "cert_dir": cert_dir,
            "kubeconfig": kubeconfig,
            "stop_waiting": stop_waiting,
            "stdout": stdout,
        },
        name="register-webhooks",
        daemon=True,
    )

    def stop_registrar() -> None:
        stop_waiting.set()
        if registrar.is_alive():
            registrar.join()

    manager.add(Task("webhook registration", on_start=registrar.start, on_stop=stop_registrar))
    return manager.run()


def _start_dataplane(
    stack: contextlib.ExitStack,
    control_plane: ControlPlane,
    rest: Rest,
    work_dir: Path,
    stdout: TextIO,
) -> tuple[FakeKubelet, DevNetwork]:
    """The node namespace with kube-router, once it enforces, and the external hosts, each
    removed when ``stack`` unwinds (the pods' servers, then every namespace and process);
    returns the stand-in kubelet running pods on them, its Node registered, not started."""
    directory = work_dir / "dataplane"
    directory.mkdir(parents=True, exist_ok=True)
    dataplane = Dataplane(
        api_port=control_plane.api_port,
        kubeconfig=yaml.safe_load(control_plane.admin_kubeconfig.read_text(encoding="utf-8")),
        work_dir=directory,
    )
    network = DevNetwork(dataplane, rest, stdout)
    kubelet = FakeKubelet(
        _core_v1(control_plane),
        node_name=dataplane.node_name,
        node_ip=dataplane.node_ip,
        network=network,
    )
    kubelet.register_node()  # kube-router exits when it finds no Node of its name
    stack.callback(dataplane.stop)
    dataplane.start()
    stack.callback(network.stop)
    network.start()
    return kubelet, network


def _core_v1(control_plane: ControlPlane) -> Any:
    """A ``kubernetes.client.CoreV1Api`` as the admin (for the stand-in kubelet)."""
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    return CoreV1Api(new_client_from_config(config_file=str(control_plane.admin_kubeconfig)))


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM before the server has taken over its signals: clean up as for Ctrl-C.
    raise KeyboardInterrupt


def _register_when_ready(
    *,
    cluster: _Cluster,
    manifests: list[dict[str, object]],
    webhook_url: str,
    cert_dir: Path,
    kubeconfig: Path,
    stop_waiting: threading.Event,
    stdout: TextIO,
) -> None:
    control_plane = cluster.control_plane
    ca_file = cert_dir / CA_CERT_FILE
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while not stop_waiting.is_set():
        if time.monotonic() > deadline:
            logger.error("the webhook server did not answer at %s/readyz", webhook_url)
            return
        if ca_file.is_file() and is_healthy(
            f"{webhook_url}/readyz", tls_context(ca_file=ca_file, client=None)
        ):
            break
        stop_waiting.wait(POLL_INTERVAL_S)
    else:
        return
    try:
        install_webhooks(
            control_plane, manifests, base_url=webhook_url, ca_pem=ca_file.read_bytes()
        )
    except ControlPlaneError as exc:
        logger.error("could not register the webhooks: %s", exc)
        return
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(control_plane.admin_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o600)
    stdout.write(
        banner(
            kubeconfig=kubeconfig,
            control_plane=control_plane,
            webhook_url=webhook_url,
            agent_sandbox=cluster.agent_sandbox,
            dataplane=cluster.dataplane,
        )
    )
    stdout.flush()
