"""A dataplane for the end-to-end tier and the ``dev --dataplane`` playground: pods that are
network namespaces, NetworkPolicies enforced on them by kube-router's network-policy
controller (a test-only component, built by tests/controlplane/build-kube-router.sh; never
part of a deployment).

Topology, all of it created here and removed on ``stop()``:

- one "node" network namespace with NO link to the host's network: its loopback, the node
  IP on it, IP forwarding, ``icmp_ratelimit=0`` (kube-router rejects with ICMP; rate-limited
  rejects would turn into timeouts), kube-router (its iptables rules and ipsets live in this
  namespace only), and a /32 route per pod;
- one network namespace per pod (``Dataplane`` is the fake kubelet's ``PodNetwork``: a pod
  gets its namespace when it is run, loses it when it goes; its init containers run in it;
  ``on_containers_start`` is called when its app containers start), and per "host" the
  test adds (an external address, a DNS server): a veth pair into the node namespace, its
  address on ``eth0``, a default route via the node IP;
- kube-router reaches the API server (on the host's loopback) through a relay in this
  process: a socket listening on the node namespace's own 127.0.0.1, each connection
  forwarded to the API server's port. Only kube-router, in the node namespace, can reach
  that listener (a pod's 127.0.0.1 is its own); no packet crosses between the namespaces
  this module creates and the host's.

Nothing in the host's network namespace (its firewall, routes, interfaces, sysctls) changes.
Every process started here is stopped by its PID. Needs root, ``ip``, ``iptables`` and
``ipset``; ``DataplaneError`` says which is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentcube_netpol_dev.controlplane import (
    DEFAULT_CACHE_ROOT,
    VERSIONS_FILE,
    ControlPlane,
    read_versions,
    stop_process_group,
)
from agentcube_netpol_dev.kubelet import (
    DEFAULT_NODE_IP,
    DEFAULT_NODE_NAME,
    CidrPodNetwork,
    FakeKubelet,
    pod_key,
)

logger = logging.getLogger(__name__)

BUILD_SCRIPT = "tests/controlplane/build-kube-router.sh"
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
RELAY_BUFFER = 64 * 1024
STOP_GRACE_S = 10.0
PROBE_TIMEOUT_S = 1.5
KUBE_ROUTER_START_S = 60.0

# A tiny server: answers every TCP connection, and every UDP datagram, with its name, on
# each port given ("443" is TCP, "53/udp" UDP).
SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def serve_tcp(port):
    listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port)); listener.listen(64)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(name + b"\n")
def serve_udp(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.bind(("0.0.0.0", port))
    while True:
        _, peer = sock.recvfrom(512)
        sock.sendto(name + b"\n", peer)
for spec in sys.argv[2:]:
    port, _, protocol = spec.partition("/")
    serve = serve_udp if protocol == "udp" else serve_tcp
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""
# Connects (TCP) or sends a datagram (UDP), reads the server's name: prints it, or the
# reason nothing came back.
PROBE = r"""
import socket, sys
address, port, protocol, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout); s.connect((address, port)); s.send(b"probe")
            print(s.recv(256).decode().strip() or "empty")
    else:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            print(s.recv(256).decode().strip() or "empty")
except OSError as exc:
    print(f"no: {exc!r}")
"""
# Connects again and again (TCP, every 10 ms) for a while; prints how many connections got
# the server's answer, and when the first and last did (seconds after "go").
PROBER = r"""
import socket, sys, time
address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print("go", flush=True)
start = time.monotonic(); through = refused = 0; first = last = None
while (now := time.monotonic() - start) < seconds:
    try:
        with socket.create_connection((address, port), timeout=0.2) as s:
            s.settimeout(0.2)
            if s.recv(64):
                through += 1; first = now if first is None else first; last = now
            else:
                refused += 1
    except OSError:
        refused += 1
    time.sleep(0.01)
