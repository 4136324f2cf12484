"""The invariant checker must be able to fail: fed orders that breach it, it says so."""

from __future__ import annotations

from typing import Any

from tests.e2e.invariant import Breach, breaches, fail_closed_spec
from webhook.api import kinds

SPEC = {
    "podSelector": {"matchLabels": {kinds.LABEL_SANDBOX_NAME: "s"}},
    "policyTypes": ["Ingress", "Egress"],
}
LOOSE = {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}


def pod(*, gated: bool) -> dict[str, Any]:
    spec = {"schedulingGates": [{"name": kinds.SCHEDULING_GATE}]} if gated else {}
    return {
        "metadata": {"namespace": "a", "name": "s", "labels": {kinds.LABEL_SANDBOX_NAME: "s"}},
        "spec": spec,
    }


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "a", "name": name}, "spec": spec}


def check(events: list[tuple[int, str, str, dict[str, Any]]]) -> list[Breach]:
    return breaches(events, allowed_specs=lambda _pod: [SPEC])


def test_gated_until_the_policy_exists_is_no_breach() -> None:
    assert check([(1, "Pod", "ADDED", pod(gated=True)), (2, "NetworkPolicy", "ADDED", policy("s", SPEC)),
                  (3, "Pod", "MODIFIED", pod(gated=False))]) == []  # fmt: skip


def test_ungated_before_the_policy_is_a_breach() -> None:
    found = check(
        [(1, "Pod", "ADDED", pod(gated=False)), (2, "NetworkPolicy", "ADDED", policy("s", SPEC))]
    )
    assert found == [Breach(1, "a/s", "selected by no NetworkPolicy")]


def test_a_policy_deleted_under_a_running_pod_is_a_breach() -> None:
    found = check([(1, "NetworkPolicy", "ADDED", policy("s", SPEC)), (2, "Pod", "ADDED", pod(gated=False)),
                   (3, "NetworkPolicy", "DELETED", policy("s", SPEC))])  # fmt: skip
    assert [b.resource_version for b in found] == [3]


def test_a_looser_policy_selecting_the_pod_is_a_breach() -> None:
    found = check([(1, "NetworkPolicy", "ADDED", policy("s", SPEC)), (2, "NetworkPolicy", "ADDED", policy("open", LOOSE)),
                   (3, "Pod", "ADDED", pod(gated=False))])  # fmt: skip
    assert found == [Breach(3, "a/s", "selected by looser open")]


def test_the_fail_closed_policy_holds_a_pod_until_its_own_arrives() -> None:
    """The reconciler writes the fail-closed policy while a template is not in its cache yet,
    lifts the gate, then patches the policy to the template's: never a breach."""
    fail_closed = fail_closed_spec("a", {kinds.LABEL_SANDBOX_NAME: "s"})
    assert fail_closed and fail_closed[0]["podSelector"] == SPEC["podSelector"]
    assert check([(1, "Pod", "ADDED", pod(gated=True)),
                  (2, "NetworkPolicy", "ADDED", policy("s", dict(fail_closed[0]))),
                  (3, "Pod", "MODIFIED", pod(gated=False)),
                  (4, "NetworkPolicy", "MODIFIED", policy("s", SPEC))]) == []  # fmt: skip
