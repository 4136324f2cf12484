"""The NetworkPolicies `run` writes, enforced at the packet level by kube-router's
network-policy controller on pods that are network namespaces (devkit/agentcube_netpol_dev/dataplane.py).

A module of its own control plane, with the fake kubelet's pods on the dataplane. Every
address a probe sends to is a namespace this module created; probes start only in pod
namespaces (kube-router always lets the node itself through). Without root, iptables,
ipset or the kube-router build, the tier FAILS with the reason: it never skips.

Most tests play agent-sandbox's Sandbox controller by hand (they create a Sandbox's pod);
the last one starts the real agent-sandbox controller (warm pool, claim, adoption) on this
cluster, so it must stay last: that controller would make those pods itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild, AgentSandboxController
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds
from agentcube_netpol_dev.dataplane import Dataplane, Host, Probed
from agentcube_netpol_dev.kubelet import FakeKubelet

from tests.e2e.deployed import deploy_manifests, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, agent_sandbox_running, as_json
from tests.e2e.test_admission import SANDBOXES, assert_override_denied, grant_tenant
from tests.e2e.test_reconciler import (
    AGENTCUBE,
    audit,
    desired,
    eventually,
    grant_agentcube,
    interpreter,
    policy_of,
    sandbox,
    sandbox_pod,
    start_run,
)
from tests.e2e.test_reconciler import RESTRICTED as WARM_POOL_POLICY
from tests.e2e.test_reconciler_warm_path import Warm, adopted_pod, claim_session, warm_pool
from webhook.api import kinds
from webhook.kube.rest import Rest
from webhook.reconciler.agentsandbox import name_hash

WAIT_S = 60.0
POLL_S = 0.3
PROBE_S = 15.0  # the warm path's probers: from before the claim until well after
ALLOWED_HOST = "203.0.113.10"  # inside the allowed CIDR
ALLOWED_PORT = 443
OTHER_PORT = 8443  # same host, a port outside the list
FORBIDDEN_HOST = "198.51.100.10"  # outside every allowed CIDR
EXCEPTED_HOST = "203.0.113.200"  # inside the allowed CIDR, in its except range (both modes)
# Inside WARM_POOL_POLICY's CIDR (10.8.0.0/16, port 443): the policy warm_pool() sets.
WARM_ALLOWED_HOST = "10.8.0.10"
SANDBOX_PORT = 8080
METADATA = "169.254.169.254"  # a stand-in for the cloud metadata address
# As deploy/README.md says to run it: every direct-path sandbox pod is held by the
# netpol-wait-isolated init container until its policy refuses this address (the fake
# kubelet runs that container, our own program, in the pod's namespace).
CANARY = f"{FORBIDDEN_HOST}:{ALLOWED_PORT}"
ISOLATION_CANARY_ARGS = (
    f"--isolation-canary={CANARY}",
    "--isolation-canary-image=agentcube-netpol:e2e",
)
RESTRICTED = {
    "mode": "Restricted",
    "egress": [
        {
            "cidrs": ["203.0.113.0/24"],
            "except": ["203.0.113.192/26"],
            "ports": [{"protocol": "TCP", "port": ALLOWED_PORT}],
        }
    ],
}


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
def run(
    cluster: ControlPlane, kube: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookServer]:
    manifests = deploy_manifests(cluster)
    service_account = install_rbac(cluster, manifests)
    server = start_run(
        cluster, service_account, tmp_path_factory.mktemp("run"), *ISOLATION_CANARY_ARGS
    )
    install_webhooks(cluster, manifests, base_url=server.url, ca_pem=server.ca_pem)
    try:
        yield server
    finally:
        server.stop()


def eventually_true(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(POLL_S)
    return False


def running_pod(kube: Kubectl, dataplane: Dataplane, ns: str, name: str) -> Host:
    """The pod's namespace, once the fake kubelet runs it (after its gate, if any, came off)."""

    def ip() -> str | None:
        status = kube.get("pod", name, "-n", ns).get("status") or {}
        return status.get("podIP") if status.get("phase") == "Running" else None

    address = eventually(ip, f"pod {ns}/{name} to run", WAIT_S)
    host = dataplane.pod(ns, name)
    assert host.address == address
    return host


@dataclass(frozen=True)
class Probe:
    """From ``source`` to address:port: the server's name that comes back, or None."""

    source: Host
    address: str
    port: int
    answer: str | None
    protocol: str = "tcp"


