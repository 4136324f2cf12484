"""Egress by domain name on packets: kube-router enforcing what `run` resolved.

A module of its own control plane and node (the dataplane tier: pods are network
namespaces, kube-router's firewall enforces the NetworkPolicies). The cluster's DNS is a
pod in kube-system labelled ``k8s-app=kube-dns`` (the peer every Restricted policy's DNS
rule allows) running a DNS server of the test's own; ``run`` asks the same server, and so
sees the answers the sandboxes get. Every address is one this module created inside its
namespaces; nothing crosses to the host's network.

A sandbox allowed ``pypi.test`` on TCP 443: it resolves the name through the cluster DNS,
reaches that host on 443 and not on another port, not another host, not a host whose name
is not listed. The test changes the answer: the new address works within the TTL plus a
sync, the old one keeps working until the grace window ends and is refused after it. The
invariant checker records throughout and finds no breach.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds
from agentcube_netpol_dev.dataplane import (
    Dataplane,
    Host,
    socket_in,
)
from agentcube_netpol_dev.testdns import DnsServer

from tests.e2e.deployed import deploy_manifests, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.invariant import Recorder, breaches, domain_policy_within
from tests.e2e.test_dataplane import (
    Probe,
    plain_pod,
    running_pod,
    sandbox_in,
    wait_until_as,
)
from tests.e2e.test_reconciler import grant_agentcube, start_run
from webhook.api import kinds
from webhook.kube.rest import Rest

TTL_FLOOR_S, TTL_CEILING_S, GRACE_S = 1, 2, 6
PORT, OTHER_PORT = 443, 8443
FIRST, SECOND = "203.0.113.7", "203.0.113.8"  # pypi.test, before and after the rotation
UNLISTED = "198.51.100.10"  # evil.test: a name the policy does not list
POLICY = {
    "mode": "Restricted",
    "egress": [{"domains": ["pypi.test"], "ports": [{"protocol": "TCP", "port": PORT}]}],
}
# Run in a pod's namespace: ask the cluster DNS for a name, print the addresses or "no: ...".
RESOLVE = r"""
import sys, dns.resolver
server, name = sys.argv[1], sys.argv[2]
r = dns.resolver.Resolver(configure=False); r.nameservers = [server]; r.lifetime = 2.0
try:
    print(" ".join(sorted(a.address for a in r.resolve(name, "A", search=False))))
except Exception as exc:
    print(f"no: {exc!r}")
