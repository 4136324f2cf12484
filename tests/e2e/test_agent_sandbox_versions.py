"""The warm path and the direct path with the real agent-sandbox controller of each newer line.

A cluster per version with only that release's own CRDs installed (v1.0.1: v1beta1 only, no
v1alpha1 at all), deploy/'s manifests (webhooks and RBAC) applied unchanged, `run` under
deploy/'s RBAC, the real controller, and the fake kubelet. AgentCube's objects are made in
v1beta1 (a claim names its warm pool, which AgentCube names after the CodeInterpreter). Each
version runs twice:

- default: the controller's default allow-list (sandbox.users.io), so
  ``--claim-label-injection=auto`` must decide "off": claims are left alone (one carrying our
  label is refused by the controller) and the claimed pod still ends up selected by its own
  NetworkPolicy, labelled by the pod webhook and the reconciler, and it is said: a
  ClaimLabelNotInjected Event on the claim, an `audit` finding with the one-line fix;
- allow-listed: runtime.agentcube.io added, in the ConfigMap `run` reads and in the file the
  controller reads (``/etc/sandbox-config/allowed-label-domains``, in a mount namespace of
  its own: the host's /etc is never written), so "auto" decides "on" and the label reaches
  the pod at adoption (no such Event, no such finding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxController, find_agent_sandbox
from agentcube_netpol_dev.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    load_manifests,
)

from tests.builders import code_interpreter, in_version, sandbox_claim
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.invariant import Recorder, breaches, is_runnable, is_sandbox_pod
from tests.e2e.test_agent_sandbox import is_running_and_ready, owner_reference, warm_pool_for
from tests.e2e.test_reconciler import (
    AGENTCUBE,
    RESTRICTED,
    desired,
    eventually,
    policy_of,
    run_beside,
    sandbox,
)
from webhook.api import kinds
from webhook.kube.rest import Rest
from webhook.reconciler.agentsandbox import name_hash

WAIT_S = 60.0
# v0.5.6 serves v1beta1 and v1alpha1; its conversion webhook is off here (the harness installs
# its CRDs with conversion None), so AgentCube's objects are written in v1beta1 as in v1.0.
VERSIONS = ("v0.5.6", "v1.0.1")
V1BETA1 = "v1beta1"
ALLOW_LISTED = "sandbox.users.io,runtime.agentcube.io"
VARIANTS = [
    pytest.param((version, allow_listed), id=f"{version}{'-allow-listed' if allow_listed else ''}")
    for version in VERSIONS
    for allow_listed in (False, True)
]


@dataclass(frozen=True)
class Cluster:
    version: str
    control_plane: ControlPlane
    kube: Kubectl
    run: WebhookServer
    rest: Rest
    controller: AgentSandboxController
    allow_listed: bool


def in_v1beta1(obj: dict[str, Any]) -> dict[str, Any]:
    """An agent-sandbox object as AgentCube writes it for v0.5+."""
    return in_version(obj, V1BETA1)


def install_agentcube_crds(control_plane: ControlPlane) -> None:
    """deploy/'s AgentRuntime and CodeInterpreter CRDs only: agent-sandbox's come from the
    release under test."""
    crds = [
        doc
        for doc in load_manifests(CRD_DIR, control_plane=control_plane)
        if doc.get("kind") == "CustomResourceDefinition"
        and doc["spec"]["group"] == kinds.AGENTCUBE_GROUP
    ]
    assert crds, f"no AgentCube CRDs in {CRD_DIR}"
    kube = Kubectl(control_plane)
    kube.ok("apply", "--server-side", "-f", "-", input=as_json(*crds))
    kube.ok(
        "wait", "--for=condition=Established", "--timeout=30s",
        *[f"customresourcedefinition/{crd['metadata']['name']}" for crd in crds],
    )  # fmt: skip


@pytest.fixture(scope="module", params=VARIANTS)
def cluster(
    request: pytest.FixtureRequest, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    version, allow_listed = request.param
    try:
        build = find_agent_sandbox(os.environ, version)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    work = tmp_path_factory.mktemp(f"agent-sandbox-{version}")
    allow_list = ALLOW_LISTED if allow_listed else None
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_agentcube_crds(control_plane)
        controller = AgentSandboxController(
            build=build,
            control_plane=control_plane,
            work_dir=work / "as",
            allowed_label_domains=allow_list,
        )
        controller.install()  # its CRDs first: `run` discovers their versions at start
        if allow_list is not None:  # what `run` reads (the controller reads its file)
            Kubectl(control_plane).ok(
                "create", "configmap", kinds.AGENT_SANDBOX_CONFIG_MAP,
                f"--namespace={kinds.AGENT_SANDBOX_NAMESPACE}",
                f"--from-literal={kinds.ALLOWED_LABEL_DOMAINS_KEY}={allow_list}",
            )  # fmt: skip
        with run_beside(control_plane, controller, work) as (kube, run, rest):
            yield Cluster(version, control_plane, kube, run, rest, controller, allow_listed)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"v-{uuid.uuid4().hex[:6]}"
    cluster.kube.ok("create", "namespace", name)
    yield name
    cluster.kube("delete", "namespace", name, "--wait=false")


def check_invariant(
    ns: str, events: list[Any], specs: dict[str, Any], baselines: list[Any]
) -> None:
    """No recorded moment found a runnable sandbox pod selected by nothing, or by anything
    looser than its own policy (or the warm pool's baseline)."""

    def allowed(pod: Any) -> list[Any]:
        labels = pod["metadata"].get("labels") or {}
        own = specs.get(labels.get(kinds.LABEL_SANDBOX_NAME, ""))
        return [s for s in (own, *baselines) if s is not None]

    events = [e for e in events if (e[3].get("metadata") or {}).get("namespace") == ns]
    assert breaches(events, allowed_specs=allowed) == []
    assert any(e[1] == "Pod" and is_sandbox_pod(e[3]) and is_runnable(e[3]) for e in events)


def selects(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels") or {}
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())


def claimed_pod(kube: Kubectl, claims: str, ns: str, claim_name: str) -> dict[str, Any] | None:
    """The pod of the Sandbox a claim adopted (v0.5.x may leave claim-uid off it), read
    through ``claims`` (a resource name kubectl takes, in whichever version is served)."""
    status = kube.get(claims, claim_name, "-n", ns).get("status") or {}
    adopted = (status.get("sandbox") or {}).get("name")
    for candidate in kube.get("pods", "-n", ns)["items"]:
        owners = candidate["metadata"].get("ownerReferences") or []
        if adopted and any(o.get("controller") and o["name"] == adopted for o in owners):
            return candidate
    return None


def isolated_by_own_policy(
    kube: Kubectl, ns: str, claim_name: str, pod: dict[str, Any], want: dict[str, Any]
) -> dict[str, Any]:
    """The claim's own NetworkPolicy, once it is as ``want`` says and selects ``pod``."""

    def isolated() -> dict[str, Any] | None:
        policy = policy_of(kube, ns, claim_name)
        now = kube.get("pod", pod["metadata"]["name"], "-n", ns)
        if policy is None or policy["spec"] != want["spec"] or not selects(policy, now):
            return None
        return policy

    found: dict[str, Any] = eventually(
        isolated, "the claimed pod selected by its own policy", WAIT_S
    )
    return found


def test_run_watches_v1beta1_wherever_it_is_served(cluster: Cluster) -> None:
    served = cluster.kube.ok("api-versions").split()
    assert "extensions.agents.x-k8s.io/v1beta1" in served
    # v1.0 serves v1beta1 only; v0.5 both.
    v1alpha1 = "extensions.agents.x-k8s.io/v1alpha1" in served
    assert v1alpha1 is cluster.version.startswith("v0.5."), served
    log = cluster.run.log_path.read_text(encoding="utf-8", errors="replace")
    assert "SandboxClaim extensions.agents.x-k8s.io/v1beta1" in log
    assert f"claim label injection {'on' if cluster.allow_listed else 'off'}" in log


def test_a_claimed_warm_pod_ends_up_selected_by_its_own_policy(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    interpreter = json.loads(
        kube.ok(
            "create", "-o", "json", "-f", "-",
            input=as_json(code_interpreter("pyv", ns, RESTRICTED, warm_pool_size=2)),
        )
    )  # fmt: skip
    kube.ok("create", "-f", "-", input=as_json(*map(in_v1beta1, warm_pool_for(interpreter))))

    def warm_running() -> bool:
        pods = kube.get(
            "pods", "-n", ns, "-l", f"agents.x-k8s.io/sandbox-template-ref-hash={name_hash('pyv')}"
        )["items"]
        return len([p for p in pods if is_running_and_ready(p)]) >= 2

    eventually(
        warm_running, f"the warm pool running ({cluster.controller.describe_log(10)})", WAIT_S
    )
    baseline = eventually(lambda: policy_of(kube, ns, "netpol-baseline.pyv"), "the baseline")
    recorder = Recorder(cluster.rest)
    recorder.start()
    claim_name = f"pyv-{uuid.uuid4().hex[:8]}"
    claim = in_v1beta1(
        sandbox_claim(
            claim_name,
            ns,
            template="pyv",
            labels={kinds.LABEL_SANDBOX_NAME: claim_name, kinds.LABEL_SESSION_ID: "session-1"},
        )
    )
    claim["metadata"]["ownerReferences"] = [owner_reference(interpreter)]
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE, input=as_json(claim))
    )
    # Left alone unless allow-listed: the controller would refuse our label otherwise.
    injected = (created["spec"].get("additionalPodMetadata") or {}).get("labels") or {}
    assert injected == ({kinds.LABEL_SANDBOX_NAME: claim_name} if cluster.allow_listed else {})
    uid = created["metadata"]["uid"]

    try:
        pod = eventually(
            lambda: claimed_pod(kube, "sandboxclaim", ns, claim_name),
            "the real claim controller to adopt a warm pod",
            WAIT_S,
        )
    except AssertionError as exc:
        claim_now = kube.get("sandboxclaim", claim_name, "-n", ns)
        pods = [
            (p["metadata"]["name"], p["metadata"].get("ownerReferences"))
            for p in kube.get("pods", "-n", ns)["items"]
        ]
        raise AssertionError(f"{exc}; claim {claim_now.get('status')}; pods {pods}") from None
    want = desired(ns, claim_name, RESTRICTED, created)
    policy = isolated_by_own_policy(kube, ns, claim_name, pod, want)
    # The sandbox is its controller; its pods are owners too (see plan.py).
    [owner] = [o for o in policy["metadata"]["ownerReferences"] if o.get("controller")]
    assert (owner["apiVersion"], owner["kind"], owner["uid"]) == (
        "extensions.agents.x-k8s.io/v1beta1",
        "SandboxClaim",
        uid,
    )
    status = kube.get("sandboxclaim", claim_name, "-n", ns).get("status") or {}
    assert not any(c.get("reason") == "InvalidMetadata" for c in status.get("conditions") or []), (
        status
    )
    check_invariant(ns, recorder.stop(), {claim_name: want["spec"]}, [baseline["spec"]])
    # Said where the user looks: an Event on the claim, when the label came from us.
    if cluster.allow_listed:
        assert claim_label_events(kube, ns, claim_name) == []
    else:
        [event] = eventually(
            lambda: claim_label_events(kube, ns, claim_name), "the ClaimLabelNotInjected Event"
        )
        assert pod["metadata"]["name"] in event["message"]
        assert kinds.ALLOW_LIST_FIX in event["message"]