def plain_pod(ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


def pods_serving(
    kube: Kubectl, dataplane: Dataplane, ns: str, *pods: tuple[str, dict[str, str], str]
) -> list[Host]:
    """Plain pods (name, labels, what each answers on SANDBOX_PORT), once they run."""
    for name, labels, _ in pods:
        kube.ok("create", "-f", "-", input=as_json(plain_pod(ns, name, labels)))
    hosts = [running_pod(kube, dataplane, ns, name) for name, _, _ in pods]
    for host, (_, _, answer) in zip(hosts, pods, strict=True):
        dataplane.serve(host, answer, SANDBOX_PORT)
    return hosts


def sandbox_in(kube: Kubectl, dataplane: Dataplane, ns: str, policy: Any, *ports: int) -> Host:
    """A CodeInterpreter with ``policy`` in a new namespace ``ns``, a Sandbox of it as
    AgentCube makes it and its pod as agent-sandbox makes it; once it runs, answering
    "sandbox" on each of ``ports``."""
    kube.ok("create", "namespace", ns)
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, policy=policy)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    kube.ok("create", "-f", "-", input=as_json(sandbox_pod(ns, created)))
    box = running_pod(kube, dataplane, ns, "py-abcd1234")
    dataplane.serve(box, "sandbox", *ports)
    return box


@dataclass(frozen=True)
class SystemPods:
    """Cluster DNS (kube-system, ``k8s-app=kube-dns``: 53/UDP, 53/TCP and 80), AgentCube's
    router and workload manager and another pod of its namespace."""

    dns: Host
    router: Host
    manager: Host
    not_router: Host


@pytest.fixture(scope="module")
def system_pods(kube: Kubectl, dataplane: Dataplane) -> SystemPods:
    kube.ok("create", "namespace", "agentcube")
    kube.ok(
        "create", "-f", "-", input=as_json(plain_pod("kube-system", "dns", {"k8s-app": "kube-dns"}))
    )
    dns = running_pod(kube, dataplane, "kube-system", "dns")
    dataplane.serve(dns, "kube-dns", "53/udp", 53, 80)
    router, manager, not_router = pods_serving(
        kube, dataplane, "agentcube",
        ("router", {"app": "agentcube-router"}, "router"),
        ("workload-manager", {"app": "workloadmanager"}, "workload-manager"),
        ("not-router", {"app": "something-else"}, "not-router"),
    )  # fmt: skip
    return SystemPods(dns, router, manager, not_router)


@pytest.fixture(scope="module")
def externals(dataplane: Dataplane) -> None:
    """Hosts outside the cluster, each a namespace answering its name: one inside the
    allowed CIDR (on the allowed port and another), one outside it, the metadata stand-in."""
    for address, name, ports in (
        (ALLOWED_HOST, "allowed", (ALLOWED_PORT, OTHER_PORT)),
        (EXCEPTED_HOST, "excepted", (ALLOWED_PORT,)),
        (FORBIDDEN_HOST, "forbidden", (ALLOWED_PORT,)),
        (WARM_ALLOWED_HOST, "warm-allowed", (ALLOWED_PORT,)),
        (METADATA, "metadata", (80,)),
    ):
        dataplane.serve(dataplane.add_host(address), name, *ports)


def outcomes(dataplane: Dataplane, want: dict[str, Probe]) -> dict[str, str | None]:
    seen: dict[str, str | None] = {}
    for what, probe in want.items():
        answer = dataplane.probe(probe.source, probe.address, probe.port, probe.protocol)
        seen[what] = None if answer.startswith("no: ") else answer
    return seen


def wait_until_as(dataplane: Dataplane, want: dict[str, Probe], why: str) -> float:
    """Until every probe comes back as ``want`` says (kube-router programs a policy some
    time after it changes), then once more: the seconds it took."""
    started = time.monotonic()
    expected = {what: probe.answer for what, probe in want.items()}
    seen: list[dict[str, str | None]] = [{}]

    def as_wanted() -> bool:
        seen[0] = outcomes(dataplane, want)
        return seen[0] == expected

    if not eventually_true(as_wanted, WAIT_S):
        wrong = {what: got for what, got in seen[0].items() if got != expected[what]}
        raise AssertionError(f"{why}: not so after {WAIT_S:.0f}s: {wrong}")
    took = time.monotonic() - started
    assert outcomes(dataplane, want) == expected  # and it holds
    return took


