"""The CLI finds the cluster as kubectl does, and says in one line when it cannot use it.

Against the real API server: ``audit`` with only ``$KUBECONFIG`` (a merged list), with
only ``~/.kube/config``, with ``--context``; a user whom RBAC forbids the lists; a
namespace admin who may read one namespace only and runs ``audit -n`` there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentcube_netpol_dev.controlplane import ControlPlane, free_loopback_ports

from tests.cli.test_exit_codes import agentcube_netpol
from tests.e2e.harness import Kubectl, as_json
from webhook.api.exitcodes import EXIT_CLUSTER, EXIT_OK

pytestmark = pytest.mark.e2e


def renamed(source: Path, target: Path, name: str, *, current: bool, server: str = "") -> Path:
    """``source``'s kubeconfig with its cluster, user and context all named ``name`` (and its
    server replaced by ``server``); the current context only when ``current``."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["clusters"] = [{**config["clusters"][0], "name": name}]
    config["users"] = [{**config["users"][0], "name": name}]
    config["contexts"] = [{"name": name, "context": {"cluster": name, "user": name}}]
    if server:
        config["clusters"][0]["cluster"]["server"] = server
    if current:
        config["current-context"] = name
    else:
        config.pop("current-context", None)
    target.write_text(yaml.safe_dump(config))
    return target


def no_error(result: subprocess.CompletedProcess[str]) -> None:
    assert "error:" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), result.stderr


def test_audit_finds_the_cluster_as_kubectl_does(
    control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> None:
    admin = control_plane.admin_kubeconfig
    nowhere = f"https://127.0.0.1:{free_loopback_ports(1)[0]}"
    # The first file of the list sets no current context and names an unreachable cluster;
    # the second sets the current context to the real one: kubectl's merge picks the second.
    first = renamed(admin, tmp_path / "first", "elsewhere", current=False, server=nowhere)
    second = renamed(admin, tmp_path / "second", "real", current=True)
    listed = f"{tmp_path / 'absent'}:{first}:{second}"

    no_error(agentcube_netpol("audit", home=tmp_path, KUBECONFIG=listed))

    other = agentcube_netpol("audit", "--context", "elsewhere", home=tmp_path, KUBECONFIG=listed)
    assert other.returncode == EXIT_CLUSTER, other.stderr
    assert "cannot reach the API server" in other.stderr

    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    renamed(admin, home / ".kube" / "config", "home", current=True)
    no_error(agentcube_netpol("audit", home=home))


def test_rbac_that_forbids_the_lists_is_one_line(
    control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> None:
    nobody = control_plane.mint_user("cli-nobody")
    result = agentcube_netpol("audit", "--kubeconfig", str(nobody), home=tmp_path)
    assert result.returncode == EXIT_CLUSTER, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "forbidden" in errors[0]
    assert 'User "cli-nobody" cannot list resource' in errors[0]
    assert "ask a cluster admin for RBAC" in errors[0]


def test_a_namespace_admin_audits_their_namespace(
    control_plane: ControlPlane,
    crds: list[str],
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "reader", "namespace": namespace},
        "rules": [
            {
                "apiGroups": [
                    "",
                    "networking.k8s.io",
                    "runtime.agentcube.volcano.sh",
                    "agents.x-k8s.io",
                    "extensions.agents.x-k8s.io",
                ],
                "resources": ["*"],
                "verbs": ["get", "list"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ns-admin"}],
    }
    kubectl.ok("apply", "-f", "-", input=as_json(role, binding))
    user = control_plane.mint_user("ns-admin")

    mine = agentcube_netpol("audit", "--kubeconfig", str(user), "-n", namespace, home=tmp_path)
    assert mine.returncode == EXIT_OK, mine.stderr
    assert "no findings" in mine.stdout

    everything = agentcube_netpol("audit", "--kubeconfig", str(user), home=tmp_path)
    assert everything.returncode == EXIT_CLUSTER, everything.stderr
    assert "forbidden" in everything.stderr
