"""deploy/ as an admin installs it: `kubectl apply -k deploy/`, the pods run from the image
built from our Dockerfile, the API server calling the webhooks through deploy/'s Service.

The control plane runs the Deployment, ReplicaSet and endpoints controllers; a kubelet
(``agentcube_netpol_dev.ocikubelet``) runs deploy/'s pods with podman and runc, each in a
network namespace of its own, honouring the pod spec (args, env from the downward API,
security context, emptyDir volumes, the service-account token, probes); kube-apiserver
reaches pod addresses through an HTTP CONNECT proxy (its "cluster" egress, as with
Konnectivity) and resolves the webhook Service to a ready endpoint itself
(--enable-aggregator-routing). Nothing of the host's network changes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane
from agentcube_netpol_dev.kubelet import FakeKubelet
from agentcube_netpol_dev.ocikubelet import OciKubelet
from kubernetes.client import CoreV1Api
from kubernetes.config import new_client_from_config

from tests.deploy.manifests import CERT_MANAGER
from tests.e2e.harness import DEPLOY_DIR, Kubectl, agent_sandbox_running
from tests.e2e.shipped import (
    NAMESPACE,
    READY_TIMEOUT_S,
    SELECTOR,
    cluster_running_images,
    ready_pods,
    wait,
)
from tests.e2e.test_agent_sandbox import is_running_and_ready
from tests.e2e.test_cert_manager_overlay import crds_installed
from tests.e2e.test_reconciler import RESTRICTED, grant_agentcube
from tests.e2e.test_reconciler_warm_path import (
    Warm,
    adopted_pod,
    check_invariant,
    claim_session,
    recorded,
)
from webhook.api import kinds
from webhook.kube.rest import Rest
from webhook.tls.certs import create_ca, create_serving_cert

NOT_OURS = SELECTOR.replace("=", "!=")


@dataclass
class Shipped:
    control_plane: ControlPlane
    kubectl: Kubectl
    kubelet: OciKubelet
    ready_after_s: float


@pytest.fixture(scope="module")
def shipped(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shipped]:
    work = tmp_path_factory.mktemp("shipped")
    with cluster_running_images(binaries, work) as cluster:
        control_plane, kubectl = cluster.control_plane, cluster.kubectl
        grant_agentcube(kubectl)
        api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
        with (
            agent_sandbox_running(control_plane, agent_sandbox_build, work / "as"),
            # Sandbox pods on a stand-in kubelet; ours on the one that runs images.
            FakeKubelet(CoreV1Api(api_client), label_selector=f"{NOT_OURS}"),
        ):
            started = time.monotonic()
            kubectl.ok("apply", "-k", str(DEPLOY_DIR))  # exactly what the README says
            wait(lambda: len(ready_pods(kubectl)) == 2, READY_TIMEOUT_S, "two Ready replicas")
            yield Shipped(
                control_plane,
                kubectl,
                cluster.kubelet,
                ready_after_s=time.monotonic() - started,
            )
        api_client.close()


@pytest.fixture(autouse=True)
def steady(shipped: Shipped) -> None:
    """Each test starts from a steady install: two Ready replicas, one of them leading (a
    fault test leaves the Lease to be taken over; a warm pool made while nobody leads
    would run its pods before their baseline exists, see README "Failure modes")."""

    def steady_now() -> bool:
        pods = {p["metadata"]["name"] for p in ready_pods(shipped.kubectl)}
        return len(pods) == 2 and leader(shipped) in pods

    wait(steady_now, READY_TIMEOUT_S, "two Ready replicas, one leading")


def test_both_replicas_ready_one_leader_and_the_certificates_made_in_the_pods(
    shipped: Shipped,
) -> None:
    kubectl = shipped.kubectl
    print(f"install to two Ready replicas: {shipped.ready_after_s:.1f}s")
    pods = ready_pods(kubectl)
    assert len(pods) == 2
    names = {pod["metadata"]["name"] for pod in pods}
    lease = kubectl.get("-n", NAMESPACE, "lease", "agentcube-netpol")
    holder = lease["spec"]["holderIdentity"]
    assert any(holder.startswith(name) for name in names), (holder, names)
    # The replicas' shared CA, made by the first, is the caBundle of both configurations.
    secret = kubectl.get("-n", NAMESPACE, "secret", "agentcube-netpol-ca")
    ca = base64.b64decode(secret["data"]["ca.crt"])
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        configuration = kubectl.get(kind, "agentcube-netpol")
        for hook in configuration["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca, hook["name"]
    # The endpoints the API server resolves the Service to are the pods' own addresses.
    endpoints = kubectl.get("-n", NAMESPACE, "endpoints", "agentcube-netpol-webhook")
    addresses = {a["ip"] for subset in endpoints["subsets"] for a in subset["addresses"]}
    assert addresses == {pod["status"]["podIP"] for pod in pods}


BAD_TEMPLATE = """
apiVersion: runtime.agentcube.volcano.sh/v1alpha1
kind: CodeInterpreter
metadata: {name: shipped-bad, namespace: default}
spec:
  template:
    image: python:3.12
    networkPolicy:
      mode: Restricted
      egress: [{cidrs: ["10.0.0.1/8"]}]