@pytest.mark.usefixtures("run", "externals")
def test_a_restricted_sandbox_reaches_only_what_its_policy_allows(
    kube: Kubectl, dataplane: Dataplane, system_pods: SystemPods
) -> None:
    box = sandbox_in(kube, dataplane, "tenant-a", RESTRICTED, SANDBOX_PORT)
    started = time.monotonic()
    # Another tenant: an isolated sandbox of its own, and a plain pod.
    other_box = sandbox_in(kube, dataplane, "tenant-b", RESTRICTED, SANDBOX_PORT)
    (other_tenant,) = pods_serving(
        kube, dataplane, "tenant-b", ("other-tenant", {"app": "other-tenant"}, "other-tenant")
    )
    # A plain pod beside the sandbox, in its own namespace.
    (neighbour,) = pods_serving(
        kube, dataplane, "tenant-a", ("neighbour", {"app": "neighbour"}, "neighbour")
    )
    dns, router, manager, not_router = (
        system_pods.dns, system_pods.router, system_pods.manager, system_pods.not_router
    )  # fmt: skip
    assert (
        kube.get("networkpolicy", "py-abcd1234", "-n", "tenant-a")["metadata"]["labels"][
            kinds.MANAGED_BY_LABEL
        ]
        == "agentcube-netpol"
    )

    want = {
        "sandbox -> allowed CIDR, allowed port": Probe(box, ALLOWED_HOST, ALLOWED_PORT, "allowed"),
        "sandbox -> allowed CIDR, other port": Probe(box, ALLOWED_HOST, OTHER_PORT, None),
        "sandbox -> other CIDR": Probe(box, FORBIDDEN_HOST, ALLOWED_PORT, None),
        "sandbox -> allowed CIDR's except range": Probe(box, EXCEPTED_HOST, ALLOWED_PORT, None),
        "sandbox -> other tenant's pod": Probe(box, other_tenant.address, SANDBOX_PORT, None),
        "sandbox -> other tenant's sandbox": Probe(box, other_box.address, SANDBOX_PORT, None),
        "other tenant's sandbox -> sandbox": Probe(other_box, box.address, SANDBOX_PORT, None),
        "sandbox -> metadata address": Probe(box, METADATA, 80, None),
        "sandbox -> cluster DNS 53/UDP": Probe(box, dns.address, 53, "kube-dns", "udp"),
        "sandbox -> cluster DNS 53/TCP": Probe(box, dns.address, 53, "kube-dns"),
        "sandbox -> cluster DNS pod, another port": Probe(box, dns.address, 80, None),
        "router -> sandbox": Probe(router, box.address, SANDBOX_PORT, "sandbox"),
        "workload manager -> sandbox": Probe(manager, box.address, SANDBOX_PORT, "sandbox"),
        "other agentcube pod -> sandbox": Probe(not_router, box.address, SANDBOX_PORT, None),
        "other tenant's pod -> sandbox": Probe(other_tenant, box.address, SANDBOX_PORT, None),
        "a pod in its own namespace -> sandbox": Probe(neighbour, box.address, SANDBOX_PORT, None),
        "sandbox -> a pod in its own namespace": Probe(box, neighbour.address, SANDBOX_PORT, None),
        # Controls: the same probes reach unisolated pods, so a "no" above is the policy's.
        "other tenant's pod -> forbidden host": Probe(other_tenant, FORBIDDEN_HOST, ALLOWED_PORT, "forbidden"),
        "other tenant's pod -> except range": Probe(other_tenant, EXCEPTED_HOST, ALLOWED_PORT, "excepted"),
        "other tenant's pod -> metadata address": Probe(other_tenant, METADATA, 80, "metadata"),
        "other tenant's pod -> DNS pod, another port": Probe(other_tenant, dns.address, 80, "kube-dns"),
        "other agentcube pod -> other tenant's pod": Probe(not_router, other_tenant.address, SANDBOX_PORT, "other-tenant"),
        "the pod beside it -> other tenant's pod": Probe(neighbour, other_tenant.address, SANDBOX_PORT, "other-tenant"),
        "other tenant's pod -> the pod beside it": Probe(other_tenant, neighbour.address, SANDBOX_PORT, "neighbour"),
        # ...and each sandbox answers, and sends, where its policy lets it.
        "router -> other tenant's sandbox": Probe(router, other_box.address, SANDBOX_PORT, "sandbox"),
        "other tenant's sandbox -> allowed CIDR": Probe(other_box, ALLOWED_HOST, ALLOWED_PORT, "allowed"),
    }  # fmt: skip

    took = wait_until_as(dataplane, want, "the Restricted policy")
    print(
        f"policy in force {time.monotonic() - started:.1f}s after the sandbox pod ran ({took:.1f}s probing)"
    )


