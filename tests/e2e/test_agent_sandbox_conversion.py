"""agent-sandbox v0.5 as a cluster runs it: v1alpha1 served through the controller's own
conversion webhook (stored in v1beta1), and AgentCube still writing v1alpha1.

The real v0.5.6 controller serves /convert on a loopback port with a certificate we issue
(``--manage-webhook-certs=false``: it writes no Secret and patches no CRD), and its CRDs are
installed with ``conversion: Webhook`` pointing there (``AgentSandboxController`` with
``conversion_webhook=True``). `run` watches v1beta1 (the storage version); the API server
converts every v1alpha1 write and read through the controller. Default allow-list: claims
are left alone and the claimed pod is labelled by the pod webhook and the reconciler.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxController, find_agent_sandbox
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, ControlPlaneError

from tests.builders import code_interpreter, sandbox_claim
from tests.e2e.harness import Kubectl, as_json
from tests.e2e.invariant import Recorder
from tests.e2e.test_agent_sandbox import is_running_and_ready, owner_reference, warm_pool_for
from tests.e2e.test_agent_sandbox_versions import (
    check_invariant,
    claimed_pod,
    install_agentcube_crds,
    isolated_by_own_policy,
)
from tests.e2e.test_reconciler import (
    AGENTCUBE,
    RESTRICTED,
    desired,
    eventually,
    policy_of,
    run_beside,
)
from webhook.api import kinds
from webhook.reconciler.agentsandbox import name_hash

VERSION = "v0.5.6"
WAIT_S = 60.0
CLAIMS_V1ALPHA1 = "sandboxclaims.v1alpha1.extensions.agents.x-k8s.io"
CLAIMS_V1BETA1 = "sandboxclaims.v1beta1.extensions.agents.x-k8s.io"


@dataclass(frozen=True)
class Cluster:
    kube: Kubectl
    controller: AgentSandboxController
    rest: Any


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        build = find_agent_sandbox(os.environ, VERSION)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    work = tmp_path_factory.mktemp("conversion")
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_agentcube_crds(control_plane)
        controller = AgentSandboxController(
            build=build, control_plane=control_plane, work_dir=work / "as", conversion_webhook=True
        )
        controller.install()
        with run_beside(control_plane, controller, work) as (kube, _run, rest):
            yield Cluster(kube, controller, rest)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"c-{uuid.uuid4().hex[:6]}"
    cluster.kube.ok("create", "namespace", name)
    yield name
    cluster.kube("delete", "namespace", name, "--wait=false")


def test_the_crds_convert_through_the_controllers_webhook(cluster: Cluster) -> None:
    crd = cluster.kube.get("crd", "sandboxclaims.extensions.agents.x-k8s.io")
    conversion = crd["spec"]["conversion"]
    assert conversion["strategy"] == "Webhook"
    assert conversion["webhook"]["clientConfig"]["url"] == (
        f"https://127.0.0.1:{cluster.controller.webhook_port}/convert"
    )
    served = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
    assert served == {"v1alpha1": (True, False), "v1beta1": (True, True)}


def warm_pool(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    """A CodeInterpreter with a warm pool of 2, its template and pool written in v1alpha1
    (through the conversion webhook), running; its baseline policy in place."""
    kube = cluster.kube
    interpreter = json.loads(
        kube.ok(
            "create", "-o", "json", "-f", "-",
            input=as_json(code_interpreter(name, ns, RESTRICTED, warm_pool_size=2)),
        )
    )  # fmt: skip
    template_and_pool = warm_pool_for(interpreter)
    assert {o["apiVersion"].rpartition("/")[2] for o in template_and_pool} == {"v1alpha1"}

    def written() -> bool:  # the webhook may take a moment to serve after the controller starts
        return kube("create", "-f", "-", input=as_json(*template_and_pool)).returncode == 0

    eventually(written, f"v1alpha1 writes converted ({cluster.controller.describe_log(10)})")

    def warm_running() -> bool:
        pods = kube.get(
            "pods", "-n", ns, "-l", f"agents.x-k8s.io/sandbox-template-ref-hash={name_hash(name)}"
        )["items"]
        return len([p for p in pods if is_running_and_ready(p)]) >= 2

    eventually(
        warm_running, f"the warm pool running ({cluster.controller.describe_log(10)})", WAIT_S
    )
    return interpreter


def test_a_v1alpha1_claim_converted_by_the_controller_gets_its_pod_isolated(
    cluster: Cluster, ns: str
) -> None:
    kube = cluster.kube
    interpreter = warm_pool(cluster, ns, "pyc")
    baseline = eventually(lambda: policy_of(kube, ns, "netpol-baseline.pyc"), "the baseline")
    recorder = Recorder(cluster.rest)
    recorder.start()
    claim_name = f"pyc-{uuid.uuid4().hex[:8]}"
    claim = sandbox_claim(
        claim_name,
        ns,
        template="pyc",
        labels={kinds.LABEL_SANDBOX_NAME: claim_name, kinds.LABEL_SESSION_ID: "session-1"},
    )
    # v1alpha1's own way to name the pool (v0.4.6 has it too); without it the conversion
    # names a "shadow-pool-" that does not exist (see the test below).
    claim["spec"]["warmpool"] = "pyc"
    claim["metadata"]["ownerReferences"] = [owner_reference(interpreter)]
    assert claim["apiVersion"] == "extensions.agents.x-k8s.io/v1alpha1"
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE, input=as_json(claim))
    )
    assert created["spec"]["sandboxTemplateRef"] == {"name": "pyc"}
    assert not (created["spec"].get("additionalPodMetadata") or {}).get("labels")
    stored = kube.get(CLAIMS_V1BETA1, claim_name, "-n", ns)  # the v1beta1 view: converted
    assert stored["spec"]["warmPoolRef"] == {"name": "pyc"}

    pod = eventually(
        lambda: claimed_pod(kube, CLAIMS_V1BETA1, ns, claim_name),
        f"the claim controller to adopt ({cluster.controller.describe_log(10)})",
        WAIT_S,
    )
    want = desired(ns, claim_name, RESTRICTED, created)
    policy = isolated_by_own_policy(kube, ns, claim_name, pod, want)
    # The sandbox is its controller; its pods are owners too (see plan.py).
    [owner] = [o for o in policy["metadata"]["ownerReferences"] if o.get("controller")]
    assert (owner["kind"], owner["uid"]) == ("SandboxClaim", created["metadata"]["uid"])
    check_invariant(ns, recorder.stop(), {claim_name: want["spec"]}, [baseline["spec"]])


def test_a_v1alpha1_claim_naming_only_its_template_gets_no_sandbox_on_v0_5(
    cluster: Cluster, ns: str
) -> None:
    """What AgentCube's v0.4-era claims meet on v0.5 (upstream behaviour, pinned here): the
    conversion turns ``sandboxTemplateRef: pyd`` into ``warmPoolRef: shadow-pool-pyd``, a
    pool nobody makes, so the claim controller never gives it a sandbox. Nothing runs, so
    nothing is unisolated; AgentCube must name its pool (``warmpool``) or write v1beta1."""
    kube = cluster.kube
    claim_name = "pyd-s3ss10n1"
    claim = sandbox_claim(claim_name, ns, template="pyd")
    kube.ok("create", "-f", "-", *AGENTCUBE, input=as_json(claim))
    stored = kube.get(CLAIMS_V1BETA1, claim_name, "-n", ns)
    assert stored["spec"]["warmPoolRef"] == {"name": "shadow-pool-pyd"}
    assert kube.get(CLAIMS_V1ALPHA1, claim_name, "-n", ns)["spec"]["sandboxTemplateRef"] == {
        "name": "pyd"
    }

    def reasons() -> list[str] | None:
        status = kube.get(CLAIMS_V1BETA1, claim_name, "-n", ns).get("status") or {}
        found = [str(c.get("reason")) for c in status.get("conditions") or []]
        return found or None

    found = eventually(reasons, f"a condition ({cluster.controller.describe_log(10)})", WAIT_S)
    assert "WarmPoolNotFound" in found, found
    assert kube.get("sandboxes.agents.x-k8s.io", "-n", ns)["items"] == []
