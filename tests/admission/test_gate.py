"""Direct-path sandbox pods are created held by a scheduling gate until their policy exists."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import pytest

from tests.builders import admission_request
from webhook.admission.decide import NoClaims, mutate
from webhook.api import kinds
from webhook.api.settings import Settings

GATE = {"name": "netpol.agentcube.io/network-policy"}


def sandbox_pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "py-abcd1234", "labels": {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}},
        "spec": {"containers": [{"name": "main", "image": "python"}], **spec},
    }


def mutated(pod: dict[str, Any], operation: str = "CREATE") -> tuple[dict[str, Any], list[Any]]:
    answer = mutate(
        admission_request(pod, kind=kinds.POD, operation=operation),
        settings=Settings(),
        claims=NoClaims(),
    )
    assert answer["allowed"] is True
    patch = json.loads(base64.b64decode(answer["patch"])) if "patch" in answer else []
    return jsonpatch.apply_patch(pod, patch), patch


def test_a_sandbox_pod_is_created_gated_and_the_patch_only_adds_the_gate() -> None:
    pod, patch = mutated(sandbox_pod())
    assert pod["spec"]["schedulingGates"] == [GATE]
    assert patch == [{"op": "add", "path": "/spec/schedulingGates", "value": [GATE]}]
    again, second = mutated(pod)  # reinvocation: nothing more to do
    assert second == [] and again == pod


def test_other_gates_are_kept_and_ours_is_added_once() -> None:
    pod, _ = mutated(sandbox_pod(schedulingGates=[{"name": "example.com/quota"}]))
    assert pod["spec"]["schedulingGates"] == [{"name": "example.com/quota"}, GATE]


@pytest.mark.parametrize(
    "pod",
    [
        {"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {}},
        {
            "metadata": {
                "name": "claimed",
                "labels": {kinds.LABEL_SANDBOX_NAME: "s", kinds.LABEL_CLAIM_UID: "u"},
            },
            "spec": {},
        },
    ],
    ids=["not a sandbox pod", "claimed warm-pool pod (held by its baseline)"],
)
def test_pods_that_are_not_direct_sandbox_pods_are_not_gated(pod: dict[str, Any]) -> None:
    assert mutated(pod)[1] == []


def test_gates_are_only_added_at_creation() -> None:
    assert mutated(sandbox_pod(), operation="UPDATE")[1] == []
