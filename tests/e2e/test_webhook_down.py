"""With the webhook server down, each webhook behaves as the failurePolicy deploy/ gives it.

For each webhook of deploy/'s configurations, a request it receives (by its rules, selectors
and match conditions) is made while the server is stopped. Fail: kubectl reports the failed
call and nothing is stored. Ignore: the request goes through, and kube-apiserver's
``apiserver_admission_webhook_fail_open_count`` for that webhook goes up, which proves the
webhook was called and failed open rather than never matched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import code_interpreter, sandbox, sandbox_claim, sandbox_pod
from tests.cli.test_exit_codes import agentcube_netpol
from tests.e2e.harness import Kubectl, WebhookServer, as_json
from webhook.api import kinds

pytestmark = pytest.mark.usefixtures("webhook_configurations")

SANDBOXES = f"{kinds.SANDBOX.plural}.{kinds.SANDBOX.group}"


def create(kubectl: Kubectl, obj: dict[str, Any]) -> Any:
    return kubectl("create", "-f", "-", input=as_json(obj))


def templates_request(kubectl: Kubectl, namespace: str) -> Any:
    return create(kubectl, code_interpreter("down", namespace, {"mode": "Restricted"}))


def overrides_request(kubectl: Kubectl, namespace: str) -> Any:
    override = json.dumps({"mode": "None"})
    return create(
        kubectl,
        sandbox("down", namespace, annotations={kinds.ANNOTATION_NETWORK_POLICY: override}),
    )


def pod_labels_request(kubectl: Kubectl, namespace: str) -> Any:
    # The pod exists before (CREATE is not sent to this webhook); removing the label is.
    return kubectl("label", "pod", "labelled", "-n", namespace, f"{kinds.LABEL_SANDBOX_NAME}-")


def claims_request(kubectl: Kubectl, namespace: str) -> Any:
    return create(kubectl, sandbox_claim("down", namespace))


def pod_gates_request(kubectl: Kubectl, namespace: str) -> Any:
    # A sandbox pod being created: it must not start without its gate (Fail).
    labels = {kinds.LABEL_SANDBOX_NAME: "gated"}
    return create(kubectl, sandbox_pod("gated", namespace, labels=labels))


def widening_request(kubectl: Kubectl, namespace: str) -> Any:
    allow_all: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all", "namespace": namespace},
        "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]},
    }
    return create(kubectl, allow_all)


def pods_request(kubectl: Kubectl, namespace: str) -> Any:
    labels = {kinds.LABEL_CLAIM_UID: "0b9c1d52-5f7c-4a43-9a7e-7c1f4f0c9d11"}
    return create(kubectl, sandbox_pod("claimed", namespace, labels=labels))


# One request per webhook of deploy/: a webhook added there needs a line here.
REQUESTS: dict[str, Callable[[Kubectl, str], Any]] = {
    "templates.netpol.agentcube.io": templates_request,
    "overrides.netpol.agentcube.io": overrides_request,
    "pod-labels.netpol.agentcube.io": pod_labels_request,
    "claims.netpol.agentcube.io": claims_request,
    "pods.netpol.agentcube.io": pods_request,
    "pod-gates.netpol.agentcube.io": pod_gates_request,
    "widening.netpol.agentcube.io": widening_request,
}


def failure_policies(configurations: list[dict[str, Any]]) -> dict[str, str]:
    return {
        webhook["name"]: webhook.get("failurePolicy", "Fail")
        for configuration in configurations
        for webhook in configuration["webhooks"]
    }


def fail_open_count(kubectl: Kubectl, webhook_name: str) -> float:
    metrics = kubectl.ok("get", "--raw", "/metrics")
    total = 0.0
    pattern = re.compile(
        r'^apiserver_admission_webhook_fail_open_count\{[^}]*name="' + re.escape(webhook_name)
        + r'"[^}]*\} (\S+)$', re.MULTILINE,
    )  # fmt: skip
    for match in pattern.finditer(metrics):
        total += float(match.group(1))
    return total


def probe(kubectl: Kubectl, namespace: str, home: Path) -> list[dict[str, Any]]:
    """``audit --probe-webhooks``'s findings about the webhooks (the shared cluster may
    hold others)."""
    result = agentcube_netpol(
        "audit", "--kubeconfig", str(kubectl.control_plane.admin_kubeconfig), "-o", "json",
        "--probe-webhooks", namespace, home=home,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    findings = json.loads(result.stdout)["findings"]
    return [f for f in findings if f["problem"].startswith("webhook-")]


def test_audit_probe_finds_the_webhooks_answering(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    assert probe(kubectl, namespace, tmp_path) == []
    # A dry run: nothing was stored.
    assert kubectl.get("codeinterpreters", "-n", namespace)["items"] == []


@pytest.fixture(scope="module")
def server_down(webhook_server: WebhookServer) -> Iterator[None]:
    webhook_server.stop()
    try:
        yield
    finally:
        webhook_server.start()


def test_every_webhook_of_deploy_has_a_request_here(
    webhook_configurations: list[dict[str, Any]],
) -> None:
    assert sorted(failure_policies(webhook_configurations)) == sorted(REQUESTS)


@pytest.fixture
def labelled_pod(kubectl: Kubectl, namespace: str) -> None:
    """A pod with the sandbox-name label, made with the server down: created without it
    (a sandbox pod's CREATE is gated, Fail), then labelled (adding it calls no webhook)."""
    kubectl.ok("create", "-f", "-", input=as_json(sandbox_pod("labelled", namespace)))
    kubectl.ok("label", "pod", "labelled", "-n", namespace, f"{kinds.LABEL_SANDBOX_NAME}=labelled")


@pytest.mark.parametrize("webhook_name", sorted(REQUESTS))
@pytest.mark.usefixtures("labelled_pod", "server_down")
def test_webhook_down_follows_its_failure_policy(
    kubectl: Kubectl,
    namespace: str,
    webhook_configurations: list[dict[str, Any]],
    webhook_name: str,
) -> None:
    policy = failure_policies(webhook_configurations)[webhook_name]
    opened_before = fail_open_count(kubectl, webhook_name)

    result = REQUESTS[webhook_name](kubectl, namespace)

    if policy == "Fail":
        assert result.returncode != 0, f"{webhook_name} is Fail but the request went through"
        assert f'failed calling webhook "{webhook_name}"' in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert fail_open_count(kubectl, webhook_name) > opened_before


@pytest.mark.usefixtures("server_down")
def test_audit_probe_reports_webhooks_that_do_not_answer(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    [finding] = probe(kubectl, namespace, tmp_path)
    assert finding["problem"] == "webhook-not-answering"
    assert 'failed calling webhook "templates.netpol.agentcube.io"' in finding["detail"]


@pytest.mark.usefixtures("server_down")
def test_ordinary_sandbox_work_does_not_wait_on_a_down_webhook(
    kubectl: Kubectl, namespace: str
) -> None:
    """Sandboxes, claims and their labels and annotations go on: no override, no label
    removed. (A direct-path sandbox pod's creation waits for the webhook by design: started
    without its scheduling gate it would run before its NetworkPolicy exists.)"""
    kubectl.ok("create", "-f", "-", input=as_json(sandbox("plain", namespace)))
    kubectl.ok("create", "-f", "-", input=as_json(sandbox_pod("plain", namespace)))
    kubectl.ok("label", "pod", "plain", "-n", namespace, "extra=yes")
    kubectl.ok("annotate", SANDBOXES, "plain", "-n", namespace, "note=fine")
