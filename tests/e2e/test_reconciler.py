"""The reconciler against a real kube-apiserver (+ kube-controller-manager for garbage
collection), running as `agentcube-netpol run` under exactly the RBAC deploy/ grants.

A module of its own control plane: the reconciler watches the whole cluster, and the
other modules' objects must not be its business. Pods here are created as agent-sandbox's
Sandbox controller creates them (the warm path with the real controller is in
test_agent_sandbox.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds

from tests import builders
from tests.e2e.deployed import (
    NAMESPACE,
    deploy_manifests,
    install_rbac,
    install_webhooks,
)
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.invariant import Recorder, breaches, is_runnable
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.kube.rest import Rest
from webhook.policy.builder import build_network_policy

AGENTCUBE = (
    "--as=system:serviceaccount:agentcube:workloadmanager",
    "--as-group=system:serviceaccounts:agentcube",
)
WAIT_S = 20.0
POLL_S = 0.1
GATE = kinds.SCHEDULING_GATE
RESTRICTED = {
    "mode": "Restricted",
    "egress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 443}]}],
}


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(binaries: Binaries) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_crds(control_plane, CRD_DIR)
        yield control_plane


def grant_agentcube(kubectl: Kubectl) -> None:
    """AgentCube's workload manager, as its own install grants it: sandboxes and claims."""
    kubectl.ok(
        "create", "clusterrole", "agentcube-workload-manager",
        "--verb=get,list,watch,create,update,patch,delete",
        f"--resource={kinds.SANDBOX.plural}.{kinds.SANDBOX.group}",
        f"--resource={kinds.SANDBOX_CLAIM.plural}.{kinds.SANDBOX_CLAIM.group}",
    )  # fmt: skip
    kubectl.ok(
        "create", "clusterrolebinding", "agentcube-workload-manager",
        "--clusterrole=agentcube-workload-manager", "--group=system:serviceaccounts:agentcube",
    )  # fmt: skip


@pytest.fixture(scope="module")
def kube(cluster: ControlPlane) -> Kubectl:
    kubectl = Kubectl(cluster)
    grant_agentcube(kubectl)
    return kubectl


@pytest.fixture(scope="module")
def service_account(cluster: ControlPlane) -> Path:
    return install_rbac(cluster, deploy_manifests(cluster))


def start_run(
    cluster: ControlPlane, service_account: Path, work: Path, *extra: str
) -> WebhookServer:
    server = WebhookServer(
        command="run",
        cert_dir=work / "certs",
        log_path=work / "run.log",
        extra_args=(
            f"--kubeconfig={service_account}",
            f"--lease-namespace={NAMESPACE}",
            "--lease-seconds=4",
            *extra,
        ),
    )
    server.start()
    return server


@contextlib.contextmanager
def run_beside(
    control_plane: ControlPlane, controller: Any, work: Path, *run_args: str
) -> Iterator[tuple[Kubectl, WebhookServer, Rest]]:
    """deploy/'s RBAC, AgentCube's grant, ``run`` as deploy/'s service account with deploy/'s
    webhooks calling it, the agent-sandbox ``controller`` (an AgentSandboxController) and the
    fake kubelet: the product as a cluster runs it, on ``control_plane``."""
    from agentcube_netpol_dev.kubelet import FakeKubelet
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    manifests = deploy_manifests(control_plane)
    service_account = install_rbac(control_plane, manifests)
    kube = Kubectl(control_plane)
    grant_agentcube(kube)
    api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    with controller:
        server = start_run(control_plane, service_account, work, *run_args)
        try:
            install_webhooks(control_plane, manifests, base_url=server.url, ca_pem=server.ca_pem)
            with FakeKubelet(CoreV1Api(api_client)):
                yield kube, server, Rest.from_config(control_plane.admin_kubeconfig)
        finally:
            server.stop()
            api_client.close()


@pytest.fixture(scope="module")
def run(
    cluster: ControlPlane, service_account: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookServer]:
    server = start_run(cluster, service_account, tmp_path_factory.mktemp("run"))
    install_webhooks(cluster, deploy_manifests(cluster), base_url=server.url, ca_pem=server.ca_pem)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ns(kube: Kubectl, run: WebhookServer) -> Iterator[str]:
    name = f"rec-{time.monotonic_ns() % 10**8:08d}"
    kube.ok("create", "namespace", name)
    yield name
    kube("delete", "namespace", name, "--wait=false")