print(f"{through} {refused} {first} {last}", flush=True)
"""


@dataclass(frozen=True)
class Probed:
    """What a ``prober`` saw: connections answered and not, and when the first and the last
    answered one started (seconds after it began; None: none was)."""

    through: int
    refused: int
    first_through_s: float | None
    last_through_s: float | None


class DataplaneError(RuntimeError):
    """The dataplane cannot run here: the reason, and what to do about it."""


def kube_router_binary(environ: Mapping[str, str] = os.environ) -> Path:
    versions = read_versions(VERSIONS_FILE)
    root = Path(environ.get("AGENTCUBE_NETPOL_CACHE") or DEFAULT_CACHE_ROOT).expanduser()
    directory = root / "bin" / f"kube-router-{versions['KUBE_ROUTER_VERSION']}"
    binary = directory / "kube-router"
    if not (directory / ".complete").is_file() or not os.access(binary, os.X_OK):
        raise DataplaneError(f"no kube-router in {directory}: build it with `{BUILD_SCRIPT}`")
    return binary


def check_prerequisites() -> Path:
    """kube-router's path, once everything the dataplane needs is known to be here."""
    if os.geteuid() != 0:
        raise DataplaneError("the dataplane tier needs root (network namespaces, iptables)")
    missing = [tool for tool in ("ip", "iptables", "ipset") if shutil.which(tool) is None]
    if missing:
        raise DataplaneError(
            f"missing {', '.join(missing)}: `make dataplane-packages` installs iptables and ipset"
        )
    return kube_router_binary()


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise DataplaneError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _setns(name: str) -> None:
    """Moves the CALLING THREAD into network namespace ``name`` (only that thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def socket_in(namespace: str, make: Callable[[], socket.socket]) -> socket.socket:
    """The socket ``make()`` returns, made by a short-lived thread that moved into network
    namespace ``namespace`` (a socket keeps the namespace it was made in). ``make``'s
    exception, if any, is raised here."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def run_there() -> None:
        try:
            _setns(namespace)
            made.append(make())
        except BaseException as exc:  # reported to the caller
            failed.append(exc)

    thread = threading.Thread(target=run_there, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def listener_in(namespace: str) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 of network namespace ``namespace``."""

    def listen() -> socket.socket:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        return listener

    try:
        return socket_in(namespace, listen)
    except Exception as exc:
        raise DataplaneError(f"no listener in {namespace}: {exc!r}") from exc


class Relay:
    """Connections to a listener in the node namespace, forwarded to 127.0.0.1:port here."""

    def __init__(self, listener: socket.socket, port: int) -> None:
        self.listener = listener
        self.port = port
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)

    @property
    def listen_port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(timeout=STOP_GRACE_S)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            with self._lock:
                self._sockets.update((inner, outer))
            for source, sink in ((inner, outer), (outer, inner)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` into ``sink`` until it ends, then end ``sink``'s writing side."""
    try:
        while data := source.recv(RELAY_BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@dataclass
class Host:
    """A network namespace on a veth into the node namespace, with one address."""

    namespace: str
    address: str
    veth: str


class Dataplane:
    """The node namespace, kube-router in it, and pods as namespaces (a ``PodNetwork``)."""

    def __init__(
        self,
        *,
        api_port: int,
        kubeconfig: Mapping[str, Any],
        work_dir: Path,
        node_name: str = DEFAULT_NODE_NAME,
        node_ip: str = DEFAULT_NODE_IP,
        pod_cidr: str = "10.88.0.0/16",
    ) -> None:
        """``kubeconfig``: credentials kube-router uses (its server is replaced by the relay)."""
        self.binary = check_prerequisites()
        self.api_port = api_port
        self.kubeconfig = kubeconfig
        self.work_dir = work_dir
        self.node_name = node_name
        self.node_ip = node_ip
        self.prefix = f"acnp{secrets.token_hex(2)}"
        self.node = f"{self.prefix}node"
        self._addresses = CidrPodNetwork(pod_cidr, exclude=(node_ip,))
        self._pods: dict[tuple[str, str, str], Host] = {}
        self._hosts: list[Host] = []
        self._count = 0
        self._lock = threading.Lock()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._relay: Relay | None = None
        self.kube_router: subprocess.Popen[bytes] | None = None
        # Called with each pod and its namespace when the pod's app containers start: after
        # its init containers (which run in its namespace), before the kubelet reports it
        # running; for a pod without init containers, right after its namespace is plumbed.
        self.on_containers_start: Callable[[Mapping[str, Any], Host], None] | None = None

    # -- the node

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        run("ip", "netns", "add", self.node)
        run("ip", "-n", self.node, "link", "set", "lo", "up")
        run("ip", "-n", self.node, "addr", "add", f"{self.node_ip}/32", "dev", "lo")
        self.sysctl(self.node, "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0")
        self._relay = Relay(listener_in(self.node), self.api_port)
        self._relay.start()
        self.kube_router = self._start_kube_router()

    def sysctl(self, namespace: str, *settings: str) -> None:
        """Sysctls of ``namespace`` only (``ip netns exec`` runs sysctl inside it)."""
        run("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", *settings)

    def _start_kube_router(self) -> subprocess.Popen[bytes]:
        assert self._relay is not None
        config = dict(self.kubeconfig)
        config["clusters"] = [
            {**cluster, "cluster": {**cluster["cluster"], "server": self._relay_url()}}
            for cluster in config["clusters"]
        ]
        path = self.work_dir / "kube-router.kubeconfig"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        path.chmod(0o600)
        log = (self.work_dir / "kube-router.log").open("wb")
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.node,
                str(self.binary),
                f"--kubeconfig={path}",
                f"--hostname-override={self.node_name}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-ipv6=false",
                "--health-port=0",
                "--iptables-sync-period=5m",
                "-v=1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_NAME": self.node_name},
            start_new_session=True,
        )
        log.close()
        self._processes.append(process)
        return process

    def _relay_url(self) -> str:
        assert self._relay is not None
        return f"https://127.0.0.1:{self._relay.listen_port}"

    def kube_router_log(self) -> str:
        path = self.work_dir / "kube-router.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_kube_router(self, timeout_s: float = KUBE_ROUTER_START_S) -> None:
        """Until kube-router has programmed its chains (or fails, with its log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.kube_router is not None
            if self.kube_router.poll() is not None:
                raise DataplaneError(
                    f"kube-router exited {self.kube_router.returncode}:\n"
                    f"{self.kube_router_log()[-3000:]}"
                )
            rules = run("ip", "netns", "exec", self.node, "iptables-save", "-t", "filter")
            if "KUBE-ROUTER-FORWARD" in rules:
                return
            time.sleep(0.2)
        raise DataplaneError(
            f"kube-router programmed nothing in {timeout_s:.0f}s:\n{self.kube_router_log()[-3000:]}"
        )

    # -- namespaces on veths

    def add_host(self, address: str) -> Host:
        """An "external" host (any address outside the pod CIDR) the test can send to."""
        host = self._plug(address)
        with self._lock:
            self._hosts.append(host)
        return host

    def _plug(self, address: str) -> Host:
        ipaddress.ip_address(address)
        with self._lock:
            self._count += 1
            number = self._count
        host = Host(
            namespace=f"{self.prefix}p{number}", address=address, veth=f"{self.prefix}v{number}"
        )
        run("ip", "netns", "add", host.namespace)
        run(
            "ip", "-n", self.node, "link", "add", host.veth, "type", "veth",
            "peer", "name", "eth0", "netns", host.namespace,
        )  # fmt: skip
        run("ip", "-n", host.namespace, "link", "set", "lo", "up")
        run("ip", "-n", host.namespace, "addr", "add", f"{address}/32", "dev", "eth0")
        run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
        run("ip", "-n", host.namespace, "route", "add", self.node_ip, "dev", "eth0")
        run("ip", "-n", host.namespace, "route", "add", "default", "via", self.node_ip)
        run("ip", "-n", self.node, "link", "set", host.veth, "up")
        run("ip", "-n", self.node, "route", "add", f"{address}/32", "dev", host.veth)
        return host

    def _unplug(self, host: Host) -> None:
        # The veth goes with the pod's namespace; its /32 route with the veth.
        with contextlib.suppress(DataplaneError):
            run("ip", "netns", "del", host.namespace)

    # -- PodNetwork

    def attach(self, pod: Mapping[str, Any]) -> str:
        key = pod_key(pod)
        with self._lock:
            known = self._pods.get(key)
        if known is not None:
            return known.address
        host = self._plug(self._addresses.attach(pod))
        with self._lock:
            self._pods[key] = host
        return host.address

    def command_prefix(self, pod: Mapping[str, Any]) -> list[str]:
        """``ip netns exec <the pod's namespace>``: a process in the pod's network."""
        with self._lock:
            host = self._pods.get(pod_key(pod))
        if host is None:
            namespace, name, _ = pod_key(pod)
            raise DataplaneError(f"no network namespace for pod {namespace}/{name}")
        return ["ip", "netns", "exec", host.namespace]

    def containers_started(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            host = self._pods.get(pod_key(pod))
        if host is not None and self.on_containers_start is not None:
            self.on_containers_start(pod, host)

    def detach(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            host = self._pods.pop(pod_key(pod), None)
        if host is not None:
            self._unplug(host)
            self._addresses.detach(pod)

    def pod(self, namespace: str, name: str) -> Host:
        with self._lock:
            for (pod_namespace, pod_name, _), host in self._pods.items():
                if (pod_namespace, pod_name) == (namespace, name):
                    return host
        raise KeyError(f"no network namespace for pod {namespace}/{name}")

    # -- traffic

    def serve(self, host: Host, name: str, *ports: int | str) -> None:
        """A server in ``host``'s namespace answering ``name`` on each port (``53/udp``: UDP)."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, sys.executable, "-c", SERVER, name]
            + [str(port) for port in ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if line != "listening":
            raise DataplaneError(f"server {name} in {host.namespace} did not start: {line!r}")

    def probe(self, source: Host, address: str, port: int, protocol: str = "tcp") -> str:
        """What a connection (``protocol`` tcp or udp) from ``source`` to address:port reads:
        the server's name, or ``no: <reason>``."""
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                source.namespace,
                sys.executable,
                "-c",
                PROBE,
                address,
                str(port),
                protocol,
                str(PROBE_TIMEOUT_S),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout.strip() or f"no: probe failed {result.stderr.strip()!r}"

    def prober(self, source: Host, address: str, port: int, seconds: float) -> Callable[[], Probed]:
        """Starts connecting from ``source`` to address:port again and again for ``seconds``;
        returns once the first attempt is under way. Call the result for what it saw."""
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                source.namespace,
                sys.executable,
                "-c",
                PROBER,
                address,
                str(port),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(process)
        assert process.stdout is not None
        stdout = process.stdout
        if stdout.readline().decode().strip() != "go":
            raise DataplaneError(f"prober in {source.namespace} did not start")

        def result() -> Probed:
            through, refused, first, last = stdout.readline().decode().split()
            process.wait(timeout=STOP_GRACE_S)
            return Probed(
                through=int(through),
                refused=int(refused),
                first_through_s=None if first == "None" else float(first),
                last_through_s=None if last == "None" else float(last),
            )

        return result

    # -- teardown

    def stop(self) -> None:
        """Every process started here (by PID), then every namespace created here."""
        for process in reversed(self._processes):
            stop_process(process)
        self._processes.clear()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        with self._lock:
            hosts = [*self._pods.values(), *self._hosts]
            self._pods.clear()
            self._hosts.clear()
        for host in hosts:
            self._unplug(host)
        if (NETNS_DIR / self.node).exists():
            with contextlib.suppress(DataplaneError):
                run("ip", "netns", "del", self.node)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """A process started here in a session of its own: its group stopped, its pipe closed."""
    stop_process_group(process, name=f"process {process.pid}", grace_s=STOP_GRACE_S)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def running_node(
    control_plane: ControlPlane, work_dir: Path
) -> Iterator[tuple[Dataplane, FakeKubelet]]:
    """The node namespace with kube-router enforcing, and the fake kubelet running pods on it
    (the dataplane tier's and its benchmark's); everything stopped and removed on leaving.
    ``DataplaneError`` says what this machine lacks."""
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    kubeconfig = yaml.safe_load(control_plane.admin_kubeconfig.read_text(encoding="utf-8"))
    work_dir.mkdir(parents=True, exist_ok=True)
    plane = Dataplane(api_port=control_plane.api_port, kubeconfig=kubeconfig, work_dir=work_dir)
    api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    try:
        plane.start()
        with FakeKubelet(
            CoreV1Api(api_client), node_name=plane.node_name, node_ip=plane.node_ip, network=plane
        ) as kubelet:
            plane.wait_kube_router()
            yield plane, kubelet
    finally:
        plane.stop()
        api_client.close()
