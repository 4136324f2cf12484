"""The product as shipped, on a test control plane: the pods of our Deployment run from the
image built from the Dockerfile (see test_shipped.py for how), installed by the caller.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane
from agentcube_netpol_dev.image import Built, build, storage
from agentcube_netpol_dev.ocikubelet import OciKubelet, PodNetworks

from tests.e2e.harness import CRD_DIR, Kubectl
from webhook.kube.rest import Rest

NAMESPACE = "agentcube-netpol-system"
SELECTOR = "app.kubernetes.io/name=agentcube-netpol"
DEPLOY_IMAGE = "agentcube-netpol:0.1.0"  # what deploy/ names; the built image runs instead
READY_TIMEOUT_S = 180.0
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    control_plane: ControlPlane
    kubectl: Kubectl
    kubelet: OciKubelet
    image: Built


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} after {timeout:.0f}s")


def ready_pods(kubectl: Kubectl, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    pods = kubectl.get(
        "-n", namespace, "pods", "-l", f"{SELECTOR},app.kubernetes.io/component=webhook"
    )["items"]
    return [
        pod
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
    ]


@contextlib.contextmanager
def cluster_running_images(binaries: Binaries, work: Path) -> Iterator[Cluster]:
    """A control plane with the CRDs, and a kubelet that runs our pods from the built image
    (deploy/'s image name maps to it); nothing of ours installed yet."""
    image = build(os.environ, root=REPO)
    networks = PodNetworks(
        prefix=f"acn{os.getpid() % 10000}-", api_port=0, socket_path=work / "cluster-proxy.sock"
    )
    kubelet: OciKubelet | None = None
    try:
        with ControlPlane(
            binaries=binaries,
            with_controller_manager=True,
            work_dir=work / "control-plane",
            apiserver_extra_args=(
                "--enable-aggregator-routing=true",
                "--egress-selector-config-file="
                f"{networks.egress_selector_config(work / 'egress.json')}",
            ),
            extra_controllers=CONTROLLERS,
        ) as control_plane:
            networks.api_port = control_plane.api_port
            kubectl = Kubectl(control_plane)
            kubectl.ok("apply", "-k", str(CRD_DIR))
            from kubernetes.client import CoreV1Api
            from kubernetes.config import new_client_from_config

            core_v1 = CoreV1Api(
                new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
            )
            kubelet = OciKubelet(
                core_v1,
                Rest.from_config(control_plane.admin_kubeconfig),
                networks=networks,
                store=storage(os.environ),
                ca_pem=control_plane.ca_pem,
                label_selector=SELECTOR,
                work_dir=work / "pods",
                images={DEPLOY_IMAGE: image.tag},
            )
            kubelet.start()
            yield Cluster(control_plane, kubectl, kubelet, image)
            kubelet.stop()
            kubelet = None
    finally:
        if kubelet is not None:
            kubelet.stop()
        networks.stop()