def claim_label_events(kube: Kubectl, ns: str, claim: str) -> list[dict[str, Any]]:
    return [
        event
        for event in kube.get("events", "-n", ns)["items"]
        if event.get("reason") == "ClaimLabelNotInjected"
        and event["involvedObject"].get("kind") == kinds.SANDBOX_CLAIM.kind
        and event["involvedObject"].get("name") == claim
    ]


def test_audit_reports_claim_label_injection_off_with_the_fix(cluster: Cluster) -> None:
    """`audit`, under deploy/'s RBAC as `run` is: the default allow-list is a finding."""
    [kubeconfig] = [a for a in cluster.run.extra_args if a.startswith("--kubeconfig=")]
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "audit", kubeconfig, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    found = [
        f
        for f in json.loads(result.stdout)["findings"]
        if f["problem"] == "claim-label-not-injected"
    ]
    if cluster.allow_listed:
        assert found == []
    else:
        assert [(f["namespace"], f["name"]) for f in found] == [
            (kinds.AGENT_SANDBOX_NAMESPACE, kinds.AGENT_SANDBOX_CONFIG_MAP)
        ]
        assert kinds.ALLOW_LIST_FIX in found[0]["detail"]
        assert result.returncode == 1


def test_a_direct_sandbox_pod_runs_only_once_isolated(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    kube.ok("apply", "-f", "-", input=as_json(code_interpreter("pyd", ns, RESTRICTED)))
    recorder = Recorder(cluster.rest)
    recorder.start()
    name = "pyd-abcd1234"
    created = json.loads(
        kube.ok(
            "create", "-o", "json", "-f", "-", input=as_json(in_v1beta1(sandbox(ns, name, "pyd")))
        )
    )
    want = desired(ns, name, RESTRICTED, created)

    def running() -> dict[str, Any] | None:
        result = kube("get", "pod", name, "-n", ns, "-o", "json")
        if result.returncode != 0:
            return None
        pod: dict[str, Any] = json.loads(result.stdout)
        return pod if is_running_and_ready(pod) else None

    pod = eventually(
        running, f"the Sandbox's pod running ({cluster.controller.describe_log(20)})", WAIT_S
    )
    policy = policy_of(kube, ns, name)
    assert policy is not None and policy["spec"] == want["spec"] and selects(policy, pod)
    assert policy["metadata"]["ownerReferences"][0]["apiVersion"] == "agents.x-k8s.io/v1beta1"
    events = recorder.stop()
    check_invariant(ns, events, {name: want["spec"]}, [])
    pod_events = [e for e in events if e[1] == "Pod" and e[3]["metadata"]["name"] == name]
    assert {"name": kinds.SCHEDULING_GATE} in (
        pod_events[0][3]["spec"].get("schedulingGates") or []
    )


def test_the_controller_accepts_our_label_only_where_allow_listed(
    cluster: Cluster, ns: str
) -> None:
    """Why "auto" decides as it does: the release's own claim controller refuses our label in
    additionalPodMetadata unless runtime.agentcube.io is allow-listed."""
    claim = in_v1beta1(sandbox_claim("labelled", ns, template="nopool"))
    claim["spec"]["additionalPodMetadata"] = {"labels": {kinds.LABEL_SANDBOX_NAME: "labelled"}}
    cluster.kube.ok("create", "-f", "-", input=as_json(claim))

    def reasons() -> list[str] | None:
        status = cluster.kube.get("sandboxclaim", "labelled", "-n", ns).get("status") or {}
        found = [str(c.get("reason")) for c in status.get("conditions") or []]
        return found or None

    found = eventually(reasons, f"a condition ({cluster.controller.describe_log(10)})", WAIT_S)
    assert ("InvalidMetadata" in found) is not cluster.allow_listed, found
