"""``dev --dataplane``: the playground's pods are network namespaces, its policies stop packets.

Built on ``agentcube_netpol_dev.dataplane.Dataplane`` (the node namespace, kube-router, a
namespace per pod). ``DevNetwork`` is the fake kubelet's ``PodNetwork`` on it, and adds what
a newcomer needs to see a policy at work:

- "external" hosts on the dataplane (``EXTERNAL_HOSTS``), each a namespace with a tiny HTTP
  server that answers ``hello from <address>``: one in the CIDR examples/dev/warm-pool.yaml
  allows on 443 (answering on 443 and 80), one outside it, and a stand-in for the cloud
  metadata address;
- the same server in every pod's namespace, on ``POD_PORT`` (``hello from pod NS/NAME``);
- for every pod, when it starts and whenever the NetworkPolicies that select it change (a
  claim labels a warm pod, the reconciler writes its policy), the commands to try from it:
  ``ip netns exec <its namespace> curl ...`` to each external destination, each marked
  ``allowed`` or ``refused`` by what those NetworkPolicies say (``egress_allowed``: pure).

Every server is stopped by its PID when its pod goes or the playground stops; the
namespaces go with ``Dataplane.stop()``. Nothing here touches the host's network.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from agentcube_netpol_dev.dataplane import Dataplane, DataplaneError, stop_process
from agentcube_netpol_dev.kubelet import PodKey, pod_key
from webhook.api import kinds
from webhook.kube.rest import Rest
from webhook.policy.cidr import CidrProblem, parse_cidr, reaches
from webhook.policy.selectors import selector_matches

logger = logging.getLogger(__name__)

POD_PORT = 8080
POLL_INTERVAL_S = 1.0
STOP_GRACE_S = 5.0
CURL_TIMEOUT_S = 2

# Answers every HTTP request (any path, any method) on each port given with 200 and
# ``<argv[1]>\n``; prints "listening" once every port is bound.
HTTP_SERVER = r"""
import socket, sys, threading
body = (sys.argv[1] + "\n").encode()
reply = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
def answer(conn):
    with conn:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(reply)
        except OSError:
            pass
def accept(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()
for port in sys.argv[2:]:
    listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(port))); listener.listen(64)
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""


@dataclass(frozen=True)
class Destination:
    """An address and TCP port a pod can try, and what it is."""

    address: str
    port: int
    about: str

    @property
    def url(self) -> str:
        port = "" if self.port == 80 else f":{self.port}"
        return f"http://{self.address}{port}/"


ALLOWED_HOST = "192.0.2.10"  # in 192.0.2.0/24, which examples/dev/warm-pool.yaml allows on 443
FORBIDDEN_HOST = "198.51.100.10"  # outside it
METADATA_HOST = "169.254.169.254"  # a stand-in for the cloud metadata address
EXTERNAL_HOSTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    (ALLOWED_HOST, (443, 80)),
    (FORBIDDEN_HOST, (443,)),
    (METADATA_HOST, (80,)),
)
# The playground's DNS server (``dev`` starts it; ``run`` resolves egress domains with it):
# a name for each host outside, one that domains.yaml lists and one it does not.
ALLOWED_NAME = "pypi.dev.test"
FORBIDDEN_NAME = "evil.dev.test"
DNS_NAMES: tuple[tuple[str, str], ...] = (
    (ALLOWED_NAME, ALLOWED_HOST),
    (FORBIDDEN_NAME, FORBIDDEN_HOST),
)
DESTINATIONS = (
    Destination(
        ALLOWED_HOST, 443, f"{ALLOWED_NAME}, in 192.0.2.0/24, on 443: the examples' egress"
    ),
    Destination(ALLOWED_HOST, 80, "same host, another port"),
    Destination(FORBIDDEN_HOST, 443, f"{FORBIDDEN_NAME}: another CIDR, another name"),
    Destination(METADATA_HOST, 80, "the metadata address"),
)


# --- what the NetworkPolicies say (pure) -----------------------------------------------------


def selecting(
    policies: Sequence[Mapping[str, Any]], namespace: str, labels: Mapping[str, str]
) -> list[Mapping[str, Any]]:
    """The NetworkPolicies that select a pod of ``namespace`` with ``labels``."""
    return [
        policy
        for policy in policies
        if (policy.get("metadata") or {}).get("namespace") == namespace
        and selector_matches((policy.get("spec") or {}).get("podSelector") or {}, labels)
    ]


