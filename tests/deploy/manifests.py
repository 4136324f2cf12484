"""deploy/ rendered as a cluster admin installs it, shared by the fast tier
(tests/deploy/test_manifests.py) and the e2e tier (tests/e2e/test_deploy.py).

The kustomizations are rendered with ``kubectl kustomize`` (``$KUBECTL``, else the
kubectl `make controlplane` built, else ``kubectl`` on PATH).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentcube_netpol_dev.controlplane import (
    KUBECTL,
    VERSIONS_FILE,
    ControlPlaneError,
    cache_root,
    find_binaries,
    read_versions,
)

from tests import REPO_ROOT

REPO = REPO_ROOT
DEPLOY = REPO / "deploy"
CRDS = DEPLOY / "crds"
CERT_MANAGER = DEPLOY / "overlays" / "cert-manager"

NAMESPACE = "agentcube-netpol-system"
SERVICE = "agentcube-netpol-webhook"
CA_SECRET = "agentcube-netpol-ca"  # the replicas' shared CA (webhook/cabundle.py)
SERVER_PORT = 9443
CERT_DIR = "/certs"
NONROOT_UID = 65532
MAX_WEBHOOK_TIMEOUT_SECONDS = 10
KUSTOMIZE_TIMEOUT_SECONDS = 120

Doc = dict[str, Any]

TEMPLATES = "templates.netpol.agentcube.io"
OVERRIDES = "overrides.netpol.agentcube.io"
POD_LABELS = "pod-labels.netpol.agentcube.io"
CLAIMS = "claims.netpol.agentcube.io"
PODS = "pods.netpol.agentcube.io"
POD_GATES = "pod-gates.netpol.agentcube.io"
WIDENING = "widening.netpol.agentcube.io"


def kubectl() -> str:
    """``$KUBECTL``, else the one `make controlplane` built, else ``kubectl`` on PATH."""
    path = os.environ.get("KUBECTL")
    if not path:
        try:
            path = str(find_binaries(os.environ).path(KUBECTL))
        except ControlPlaneError:
            path = shutil.which("kubectl")
    if not path:
        pytest.fail(
            "kubectl not found: set KUBECTL to a kubectl binary, build one with "
            "`make controlplane`, or put one on PATH"
        )
    return path


def run_kubectl(*args: str) -> str:
    result = subprocess.run(
        [kubectl(), *args],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def kustomize(directory: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(run_kubectl("kustomize", str(directory))) if doc]


@functools.cache
def render_base() -> list[Doc]:
    return kustomize(DEPLOY)


@functools.cache
def render_cert_manager() -> list[Doc]:
    return kustomize(CERT_MANAGER)


CHART = REPO / "charts" / "agentcube-netpol"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version",
               "app.kubernetes.io/managed-by")  # fmt: skip


def helm() -> str:
    """``$HELM``, else the one `make controlplane` built (tests/controlplane/build-helm.sh)."""
    path = os.environ.get("HELM")
    if not path:
        version = read_versions(VERSIONS_FILE)["HELM_VERSION"]
        built = cache_root(os.environ) / "bin" / f"helm-{version}" / "helm"
        path = str(built) if built.is_file() else ""
    if not path:
        pytest.fail("helm not found: build it with `make controlplane`, or set HELM")
    return path


def run_helm(*args: str, cache_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``cache_dir``: where helm caches the cluster's discovery (KUBECACHEDIR), one per
    control plane: the default is keyed by host:port, which a later control plane reuses."""
    env = {**os.environ, "KUBECACHEDIR": str(cache_dir)} if cache_dir else None
    return subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_SECONDS,
        check=False, env=env,
    )  # fmt: skip


def helm_template(*values: str, namespace: str = NAMESPACE, tests: bool = False) -> list[Doc]:
    """``helm template`` of the chart with ``--set`` ``values`` (``tests``: with the
    ``helm test`` pod)."""
    args = ["template", "agentcube-netpol", str(CHART), "--namespace", namespace]
    if not tests:
        args.append("--skip-tests")
    for value in values:
        args += ["--set", value]
    result = run_helm(*args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render_helm() -> list[Doc]:
    return helm_template()


@functools.cache
def render_helm_cert_manager() -> list[Doc]:
    return helm_template("certificates.mode=cert-manager")


@functools.cache
def render_crds() -> dict[str, Doc]:
    """The CRDs by kind."""
    docs = kustomize(CRDS)
    assert all(d["kind"] == "CustomResourceDefinition" for d in docs)
    return {d["spec"]["names"]["kind"]: d for d in docs}


def only(docs: Sequence[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def webhooks(docs: Sequence[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for hook in doc["webhooks"]:
                yield doc["kind"], hook


def hook_named(docs: Sequence[Doc], name: str) -> Doc:
    found = [hook for _, hook in webhooks(docs) if hook["name"] == name]
    assert len(found) == 1, f"expected one webhook {name}, found {len(found)}"
    return found[0]


def pod_spec(docs: Sequence[Doc]) -> Doc:
    spec: Doc = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: Sequence[Doc]) -> Doc:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    found: Doc = containers[0]
    return found


def root_schema(crd: Doc) -> Doc:
    (version,) = crd["spec"]["versions"]
    schema: Doc = version["schema"]["openAPIV3Schema"]
    return schema


def schema_at(schema: Doc, path: Sequence[str]) -> Doc | None:
    """The schema of the field at ``path``; None when the field would be pruned."""
    node = schema
    for name in path:
        properties = node.get("properties") or {}
        if name in properties:
            node = properties[name]
        elif node.get("x-kubernetes-preserve-unknown-fields"):
            return {"x-kubernetes-preserve-unknown-fields": True}
        else:
            return None
    return node
