"""With --isolation-canary, a direct-path sandbox pod is created with the init container that
holds its own containers until its NetworkPolicy is enforced, first among its init
containers, and only the reconciler (or a privileged user) may write the canary it checks."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import pytest

from tests.admission.test_gate import GATE, RECONCILER, sandbox_pod
from tests.builders import TENANT, admission_request
from webhook.admission.decide import NoClaims, isolation_container, mutate, validate
from webhook.api import kinds
from webhook.api.settings import Settings

HOLD = Settings(isolation_canary=("10.96.0.10", 443), isolation_canary_image="reg/netpol:1")
CANARY = kinds.ANNOTATION_ISOLATION_CANARY


def mutated(
    pod: dict[str, Any], settings: Settings = HOLD, operation: str = "CREATE"
) -> tuple[dict[str, Any], list[Any]]:
    answer = mutate(
        admission_request(pod, kind=kinds.POD, operation=operation),
        settings=settings,
        claims=NoClaims(),
    )
    assert answer["allowed"] is True
    patch = json.loads(base64.b64decode(answer["patch"])) if "patch" in answer else []
    return jsonpatch.apply_patch(pod, patch), patch


def test_the_pod_gets_the_init_container_the_gate_and_an_empty_canary() -> None:
    pod, _ = mutated(sandbox_pod())
    assert pod["spec"]["schedulingGates"] == [GATE]
    [init] = pod["spec"]["initContainers"]
    assert init["name"] == "netpol-wait-isolated"
    assert init["image"] == "reg/netpol:1"
    assert init["command"] == ["agentcube-netpol", "wait-isolated"]
    assert init["env"] == [
        {
            "name": "NETPOL_ISOLATION_CANARY",
            "valueFrom": {
                "fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": "metadata.annotations['netpol.agentcube.io/isolation-canary']",
                }
            },
        }
    ]
    # What the restricted Pod Security Standard asks of every container.
    assert init["securityContext"]["runAsNonRoot"] is True
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["metadata"]["annotations"] == {CANARY: ""}
    # Reinvoked (reinvocationPolicy, or a second mutating webhook): nothing more to do.
    again, second = mutated(pod)
    assert second == [] and again == pod


def test_it_runs_before_the_tenants_own_init_containers() -> None:
    setup = {"name": "setup", "image": "busybox", "command": ["wget", "http://example.com"]}
    pod, _ = mutated(sandbox_pod(initContainers=[setup]))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["netpol-wait-isolated", "setup"]


def test_an_init_container_posing_as_ours_is_replaced() -> None:
    impostor = {"name": "netpol-wait-isolated", "image": "busybox", "command": ["true"]}
    setup = {"name": "setup", "image": "busybox"}
    pod, _ = mutated(sandbox_pod(initContainers=[setup, impostor]))
    assert pod["spec"]["initContainers"] == [isolation_container(HOLD), setup]


def test_a_canary_the_pod_came_with_is_emptied() -> None:
    """Only the reconciler says what to check: a value set by whoever made the pod is not it."""
    created = sandbox_pod()
    created["metadata"]["annotations"] = {CANARY: "10.0.0.1:80", "other": "kept"}
    pod, _ = mutated(created)
    assert pod["metadata"]["annotations"] == {CANARY: "", "other": "kept"}


def test_off_by_default_and_never_on_pods_that_are_not_gated() -> None:
    pod, _ = mutated(sandbox_pod(), settings=Settings())
    assert "initContainers" not in pod["spec"]
    assert "annotations" not in pod["metadata"]
    claimed = {
        "metadata": {
            "name": "claimed",
            "labels": {kinds.LABEL_SANDBOX_NAME: "s", kinds.LABEL_CLAIM_UID: "u"},
        },
        "spec": {"containers": [{"name": "main", "image": "python"}]},
    }
    assert mutated(claimed)[1] == []  # a warm pod started long before its claim
    assert mutated(sandbox_pod(), operation="UPDATE")[1] == []


# --- the canary guard (validating: pod UPDATE) ---------------------------------------------


def annotated(value: str | None) -> dict[str, Any]:
    pod = sandbox_pod(schedulingGates=[GATE])
    if value is not None:
        pod["metadata"]["annotations"] = {CANARY: value}
    return pod


def update(old: str | None, new: str | None, user: dict[str, Any]) -> dict[str, Any]:
    return validate(
        admission_request(
            annotated(new), kind=kinds.POD, operation="UPDATE", old=annotated(old), user=user
        ),
        settings=HOLD,
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [("", "10.0.0.1:80"), ("10.96.0.10:443", ""), ("", None), (None, "")],
    ids=["set", "emptied", "removed", "added"],
)
def test_a_tenant_may_not_write_the_canary(old: str | None, new: str | None) -> None:
    answer = update(old, new, TENANT)
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert message.startswith(
        "metadata.annotations[netpol.agentcube.io/isolation-canary]: only agentcube-netpol's "
        "reconciler"
    )
    assert "may set, change or remove the isolation canary; alice may not" in message


def test_the_reconciler_writes_it_and_a_tenant_may_leave_it_alone() -> None:
    assert update("", "10.96.0.10:443", RECONCILER)["allowed"] is True
    assert update("10.96.0.10:443", "10.96.0.10:443", TENANT)["allowed"] is True