def interpreter(
    ns: str, name: str = "py", policy: Any = RESTRICTED, *, warm: int = 0
) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"image": "python:3.12", "networkPolicy": policy}}
    if warm:
        spec["warmPoolSize"] = warm
    return {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": "CodeInterpreter",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def sandbox(ns: str, name: str = "py-abcd1234", workload: str = "py") -> dict[str, Any]:
    """A Sandbox as AgentCube's workload manager creates it (direct path)."""
    return builders.sandbox(name, ns, workload=workload)


def sandbox_pod(ns: str, owner: dict[str, Any]) -> dict[str, Any]:
    """The pod agent-sandbox's Sandbox controller creates for a Sandbox."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": owner["spec"]["podTemplate"]["metadata"]["labels"],
            "ownerReferences": [
                {
                    "apiVersion": kinds.SANDBOX.api_version,
                    "kind": "Sandbox",
                    "name": name,
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]},
    }


def policy_of(kube: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    result = kube("get", "networkpolicy", name, "-n", ns, "-o", "json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def desired(ns: str, name: str, policy: Any, owner: dict[str, Any]) -> dict[str, Any]:
    built = build_network_policy(
        policy, sandbox=name, namespace=ns, settings=Settings(), owner=owner
    )
    assert built is not None
    return built


def wait_policy(kube: Kubectl, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        found = policy_of(kube, ns, name)
        return found if found is not None and found["spec"] == spec else None

    result: dict[str, Any] = eventually(matches, f"NetworkPolicy {ns}/{name} with the desired spec")
    return result


def test_a_direct_sandbox_gets_its_policy_and_its_pod_waits_for_it(
    cluster: ControlPlane, kube: Kubectl, ns: str
) -> None:
    recorder = Recorder(Rest.from_config(cluster.admin_kubeconfig))
    recorder.start()
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    pod = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox_pod(ns, created)))
    )
    # The pod webhook held it at creation (it could only have been added then).
    assert {"name": GATE} in pod["spec"]["schedulingGates"]

    want = desired(ns, "py-abcd1234", RESTRICTED, created)
    policy = wait_policy(kube, ns, "py-abcd1234", want["spec"])
    # Owned by its Sandbox, and by its pod: deleting the Sandbox leaves it in place until
    # the pod is gone.
    [sandbox_owner, pod_owner] = policy["metadata"]["ownerReferences"]
    assert [sandbox_owner] == want["metadata"]["ownerReferences"]
    assert (pod_owner["kind"], pod_owner["name"]) == ("Pod", "py-abcd1234")
    assert policy["metadata"]["labels"][kinds.MANAGED_BY_LABEL] == "agentcube-netpol"

    def ungated() -> bool:
        gates = kube.get("pod", "py-abcd1234", "-n", ns).get("spec", {}).get("schedulingGates", [])
        return {"name": GATE} not in gates

    eventually(ungated, "the scheduling gate to be lifted")
    # The gate came off only once a policy selected the pod, in the API server's own order
    # (its template's, or the fail-closed one while the template was not yet in the cache).
    events = [e for e in recorder.stop() if (e[3].get("metadata") or {}).get("namespace") == ns]
    assert breaches(events, allowed_specs=lambda _pod: [want["spec"]]) == []
    assert any(e[1] == "Pod" and is_runnable(e[3]) for e in events)  # it saw the release

    eventually(  # Events are sent by a thread of their own, just after the write
        lambda: "NetworkPolicyCreated" in kube.ok("describe", "sandbox", "py-abcd1234", "-n", ns),
        "the NetworkPolicyCreated Event on the Sandbox",
    )


def test_a_deleted_or_edited_policy_comes_back(kube: Kubectl, ns: str) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    want = desired(ns, "py-abcd1234", RESTRICTED, created)
    first = wait_policy(kube, ns, "py-abcd1234", want["spec"])

    kube.ok("delete", "networkpolicy", "py-abcd1234", "-n", ns)
    back = wait_policy(kube, ns, "py-abcd1234", want["spec"])
    assert back["metadata"]["uid"] != first["metadata"]["uid"]

    kube.ok(
        "patch", "networkpolicy", "py-abcd1234", "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"egress": [{}], "ingress": [{}]}}),
    )  # fmt: skip
    wait_policy(kube, ns, "py-abcd1234", want["spec"])


def test_template_changes_override_changes_and_mode_none_reach_the_policy(
    kube: Kubectl, ns: str
) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    wait_policy(kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", RESTRICTED, created)["spec"])

    wider = copy.deepcopy(RESTRICTED)
    wider["egress"].append({"cidrs": ["192.0.2.0/24"]})
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, policy=wider)))
    wait_policy(kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", wider, created)["spec"])

    override = {
        "mode": "Custom",
        "custom": {"egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]},
    }
    kube.ok(
        "annotate", "sandbox", "py-abcd1234", "-n", ns,
        f"{kinds.ANNOTATION_NETWORK_POLICY}={json.dumps(override)}", *AGENTCUBE,
    )  # fmt: skip
    wait_policy(kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", override, created)["spec"])

    kube.ok(
        "annotate",
        "sandbox",
        "py-abcd1234",
        "-n",
        ns,
        f"{kinds.ANNOTATION_NETWORK_POLICY}-",
        *AGENTCUBE,
    )
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, policy={"mode": "None"})))
    eventually(lambda: policy_of(kube, ns, "py-abcd1234") is None, "mode None to delete the policy")


def test_a_deleted_sandbox_takes_its_policy_with_it(kube: Kubectl, ns: str) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    wait_policy(kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", RESTRICTED, created)["spec"])
    kube.ok("delete", "sandbox", "py-abcd1234", "-n", ns)
    eventually(
        lambda: policy_of(kube, ns, "py-abcd1234") is None, "the policy to go with its sandbox"
    )


def test_a_policy_outlives_its_sandbox_while_the_pod_is_still_there(
    cluster: ControlPlane, kube: Kubectl, ns: str
) -> None:
    """A pod still stopping (here: a pod that stays) when its Sandbox is deleted keeps its
    policy: the garbage collector deletes the policy once its last owner, the pod, is gone."""
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    name = "py-l1ng3r00"
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns, name)))
    )
    pod = sandbox_pod(ns, created)
    del pod["metadata"]["ownerReferences"]  # not collected with the Sandbox: it lingers
    kube.ok("create", "-f", "-", input=as_json(pod))
    spec = desired(ns, name, RESTRICTED, created)["spec"]
    eventually(
        lambda: (
            (p := policy_of(kube, ns, name)) is not None
            and p["spec"] == spec
            and any(o["kind"] == "Pod" for o in p["metadata"]["ownerReferences"])
        ),
        "the policy, owned by the pod too",
    )
    kube.ok("delete", "sandbox", name, "-n", ns)
    time.sleep(3.0)  # the garbage collector and the reconciler have both seen the delete
    kept = policy_of(kube, ns, name)
    assert kept is not None and kept["spec"] == spec
    kube.ok("delete", "pod", name, "-n", ns)
    eventually(lambda: policy_of(kube, ns, name) is None, "the policy to go with the pod")


def test_an_isolated_warm_pool_gets_its_baseline(kube: Kubectl, ns: str) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, warm=2)))
    policy = eventually(
        lambda: policy_of(kube, ns, "netpol-baseline.py"), "the warm pool's baseline"
    )
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"agents.x-k8s.io/sandbox-template-ref-hash": "584e6522"}
    }
    assert "egress" not in policy["spec"]
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns, warm=0)))
    eventually(lambda: policy_of(kube, ns, "netpol-baseline.py") is None, "the baseline to go")


def test_no_direct_sandbox_pod_is_ever_runnable_without_its_policy(
    cluster: ControlPlane, kube: Kubectl, ns: str
) -> None:
    """Sandboxes and their pods created as fast as AgentCube and agent-sandbox would, while
    every pod and NetworkPolicy change is recorded in the API server's order."""
    rest = Rest.from_config(cluster.admin_kubeconfig)
    recorder = Recorder(rest)
    recorder.start()
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    names = [f"py-inv{i:05d}" for i in range(6)]
    specs: dict[str, Any] = {}
    for name in names:
        # The pod first, then its Sandbox: the tightest race a controller could make.
        pod = sandbox_pod(ns, {**sandbox(ns, name), "metadata": {"name": name, "uid": "x"}})
        del pod["metadata"]["ownerReferences"]
        rest.create(kinds.POD, ns, pod)
        created = rest.create(kinds.SANDBOX, ns, sandbox(ns, name))
        specs[name] = desired(ns, name, RESTRICTED, created)["spec"]

    def all_released() -> bool:
        pods = kube.get("pods", "-n", ns)["items"]
        return len(pods) == len(names) and all(
            {"name": GATE} not in (p["spec"].get("schedulingGates") or []) for p in pods
        )

    eventually(all_released, "every sandbox pod to be released")
    events = [e for e in recorder.stop() if (e[3].get("metadata") or {}).get("namespace") == ns]

    def allowed(pod: Any) -> list[Any]:
        return [specs[pod["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME]]]

    assert breaches(events, allowed_specs=allowed) == []
    released = {e[3]["metadata"]["name"] for e in events if e[1] == "Pod" and is_runnable(e[3])}
    assert released == set(names)  # the check above saw every pod running


def test_a_tenant_cannot_lift_the_gate_only_the_reconciler_can(
    cluster: ControlPlane, kube: Kubectl, ns: str, service_account: Path
) -> None:
    """A tenant who may patch its pods, with a sandbox pod whose NetworkPolicy will not come
    (its Sandbox does not exist: as if the reconciler were down or refused the write), tries
    to let it run by removing the gate itself."""
    pod = sandbox_pod(
        ns, {**sandbox(ns, "py-n0sb0x00"), "metadata": {"name": "py-n0sb0x00", "uid": "x"}}
    )
    del pod["metadata"]["ownerReferences"]
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(pod)))
    assert created["spec"]["schedulingGates"] == [{"name": GATE}]
    kube.ok("create", "role", "pod-editor", "--verb=get,update,patch", "--resource=pods", "-n", ns)
    kube.ok(
        "create", "rolebinding", "tenants-pod-editor", "--role=pod-editor", "--group=tenants",
        "-n", ns,
    )  # fmt: skip
    tenant = cluster.mint_user("tenant-bob", groups=["tenants"])

    # RBAC lets the tenant patch the pod...
    kube.ok("label", "pod", "py-n0sb0x00", "-n", ns, "app=mine", user=tenant)
    # ...but not take our gate off, whichever way it words it.
    tries = [
        kube(
            "patch", "pod", "py-n0sb0x00", "-n", ns, "--type=json", "-p",
            '[{"op": "remove", "path": "/spec/schedulingGates/0"}]', user=tenant,
        ),
        kube(
            "patch", "pod", "py-n0sb0x00", "-n", ns, "--type=merge", "-p",
            '{"spec": {"schedulingGates": null}}', user=tenant,
        ),
    ]  # fmt: skip
    for result in tries:
        assert result.returncode != 0, result.stdout
        assert 'admission webhook "pod-labels.netpol.agentcube.io" denied' in result.stderr
        assert "spec.schedulingGates: only agentcube-netpol's reconciler" in result.stderr
        assert f"may remove the gate {GATE}" in result.stderr
        assert "tenant-bob may not" in result.stderr
    # Nor write the canary the --isolation-canary init container checks (it would have it
    # start before the policy is enforced).
    canary = kube(
        "annotate", "pod", "py-n0sb0x00", "-n", ns,
        f"{kinds.ANNOTATION_ISOLATION_CANARY}=10.0.0.1:80", user=tenant,
    )  # fmt: skip
    assert canary.returncode != 0, canary.stdout
    assert (
        "metadata.annotations[netpol.agentcube.io/isolation-canary]: only agentcube-netpol's "
        "reconciler" in canary.stderr
    )
    still = kube.get("pod", "py-n0sb0x00", "-n", ns)
    assert kinds.ANNOTATION_ISOLATION_CANARY not in still["metadata"].get("annotations", {})
    assert still["spec"]["schedulingGates"] == [{"name": GATE}]
    assert still["metadata"]["labels"]["app"] == "mine"
    assert "nodeName" not in still["spec"]

    # deploy/'s service account, which `run` reconciles as, may (it does, once the policy
    # exists: test_a_direct_sandbox_gets_its_policy_and_its_pod_waits_for_it).
    kube.ok(
        "patch", "pod", "py-n0sb0x00", "-n", ns, "--type=json", "-p",
        '[{"op": "remove", "path": "/spec/schedulingGates/0"}]', user=service_account,
    )  # fmt: skip
    assert not kube.get("pod", "py-n0sb0x00", "-n", ns)["spec"].get("schedulingGates")


def audit(kube: Kubectl, service_account: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "audit", f"--kubeconfig={service_account}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_reports_what_leaves_a_sandbox_less_isolated(
    kube: Kubectl, ns: str, service_account: Path
) -> None:
    kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
    created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
    kube.ok("create", "-f", "-", input=as_json(sandbox_pod(ns, created)))
    wait_policy(kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", RESTRICTED, created)["spec"])
    eventually(lambda: audit(kube, service_account, "-n", ns).returncode == 0, "a clean audit")
    clean = audit(kube, service_account, "-n", ns)
    assert clean.stdout.startswith("no findings")

    allow_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "tenant-allow-all", "namespace": ns},
        "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]},
    }
    created_policy = kube("create", "-f", "-", input=as_json(allow_all))
    assert created_policy.returncode == 0, created_policy.stderr
    # The widening webhook, answering from run's caches, told the tenant at once.
    assert (
        "Warning: spec.podSelector: selects sandbox pod py-abcd1234; its rules loosen their isolation"
        in created_policy.stderr
    )
    found = audit(kube, service_account, "-n", ns)
    assert found.returncode == 1, found.stderr
    assert f"{ns}  tenant-allow-all  widens" in found.stdout
    as_json_output = audit(kube, service_account, "-n", ns, "-o", "json")
    assert json.loads(as_json_output.stdout)["findings"][0]["name"] == "tenant-allow-all"


def _without_verb(rules: list[dict[str, Any]], resource: str, verb: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(rules)
    for rule in out:
        if resource in rule.get("resources", []):
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return out


@pytest.mark.parametrize(
    ("resource", "verb"),
    [("networkpolicies", "create"), ("pods", "patch")],
    ids=["no create on networkpolicies", "no patch on pods"],
)
def test_each_rule_deploy_grants_is_needed(
    kube: Kubectl, ns: str, run: WebhookServer, resource: str, verb: str
) -> None:
    """With one verb taken from deploy/'s ClusterRole, what it is for stops happening."""
    role = kube.get("clusterrole", "agentcube-netpol")
    granted = role["rules"]
    role["rules"] = _without_verb(granted, resource, verb)
    assert role["rules"] != granted
    errors_before = run.metric('agentcube_netpol_api_errors_total{status="403"}') or 0.0
    kube.ok("replace", "-f", "-", input=as_json(role))
    try:
        kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
        created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
        kube.ok("create", "-f", "-", input=as_json(sandbox_pod(ns, created)))
        eventually(
            lambda: (
                (run.metric('agentcube_netpol_api_errors_total{status="403"}') or 0) > errors_before
            ),
            "the reconciler to be refused",
        )
        gates = kube.get("pod", "py-abcd1234", "-n", ns)["spec"].get("schedulingGates") or []
        assert {"name": GATE} in gates  # still held: never released without its policy
        if resource == "networkpolicies":
            assert policy_of(kube, ns, "py-abcd1234") is None
    finally:
        role = kube.get("clusterrole", "agentcube-netpol")
        role["rules"] = granted
        kube.ok("replace", "-f", "-", input=as_json(role))
    # Granted again, the retries (backed off) get through.
    want = desired(ns, "py-abcd1234", RESTRICTED, created)
    wait_policy(kube, ns, "py-abcd1234", want["spec"])
    eventually(
        lambda: (
            {"name": GATE}
            not in (kube.get("pod", "py-abcd1234", "-n", ns)["spec"].get("schedulingGates") or [])
        ),
        "the pod to be released once the rule is back",
        timeout_s=40.0,
    )


def test_one_replica_writes_and_another_takes_over_when_it_goes(
    kube: Kubectl,
    ns: str,
    run: WebhookServer,
    service_account: Path,
    tmp_path: Path,
) -> None:
    """Last in the module: it stops and restarts the module's `run`."""
    second = start_run(kube.control_plane, service_account, tmp_path)
    try:
        eventually(lambda: run.metric("agentcube_netpol_leader") == 1, "the first replica to lead")
        assert second.metric("agentcube_netpol_leader") == 0
        kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
        created = json.loads(kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns))))
        before = wait_policy(
            kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", RESTRICTED, created)["spec"]
        )
        assert second.metric('agentcube_netpol_writes_total{write="create"}') == 0

        # A clean stop releases the Lease: the other replica leads at once.
        run.stop()
        eventually(lambda: second.metric("agentcube_netpol_leader") == 1, "a takeover", 3.0)
        created2 = json.loads(
            kube.ok("create", "-o", "json", "-f", "-", input=as_json(sandbox(ns, "py-efgh5678")))
        )
        wait_policy(
            kube, ns, "py-efgh5678", desired(ns, "py-efgh5678", RESTRICTED, created2)["spec"]
        )
        # Its full pass found the first policy as it should be and wrote nothing to it.
        assert (
            policy_of(kube, ns, "py-abcd1234")["metadata"]["resourceVersion"]
            == (before["metadata"]["resourceVersion"])
        )

        # Killed, it cannot release: the first replica (back, standing by) waits out the lease.
        run.start()
        assert run.metric("agentcube_netpol_leader") == 0
        second.kill()
        eventually(lambda: run.metric("agentcube_netpol_leader") == 1, "a takeover after expiry")
        kube.ok("delete", "networkpolicy", "py-efgh5678", "-n", ns)
        wait_policy(
            kube, ns, "py-efgh5678", desired(ns, "py-efgh5678", RESTRICTED, created2)["spec"]
        )
    finally:
        second.stop()
        if not run.running:
            run.start()