@pytest.mark.usefixtures("run", "externals")
def test_an_override_at_runtime_changes_what_gets_through_and_none_opens(
    kube: Kubectl, dataplane: Dataplane
) -> None:
    kube.ok("create", "namespace", "tenant-c")
    kube.ok("create", "namespace", "tenant-d")
    kube.ok("apply", "-f", "-", input=as_json(interpreter("tenant-c", policy=RESTRICTED)))
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox("tenant-c")))
    )
    kube.ok("create", "-f", "-", input=as_json(sandbox_pod("tenant-c", created)))
    kube.ok("create", "-f", "-", input=as_json(plain_pod("tenant-d", "peer", {"app": "peer"})))
    box = running_pod(kube, dataplane, "tenant-c", "py-abcd1234")
    peer = running_pod(kube, dataplane, "tenant-d", "peer")
    dataplane.serve(peer, "peer", SANDBOX_PORT)

    def probes(allowed: str | None, forbidden: str | None, other: str | None) -> dict[str, Probe]:
        return {
            "sandbox -> 203.0.113.10:443": Probe(box, ALLOWED_HOST, ALLOWED_PORT, allowed),
            "sandbox -> 198.51.100.10:443": Probe(box, FORBIDDEN_HOST, ALLOWED_PORT, forbidden),
            "sandbox -> another tenant's pod": Probe(box, peer.address, SANDBOX_PORT, other),
        }

    wait_until_as(dataplane, probes("allowed", None, None), "the template's policy")

    def canary() -> str:
        pod = kube.get("pod", "py-abcd1234", "-n", "tenant-c")
        return str(pod["metadata"]["annotations"][kinds.ANNOTATION_ISOLATION_CANARY])

    assert canary() == CANARY  # what its init container waited to see refused

    override = {
        "mode": "Restricted",
        "egress": [{"cidrs": ["198.51.100.0/24"], "ports": [{"protocol": "TCP", "port": 443}]}],
    }
    kube.ok(
        "annotate", "sandbox", "py-abcd1234", "-n", "tenant-c",
        f"{kinds.ANNOTATION_NETWORK_POLICY}={json.dumps(override)}", *AGENTCUBE,
    )  # fmt: skip
    # The override replaces the template's policy, whole: the template's CIDR is closed now.
    wait_until_as(dataplane, probes(None, "forbidden", None), "the override")
    # It lets the canary through: were the node to start the pod again, its init container
    # would have nothing to check, and the reconciler says so.
    eventually(lambda: canary() == "", "the canary emptied", WAIT_S)

    kube.ok(
        "annotate", "sandbox", "py-abcd1234", "-n", "tenant-c", "--overwrite",
        f"{kinds.ANNOTATION_NETWORK_POLICY}={json.dumps({'mode': 'None'})}", *AGENTCUBE,
    )  # fmt: skip
    wait_until_as(dataplane, probes("allowed", "forbidden", "peer"), "mode None: open")


CUSTOM = {
    "mode": "Custom",
    "custom": {
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "tenant-g"}
                        },
                        "podSelector": {"matchLabels": {"role": "client"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": SANDBOX_PORT}],
            }
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
                "ports": [{"protocol": "TCP", "port": ALLOWED_PORT}],
            }
        ],
    },
}


