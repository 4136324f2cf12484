"""`run --patch-crds`: the decision over AgentCube's live CRDs, and the keeper that acts on it."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
import yaml

from webhook.api import kinds
from webhook.kube import errors
from webhook.manifests import CRDS_DIR
from webhook.reconciler.audit import crd_schema_findings
from webhook.reconciler.crdschema import (
    CRD,
    CrdSchemaKeeper,
    crd_name,
    our_schema,
    plan_schema,
)

KINDS = [kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER]


def ours(kind: kinds.Kind) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((CRDS_DIR / f"{kind.plural}.yaml").read_text())
    crd["metadata"]["resourceVersion"] = "41"
    return crd


def parent(version: dict[str, Any], kind: kinds.Kind) -> dict[str, Any]:
    node = version["schema"]["openAPIV3Schema"]
    for step in kinds.TEMPLATE_POLICY_PATH[kind.kind][:-1]:
        node = node["properties"][step]
    return node  # type: ignore[no-any-return]


def agentcubes(kind: kinds.Kind) -> dict[str, Any]:
    """The CRD as AgentCube installs it: ours without the networkPolicy property."""
    crd = ours(kind)
    del parent(crd["spec"]["versions"][0], kind)["properties"]["networkPolicy"]
    return crd


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_agentcubes_crd_gets_exactly_our_property(kind: kinds.Kind) -> None:
    plan = plan_schema(agentcubes(kind), kind.kind)
    assert plan.state == "patch"
    assert plan.detail.startswith(".".join(kinds.TEMPLATE_POLICY_PATH[kind.kind]))
    assert "missing in v1alpha1" in plan.detail
    assert jsonpatch.apply_patch(agentcubes(kind), plan.ops) == ours(kind)
    # Once patched there is nothing left to do.
    assert plan_schema(ours(kind), kind.kind).state == "in-place"


def test_the_patch_is_the_one_deploy_ships() -> None:
    """deploy/crds/patches/ (for admins who patch by hand) add the same schema."""
    shipped = yaml.safe_load(
        (
            CRDS_DIR.parents[2] / "deploy/crds/patches/codeinterpreters-networkpolicy.yaml"
        ).read_text()
    )
    [add] = [op for op in shipped if op["op"] == "add"]
    assert add["value"] == our_schema("CodeInterpreter")


def test_a_crd_changed_since_it_was_read_is_not_patched() -> None:
    """The patch tests the resourceVersion it was planned on: the API server refuses it
    whole (422) when someone wrote the CRD in between, and the next check plans again."""
    kind = kinds.CODE_INTERPRETER
    plan = plan_schema(agentcubes(kind), kind.kind)
    newer = agentcubes(kind)
    newer["metadata"]["resourceVersion"] = "42"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(newer, plan.ops)


def test_an_older_copy_of_our_property_is_brought_up_to_date() -> None:
    kind = kinds.AGENT_RUNTIME
    crd = ours(kind)
    mine = parent(crd["spec"]["versions"][0], kind)["properties"]["networkPolicy"]
    del mine["properties"]["custom"]
    plan = plan_schema(crd, kind.kind)
    assert (plan.state, "out of date in v1alpha1" in plan.detail) == ("patch", True)
    assert jsonpatch.apply_patch(crd, plan.ops) == ours(kind)


def test_a_network_policy_property_that_is_not_ours_is_left_alone() -> None:
    kind = kinds.AGENT_RUNTIME
    crd = agentcubes(kind)
    parent(crd["spec"]["versions"][0], kind)["properties"]["networkPolicy"] = {
        "type": "object",
        "description": "AgentCube's own, some day",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    plan = plan_schema(crd, kind.kind)
    assert (plan.state, plan.ops) == ("conflict", [])
    assert "v1alpha1 declares a spec.podTemplate.networkPolicy of its own" in plan.detail


def test_every_served_version_is_patched_and_an_unserved_one_is_not() -> None:
    kind = kinds.CODE_INTERPRETER
    crd = agentcubes(kind)
    v1alpha1 = crd["spec"]["versions"][0]
    crd["spec"]["versions"] = [
        {**copy.deepcopy(v1alpha1), "name": "v1beta1", "storage": False},
        v1alpha1,
        {**copy.deepcopy(v1alpha1), "name": "v1alpha0", "served": False, "storage": False},
    ]
    plan = plan_schema(crd, kind.kind)
    assert "missing in v1beta1, v1alpha1" in plan.detail
    patched = jsonpatch.apply_patch(crd, plan.ops)
    declared = [
        "networkPolicy" in parent(version, kind)["properties"]
        for version in patched["spec"]["versions"]
    ]
    assert declared == [True, True, False]


def test_a_crd_without_the_template_object_is_unsupported_not_guessed() -> None:
    kind = kinds.CODE_INTERPRETER
    crd = agentcubes(kind)
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "template"
    ]
    plan = plan_schema(crd, kind.kind)
    assert (plan.state, plan.ops) == ("unsupported", [])
    assert plan.detail == "no served version (v1alpha1) has spec.template"


def test_an_absent_crd_is_missing() -> None:
    assert plan_schema(None, "AgentRuntime").state == "missing"


# --- the keeper, against a scripted API ------------------------------------------------


class ScriptedApi:
    """get and patch of CRDs as the API server answers them, JSON patch applied for real."""

    def __init__(self, crds: dict[str, dict[str, Any]], refuse: type[Exception] | None = None):
        self.crds = crds
        self.refuse = refuse
        self.patches: list[str] = []

    def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any]:
        assert (kind, namespace) == (CRD, "")
        if self.refuse is not None:
            raise self.refuse("customresourcedefinitions is forbidden", status=403)
        if name not in self.crds:
            raise errors.NotFound(f"{name} not found", status=404)
        return copy.deepcopy(self.crds[name])

    def patch(self, kind: kinds.Kind, namespace: str, name: str, ops: Any, **kw: Any) -> None:
        assert kw == {"patch_type": "json"}
        self.crds[name] = jsonpatch.apply_patch(self.crds[name], ops)
        self.patches.append(name)


def keeper(api: ScriptedApi, *, leading: bool = True) -> tuple[CrdSchemaKeeper, dict[str, bool]]:
    states: dict[str, bool] = {}
    made = CrdSchemaKeeper(
        api,  # type: ignore[arg-type]
        may_write=lambda: leading,
        on_state=states.__setitem__,
    )
    return made, states


def test_the_keeper_patches_what_lacks_the_property_once() -> None:
    runtime, interpreter = (crd_name(kind) for kind in KINDS)
    api = ScriptedApi({runtime: agentcubes(kinds.AGENT_RUNTIME)})  # no CodeInterpreter CRD yet
    made, states = keeper(api)
    assert [plan.state for plan in made.check()] == ["patch", "missing"]
    assert api.patches == [runtime]
    assert states == {runtime: True, interpreter: False}
    # The next check finds it in place and writes nothing.
    assert [plan.state for plan in made.check()] == ["in-place", "missing"]
    assert api.patches == [runtime]


def test_the_keeper_does_not_write_without_the_lease() -> None:
    runtime = crd_name(kinds.AGENT_RUNTIME)
    api = ScriptedApi({runtime: agentcubes(kinds.AGENT_RUNTIME)})
    made, states = keeper(api, leading=False)
    made.check()
    assert (api.patches, states[runtime]) == ([], False)


def test_the_keeper_refused_by_rbac_reports_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made, states = keeper(ScriptedApi({}, refuse=errors.Forbidden))
    assert made.check() == []
    assert states == dict.fromkeys((crd_name(kind) for kind in KINDS), False)
    assert "get and patch on this CRD" in caplog.text


def test_audit_reports_a_crd_that_would_drop_the_field_and_not_one_that_is_absent() -> None:
    plans = [
        plan_schema(agentcubes(kinds.AGENT_RUNTIME), "AgentRuntime"),
        plan_schema(None, "CodeInterpreter"),
    ]
    [finding] = crd_schema_findings(plans)
    assert (finding.namespace, finding.name, finding.problem) == (
        "",
        "agentruntimes.runtime.agentcube.volcano.sh",
        "crd-schema-missing",
    )
    assert "the API server drops it from every template" in finding.detail
    assert crd_schema_findings([plan_schema(ours(kinds.AGENT_RUNTIME), "AgentRuntime")]) == []
