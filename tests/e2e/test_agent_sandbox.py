"""The real agent-sandbox controller (v0.4.6) and the fake kubelet, with our webhook in front.

Warm path, on a cluster of this module's own (the webhook there watches claims, as deploy/
runs it, under deploy/'s RBAC): what AgentCube creates for a CodeInterpreter with a warm pool
(a SandboxTemplate and a SandboxWarmPool named after it, ``networkPolicyManagement:
Unmanaged``), warm pods made by the real warm-pool and Sandbox controllers and run by the
fake kubelet, then a SandboxClaim as AgentCube writes it, adopted by the real claim
controller: the running pod ends up labelled with the claim's sandbox name and session.

Direct path and the kubelet, on the session's cluster (fixtures ``agent_sandbox`` and
``kubelet``): a Sandbox's pod, held by our webhook's scheduling gate, runs once the gate is
lifted and is cleaned up after the Sandbox; any gated pod waits for its gates.
"""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from agentcube_netpol_dev.agentsandbox import (
    LABEL_POD_TEMPLATE_HASH,
    LABEL_SANDBOX_NAME_HASH,
    LABEL_TEMPLATE_REF_HASH,
    AgentSandboxBuild,
    AgentSandboxController,
)
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds
from agentcube_netpol_dev.kubelet import DEFAULT_POD_CIDR, CidrPodNetwork, FakeKubelet

from tests.builders import (
    code_interpreter,
    sandbox,
    sandbox_claim,
    sandbox_pod,
    sandbox_template,
    sandbox_warm_pool,
)
from tests.e2e.deployed import (
    SERVICE_ACCOUNT_USER,
    deploy_manifests,
    install_rbac,
    install_webhooks,
)
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from webhook.api import kinds
from webhook.reconciler.agentsandbox import name_hash

NAMESPACE = "sessions"
WARM_POOL_SIZE = 2
WAIT_S = 60.0
POLL_S = 0.2

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    control_plane: ControlPlane
    kubectl: Kubectl
    controller: AgentSandboxController
    kubelet: FakeKubelet


