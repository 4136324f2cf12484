"""The Helm chart as an admin uses it, on pods run from the built image: install, test,
upgrade while claims are created, uninstall (tests/e2e/shipped.py has the cluster)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild
from agentcube_netpol_dev.controlplane import Binaries
from agentcube_netpol_dev.kubelet import FakeKubelet
from kubernetes.client import CoreV1Api
from kubernetes.config import new_client_from_config

from tests.builders import code_interpreter
from tests.deploy.manifests import CHART, run_helm
from tests.e2e.harness import Kubectl, agent_sandbox_running, as_json
from tests.e2e.invariant import Recorder
from tests.e2e.shipped import (
    NAMESPACE,
    READY_TIMEOUT_S,
    SELECTOR,
    Cluster,
    cluster_running_images,
    ready_pods,
    wait,
)
from tests.e2e.test_agent_sandbox import is_running_and_ready
from tests.e2e.test_reconciler import RESTRICTED, desired, grant_agentcube, sandbox
from tests.e2e.test_reconciler_warm_path import check_invariant
from webhook.kube.rest import Rest

RELEASE = "agentcube-netpol"
SESSIONS = "rollout-sessions"
NOT_OURS = SELECTOR.replace("=", "!=")


@dataclass
class Installed:
    cluster: Cluster
    ready_after_s: float
    image_values: list[str] = field(default_factory=list)

    def helm(self, *args: str) -> str:
        control_plane = self.cluster.control_plane
        kubeconfig = str(control_plane.admin_kubeconfig)
        result = run_helm(
            *args, "--kubeconfig", kubeconfig, "-n", NAMESPACE,
            cache_dir=control_plane.work_dir / "helm-cache",
        )  # fmt: skip
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def installed(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("helm")
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(cluster_running_images(binaries, work))
        grant_agentcube(cluster.kubectl)
        api_client = new_client_from_config(config_file=str(cluster.control_plane.admin_kubeconfig))
        stack.callback(api_client.close)
        stack.enter_context(
            agent_sandbox_running(cluster.control_plane, agent_sandbox_build, work / "as")
        )
        # Sandbox pods on a stand-in kubelet; ours on the one that runs images.
        stack.enter_context(FakeKubelet(CoreV1Api(api_client), label_selector=NOT_OURS))
        repository, tag = cluster.image.tag.rsplit(":", 1)
        values = [
            "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never",
        ]  # fmt: skip
        installed = Installed(cluster, 0.0, values)
        started = time.monotonic()
        installed.helm("install", RELEASE, str(CHART), "--create-namespace", *values)
        wait(lambda: len(ready_pods(cluster.kubectl)) == 2, READY_TIMEOUT_S, "two Ready replicas")
        installed.ready_after_s = time.monotonic() - started
        yield installed


def test_helm_install_gives_two_ready_replicas_and_webhooks_that_answer(
    installed: Installed,
) -> None:
    print(f"helm install to two Ready replicas: {installed.ready_after_s:.1f}s")
    result = installed.cluster.kubectl(
        "apply", "-f", "-", input=claim("bad-override").replace("BAD", "{not json")
    )
    assert result.returncode != 0 and "network-policy" in result.stderr, result.stderr


def test_helm_test_runs_audit_in_the_cluster_and_passes(installed: Installed) -> None:
    output = installed.helm("test", RELEASE, "--timeout", "3m")
    assert "Succeeded" in output, output


def claim(name: str) -> str:
    return f"""
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxClaim
metadata:
  name: {name}
  namespace: default
  labels: {{runtime.agentcube.io/sandbox-name: {name}}}
  annotations: {{runtime.agentcube.io/network-policy: 'BAD'}}
spec:
  sandboxTemplateRef: {{name: python-warm}}
