"""What the caches keep of a NetworkPolicy: all a plan compares, the rules stored once."""

from __future__ import annotations

import copy
from typing import Any

from tests.reconciler.objects import RESTRICTED, direct_sandbox, expected_policy, stored
from webhook.api import kinds
from webhook.reconciler.caches import SharedValues, slim_network_policy, slim_pod
from webhook.reconciler.plan import in_sync


def policy_of(name: str) -> dict[str, Any]:
    sandbox = direct_sandbox(name)
    return expected_policy(name, RESTRICTED, sandbox["metadata"], kinds.SANDBOX)


def test_a_slim_policy_keeps_the_spec_and_shares_equal_rules_between_sandboxes() -> None:
    first = stored(policy_of("py-aaaa1111"))
    second = stored(policy_of("py-bbbb2222"))
    slim_first, slim_second = slim_network_policy(first), slim_network_policy(second)

    assert slim_first["spec"] == first["spec"]
    assert in_sync(first, slim_first)
    assert slim_first["spec"]["egress"] is slim_second["spec"]["egress"]
    assert slim_first["spec"]["ingress"] is slim_second["spec"]["ingress"]
    # The selector names the sandbox: never shared across sandboxes.
    assert slim_first["spec"]["podSelector"] != slim_second["spec"]["podSelector"]


def test_different_rules_are_not_shared() -> None:
    shared = SharedValues(kept=8)
    rules = [{"to": [{"ipBlock": {"cidr": "10.8.0.0/16"}}]}]
    wider = copy.deepcopy(rules)
    wider[0]["to"][0]["ipBlock"]["cidr"] = "10.0.0.0/8"
    assert shared(rules) is shared(copy.deepcopy(rules))
    assert shared(wider) == wider
    assert shared(wider) is not shared(rules)


def test_the_shared_table_starts_over_when_full_and_values_stay_equal() -> None:
    shared = SharedValues(kept=2)
    values = [[{"port": port}] for port in range(5)]
    assert [shared(value) for value in values] == values
    assert len(shared) <= 2


def test_a_slim_pod_keeps_what_the_ungate_patch_needs_and_no_other_annotation() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "uid": "u",
            "annotations": {kinds.ANNOTATION_ISOLATION_CANARY: "", "big": "x" * 4096},
        },
        "spec": {"schedulingGates": [{"name": kinds.SCHEDULING_GATE}], "containers": []},
    }
    slim = slim_pod(pod)
    assert slim["metadata"]["annotations"] == {kinds.ANNOTATION_ISOLATION_CANARY: ""}
    assert slim["spec"] == {"schedulingGates": [{"name": kinds.SCHEDULING_GATE}]}