@pytest.mark.usefixtures("run", "externals")
def test_a_custom_sandbox_gets_exactly_its_raw_rules_and_no_dns(
    kube: Kubectl, dataplane: Dataplane, system_pods: SystemPods
) -> None:
    """Custom: the control-plane ingress rule, then the raw rules verbatim; egress is the
    user's alone, DNS included (README "The dataplane tier"): nothing adds DNS."""
    kube.ok("create", "namespace", "tenant-g")
    client, not_client = pods_serving(
        kube, dataplane, "tenant-g",
        ("client", {"role": "client"}, "client"),
        ("not-client", {"role": "server"}, "not-client"),
    )  # fmt: skip
    kube.ok("create", "namespace", "tenant-f")
    applied = kube("apply", "-f", "-", input=as_json(interpreter("tenant-f", policy=CUSTOM)))
    assert applied.returncode == 0, applied.stderr
    assert "no DNS (port 53) allowed; names will not resolve" in applied.stderr  # warned
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox("tenant-f")))
    )
    kube.ok("create", "-f", "-", input=as_json(sandbox_pod("tenant-f", created)))
    box = running_pod(kube, dataplane, "tenant-f", "py-abcd1234")
    dataplane.serve(box, "sandbox", SANDBOX_PORT, OTHER_PORT)
    # A client by its labels, but in the sandbox's own namespace, not tenant-g.
    (same_ns_client,) = pods_serving(
        kube, dataplane, "tenant-f", ("client", {"role": "client"}, "same-ns-client")
    )
    dns, router = system_pods.dns, system_pods.router

    want = {
        # egress rule 0: the ipBlock, on its port, without its except range
        "sandbox -> ipBlock, its port": Probe(box, ALLOWED_HOST, ALLOWED_PORT, "allowed"),
        "sandbox -> ipBlock, another port": Probe(box, ALLOWED_HOST, OTHER_PORT, None),
        "sandbox -> ipBlock's except range": Probe(box, EXCEPTED_HOST, ALLOWED_PORT, None),
        "sandbox -> outside the ipBlock": Probe(box, FORBIDDEN_HOST, ALLOWED_PORT, None),
        # ...and nothing else: no DNS added, no metadata address, no pods
        "sandbox -> cluster DNS 53/UDP": Probe(box, dns.address, 53, None, "udp"),
        "sandbox -> cluster DNS 53/TCP": Probe(box, dns.address, 53, None),
        "sandbox -> metadata address": Probe(box, METADATA, 80, None),
        "sandbox -> a tenant-g pod": Probe(box, client.address, SANDBOX_PORT, None),
        # ingress rule 1: role=client pods of tenant-g, on its port only
        "tenant-g client -> sandbox, its port": Probe(client, box.address, SANDBOX_PORT, "sandbox"),
        "tenant-g client -> sandbox, another port": Probe(client, box.address, OTHER_PORT, None),
        "tenant-g other pod -> sandbox": Probe(not_client, box.address, SANDBOX_PORT, None),
        "client of the sandbox's namespace -> sandbox": Probe(same_ns_client, box.address, SANDBOX_PORT, None),
        # ingress rule 0, every mode: AgentCube's router, on any port
        "router -> sandbox, another port": Probe(router, box.address, OTHER_PORT, "sandbox"),
        "other agentcube pod -> sandbox": Probe(system_pods.not_router, box.address, SANDBOX_PORT, None),
        # Controls: unisolated pods get through where the sandbox is refused, and the pods
        # refused above can send.
        "tenant-g other pod -> except range": Probe(not_client, EXCEPTED_HOST, ALLOWED_PORT, "excepted"),
        "tenant-g other pod -> ipBlock, another port": Probe(not_client, ALLOWED_HOST, OTHER_PORT, "allowed"),
        "tenant-g other pod -> cluster DNS 53/UDP": Probe(not_client, dns.address, 53, "kube-dns", "udp"),
        "tenant-g other pod -> same-namespace client": Probe(not_client, same_ns_client.address, SANDBOX_PORT, "same-ns-client"),
        "same-namespace client -> tenant-g other pod": Probe(same_ns_client, not_client.address, SANDBOX_PORT, "not-client"),
    }  # fmt: skip
    wait_until_as(dataplane, want, "the Custom policy")


def tenant_of(kube: Kubectl, ns: str, user: str) -> Path:
    """A tenant user with ordinary edit rights in ``ns`` (the rules of the built-in ``edit``
    role: pods, NetworkPolicies, ...) and update/patch on its Sandboxes. This cluster runs no
    aggregation controller to fill ``edit`` itself: the user gets the two roles it gathers."""
    for role in ("system:aggregate-to-edit", "system:aggregate-to-view"):
        kube.ok(
            "create", "rolebinding", f"{user}-{role.rpartition(':')[2]}",
            f"--clusterrole={role}", f"--user={user}", "-n", ns,
        )  # fmt: skip
    grant_tenant(kube, ns, resource=SANDBOXES, group="tenants")
    return kube.control_plane.mint_user(user, groups=["tenants"])