"""


def good_claim(name: str) -> str:
    return claim(name).replace("  annotations: {runtime.agentcube.io/network-policy: 'BAD'}\n", "")


def create_claims(
    kubectl: Kubectl, stop: threading.Event, results: list[tuple[str, bool, str]]
) -> None:
    """Claims, and every fifth turn a direct-path Sandbox in ``SESSIONS``."""
    index = 0
    while not stop.is_set():
        index += 1
        name = f"rollout-{index}"
        result = kubectl("create", "-f", "-", input=good_claim(name))
        results.append((name, result.returncode == 0, result.stderr))
        if index % 5 == 0:
            box = f"py-r{index:07d}"
            made = kubectl("create", "-f", "-", input=as_json(sandbox(SESSIONS, box, "py")))
            results.append((box, made.returncode == 0, made.stderr))


def test_helm_upgrade_rolls_both_replicas_and_refuses_no_claim(installed: Installed) -> None:
    """Claims and direct-path Sandboxes made throughout the rollout: none refused, each
    claim mutated, each Sandbox isolated, and no moment a running sandbox pod unselected."""
    kubectl = installed.cluster.kubectl
    kubectl.ok("create", "namespace", SESSIONS)
    kubectl.ok("apply", "-f", "-", input=as_json(code_interpreter("py", SESSIONS, RESTRICTED)))
    recorder = Recorder(Rest.from_config(installed.cluster.control_plane.admin_kubeconfig))
    recorder.start()
    before = {pod["metadata"]["name"] for pod in ready_pods(kubectl)}
    stop = threading.Event()
    results: list[tuple[str, bool, str]] = []
    creator = threading.Thread(target=create_claims, args=(kubectl, stop, results))
    creator.start()
    try:
        started = time.monotonic()
        # A new image tag (the same image under a second tag, as a release would push one)
        # and a changed value.
        repository, tag = installed.cluster.image.tag.rsplit(":", 1)
        upgraded = f"{tag}-upgrade"
        installed.cluster.kubelet.store.run("podman", "tag", installed.cluster.image.tag,
                                            f"{repository}:{upgraded}")  # fmt: skip
        installed.helm(
            "upgrade", RELEASE, str(CHART), *installed.image_values,
            "--set", f"image.tag={upgraded}", "--set", "denyWidening=true",
        )  # fmt: skip

        def rolled() -> bool:
            pods = ready_pods(kubectl)
            all_pods = kubectl.get(
                "-n", NAMESPACE, "pods", "-l", "app.kubernetes.io/component=webhook"
            )
            return (
                len(pods) == 2
                and not before & {pod["metadata"]["name"] for pod in pods}
                and len(all_pods["items"]) == 2
            )

        wait(rolled, READY_TIMEOUT_S, "both replicas replaced")
        rollout_s = time.monotonic() - started
        time.sleep(2)  # a few claims more on the new replicas
    finally:
        stop.set()
        creator.join()
    refused = [(name, stderr) for name, ok, stderr in results if not ok]
    boxes = [name for name, _, _ in results if name.startswith("py-r")]
    print(
        f"helm upgrade: rolled in {rollout_s:.1f}s; {len(results) - len(boxes)} claims and "
        f"{len(boxes)} Sandboxes, {len(refused)} refused"
    )
    assert refused == [], refused[:3]
    assert len(results) >= 10 and boxes
    isolated_and_running(installed, boxes)
    check_invariant(SESSIONS, recorder.stop(), desired_specs(installed, SESSIONS), [])
    # Every claim was mutated by the webhook on its way in (the label our policy selects on).
    claims = kubectl.get("-n", "default", "sandboxclaims")["items"]
    created = {
        c["metadata"]["name"]: c for c in claims if c["metadata"]["name"].startswith("rollout-")
    }
    assert len(created) == len(results) - len(boxes)
    for item in created.values():
        pod_labels = item["spec"].get("additionalPodMetadata", {}).get("labels", {})
        assert pod_labels.get("runtime.agentcube.io/sandbox-name") == item["metadata"]["name"]
    for pod in ready_pods(kubectl):
        [container] = pod["spec"]["containers"]
        assert container["image"].endswith("-upgrade") and "--deny-widening" in container["args"]


def desired_specs(installed: Installed, ns: str) -> dict[str, Any]:
    return {
        s["metadata"]["name"]: desired(ns, s["metadata"]["name"], RESTRICTED, s)["spec"]
        for s in installed.cluster.kubectl.get("sandboxes", "-n", ns)["items"]
    }


def isolated_and_running(installed: Installed, names: list[str]) -> None:
    kubectl = installed.cluster.kubectl

    def done() -> bool:
        policies = kubectl.get("networkpolicy", "-n", SESSIONS)["items"]
        pods = kubectl.get("pods", "-n", SESSIONS)["items"]
        running = {p["metadata"]["name"] for p in pods if is_running_and_ready(p)}
        return set(names) <= {p["metadata"]["name"] for p in policies} and set(names) <= running

    wait(done, READY_TIMEOUT_S, "every Sandbox made in the rollout isolated and running")


def test_helm_uninstall_leaves_no_webhook_that_would_block_the_cluster(
    installed: Installed,
) -> None:
    kubectl = installed.cluster.kubectl
    installed.helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        assert kubectl.get(kind)["items"] == [], kind
    # Nothing calls a Service that is gone: a claim goes through at once, unchecked.
    result = kubectl("create", "-f", "-", input=good_claim("after-uninstall"))
    assert result.returncode == 0, result.stderr
