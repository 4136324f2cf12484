"""The reconciler with the real agent-sandbox controller (v0.4.6) and the fake kubelet.

A cluster of this module's own: kube-apiserver + kube-controller-manager, the real
agent-sandbox controller (its warm pool makes the Sandboxes and pods, its claim controller
adopts them), the fake kubelet running every ungated pod, and `agentcube-netpol run` under
deploy/'s RBAC with deploy/'s webhooks calling it. No test writes agent-sandbox's adoption
by hand. Every pod and NetworkPolicy change is recorded in the API server's order, and no
moment may find a running sandbox pod selected by nothing or by something looser.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild, AgentSandboxController
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds

from tests.builders import code_interpreter, sandbox_claim
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.invariant import Recorder, breaches, is_runnable, is_sandbox_pod
from tests.e2e.test_agent_sandbox import is_running_and_ready, owner_reference, warm_pool_for
from tests.e2e.test_reconciler import (
    AGENTCUBE,
    RESTRICTED,
    _without_verb,
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


@dataclass(frozen=True)
class Warm:
    control_plane: ControlPlane
    kube: Kubectl
    run: WebhookServer
    rest: Rest


@pytest.fixture(scope="module")
def warm(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Warm]:
    with with_agent_sandbox(
        binaries, agent_sandbox_build, tmp_path_factory.mktemp("warm-reconciler")
    ) as made:
        yield made


@contextlib.contextmanager
def with_agent_sandbox(
    binaries: Binaries, agent_sandbox_build: AgentSandboxBuild, work: Path, *run_args: str
) -> Iterator[Warm]:
    """A control plane of its own with the CRDs, the real agent-sandbox controller, the fake
    kubelet and ``run`` (with ``run_args``) under deploy/'s RBAC with deploy/'s webhooks
    (``run_beside``)."""
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_crds(control_plane, CRD_DIR)
        controller = AgentSandboxController(
            build=agent_sandbox_build, control_plane=control_plane, work_dir=work / "as"
        )
        with run_beside(control_plane, controller, work, *run_args) as (kube, run, rest):
            yield Warm(control_plane, kube, run, rest)


@pytest.fixture
def ns(warm: Warm) -> Iterator[str]:
    """A namespace per test: the invariant is checked over everything in it."""
    name = f"sessions-{uuid.uuid4().hex[:6]}"
    warm.kube.ok("create", "namespace", name)
    yield name
    warm.kube("delete", "namespace", name, "--wait=false")


def warm_pool(warm: Warm, ns: str, name: str, size: int = 2) -> dict[str, Any]:
    """A CodeInterpreter with a warm pool, as AgentCube sets it up; once its pods run."""
    interpreter = code_interpreter(name, ns, RESTRICTED, warm_pool_size=size)
    created = json.loads(
        warm.kube.ok("create", "-o", "json", "-f", "-", input=as_json(interpreter))
    )
    warm.kube.ok("create", "-f", "-", input=as_json(*warm_pool_for(created)))

    def running() -> bool:
        pods = warm.kube.get(
            "pods", "-n", ns, "-l", f"agents.x-k8s.io/sandbox-template-ref-hash={name_hash(name)}"
        )
        return len([p for p in pods["items"] if is_running_and_ready(p)]) >= size

    eventually(running, f"the warm pool of {name} running", WAIT_S)
    return created


def claim_session(warm: Warm, ns: str, interpreter: dict[str, Any]) -> dict[str, Any]:
    name = interpreter["metadata"]["name"]
    claim_name = f"{name}-{uuid.uuid4().hex[:8]}"
    claim = sandbox_claim(
        claim_name,
        ns,
        template=name,
        labels={kinds.LABEL_SANDBOX_NAME: claim_name, kinds.LABEL_SESSION_ID: "session-1"},
    )
    claim["metadata"]["ownerReferences"] = [owner_reference(interpreter)]
    created: dict[str, Any] = json.loads(
        warm.kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE, input=as_json(claim))
    )
    return created


def adopted_pod(warm: Warm, ns: str, claim: dict[str, Any]) -> dict[str, Any]:
    uid = claim["metadata"]["uid"]

    def find() -> dict[str, Any] | None:
        pods = warm.kube.get("pods", "-n", ns, "-l", f"{kinds.LABEL_CLAIM_UID}={uid}")["items"]
        return pods[0] if pods else None

    found: dict[str, Any] = eventually(
        find, "the real claim controller to adopt a warm pod", WAIT_S
    )
    return found


def recorded(warm: Warm) -> Recorder:
    recorder = Recorder(warm.rest)
    recorder.start()
    return recorder


def check_invariant(
    ns: str, events: list[Any], specs: dict[str, Any], baselines: list[Any]
) -> None:
    def allowed(pod: Any) -> list[Any]:
        labels = pod["metadata"].get("labels") or {}
        own = specs.get(labels.get(kinds.LABEL_SANDBOX_NAME, ""))
        return [s for s in (own, *baselines) if s is not None]

    events = [e for e in events if (e[3].get("metadata") or {}).get("namespace") == ns]
    assert breaches(events, allowed_specs=allowed) == []
    # Not vacuous: the check saw a sandbox pod that could run.
    assert any(e[1] == "Pod" and is_sandbox_pod(e[3]) and is_runnable(e[3]) for e in events)


def test_a_claimed_warm_pod_is_isolated_from_the_claim_on(warm: Warm, ns: str) -> None:
    interpreter = warm_pool(warm, ns, "pyup")
    baseline = eventually(lambda: policy_of(warm.kube, ns, "netpol-baseline.pyup"), "the baseline")
    recorder = recorded(warm)
    claim = claim_session(warm, ns, interpreter)
    name = claim["metadata"]["name"]
    want = desired(ns, name, RESTRICTED, claim)
    eventually(
        lambda: (p := policy_of(warm.kube, ns, name)) is not None and p["spec"] == want["spec"],
        "the claim's policy",
    )
    pod = adopted_pod(warm, ns, claim)
    eventually(
        lambda: (
            warm.kube.get("pod", pod["metadata"]["name"], "-n", ns)["metadata"]["labels"].get(
                kinds.LABEL_SANDBOX_NAME
            )
            == name
        ),
        "the claimed pod labelled",
    )
    policy = policy_of(warm.kube, ns, name)
    assert policy is not None
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "SandboxClaim"
    check_invariant(ns, recorder.stop(), {name: want["spec"]}, [baseline["spec"]])


def test_with_the_pod_webhook_down_the_reconciler_labels_the_claimed_pod(
    warm: Warm, ns: str
) -> None:
    interpreter = warm_pool(warm, ns, "pydown")
    baseline = eventually(
        lambda: policy_of(warm.kube, ns, "netpol-baseline.pydown"), "the baseline"
    )
    mutating = warm.kube.get("mutatingwebhookconfiguration", "agentcube-netpol")
    hooks = mutating["webhooks"]
    index = next(i for i, h in enumerate(hooks) if h["name"] == "pods.netpol.agentcube.io")
    warm.kube.ok(
        "patch", "mutatingwebhookconfiguration", "agentcube-netpol", "--type=json",
        "-p", json.dumps([{"op": "remove", "path": f"/webhooks/{index}"}]),
    )  # fmt: skip
    try:
        recorder = recorded(warm)
        claim = claim_session(warm, ns, interpreter)
        name = claim["metadata"]["name"]
        pod = adopted_pod(warm, ns, claim)
        pod_name = pod["metadata"]["name"]

        def labelled() -> dict[str, Any] | None:
            now = warm.kube.get("pod", pod_name, "-n", ns)
            return now if now["metadata"]["labels"].get(kinds.LABEL_SANDBOX_NAME) == name else None

        now = eventually(labelled, "the reconciler to label the claimed pod", WAIT_S)
        assert now["metadata"]["labels"][kinds.LABEL_SESSION_ID] == "session-1"
        want = desired(ns, name, RESTRICTED, claim)
        check_invariant(ns, recorder.stop(), {name: want["spec"]}, [baseline["spec"]])
        fields = warm.kube.get("pod", pod_name, "-n", ns, "--show-managed-fields")
        managers = {e["manager"] for e in fields["metadata"]["managedFields"]}
        assert "agentcube-netpol" in managers  # the reconciler's patch, not the webhook's
    finally:
        del mutating["metadata"]["resourceVersion"]  # put back whole, whatever changed since
        warm.kube.ok("replace", "-f", "-", input=as_json(mutating))


def test_a_direct_sandbox_pod_made_by_the_real_controller_runs_only_once_isolated(
    warm: Warm, ns: str
) -> None:
    warm.kube.ok("apply", "-f", "-", input=as_json(code_interpreter("pydirect", ns, RESTRICTED)))
    recorder = recorded(warm)
    created = json.loads(
        warm.kube.ok(
            "create",
            "-o",
            "json",
            "-f",
            "-",
            input=as_json(sandbox(ns, "pydirect-abcd1234", "pydirect")),
        )
    )
    want = desired(ns, "pydirect-abcd1234", RESTRICTED, created)

    def running() -> dict[str, Any] | None:
        result = warm.kube("get", "pod", "pydirect-abcd1234", "-n", ns, "-o", "json")
        if result.returncode != 0:
            return None
        pod: dict[str, Any] = json.loads(result.stdout)
        return pod if is_running_and_ready(pod) else None

    eventually(running, "the Sandbox's pod running", WAIT_S)
    events = recorder.stop()
    check_invariant(ns, events, {"pydirect-abcd1234": want["spec"]}, [])
    pod_events = [
        e for e in events if e[1] == "Pod" and e[3]["metadata"]["name"] == "pydirect-abcd1234"
    ]
    assert {"name": kinds.SCHEDULING_GATE} in (
        pod_events[0][3]["spec"].get("schedulingGates") or []
    )


def test_the_baseline_holds_a_claimed_pod_while_its_own_policy_cannot_be_written(
    warm: Warm, ns: str
) -> None:
    """The reconciler refused NetworkPolicy creates (RBAC): the claim is adopted and its pod
    runs with no policy of its own, held by the warm pool's baseline alone; once the rule is
    back its own policy comes."""
    interpreter = warm_pool(warm, ns, "pyheld")
    baseline = eventually(
        lambda: policy_of(warm.kube, ns, "netpol-baseline.pyheld"), "the baseline"
    )
    role = warm.kube.get("clusterrole", "agentcube-netpol")
    granted = role["rules"]
    role["rules"] = _without_verb(granted, "networkpolicies", "create")
    warm.kube.ok("replace", "-f", "-", input=as_json(role))
    try:
        recorder = recorded(warm)
        claim = claim_session(warm, ns, interpreter)
        name = claim["metadata"]["name"]
        pod = adopted_pod(warm, ns, claim)
        eventually(
            lambda: (
                warm.kube.get("pod", pod["metadata"]["name"], "-n", ns)["metadata"]["labels"].get(
                    kinds.LABEL_SANDBOX_NAME
                )
                == name
            ),
            "the claimed pod labelled and running",
        )
        assert policy_of(warm.kube, ns, name) is None  # only the baseline selects it now
        events = recorder.stop()
        check_invariant(ns, events, {}, [baseline["spec"]])
    finally:
        role = warm.kube.get("clusterrole", "agentcube-netpol")
        role["rules"] = granted
        warm.kube.ok("replace", "-f", "-", input=as_json(role))
    want = desired(ns, name, RESTRICTED, claim)
    eventually(
        lambda: (p := policy_of(warm.kube, ns, name)) is not None and p["spec"] == want["spec"],
        "its own policy, once allowed",
        WAIT_S,
    )
