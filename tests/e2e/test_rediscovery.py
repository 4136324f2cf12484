"""agent-sandbox upgraded under a running `run`: it notices, goes unready, exits to be restarted,
and the restarted `run` watches and writes the new version; then its allow-list changes and
claim label injection follows without a restart.

The cluster starts with deploy/'s agent-sandbox CRDs (v1alpha1 only, as agent-sandbox v0.4
serves them); `run` runs under deploy/'s RBAC and asks discovery again every second. Then the
CRDs are replaced by agent-sandbox v1.0.1's own (v1beta1 only): `run` must fail /readyz while
still up, exit with EXIT_RESTART, and, started again as the Deployment would, say it uses
v1beta1 and give a v1beta1 Sandbox its NetworkPolicy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentcube_netpol_dev.agentsandbox import CRD_NAMES, find_agent_sandbox
from agentcube_netpol_dev.controlplane import (
    Binaries,
    ControlPlane,
    ControlPlaneError,
    install_crds,
)

from tests import builders
from tests.e2e.deployed import deploy_manifests, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.test_agent_sandbox_versions import in_v1beta1
from tests.e2e.test_reconciler import (
    AGENTCUBE,
    RESTRICTED,
    desired,
    eventually,
    grant_agentcube,
    interpreter,
    sandbox,
    start_run,
    wait_policy,
)
from webhook.api import kinds
from webhook.api.exitcodes import EXIT_RESTART

V1BETA1_RELEASE = "v1.0.1"
# Two checks a second apart, jittered, then the readiness drain (RESTART_DRAIN_SECONDS).
EXIT_WAIT_S = 60.0
CRD_GONE_WAIT_S = 120.0


@pytest.fixture(scope="module")
def cluster(binaries: Binaries) -> Iterator[ControlPlane]:
    with ControlPlane(binaries=binaries, with_controller_manager=True) as control_plane:
        install_crds(control_plane, CRD_DIR)
        yield control_plane


def delete_crd(kube: Kubectl, name: str) -> None:
    """Delete one CRD and wait until it is gone. One at a time, listing its objects meanwhile:
    a CRD's deletion rebuilds its group's handlers, and the API server's finalizer of a
    sibling deleted at the same moment can then meet "storage is (re)initializing" (429) and
    back off for minutes (it did here, once); a list warms the storage again."""
    kube.ok("delete", "crd", name, "--wait=false")

    def gone() -> bool:
        kube("get", name.partition(".")[0], "--all-namespaces")
        return kube("get", "crd", name).returncode != 0

    eventually(gone, f"CRD {name} to be gone", timeout_s=CRD_GONE_WAIT_S)


def served_versions(kube: Kubectl) -> set[str]:
    """The versions agent-sandbox's four CRDs serve, together."""
    return {
        version["name"]
        for name in CRD_NAMES
        for version in kube.get("crd", name)["spec"]["versions"]
        if version.get("served")
    }


def test_run_restarts_onto_v1beta1_when_agent_sandbox_is_upgraded_under_it(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    try:
        release = find_agent_sandbox(os.environ, V1BETA1_RELEASE)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    kube = Kubectl(cluster)
    assert served_versions(kube) == {"v1alpha1"}
    service_account = install_rbac(cluster, deploy_manifests(cluster))
    run: WebhookServer = start_run(cluster, service_account, tmp_path, "--rediscover-interval=1")
    try:
        assert "SandboxClaim extensions.agents.x-k8s.io/v1alpha1" in run.log()

        # The upgrade: v1.0 removed v1alpha1, so its CRDs replace the old ones whole.
        started = time.monotonic()
        for name in CRD_NAMES:
            delete_crd(kube, name)
        print(f"old CRDs gone in {time.monotonic() - started:.1f}s")
        upgraded = time.monotonic()
        install_crds(cluster, release.crd_dir)
        assert served_versions(kube) == {"v1beta1"}

        eventually(
            lambda: not run.answers_200("/readyz") and run.answers_200("/healthz"),
            "run to fail /readyz while it still serves",
            timeout_s=EXIT_WAIT_S,
        )
        unready = time.monotonic()
        code = run.wait_exit(EXIT_WAIT_S)
        exited = time.monotonic()
        print(
            f"unready {unready - upgraded:.1f}s after the upgrade, "
            f"exited {exited - unready:.1f}s after that"
        )
        log = run.log()
        assert code == EXIT_RESTART, log[-2000:]
        assert (
            "agent-sandbox's served versions changed (Sandbox v1alpha1 -> v1beta1; "
            "SandboxTemplate v1alpha1 -> v1beta1; SandboxClaim v1alpha1 -> v1beta1; "
            "SandboxWarmPool v1alpha1 -> v1beta1): restarting to watch them"
        ) in log

        # What the Deployment does: start it again.
        run.start()
        restarted = run.log()[len(log) :]
        assert "SandboxClaim extensions.agents.x-k8s.io/v1beta1" in restarted
        ns = "rediscovered"
        kube.ok("create", "namespace", ns)
        kube.ok("apply", "-f", "-", input=as_json(interpreter(ns)))
        created = json.loads(
            kube.ok("create", "-o", "json", "-f", "-", input=as_json(in_v1beta1(sandbox(ns))))
        )
        policy = wait_policy(
            kube, ns, "py-abcd1234", desired(ns, "py-abcd1234", RESTRICTED, created)["spec"]
        )
        # The sandbox is its controller; its pods are owners too (see plan.py).
        [owner] = [o for o in policy["metadata"]["ownerReferences"] if o.get("controller")]
        assert (owner["apiVersion"], owner["kind"]) == (
            f"{kinds.SANDBOX.group}/v1beta1",
            "Sandbox",
        )

        # agent-sandbox's allow-list changed: claim label injection flips, no restart.
        assert "claim label injection off" in restarted
        manifests = deploy_manifests(cluster)
        install_webhooks(cluster, manifests, base_url=run.url, ca_pem=run.ca_pem)
        grant_agentcube(kube)
        assert not injected(kube, ns, "before-allow-listing")
        kube.ok("create", "namespace", kinds.AGENT_SANDBOX_NAMESPACE)
        kube.ok(
            "create", "configmap", kinds.AGENT_SANDBOX_CONFIG_MAP,
            f"--namespace={kinds.AGENT_SANDBOX_NAMESPACE}",
            f"--from-literal={kinds.ALLOWED_LABEL_DOMAINS_KEY}="
            "sandbox.users.io,runtime.agentcube.io",
        )  # fmt: skip
        eventually(
            lambda: "claim label injection now on" in run.log(),
            "run to notice the allow-list",
            timeout_s=EXIT_WAIT_S,
        )
        assert injected(kube, ns, "after-allow-listing")
        assert run.running  # no restart
    finally:
        run.stop()


def injected(kube: Kubectl, ns: str, name: str) -> bool:
    """Whether a claim AgentCube creates now gets our label in its additionalPodMetadata."""
    claim = in_v1beta1(
        builders.sandbox_claim(name, ns, template="py", labels={kinds.LABEL_SANDBOX_NAME: name})
    )
    created = json.loads(
        kube.ok("create", "-o", "json", "-f", "-", *AGENTCUBE, input=as_json(claim))
    )
    labels = (created["spec"].get("additionalPodMetadata") or {}).get("labels") or {}
    return labels.get(kinds.LABEL_SANDBOX_NAME) == name