"""


@pytest.fixture(scope="module")
def cluster(binaries: Binaries) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries) as control_plane:
        install_crds(control_plane, CRD_DIR)
        yield control_plane


@pytest.fixture(scope="module")
def kube(cluster: ControlPlane) -> Kubectl:
    kubectl = Kubectl(cluster)
    grant_agentcube(kubectl)
    return kubectl


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.set("pypi.test", a=[FIRST], ttl=1)
        server.set("evil.test", a=[UNLISTED], ttl=1)
        yield server


@pytest.fixture(scope="module")
def run(
    cluster: ControlPlane, kube: Kubectl, dns: DnsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookServer]:
    manifests = deploy_manifests(cluster)
    service_account = install_rbac(cluster, manifests)
    server = start_run(
        cluster, service_account, tmp_path_factory.mktemp("run"),
        f"--dns-server={dns.address}",
        f"--domain-ttl-floor={TTL_FLOOR_S}",
        f"--domain-ttl-ceiling={TTL_CEILING_S}",
        f"--domain-grace={GRACE_S}",
    )  # fmt: skip
    install_webhooks(cluster, manifests, base_url=server.url, ca_pem=server.ca_pem)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster_dns(kube: Kubectl, dataplane: Dataplane, dns: DnsServer) -> Host:
    """The cluster's DNS: a kube-dns pod whose namespace the test's DNS server answers in."""
    kube.ok(
        "create", "-f", "-",
        input=as_json(plain_pod("kube-system", "coredns", {"k8s-app": "kube-dns"})),
    )  # fmt: skip
    pod = running_pod(kube, dataplane, "kube-system", "coredns")

    def udp() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 53))
        return sock

    def tcp() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 53))
        sock.listen(16)
        return sock

    dns.add_listeners(socket_in(pod.namespace, udp), socket_in(pod.namespace, tcp))
    return pod


@pytest.fixture(scope="module")
def hosts(dataplane: Dataplane) -> None:
    for address, name, ports in (
        (FIRST, "pypi-first", (PORT, OTHER_PORT)),
        (SECOND, "pypi-second", (PORT,)),
        (UNLISTED, "evil", (PORT,)),
    ):
        dataplane.serve(dataplane.add_host(address), name, *ports)


def resolve_in(pod: Host, server: str, name: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", pod.namespace, sys.executable, "-c", RESOLVE, server, name],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.stdout.strip() or f"no: {result.stderr.strip()!r}"


@pytest.mark.usefixtures("run", "hosts")
def test_a_sandbox_reaches_the_named_host_only_and_follows_a_rotation(
    kube: Kubectl,
    dataplane: Dataplane,
    dns: DnsServer,
    cluster_dns: Host,
    cluster: ControlPlane,
) -> None:
    recorder = Recorder(Rest.from_config(cluster.admin_kubeconfig))
    recorder.start()
    box = sandbox_in(kube, dataplane, "tenant-a", POLICY, 8080)
    try:
        # The sandbox resolves through the cluster DNS (its policy's DNS rule) as pods do.
        assert resolve_in(box, cluster_dns.address, "pypi.test") == FIRST
        assert resolve_in(box, cluster_dns.address, "evil.test") == UNLISTED
        before = {
            "the named host, allowed port": Probe(box, FIRST, PORT, "pypi-first"),
            "the named host, another port": Probe(box, FIRST, OTHER_PORT, None),
            "another host the name does not answer": Probe(box, SECOND, PORT, None),
            "a host whose name is not listed": Probe(box, UNLISTED, PORT, None),
        }
        wait_until_as(dataplane, before, "pypi.test's first address allowed, nothing else")

        dns.set("pypi.test", a=[SECOND], ttl=1)
        rotated = time.monotonic()
        assert resolve_in(box, cluster_dns.address, "pypi.test") == SECOND
        during = {
            "the new address": Probe(box, SECOND, PORT, "pypi-second"),
            "the old address, within the grace window": Probe(box, FIRST, PORT, "pypi-first"),
            "a host whose name is not listed": Probe(box, UNLISTED, PORT, None),
        }
        wait_until_as(dataplane, during, "the new address allowed, the old one kept")
        new_works_s = time.monotonic() - rotated
        old_still_works = dataplane.probe(box, FIRST, PORT)
        old_still_s = time.monotonic() - rotated
        after = {
            "the new address": Probe(box, SECOND, PORT, "pypi-second"),
            "the old address, after the grace window": Probe(box, FIRST, PORT, None),
        }
        wait_until_as(dataplane, after, "the old address refused once the grace ended")
        old_refused_s = time.monotonic() - rotated
    finally:
        dns.set("pypi.test", a=[FIRST], ttl=1)
        events = recorder.stop()

    assert new_works_s < TTL_CEILING_S + 10  # the TTL, a reconcile, kube-router's sync
    if old_still_s < GRACE_S - 2:
        assert old_still_works == "pypi-first"
    assert old_refused_s > GRACE_S - TTL_CEILING_S  # never before its grace window
    found = breaches(
        [e for e in events if e[3]["metadata"].get("namespace") == "tenant-a"],
        allowed_specs=lambda pod: [
            e[3]["spec"]
            for e in events
            if e[1] == "NetworkPolicy"
            and e[3]["metadata"]["name"] == "py-abcd1234"
            and e[3]["metadata"].get("namespace") == "tenant-a"
        ],
        also_allowed=lambda pod, policy: domain_policy_within(
            policy, {FIRST, SECOND}, [{"protocol": "TCP", "port": PORT}]
        ),
    )
    assert found == []
    own = kube.get("networkpolicy", "py-abcd1234", "-n", "tenant-a")
    assert kinds.LABEL_DOMAIN_SET in own["metadata"]["labels"]
    print(
        f"\npypi.test rotated: new address reachable after {new_works_s:.1f}s, "
        f"old refused after {old_refused_s:.1f}s (grace {GRACE_S}s)"
    )
