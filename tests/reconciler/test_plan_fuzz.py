"""The planner and audit over generated clusters: whatever a template's networkPolicy, an
override annotation, a warm pool size or a label holds (stored while the webhook was down,
or written before it was installed), the reconciler plans without raising, writes only
well-formed NetworkPolicies, and fails closed rather than open.

What the API server guarantees (metadata is an object, names are strings) is kept; what
our CRD schemas leave open is generated."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reconciler.objects import (
    SETTINGS,
    claim,
    direct_sandbox,
    interpreter,
    pod,
    runtime,
    view,
)
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.cli.offline import check
from webhook.reconciler.audit import audit
from webhook.reconciler.plan import all_requests, plan

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["Restricted", "Custom", "None", "10.0.0.0/8"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["mode", "ingress", "egress", "custom", "cidrs", "except", "ports",
                         "protocol", "port", "endPort", "to", "from", "ipBlock", "cidr", "x"]),
        children,
        max_size=4,
    ),
    max_leaves=16,
)  # fmt: skip
policies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"mode": st.sampled_from(["Restricted", "Custom", "None", "restricted", ""])},
        optional={"egress": json_values, "ingress": json_values, "custom": json_values},
    ),
)
annotation_values = st.one_of(st.text(max_size=30), json_values.map(json.dumps))
label_values = st.text(alphabet="abcdefghij-0123456789.", max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template_policy=policies,
    runtime_policy=policies,
    warm=st.integers(-3, 5) | st.just(2**40),
    sandbox_override=annotation_values,
    claim_override=annotation_values,
    pod_name_label=label_values,
)
def test_no_generated_cluster_makes_the_planner_or_audit_raise(  # noqa: PLR0917
    template_policy: Any,
    runtime_policy: Any,
    warm: int,
    sandbox_override: str,
    claim_override: str,
    pod_name_label: str,
) -> None:
    override = kinds.ANNOTATION_NETWORK_POLICY
    the_view = view(
        interpreters=[interpreter("py", template_policy, warm=warm)],
        runtimes=[runtime("rt", runtime_policy)],
        sandboxes=[
            direct_sandbox("py-abcd1234", **{override: sandbox_override}),
            direct_sandbox("rt-abcd1234", workload="rt"),
        ],
        claims=[claim("py-claim0001", **{override: claim_override})],
        pods=[
            pod("py-abcd1234", {kinds.LABEL_SANDBOX_NAME: "py-abcd1234"}, owner="py-abcd1234",
                gates=[kinds.SCHEDULING_GATE]),
            pod("warm-1", {kinds.LABEL_SANDBOX_NAME: pod_name_label,
                           kinds.LABEL_CLAIM_UID: "uid-py-claim0001"}),
        ],
        policies=[],
    )  # fmt: skip
    requests = list(all_requests(the_view))
    assert requests
    for request in requests:
        decided = plan(request, the_view, SETTINGS)
        if decided.desired is not None:
            spec = decided.desired["spec"]
            # Well-formed, and never open: every policy we write limits both directions.
            assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
            assert isinstance(spec["podSelector"]["matchLabels"], dict)
            json.dumps(decided.desired)
    audit(the_view, settings=SETTINGS, network_policies=[])


documents = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda kind, policy, name: json.dumps(
            {
                "apiVersion": f"{kind.group}/{kind.version}",
                "kind": kind.kind,
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"template": {"networkPolicy": policy}}
                if kind == kinds.CODE_INTERPRETER
                else {"podTemplate": {"networkPolicy": policy}},
            }
        ),
        st.sampled_from([kinds.CODE_INTERPRETER, kinds.AGENT_RUNTIME]),
        policies,
        st.text(max_size=12),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_check_judges_every_generated_file_without_failing_itself(
    document: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`check` on a file of anything: valid (0), invalid with the field named (1), or
    unreadable (2), never "could not validate" (the validator raising) and never a raise."""
    path = tmp_path_factory.mktemp("check") / "t.yaml"
    path.write_text(document)
    out, err = io.StringIO(), io.StringIO()
    code = check([str(path)], settings=Settings(), stdout=out, stderr=err)
    assert code in (0, 1, 2)
    assert "could not validate" not in err.getvalue(), err.getvalue()
    if code == 1:
        assert "networkPolicy" in out.getvalue() or "metadata.name" in out.getvalue(), (
            out.getvalue()
        )