def isolates_egress(policy: Mapping[str, Any]) -> bool:
    """Whether ``policy`` isolates the pods it selects for egress (with no policyTypes, only
    when it has egress rules, as kube-apiserver defaults them)."""
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    if types is None:
        return "egress" in spec
    return "Egress" in types


def _peer_has(peer: Mapping[str, Any], address: str) -> bool:
    """An ipBlock peer holding ``address``; pod and namespace selectors hold pods, not hosts
    outside the cluster."""
    block = peer.get("ipBlock")
    if not isinstance(block, Mapping):
        return False
    cidr = parse_cidr(block.get("cidr"))
    excepts = [parse_cidr(text) for text in block.get("except") or []]
    if isinstance(cidr, CidrProblem):
        return False
    return reaches(cidr, [e for e in excepts if not isinstance(e, CidrProblem)], address)


def _port_has(entry: Mapping[str, Any], port: int, protocol: str) -> bool:
    if str(entry.get("protocol") or "TCP") != protocol:
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True
    if not isinstance(wanted, int):
        return False  # a named port: a host outside the cluster has none
    end = entry.get("endPort")
    return wanted <= port <= (end if isinstance(end, int) else wanted)


def egress_allowed(
    policies: Sequence[Mapping[str, Any]],
    namespace: str,
    labels: Mapping[str, str],
    *,
    address: str,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether NetworkPolicies ``policies`` let a pod of ``namespace`` with ``labels`` open a
    connection to ``address``:``port``, an address outside the cluster's pods. A pod that no
    egress-isolating policy selects is open; otherwise some rule of one must allow it."""
    isolating = [p for p in selecting(policies, namespace, labels) if isolates_egress(p)]
    if not isolating:
        return True
    for policy in isolating:
        for rule in (policy.get("spec") or {}).get("egress") or []:
            peers = rule.get("to") or []
            ports = rule.get("ports") or []
            if peers and not any(_peer_has(peer, address) for peer in peers):
                continue
            if ports and not any(_port_has(entry, port, protocol) for entry in ports):
                continue
            return True
    return False


def try_command(namespace: str, url: str, curl: str | None) -> str:
    """The shell command that fetches ``url`` from network namespace ``namespace``: curl if
    there is one, else this Python's urllib."""
    if curl is not None:
        return shlex.join(["ip", "netns", "exec", namespace, "curl", "-sS", "-m", str(CURL_TIMEOUT_S), url])  # fmt: skip
    fetch = (
        "import sys, urllib.request; "
        f"print(urllib.request.urlopen(sys.argv[1], timeout={CURL_TIMEOUT_S}).read().decode(), end='')"
    )
    return shlex.join(["ip", "netns", "exec", namespace, sys.executable, "-c", fetch, url])


@dataclass(frozen=True)
class PodView:
    """What is printed for one pod: the NetworkPolicies that select it, and for each
    destination whether they allow it."""

    policies: tuple[str, ...]
    allowed: tuple[bool, ...]


def pod_view(
    policies: Sequence[Mapping[str, Any]], namespace: str, labels: Mapping[str, str]
) -> PodView:
    return PodView(
        policies=tuple(
            sorted(str(p["metadata"]["name"]) for p in selecting(policies, namespace, labels))
        ),
        allowed=tuple(
            egress_allowed(policies, namespace, labels, address=d.address, port=d.port)
            for d in DESTINATIONS
        ),
    )


def try_lines(
    *,
    pod: str,
    address: str,
    network_namespace: str,
    view: PodView,
    first: bool,
    curl: str | None,
) -> list[str]:
    """The lines printed for a pod: where it runs, what selects it, what to try."""
    if first:
        head = (
            f"pod {pod} runs: network namespace {network_namespace}, IP {address}, "
            f"answering http on :{POD_PORT}"
        )
    else:
        head = f"pod {pod} ({network_namespace}): the NetworkPolicies that select it changed"
    if view.policies:
        selected = (
            f"  selected by NetworkPolicy {', '.join(view.policies)}; "
            "kube-router enforces it within seconds. Try:"
        )
    else:
        selected = "  selected by no NetworkPolicy: not isolated. Try:"
    lines = [head, selected]
    commands = [try_command(network_namespace, d.url, curl) for d in DESTINATIONS]
    width = max(len(command) for command in commands)
    for destination, allowed, command in zip(DESTINATIONS, view.allowed, commands, strict=True):
        verdict = "allowed" if allowed else "refused"
        lines.append(f"  {verdict}  {command:<{width}}  # {destination.about}")
    return lines


# --- the PodNetwork and its servers ----------------------------------------------------------


@dataclass
class _Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    address: str
    network_namespace: str
    server: subprocess.Popen[bytes] | None
    printed: PodView | None = None


class DevNetwork:
    """The fake kubelet's ``PodNetwork`` for ``dev --dataplane``: pods on ``dataplane``, each
    with a server, external hosts with theirs, and what to try printed to ``stdout``."""

    def __init__(
        self, dataplane: Dataplane, rest: Rest, stdout: TextIO, *, curl: str | None = None
    ) -> None:
        self.dataplane = dataplane
        self.rest = rest
        self.stdout = stdout
        self.curl = curl if curl is not None else shutil.which("curl")
        self._pods: dict[PodKey, _Pod] = {}
        self._servers: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Waits for kube-router, starts the external hosts, then follows the policies."""
        self.dataplane.wait_kube_router()
        for address, ports in EXTERNAL_HOSTS:
            host = self.dataplane.add_host(address)
            self._servers.append(self._serve(host.namespace, f"hello from {address}", ports))
        self._thread = threading.Thread(target=self._follow, name="dev-dataplane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The policy follower, then every server (by PID). The namespaces are the
        dataplane's to remove."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_GRACE_S)
            self._thread = None
        with self._lock:
            servers = [*self._servers, *(p.server for p in self._pods.values() if p.server)]
            self._servers.clear()
            self._pods.clear()
        for server in servers:
            stop_process(server)

    # -- PodNetwork

    def attach(self, pod: Mapping[str, Any]) -> str:
        address = self.dataplane.attach(pod)
        key = pod_key(pod)
        labels = {
            str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()
        }
        with self._lock:
            known = self._pods.get(key)
            if known is not None:
                known.labels = labels  # a claim labels a warm pod: its policies may change
                return address
        namespace, name, _ = key
        host = self.dataplane.pod(namespace, name)
        server = self._serve(host.namespace, f"hello from pod {namespace}/{name}", (POD_PORT,))
        with self._lock:
            self._pods[key] = _Pod(name, namespace, labels, address, host.namespace, server)
        return address

    def detach(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            known = self._pods.pop(pod_key(pod), None)
        if known is not None and known.server is not None:
            stop_process(known.server)  # before its namespace goes: nothing keeps it alive
        self.dataplane.detach(pod)

    def command_prefix(self, pod: Mapping[str, Any]) -> list[str] | None:
        return self.dataplane.command_prefix(pod)

    def containers_started(self, pod: Mapping[str, Any]) -> None:
        self.dataplane.containers_started(pod)

    # -- printing what to try

    def _follow(self) -> None:
        while not self._stopping.wait(POLL_INTERVAL_S):
            try:
                policies = self.rest.list(kinds.NETWORK_POLICY)["items"]
            except Exception as exc:  # the API server stopping, say: try again
                logger.debug("dev dataplane: no NetworkPolicies listed: %s", exc)
                continue
            self.print_changes(policies)

    def print_changes(self, policies: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            view = pod_view(policies, pod.namespace, pod.labels)
            if view == pod.printed:
                continue
            lines = try_lines(
                pod=f"{pod.namespace}/{pod.name}",
                address=pod.address,
                network_namespace=pod.network_namespace,
                view=view,
                first=pod.printed is None,
                curl=self.curl,
            )
            pod.printed = view
            self.stdout.write("\n".join(lines) + "\n")
            self.stdout.flush()

    def _serve(self, namespace: str, answer: str, ports: Sequence[int]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", HTTP_SERVER, answer]
            + [str(port) for port in ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if line != "listening":
            stop_process(process)
            raise DataplaneError(f"server in {namespace} did not start: {line!r}")
        return process