@pytest.mark.usefixtures("externals")
def test_escapes_a_tenant_tries_are_refused_or_reported(
    kube: Kubectl, dataplane: Dataplane, run: WebhookServer, tmp_path: Path
) -> None:
    """As a tenant with edit rights in its namespace: relabelling the sandbox pod and an
    override annotation are denied and change nothing on packets; an allow-all NetworkPolicy
    of its own is admitted with a warning and reported by audit, and it does widen
    (NetworkPolicies add up) until the tenant deletes it; with --deny-widening it is refused."""
    ns = "tenant-h"
    box = sandbox_in(kube, dataplane, ns, RESTRICTED, SANDBOX_PORT)
    (peer,) = pods_serving(kube, dataplane, ns, ("peer", {"app": "peer"}, "peer"))
    tenant = tenant_of(kube, ns, "tenant-hana")

    def probes(open_: bool) -> dict[str, Probe]:
        return {
            "sandbox -> forbidden host": Probe(box, FORBIDDEN_HOST, ALLOWED_PORT, "forbidden" if open_ else None),
            "sandbox -> its namespace's pod": Probe(box, peer.address, SANDBOX_PORT, "peer" if open_ else None),
            "its namespace's pod -> sandbox": Probe(peer, box.address, SANDBOX_PORT, "sandbox" if open_ else None),
            "sandbox -> allowed host": Probe(box, ALLOWED_HOST, ALLOWED_PORT, "allowed"),
            "control: its namespace's pod -> forbidden host": Probe(peer, FORBIDDEN_HOST, ALLOWED_PORT, "forbidden"),
        }  # fmt: skip

    isolated, widened = probes(open_=False), probes(open_=True)
    wait_until_as(dataplane, isolated, "the Restricted policy")

    # Relabelling the pod out of its policy: RBAC allows it, the webhook does not.
    kube.ok("label", "pod", "py-abcd1234", "-n", ns, "app=renamed", user=tenant)
    for change in (f"{kinds.LABEL_SANDBOX_NAME}-", f"{kinds.LABEL_SANDBOX_NAME}=elsewhere"):
        relabel = kube("label", "pod", "py-abcd1234", "-n", ns, change, "--overwrite", user=tenant)
        assert relabel.returncode != 0
        assert "denied the request" in relabel.stderr
        assert f"metadata.labels[{kinds.LABEL_SANDBOX_NAME}]" in relabel.stderr
    labels = kube.get("pod", "py-abcd1234", "-n", ns)["metadata"]["labels"]
    assert labels[kinds.LABEL_SANDBOX_NAME] == "py-abcd1234"
    wait_until_as(dataplane, isolated, "isolated after the relabelling was denied")

    # An override of its own: denied.
    assert_override_denied(kube, ns, "py-abcd1234", tenant)
    wait_until_as(dataplane, isolated, "isolated after the override was denied")

    # A NetworkPolicy of its own allowing everything: warned and reported, and it widens.
    allow_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "tenant-allow-all", "namespace": ns},
        "spec": {
            "podSelector": {},
            "ingress": [{}],
            "egress": [{}],
            "policyTypes": ["Ingress", "Egress"],
        },
    }
    created = kube("create", "-f", "-", input=as_json(allow_all), user=tenant)
    assert created.returncode == 0, created.stderr
    assert (
        "Warning: spec.podSelector: selects sandbox pod py-abcd1234; its rules loosen their isolation"
        in created.stderr
    )
    found = audit(kube, kube.control_plane.admin_kubeconfig, "-n", ns)
    assert found.returncode == 1, found.stderr
    assert f"{ns}  tenant-allow-all  widens" in found.stdout
    took = wait_until_as(dataplane, widened, "the tenant's allow-all policy adding up")
    print(f"the tenant's allow-all policy widened the sandbox within {took:.1f}s")
    kube.ok("delete", "networkpolicy", "tenant-allow-all", "-n", ns, user=tenant)
    wait_until_as(dataplane, isolated, "isolated again once the tenant deleted its policy")

    # With --deny-widening (a second replica, the webhooks calling it for a while): refused.
    def dry_run() -> subprocess.CompletedProcess[str]:
        return kube("create", "--dry-run=server", "-f", "-", input=as_json(allow_all), user=tenant)

    manifests = deploy_manifests(kube.control_plane)
    strict = start_run(
        kube.control_plane,
        install_rbac(kube.control_plane, manifests),
        tmp_path,
        "--deny-widening",
        *ISOLATION_CANARY_ARGS,
    )
    try:
        install_webhooks(kube.control_plane, manifests, base_url=strict.url, ca_pem=strict.ca_pem)
        # The API server takes the new configuration up a moment later (and this webhook
        # fails open): until then the first replica answers.
        eventually(lambda: dry_run().returncode != 0, "the --deny-widening replica to answer")
        refused = kube("create", "-f", "-", input=as_json(allow_all), user=tenant)
    finally:
        install_webhooks(kube.control_plane, manifests, base_url=run.url, ca_pem=run.ca_pem)
        eventually(lambda: dry_run().returncode == 0, "the module's replica to answer again")
        strict.stop()
    assert refused.returncode != 0
    assert 'admission webhook "widening.netpol.agentcube.io" denied' in refused.stderr
    assert (
        '"tenant-allow-all" is forbidden: spec.podSelector: selects sandbox pod py-abcd1234; '
        "its rules loosen their isolation" in refused.stderr
    )
    assert policy_of(kube, ns, "tenant-allow-all") is None
    wait_until_as(dataplane, isolated, "isolated: the widening policy was refused")