"""


def test_a_bad_cidr_is_refused_through_the_service(shipped: Shipped) -> None:
    result = shipped.kubectl("apply", "-f", "-", input=BAD_TEMPLATE)
    assert result.returncode != 0
    assert "10.0.0.1/8" in result.stderr and "host bits" in result.stderr, result.stderr


def good_template(name: str) -> str:
    return BAD_TEMPLATE.replace("shipped-bad", name).replace("10.0.0.1/8", "10.0.0.0/8")


CRD = "codeinterpreters.runtime.agentcube.volcano.sh"
SCHEMA_PATH = ("spec", "template", "networkPolicy")


def policy_schema(crd: dict[str, Any]) -> dict[str, Any] | None:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for step in SCHEMA_PATH:
        node = (node.get("properties") or {}).get(step)
        if node is None:
            return None
    return node  # type: ignore[no-any-return]


def test_an_agentcube_upgrade_that_drops_network_policy_is_repaired(shipped: Shipped) -> None:
    """AgentCube re-installs its CRD without our property (as an upgrade does): the Lease
    holder puts it back under deploy/'s RBAC (--patch-crds), and templates keep the field."""
    kubectl = shipped.kubectl
    crd = kubectl.get("crd", CRD)
    ours = policy_schema(crd)
    assert ours is not None
    upstream = {key: crd[key] for key in ("apiVersion", "kind", "spec")}
    upstream["metadata"] = {"name": CRD, "resourceVersion": crd["metadata"]["resourceVersion"]}
    del upstream["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["template"]["properties"]["networkPolicy"]
    kubectl.ok("replace", "-f", "-", input=json.dumps(upstream))
    dropped = time.monotonic()
    assert policy_schema(kubectl.get("crd", CRD)) is None

    wait(lambda: policy_schema(kubectl.get("crd", CRD)) == ours, 60, "networkPolicy back")
    print(f"networkPolicy back in the CRD {time.monotonic() - dropped:.1f}s after it was dropped")
    shown = kubectl.get("crd", CRD, "--show-managed-fields")
    managers = {
        entry["manager"]: entry["operation"] for entry in shown["metadata"]["managedFields"]
    }
    assert managers.get("agentcube-netpol") == "Update", managers
    # A template written now keeps its policy (without the property it would be pruned).
    name = "shipped-after-upgrade"
    kubectl.ok("apply", "-f", "-", input=good_template(name))
    stored = kubectl.get("-n", "default", "codeinterpreter", name)
    assert stored["spec"]["template"]["networkPolicy"]["mode"] == "Restricted"
    kubectl.ok("delete", "-n", "default", "codeinterpreter", name)


# A container killed outright refuses connections until the kubelet has seen it die and
# the endpoint is withdrawn; kube-apiserver does not retry a refused webhook call, so with
# failurePolicy Fail a request sent to that endpoint in that window is refused, in any
# cluster. The window is bounded; after it the other replica answers everything.
DEATH_WINDOW_S = 5.0


def test_a_killed_replica_comes_back_while_the_service_keeps_answering(shipped: Shipped) -> None:
    kubectl = shipped.kubectl
    [victim, _] = sorted(ready_pods(kubectl), key=lambda pod: pod["metadata"]["name"])
    name = victim["metadata"]["name"]
    restarts = victim["status"]["containerStatuses"][0]["restartCount"]
    run = shipped.kubelet.run_of(NAMESPACE, name)
    assert run is not None
    killed_at = time.monotonic()
    run.kill()
    answers: list[tuple[float, bool]] = []
    deadline = killed_at + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        sent = time.monotonic() - killed_at
        result = kubectl(
            "apply", "--dry-run=server", "-f", "-", input=good_template(f"t{len(answers)}")
        )
        answers.append((sent, result.returncode == 0))
        assert result.returncode == 0 or "failed calling webhook" in result.stderr, result.stderr
        pod = kubectl.get("-n", NAMESPACE, "pod", name)
        [status] = pod["status"]["containerStatuses"]
        if status["restartCount"] > restarts and status["ready"]:
            back_after = time.monotonic() - killed_at
            break
    else:
        pytest.fail(f"{name} did not come back Ready")
    refused = [sent for sent, ok in answers if not ok]
    print(
        f"killed replica back Ready after {back_after:.1f}s; {len(answers)} requests, "
        f"{len(refused)} refused, the last sent {max(refused, default=0):.1f}s after the kill"
    )
    assert all(sent < DEATH_WINDOW_S for sent in refused), answers
    assert sum(ok for sent, ok in answers if sent >= DEATH_WINDOW_S) >= 3, answers


def as_warm(shipped: Shipped) -> Warm:
    """The warm-path helpers' view of this cluster (they read its kubectl and client)."""
    rest = Rest.from_config(shipped.control_plane.admin_kubeconfig)
    return Warm(shipped.control_plane, shipped.kubectl, run=None, rest=rest)  # type: ignore[arg-type]


def warm_pods_running(shipped: Shipped, ns: str, name: str, size: int) -> bool:
    from webhook.reconciler.agentsandbox import name_hash

    pods = shipped.kubectl.get(
        "pods", "-n", ns, "-l", f"agents.x-k8s.io/sandbox-template-ref-hash={name_hash(name)}"
    )["items"]
    return len([p for p in pods if is_running_and_ready(p)]) >= size


def test_sessions_on_both_paths_are_isolated_with_no_breach(shipped: Shipped) -> None:
    """A warm-pool session (a claim adopts a warm pod) and a direct one (a Sandbox's pod,
    gated until its policy exists), with agent-sandbox's real controller, the pods'
    NetworkPolicies written by the replica holding the Lease; no moment finds a running
    sandbox pod selected by nothing or by something looser."""
    from tests.builders import code_interpreter
    from tests.e2e.harness import as_json
    from tests.e2e.test_agent_sandbox import warm_pool_for
    from tests.e2e.test_reconciler import desired, eventually, policy_of, sandbox

    warm = as_warm(shipped)
    ns = "sessions"
    shipped.kubectl.ok("create", "namespace", ns)
    # The baseline first, then the pool: warm-pool pods are not gated, so a pool whose pods
    # start before its baseline is written runs them unselected for that moment (a known
    # gap, README "Failure modes"; the claimed pod is held by the baseline as usual).
    interpreter = json.loads(
        shipped.kubectl.ok(
            "create", "-o", "json", "-f", "-",
            input=as_json(code_interpreter("pywarm", ns, RESTRICTED, warm_pool_size=2)),
        )
    )  # fmt: skip
    eventually(lambda: policy_of(shipped.kubectl, ns, "netpol-baseline.pywarm"), "the baseline", 60)
    shipped.kubectl.ok("create", "-f", "-", input=as_json(*warm_pool_for(interpreter)))
    eventually(lambda: warm_pods_running(shipped, ns, "pywarm", 2), "the warm pool running", 60)
    recorder = recorded(warm)
    claim = claim_session(warm, ns, interpreter)
    pod = adopted_pod(warm, ns, claim)
    claim_name = claim["metadata"]["name"]

    def labelled_and_isolated() -> bool:
        current = shipped.kubectl.get("pod", pod["metadata"]["name"], "-n", ns)
        labels = current["metadata"].get("labels") or {}
        policy = shipped.kubectl("get", "networkpolicy", claim_name, "-n", ns)
        return labels.get(kinds.LABEL_SANDBOX_NAME) == claim_name and policy.returncode == 0

    eventually(labelled_and_isolated, "the claimed pod labelled and its policy written", 60)

    shipped.kubectl.ok(
        "apply", "-f", "-", input=as_json(code_interpreter("pydirect", ns, RESTRICTED))
    )
    created = json.loads(
        shipped.kubectl.ok(
            "create", "-o", "json", "-f", "-",
            input=as_json(sandbox(ns, "pydirect-abcd1234", "pydirect")),
        )
    )  # fmt: skip
    want = desired(ns, "pydirect-abcd1234", RESTRICTED, created)

    def direct_running() -> bool:
        result = shipped.kubectl("get", "pod", "pydirect-abcd1234", "-n", ns, "-o", "json")
        return result.returncode == 0 and is_running_and_ready(json.loads(result.stdout))

    eventually(direct_running, "the direct sandbox's pod running", 60)
    events = recorder.stop()
    claimed_spec = shipped.kubectl.get("networkpolicy", claim_name, "-n", ns)["spec"]
    baseline = shipped.kubectl.get("networkpolicy", "netpol-baseline.pywarm", "-n", ns)
    check_invariant(
        ns,
        events,
        {claim_name: claimed_spec, "pydirect-abcd1234": want["spec"]},
        [baseline["spec"]],
    )


# --- faults: the Lease holder dies, or freezes, in the middle of a burst -----------------

LEASE_SECONDS = 15.0  # deploy/'s --lease-seconds (the default)
BURST = 8


def leader(shipped: Shipped) -> str:
    """The pod whose replica holds the Lease (its identity is <hostname>_<random>)."""
    holder = shipped.kubectl.get("-n", NAMESPACE, "lease", "agentcube-netpol")["spec"].get(
        "holderIdentity", ""
    )
    return str(holder).rsplit("_", 1)[0]


def container_pid(shipped: Shipped, container_id: str) -> int:
    """The host PID of the container's own process (signals go to it by PID)."""
    inspected = shipped.kubelet.store.run(
        "podman", "inspect", "--format", "{{.State.Pid}}", container_id
    )
    return int(inspected.stdout.strip())


def writes_of(shipped: Shipped, pod_name: str) -> float:
    """The replica's own count of NetworkPolicy creates (its /metrics, scraped in its pod's
    network as Prometheus would)."""
    import ssl

    run = shipped.kubelet.run_of(NAMESPACE, pod_name)
    assert run is not None
    sock = shipped.kubelet.networks.connect(run.ip, 9443, timeout=5)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(sock) as tls:
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
    for line in body.decode().splitlines():
        if line.startswith('agentcube_netpol_writes_total{write="create"}'):
            return float(line.split()[-1])
    raise AssertionError("no writes counter in /metrics")


def template_in(shipped: Shipped, ns: str) -> None:
    """A namespace with the Restricted template the burst's Sandboxes are made from."""
    from tests.builders import code_interpreter
    from tests.e2e.harness import as_json

    shipped.kubectl.ok("create", "namespace", ns)
    shipped.kubectl.ok("apply", "-f", "-", input=as_json(code_interpreter("py", ns, RESTRICTED)))


def burst(shipped: Shipped, ns: str, names: list[str], *, then: Any = None, at: int = 0) -> None:
    """Direct-path Sandboxes, one after another; ``then()`` after the ``at``-th. (A Sandbox
    without the override annotation is not sent to any webhook; its pod is, and the
    Sandbox controller retries a refused pod.)"""
    from tests.e2e.harness import as_json
    from tests.e2e.test_reconciler import sandbox

    for index, name in enumerate(names):
        if then is not None and index == at:
            then()
        shipped.kubectl.ok("create", "-f", "-", input=as_json(sandbox(ns, name, "py")))


def all_isolated(shipped: Shipped, ns: str, names: list[str], timeout: float) -> float:
    """Seconds until each Sandbox has its one NetworkPolicy, as desired, and its pod runs."""
    from tests.e2e.test_reconciler import desired

    started = time.monotonic()

    def done() -> bool:
        policies = {
            p["metadata"]["name"]: p
            for p in shipped.kubectl.get("networkpolicy", "-n", ns)["items"]
        }
        sandboxes = {
            s["metadata"]["name"]: s for s in shipped.kubectl.get("sandboxes", "-n", ns)["items"]
        }
        for name in names:
            if name not in policies or name not in sandboxes:
                return False
            if policies[name]["spec"] != desired(ns, name, RESTRICTED, sandboxes[name])["spec"]:
                return False
        pods = shipped.kubectl.get("pods", "-n", ns)["items"]
        running = [p for p in pods if is_running_and_ready(p)]
        return len(running) == len(names)

    wait(done, timeout, f"every sandbox of {ns} isolated and running")
    return time.monotonic() - started


def desired_specs(shipped: Shipped, ns: str) -> dict[str, Any]:
    """Each Sandbox's own policy, as it should be: the only one that may select its pod."""
    from tests.e2e.test_reconciler import desired

    return {
        s["metadata"]["name"]: desired(ns, s["metadata"]["name"], RESTRICTED, s)["spec"]
        for s in shipped.kubectl.get("sandboxes", "-n", ns)["items"]
    }


def test_the_lease_holder_killed_mid_burst_the_other_finishes_it(shipped: Shipped) -> None:
    warm = as_warm(shipped)
    ns = "burst-kill"
    names = [f"py-k{index:07d}" for index in range(BURST)]
    victim = leader(shipped)
    recorder = recorded(warm)
    killed: list[float] = []

    def kill_leader() -> None:
        run = shipped.kubelet.run_of(NAMESPACE, victim)
        assert run is not None
        killed.append(time.monotonic())
        run.kill()  # SIGKILL: no Lease release, the standby waits out the Lease

    template_in(shipped, ns)
    burst(shipped, ns, names, then=kill_leader, at=BURST // 2)
    took = all_isolated(shipped, ns, names, timeout=LEASE_SECONDS * 4)
    successor = leader(shipped)
    print(f"leader SIGKILLed mid-burst: every sandbox isolated {time.monotonic() - killed[0]:.1f}s "
          f"after the kill ({took:.1f}s after the last create); {successor} leads")  # fmt: skip
    events = recorder.stop()
    check_invariant(ns, events, desired_specs(shipped, ns), [])
    policies = shipped.kubectl.get("networkpolicy", "-n", ns)["items"]
    assert sorted(p["metadata"]["name"] for p in policies) == sorted(names)  # none twice


def test_a_frozen_lease_holder_writes_nothing_once_it_wakes(shipped: Shipped) -> None:
    """SIGSTOP past its Lease: the other replica takes over; on SIGCONT the frozen one
    finds its renewal deadline passed before any write, and its writes counter stays."""
    import os
    import signal

    ns = "burst-freeze"
    names = [f"py-f{index:07d}" for index in range(BURST)]
    frozen = leader(shipped)
    run = shipped.kubelet.run_of(NAMESPACE, frozen)
    assert run is not None and run.container_id
    pid = container_pid(shipped, run.container_id)
    template_in(shipped, ns)  # before the freeze: a template goes through our webhook
    writes_before, restarts_before = writes_of(shipped, frozen), run.restarts
    os.kill(pid, signal.SIGSTOP)  # the container's own process, by PID
    try:
        burst(shipped, ns, names[: BURST // 2])
        wait(lambda: leader(shipped) not in ("", frozen), LEASE_SECONDS * 3, "a new Lease holder")
    finally:
        os.kill(pid, signal.SIGCONT)
    # Woken well inside its liveness probe's budget (3 x 10 s): the same process, not a restart.
    assert run.restarts == restarts_before
    burst_rest = names[BURST // 2 :]
    from tests.e2e.harness import as_json
    from tests.e2e.test_reconciler import sandbox

    for name in burst_rest:
        shipped.kubectl.ok("create", "-f", "-", input=as_json(sandbox(ns, name, "py")))
    all_isolated(shipped, ns, names, timeout=LEASE_SECONDS * 4)
    assert leader(shipped) != frozen
    assert writes_of(shipped, frozen) == writes_before, "the frozen replica wrote after waking"


def test_a_replica_that_hangs_is_taken_out_of_the_service_then_restarted(
    shipped: Shipped,
) -> None:
    """SIGSTOP a replica: it accepts connections and never answers. A request the API
    server sends it times out (the webhook's timeoutSeconds) and, the webhook failing
    closed, is refused, until the readiness probe has failed three times and the endpoint
    is withdrawn; from then on the other replica answers everything. The liveness probe
    fails three times and the kubelet restarts the container: Ready again."""
    import contextlib
    import os
    import signal

    kubectl = shipped.kubectl
    victim = next(
        p["metadata"]["name"]
        for p in ready_pods(kubectl)
        if p["metadata"]["name"] != leader(shipped)
    )
    run = shipped.kubelet.run_of(NAMESPACE, victim)
    assert run is not None and run.container_id
    pid = container_pid(shipped, run.container_id)
    restarts = run.restarts
    hung_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    answers: list[tuple[float, bool]] = []
    try:
        while time.monotonic() - hung_at < READY_TIMEOUT_S:
            sent = time.monotonic() - hung_at
            result = kubectl(
                "apply", "--dry-run=server", "-f", "-", input=good_template(f"h{len(answers)}")
            )
            answers.append((sent, result.returncode == 0))
            pod = kubectl.get("-n", NAMESPACE, "pod", victim)
            [status] = pod["status"]["containerStatuses"]
            if status["restartCount"] > restarts and status["ready"]:
                break
        else:
            pytest.fail(f"{victim} was not restarted and Ready again")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # the restart has killed it already
    back_after = time.monotonic() - hung_at
    refused = [sent for sent, ok in answers if not ok]
    print(
        f"hung replica: {len(answers)} requests, {len(refused)} refused, the last sent "
        f"{max(refused, default=0):.1f}s after it hung; restarted and Ready after {back_after:.1f}s"
    )
    # Readiness: 3 failures 5 s apart (15 s), then the endpoint goes; a refused request took
    # up to the webhook's 5 s timeout on top. (The liveness probe may restart it sooner:
    # failures count across probes until one succeeds, as the kubelet counts them.)
    assert all(sent < 15 + 5 + 2 for sent in refused), answers
    # After the last refusal, every request went through (the other replica, then both).
    after = [ok for sent, ok in answers if sent > max(refused, default=-1.0)]
    assert all(after) and len(after) >= 3, answers


def test_the_cert_manager_overlay_serves_the_certificate_from_its_secret(
    shipped: Shipped,
) -> None:
    """deploy/overlays/cert-manager applied over the install, the test doing cert-manager's
    part (the Secret its Certificate names) and cainjector's (the caBundle): the pods read
    the serving certificate from the Secret volume (read-only, mode 0440, readable through
    fsGroup) and the API server, trusting only that CA, calls them through the Service.
    Last in this module: the install is the overlay's from here on."""
    kubectl = shipped.kubectl
    crds_installed(kubectl)
    now = datetime.now(UTC)
    ca = create_ca(
        common_name="test cert-manager CA", not_before=now, not_after=now + timedelta(days=30)
    )
    service = f"agentcube-netpol-webhook.{NAMESPACE}.svc"
    serving = create_serving_cert(
        ca, dns_names=[service, f"{service}.cluster.local"], ip_addresses=[],
        not_before=now, not_after=now + timedelta(days=10),
    )  # fmt: skip
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "agentcube-netpol-webhook-tls", "namespace": NAMESPACE},
        "data": {
            key: base64.b64encode(pem).decode()
            for key, pem in (
                ("tls.crt", serving.cert_pem),
                ("tls.key", serving.key_pem),
                ("ca.crt", ca.cert_pem),
            )
        },
    }
    kubectl.ok("apply", "-f", "-", input=json.dumps(secret))
    kubectl.ok("apply", "-k", str(CERT_MANAGER))
    kubectl.ok("-n", NAMESPACE, "rollout", "status", "deploy/agentcube-netpol", "--timeout=180s")
    wait(lambda: len(ready_pods(kubectl)) == 2, READY_TIMEOUT_S, "two Ready replicas")
    for pod in ready_pods(kubectl):
        assert "--ca-secret" not in " ".join(pod["spec"]["containers"][0]["args"])
        assert pod["spec"]["volumes"][0]["secret"]["secretName"] == secret["metadata"]["name"]
    bundle = base64.b64encode(ca.cert_pem).decode()
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        hooks = kubectl.get(kind, "agentcube-netpol")["webhooks"]
        patch = [
            {"op": "replace", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(hooks))
        ]
        kubectl.ok("patch", kind, "agentcube-netpol", "--type", "json", "-p", json.dumps(patch))

    def refused_by_the_webhook() -> bool:
        result = kubectl("apply", "-f", "-", input=BAD_TEMPLATE)
        return result.returncode != 0 and "host bits" in result.stderr

    # The new caBundle reaches the API server's webhook clients within a moment.
    wait(refused_by_the_webhook, 30, "the bad template refused through the Service")
    name = "shipped-cert-manager"
    kubectl.ok("apply", "-f", "-", input=good_template(name))
    kubectl.ok("delete", "-n", "default", "codeinterpreter", name)
