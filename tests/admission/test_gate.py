"""Direct-path sandbox pods are created held by a scheduling gate until their policy exists,
and only the reconciler (or a privileged user) may take it off."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import pytest

from tests.builders import AGENTCUBE_SA, TENANT, admission_request
from webhook.admission.decide import NoClaims, mutate, validate
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


# --- the gate guard (validating: pod UPDATE) ---------------------------------------------

RECONCILER = {
    "username": "system:serviceaccount:agentcube-netpol-system:agentcube-netpol",
    "groups": [
        "system:serviceaccounts",
        "system:serviceaccounts:agentcube-netpol-system",
        "system:authenticated",
    ],
}
OTHER_GATE = {"name": "example.com/quota"}


def update(
    old_gates: list[Any] | None,
    new_gates: list[Any] | None,
    user: dict[str, Any],
    settings: Settings | None = None,
) -> dict[str, Any]:
    old = sandbox_pod(**({} if old_gates is None else {"schedulingGates": old_gates}))
    new = sandbox_pod(**({} if new_gates is None else {"schedulingGates": new_gates}))
    return validate(
        admission_request(new, kind=kinds.POD, operation="UPDATE", old=old, user=user),
        settings=settings or Settings(),
    )


@pytest.mark.parametrize(
    ("old_gates", "new_gates"),
    [
        ([GATE], None),
        ([GATE], []),
        ([GATE, OTHER_GATE], [OTHER_GATE]),
        ([GATE], [{"name": "example.com/renamed"}]),
    ],
    ids=["gates removed", "emptied", "ours removed, another kept", "ours replaced"],
)
def test_a_tenant_may_not_lift_the_gate(old_gates: list[Any], new_gates: list[Any] | None) -> None:
    answer = update(old_gates, new_gates, TENANT)
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert answer["status"]["message"] == (
        "spec.schedulingGates: only agentcube-netpol's reconciler "
        "(user system:serviceaccount:agentcube-netpol-system:agentcube-netpol) or group "
        "system:serviceaccounts:agentcube may remove the gate netpol.agentcube.io/network-policy; "
        "alice may not: it comes off once the sandbox's NetworkPolicy exists"
    )


def test_the_reconciler_and_privileged_users_may_lift_the_gate() -> None:
    assert update([GATE], [], RECONCILER)["allowed"] is True
    assert update([GATE], [], AGENTCUBE_SA)["allowed"] is True  # privileged group
    admin = Settings(privileged_users=("root",))
    assert update([GATE], None, {"username": "root", "groups": []}, admin)["allowed"] is True


def test_the_gate_lifters_are_configurable() -> None:
    """``run`` adds its own identity; ``--gate-lifter`` names the reconciler's otherwise."""
    settings = Settings(gate_lifters=("alice",))
    assert update([GATE], [], TENANT, settings)["allowed"] is True
    assert update([GATE], [], RECONCILER, settings)["allowed"] is False


@pytest.mark.parametrize(
    ("old_gates", "new_gates"),
    [
        ([GATE], [GATE]),
        ([GATE], [OTHER_GATE, GATE]),
        ([GATE, OTHER_GATE], [GATE]),
        ([OTHER_GATE], []),
        (None, None),
    ],
    ids=["unchanged", "another added", "another removed", "only another's", "never gated"],
)
def test_a_tenant_may_do_anything_else_with_gates(
    old_gates: list[Any] | None, new_gates: list[Any] | None
) -> None:
    assert update(old_gates, new_gates, TENANT)["allowed"] is True


def test_the_label_guard_speaks_first_when_both_go() -> None:
    old = sandbox_pod(schedulingGates=[GATE])
    new = sandbox_pod()
    new["metadata"]["labels"] = {}
    answer = validate(
        admission_request(new, kind=kinds.POD, operation="UPDATE", old=old, user=TENANT),
        settings=Settings(),
    )
    assert answer["allowed"] is False
    assert answer["status"]["message"].startswith(f"metadata.labels[{kinds.LABEL_SANDBOX_NAME}]")