@pytest.mark.usefixtures("run", "externals")
def test_not_one_packet_gets_through_while_a_direct_sandbox_starts(
    kube: Kubectl, dataplane: Dataplane, kubelet_of_the_plane: FakeKubelet
) -> None:
    """A prober in the sandbox pod from the instant its containers start (before the kubelet
    reports it running) sends to a forbidden destination and to an allowed one, again and
    again. kube-router programs a pod only once its IP is in its status, which a kubelet
    reports after the containers started: without the hold, 9 to 17 connections of about
    750 got through in the first 0.1 to 0.2 s. The netpol-wait-isolated init container
    (``--isolation-canary``) holds the containers until the canary is refused."""
    kube.ok("create", "namespace", "tenant-e")
    kube.ok("apply", "-f", "-", input=as_json(interpreter("tenant-e", policy=RESTRICTED)))
    seen: dict[str, Callable[[], Probed]] = {}
    # As a real kubelet: the pod's IP reported at its next sync, a second after its first
    # container (here the init container) started. Until then kube-router cannot program it.
    kubelet_of_the_plane.status_lag_s = 1.0

    def start_probers(pod: Mapping[str, Any], host: Host) -> None:
        if pod["metadata"]["namespace"] == "tenant-e":
            seen["forbidden"] = dataplane.prober(host, FORBIDDEN_HOST, ALLOWED_PORT, 8.0)
            seen["allowed"] = dataplane.prober(host, ALLOWED_HOST, ALLOWED_PORT, 8.0)

    dataplane.on_containers_start = start_probers
    try:
        created = json.loads(
            kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox("tenant-e")))
        )
        pod = json.loads(
            kube.ok(
                "create", "-o", "json", "-f", "-",
                input=as_json(sandbox_pod("tenant-e", created)),
            )
        )  # fmt: skip
        [hold, *_] = pod["spec"]["initContainers"]
        assert hold["name"] == kinds.ISOLATION_CONTAINER
        assert hold["command"] == ["agentcube-netpol", "wait-isolated"]
        running_pod(kube, dataplane, "tenant-e", "py-abcd1234")
    finally:
        dataplane.on_containers_start = None
        kubelet_of_the_plane.status_lag_s = 0.0
    running = kube.get("pod", "py-abcd1234", "-n", "tenant-e")
    # What the reconciler told it to check, with the gate lifted, and what it found.
    assert running["metadata"]["annotations"][kinds.ANNOTATION_ISOLATION_CANARY] == CANARY
    log = kubelet_of_the_plane.init_log("tenant-e", "py-abcd1234", kinds.ISOLATION_CONTAINER)
    print(f"init container: {log.strip()}")
    assert f"wait-isolated: {CANARY} refused: the NetworkPolicy is enforced" in log
    # It had something to hold: its own first connections got through, before the IP was
    # reported (what the pod's containers would have sent without it).
    held = re.search(r"(\d+) connections got through before", log)
    assert held is not None and int(held.group(1)) > 0, log
    forbidden, allowed = seen["forbidden"](), seen["allowed"]()
    print(f"forbidden: {forbidden}; allowed: {allowed}")
    assert allowed.through > 0  # the probers ran, and the allowed destination answered
    assert forbidden.through == 0, f"got through to {FORBIDDEN_HOST}: {forbidden}"