@pytest.fixture(scope="module")
def warm_cluster(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    work = tmp_path_factory.mktemp("warm")
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_crds(control_plane, CRD_DIR)  # AgentCube's kinds; agent-sandbox's are replaced
        controller = AgentSandboxController(
            build=agent_sandbox_build, control_plane=control_plane, work_dir=work / "as"
        )
        manifests = deploy_manifests(control_plane)
        service_account = install_rbac(control_plane, manifests)
        server = WebhookServer(
            cert_dir=work / "certs",
            log_path=work / "server.log",
            extra_args=("--watch-claims", f"--kubeconfig={service_account}"),
        )
        api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
        with controller:
            server.start()
            try:
                install_webhooks(
                    control_plane, manifests, base_url=server.url, ca_pem=server.ca_pem
                )
                kubectl = Kubectl(control_plane)
                kubectl.ok("create", "namespace", NAMESPACE)
                with FakeKubelet(CoreV1Api(api_client)) as kubelet:
                    yield Cluster(control_plane, kubectl, controller, kubelet)
            finally:
                server.stop()
                api_client.close()


# --- what AgentCube creates ----------------------------------------------------------------------


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def warm_pool_for(interpreter: dict[str, Any]) -> list[dict[str, Any]]:
    """The SandboxTemplate and SandboxWarmPool AgentCube makes for a CodeInterpreter with
    ``warmPoolSize > 0``: both named after it, owned by it; the template's pod metadata
    carries no AgentCube label, and agent-sandbox's own NetworkPolicy is turned off."""
    name = interpreter["metadata"]["name"]
    namespace = interpreter["metadata"]["namespace"]
    template = sandbox_template(name, namespace, image=interpreter["spec"]["template"]["image"])
    pool = sandbox_warm_pool(name, namespace, replicas=interpreter["spec"]["warmPoolSize"])
    for obj in (template, pool):
        obj["metadata"]["ownerReferences"] = [owner_reference(interpreter)]
    return [template, pool]


# --- waiting -----------------------------------------------------------------------------------


def wait_for(what: str, probe: Callable[[], T | None], *, explain: Callable[[], str]) -> T:
    """``probe()``'s first value that is not None; fails after ``WAIT_S`` with ``explain()``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S:.0f}s\n{explain()}")
        time.sleep(POLL_S)


def items(kubectl: Kubectl, resource: str, namespace: str, *selector: str) -> list[dict[str, Any]]:
    listed = kubectl.get(resource, "-n", namespace, *selector)
    return list(listed["items"])


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def is_running_and_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (
        status.get("phase") == "Running"
        and condition(pod, "Ready") == "True"
        and bool(status.get("podIP"))
    )


def state_of(cluster_kubectl: Kubectl, namespace: str, controller: AgentSandboxController) -> str:
    listing = cluster_kubectl(
        "get", "pods,sandboxes,sandboxclaims,sandboxwarmpools", "-n", namespace, "--show-labels"
    )
    return f"{listing.stdout}{listing.stderr}\n{controller.describe_log(20)}"


# --- the warm path ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_pods(warm_cluster: Cluster) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A CodeInterpreter with a warm pool of 2, and its warm pods once Running and Ready."""
    kubectl = warm_cluster.kubectl
    interpreter = code_interpreter(
        "pyinterp", NAMESPACE, {"mode": "Restricted"}, warm_pool_size=WARM_POOL_SIZE
    )
    created = json.loads(kubectl.ok("create", "-o", "json", "-f", "-", input=as_json(interpreter)))
    kubectl.ok("create", "-f", "-", input=as_json(*warm_pool_for(created)))

    def ready_warm_pods() -> list[dict[str, Any]] | None:
        pods = items(kubectl, "pods", NAMESPACE, "-l", kinds.LABEL_WARM_POOL_SANDBOX)
        ready = [pod for pod in pods if is_running_and_ready(pod)]
        return ready if len(ready) == WARM_POOL_SIZE else None

    pods = wait_for(
        "the warm pool's pods Running and Ready",
        ready_warm_pods,
        explain=lambda: state_of(kubectl, NAMESPACE, warm_cluster.controller),
    )
    return created, pods


def test_warm_pool_pods_are_made_by_the_real_controllers_and_run(
    warm_cluster: Cluster, warm_pods: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    _, pods = warm_pods
    node_ips = {pod["status"]["hostIP"] for pod in pods}
    pod_ips = [pod["status"]["podIP"] for pod in pods]
    assert node_ips == {warm_cluster.kubelet.node_ip}
    assert len(set(pod_ips)) == len(pod_ips)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(DEFAULT_POD_CIDR) for ip in pod_ips)
    for pod in pods:
        assert pod["spec"]["nodeName"] == warm_cluster.kubelet.node_name
        # Made by the Sandbox controller for a warm-pool Sandbox of the same name.
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == (
            "Sandbox",
            pod["metadata"]["name"],
            True,
        )
        sandbox_obj = warm_cluster.kubectl.get("sandbox", pod["metadata"]["name"], "-n", NAMESPACE)
        assert condition(sandbox_obj, "Ready") == "True"
        assert sandbox_obj["metadata"]["ownerReferences"][0]["kind"] == "SandboxWarmPool"


def test_name_hash_is_the_controllers_label_function(
    warm_pods: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """The reconciler's reimplementation of agent-sandbox's NameHash gives the labels the real
    controller wrote: the template-ref hash of the template's name, the pool hash of the pool's name,
    the sandbox-name hash of each Sandbox's name."""
    interpreter, pods = warm_pods
    name = interpreter["metadata"]["name"]
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert labels[LABEL_TEMPLATE_REF_HASH] == name_hash(name)  # template "pyinterp"
        assert labels[kinds.LABEL_WARM_POOL_SANDBOX] == name_hash(name)  # pool "pyinterp"
        assert labels[LABEL_SANDBOX_NAME_HASH] == name_hash(pod["metadata"]["name"])
        assert labels[LABEL_POD_TEMPLATE_HASH]  # of the template's JSON: not reimplemented
    assert len({pod["metadata"]["labels"][LABEL_SANDBOX_NAME_HASH] for pod in pods}) == len(pods)


def test_claim_is_adopted_and_the_running_pod_gets_the_sandbox_labels(
    warm_cluster: Cluster, warm_pods: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    kubectl = warm_cluster.kubectl
    interpreter, pods = warm_pods
    interpreter_name = interpreter["metadata"]["name"]
    warm_uids = {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in pods}
    claim_name = f"{interpreter_name}-{uuid.uuid4().hex[:8]}"
    claim = sandbox_claim(
        claim_name,
        NAMESPACE,
        template=interpreter_name,
        labels={kinds.LABEL_SANDBOX_NAME: claim_name, kinds.LABEL_SESSION_ID: "session-7"},
    )
    claim["metadata"]["ownerReferences"] = [owner_reference(interpreter)]
    stored = json.loads(kubectl.ok("create", "-o", "json", "-f", "-", input=as_json(claim)))
    claim_uid = stored["metadata"]["uid"]
    # Our claim webhook gave it the label agent-sandbox copies onto the adopted pod.
    assert stored["spec"]["additionalPodMetadata"]["labels"] == {
        kinds.LABEL_SANDBOX_NAME: claim_name
    }

    def adopted_sandbox_name() -> str | None:
        labels = kubectl.get("sandboxclaim", claim_name, "-n", NAMESPACE)["metadata"]["labels"]
        return labels.get(kinds.LABEL_CLAIMED_SANDBOX)

    explain = lambda: state_of(kubectl, NAMESPACE, warm_cluster.controller)  # noqa: E731
    adopted = wait_for("the claim adopting a warm Sandbox", adopted_sandbox_name, explain=explain)
    assert adopted in warm_uids  # a warm one, not one made for the claim

    def claimed_pod() -> dict[str, Any] | None:
        pod = kubectl.get("pod", adopted, "-n", NAMESPACE)
        return pod if kinds.LABEL_CLAIM_UID in pod["metadata"]["labels"] else None

    pod = wait_for("the adopted pod relabelled", claimed_pod, explain=explain)
    labels = pod["metadata"]["labels"]
    assert pod["metadata"]["uid"] == warm_uids[adopted]  # the same running pod
    assert is_running_and_ready(pod)
    assert labels[kinds.LABEL_CLAIM_UID] == claim_uid
    assert labels[kinds.LABEL_SANDBOX_NAME] == claim_name
    # Not in the claim's additionalPodMetadata: our pod webhook added it from the claim cache.
    assert labels[kinds.LABEL_SESSION_ID] == "session-7"
    # What the real adoption leaves: the warm-pool labels go, the template-ref hash stays.
    assert kinds.LABEL_WARM_POOL_SANDBOX not in labels
    assert LABEL_POD_TEMPLATE_HASH not in labels
    assert labels[LABEL_TEMPLATE_REF_HASH] == name_hash(interpreter_name)
    assert labels[LABEL_SANDBOX_NAME_HASH] == name_hash(adopted)
    # The relabelling was the Sandbox controller's own UPDATE of the pod.
    fields = kubectl.get("pod", adopted, "-n", NAMESPACE, "--show-managed-fields")
    writers = {
        entry["manager"]
        for entry in fields["metadata"]["managedFields"]
        if entry["operation"] == "Update" and "f:labels" in json.dumps(entry.get("fieldsV1"))
    }
    assert "agent-sandbox-controller" in writers, writers

    sandbox_obj = kubectl.get("sandbox", adopted, "-n", NAMESPACE)
    (owner,) = sandbox_obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("SandboxClaim", claim_uid)
    assert sandbox_obj["metadata"]["annotations"][kinds.ANNOTATION_POD_NAME] == adopted

    # The pool makes up for the adopted Sandbox with a new warm pod.
    def refilled() -> list[dict[str, Any]] | None:
        warm = items(kubectl, "pods", NAMESPACE, "-l", kinds.LABEL_WARM_POOL_SANDBOX)
        ready = [p for p in warm if is_running_and_ready(p)]
        return ready if len(ready) == WARM_POOL_SIZE else None

    again = wait_for("the warm pool refilled", refilled, explain=explain)
    assert adopted not in {p["metadata"]["name"] for p in again}


# --- the direct path and the kubelet, on the session's cluster ---------------------------------


def test_sandbox_pod_is_made_run_and_cleaned_up(
    kubectl: Kubectl,
    namespace: str,
    webhook_configurations: list[dict[str, Any]],
    agent_sandbox: AgentSandboxController,
    kubelet: FakeKubelet,
) -> None:
    name = "direct-a1b2c3d4"
    direct = sandbox(name, namespace)
    direct["metadata"]["labels"] = {
        kinds.LABEL_SESSION_ID: "session-1",
        kinds.LABEL_WORKLOAD_NAME: "direct",
    }
    direct["spec"]["podTemplate"]["metadata"]["labels"][kinds.LABEL_SESSION_ID] = "session-1"
    created = json.loads(kubectl.ok("create", "-o", "json", "-f", "-", input=as_json(direct)))
    explain = lambda: state_of(kubectl, namespace, agent_sandbox) + str(list(kubelet.problems))  # noqa: E731

    def created_pod() -> dict[str, Any] | None:
        pods = items(kubectl, "pods", namespace)
        return pods[0] if pods else None

    # Our webhook holds it with the scheduling gate; no reconciler runs on this cluster, so
    # the test lifts the gate the way the reconciler does once the policy exists, under the
    # reconciler's user name (the webhook refuses it to anyone else) with the admin's rights
    # (deploy/'s RBAC is not installed on this session's cluster).
    gated = wait_for("the Sandbox's pod created", created_pod, explain=explain)
    assert gated["spec"]["schedulingGates"] == [{"name": kinds.SCHEDULING_GATE}]
    kubectl.ok(
        "patch", "pod", name, "-n", namespace, "--type=json", "-p",
        json.dumps([{"op": "replace", "path": "/spec/schedulingGates", "value": []}]),
        f"--as={SERVICE_ACCOUNT_USER}", "--as-group=system:masters",
    )  # fmt: skip

    def running_pod() -> dict[str, Any] | None:
        pod = created_pod()
        return pod if pod is not None and is_running_and_ready(pod) else None

    pod = wait_for("the Sandbox's pod Running and Ready", running_pod, explain=explain)
    assert pod["metadata"]["name"] == name
    assert pod["metadata"]["labels"] == {
        kinds.LABEL_SANDBOX_NAME: name,
        kinds.LABEL_SESSION_ID: "session-1",
        LABEL_SANDBOX_NAME_HASH: name_hash(name),
    }
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Sandbox",
        created["metadata"]["uid"],
        True,
    )
    assert pod["spec"]["nodeName"] == kubelet.node_name
    assert pod["status"]["hostIP"] == kubelet.node_ip
    pod_ip = pod["status"]["podIP"]

    def sandbox_ready() -> dict[str, Any] | None:
        obj = kubectl.get("sandbox", name, "-n", namespace)
        return obj if condition(obj, "Ready") == "True" else None

    ready = wait_for("the Sandbox Ready", sandbox_ready, explain=explain)
    assert ready["status"]["podIPs"] == [pod_ip]

    # Deleted: the garbage collector deletes the pod, the kubelet finishes it off.
    kubectl.ok("delete", "sandbox", name, "-n", namespace, "--wait=false")
    wait_for(
        "the Sandbox's pod gone",
        lambda: True if not items(kubectl, "pods", namespace) else None,
        explain=explain,
    )
    assert isinstance(kubelet.network, CidrPodNetwork)
    assert pod_ip not in kubelet.network.addresses().values()  # released


def test_gated_pod_waits_until_its_gates_are_lifted(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet
) -> None:
    gated = sandbox_pod("gated", namespace, labels={"app": "gated"})
    gated["spec"]["schedulingGates"] = [{"name": "example.com/not-yet"}]
    kubectl.ok("create", "-f", "-", input=as_json(gated))
    # A pod created after it runs: the kubelet has seen the gated pod by then (one watch,
    # in the order the API server wrote them).
    kubectl.ok("create", "-f", "-", input=as_json(sandbox_pod("after", namespace, labels={})))
    explain = lambda: kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout  # noqa: E731

    def running(pod_name: str) -> Callable[[], dict[str, Any] | None]:
        def probe() -> dict[str, Any] | None:
            pod = kubectl.get("pod", pod_name, "-n", namespace)
            return pod if is_running_and_ready(pod) else None

        return probe

    wait_for("the ungated pod Running", running("after"), explain=explain)
    pod = kubectl.get("pod", "gated", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]

    kubectl.ok(
        "patch", "pod", "gated", "-n", namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/schedulingGates"}]',
    )  # fmt: skip
    pod = wait_for("the pod Running once ungated", running("gated"), explain=explain)
    assert pod["spec"]["nodeName"] == kubelet.node_name