@pytest.fixture(scope="module")
def agent_sandbox_controller(
    cluster: ControlPlane,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AgentSandboxController]:
    """The real agent-sandbox controller on this module's cluster, for the LAST test only:
    its Sandbox controller makes the pods the other tests make by hand."""
    with agent_sandbox_running(
        cluster, agent_sandbox_build, tmp_path_factory.mktemp("agent-sandbox")
    ) as controller:
        yield controller


@pytest.mark.usefixtures("externals", "agent_sandbox_controller")
def test_not_one_packet_gets_through_while_a_warm_pod_is_claimed(
    cluster: ControlPlane, kube: Kubectl, dataplane: Dataplane, run: WebhookServer
) -> None:
    """A warm pod of an isolated pool, held by the pool's baseline (no egress at all), is
    claimed and adopted by the real claim controller and gets its sandbox's own policy:
    probers in it send to a forbidden destination and to one the sandbox's policy allows
    (and the baseline does not), again and again, from before the claim to after."""
    ns = "tenant-w"
    kube.ok("create", "namespace", ns)
    warm = Warm(cluster, kube, run, Rest.from_config(cluster.admin_kubeconfig))
    pool = warm_pool(warm, ns, "pywarm", size=1)
    eventually(lambda: policy_of(kube, ns, "netpol-baseline.pywarm"), "the baseline", WAIT_S)
    (warm_pod,) = kube.get(
        "pods", "-n", ns, "-l", f"{kinds.LABEL_TEMPLATE_REF_HASH}={name_hash('pywarm')}"
    )["items"]
    pod_name = warm_pod["metadata"]["name"]
    host = dataplane.pod(ns, pod_name)
    (peer,) = pods_serving(kube, dataplane, ns, ("peer", {"app": "peer"}, "peer"))
    wait_until_as(
        dataplane,
        {
            "warm pod -> forbidden host": Probe(host, FORBIDDEN_HOST, ALLOWED_PORT, None),
            "warm pod -> its sandbox's allowed host": Probe(host, WARM_ALLOWED_HOST, ALLOWED_PORT, None),
            "control: a plain pod -> forbidden host": Probe(peer, FORBIDDEN_HOST, ALLOWED_PORT, "forbidden"),
            "control: a plain pod -> allowed host": Probe(peer, WARM_ALLOWED_HOST, ALLOWED_PORT, "warm-allowed"),
        },
        "the baseline",
    )  # fmt: skip

    forbidden = dataplane.prober(host, FORBIDDEN_HOST, ALLOWED_PORT, PROBE_S)
    allowed = dataplane.prober(host, WARM_ALLOWED_HOST, ALLOWED_PORT, PROBE_S)
    claimed_at = time.monotonic()  # the probers began just before
    claim = claim_session(warm, ns, pool)
    name = claim["metadata"]["name"]
    adopted = adopted_pod(warm, ns, claim)
    adopted_s = time.monotonic() - claimed_at
    assert adopted["metadata"]["name"] == pod_name  # the pod the probers run in
    want = desired(ns, name, WARM_POOL_POLICY, claim)["spec"]
    eventually(
        lambda: (p := policy_of(kube, ns, name)) is not None and p["spec"] == want,
        "the claim's own policy",
        WAIT_S,
    )
    policy_s = time.monotonic() - claimed_at
    to_forbidden, to_allowed = forbidden(), allowed()
    print(f"warm path: forbidden {to_forbidden}; allowed {to_allowed}")
    assert to_forbidden.refused > 0  # it ran
    assert to_forbidden.through == 0, f"got through to {FORBIDDEN_HOST}: {to_forbidden}"
    assert to_allowed.first_through_s is not None, (
        f"the sandbox's policy let nothing through in {PROBE_S:.0f}s: {to_allowed}"
    )
    first_allowed_s = to_allowed.first_through_s  # the prober began just before the claim
    print(
        f"warm path: the allowed host reached {first_allowed_s:.1f}s after the claim was sent "
        f"(kubectl polling saw the pod adopted by {adopted_s:.1f}s, its policy by {policy_s:.1f}s)"
    )
