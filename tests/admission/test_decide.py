"""The admission decision as the API server sees it: AdmissionRequest in, response out."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import builders
from tests.builders import AGENTCUBE_SA, TENANT, in_version, template
from webhook.admission.decide import NoClaims, mutate, patch_labels, validate
from webhook.api import kinds
from webhook.api.settings import Settings

MakeRequest = Callable[..., dict[str, Any]]
BAD = {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
GOOD = {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.0/8"]}]}


def patch_of(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def apply(obj: dict[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
    return jsonpatch.apply_patch(obj, patch_of(response))  # type: ignore[no-any-return]


# --- templates -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER])
def test_bad_template_is_denied_with_every_error_and_the_uid(
    adm_request: MakeRequest, settings: Settings, kind: kinds.Kind
) -> None:
    obj = template(kind.kind, {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8", "x"]}]})
    response = validate(adm_request(obj, kind=kind), settings=settings)
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["reason"] == "Invalid"
    message = response["status"]["message"]
    assert message.startswith(f'{kind.kind} "demo" is invalid: ')
    assert "egress[0].cidrs[0]" in message and "egress[0].cidrs[1]" in message


def test_good_template_is_allowed_with_warnings(
    adm_request: MakeRequest, settings: Settings
) -> None:
    obj = template("CodeInterpreter", {"mode": "Restricted", "egress": [{"cidrs": ["0.0.0.0/0"]}]})
    response = validate(adm_request(obj, kind=kinds.CODE_INTERPRETER), settings=settings)
    assert response["allowed"] is True
    assert any("0.0.0.0/0" in w for w in response["warnings"])


def test_update_that_leaves_an_old_bad_policy_alone_is_allowed(
    adm_request: MakeRequest, settings: Settings
) -> None:
    old = template("CodeInterpreter", BAD)
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    response = validate(
        adm_request(new, kind=kinds.CODE_INTERPRETER, operation="UPDATE", old=old),
        settings=settings,
    )
    assert response["allowed"] is True


def test_update_that_changes_the_policy_is_validated(
    adm_request: MakeRequest, settings: Settings
) -> None:
    old = template("CodeInterpreter", GOOD)
    new = template("CodeInterpreter", BAD)
    response = validate(
        adm_request(new, kind=kinds.CODE_INTERPRETER, operation="UPDATE", old=old),
        settings=settings,
    )
    assert response["allowed"] is False


@pytest.mark.parametrize(
    ("operation", "sub_resource"), [("DELETE", None), ("UPDATE", "status"), ("CONNECT", None)]
)
def test_deletes_and_subresources_pass(
    adm_request: MakeRequest, settings: Settings, operation: str, sub_resource: str | None
) -> None:
    obj = template("CodeInterpreter", BAD)
    request = adm_request(
        obj, kind=kinds.CODE_INTERPRETER, operation=operation, old=obj, sub_resource=sub_resource
    )
    assert validate(request, settings=settings) == {"uid": request["uid"], "allowed": True}


def test_kinds_we_do_not_handle_pass_unchanged(
    adm_request: MakeRequest, settings: Settings
) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "annotations": {kinds.ANNOTATION_NETWORK_POLICY: "{"}},
    }
    request = adm_request(cm, kind=kinds.Kind("", "v1", "ConfigMap", "configmaps"))
    assert validate(request, settings=settings) == {"uid": request["uid"], "allowed": True}
    assert mutate(request, settings=settings, claims=NoClaims()) == {
        "uid": request["uid"],
        "allowed": True,
    }


# --- the override annotation ---------------------------------------------------------


def sandbox(
    annotation: str | None, *, kind: kinds.Kind = kinds.SANDBOX, version: str = "v1alpha1"
) -> dict[str, Any]:
    """A Sandbox or SandboxClaim carrying the override ``annotation`` (None: none), written in
    ``version`` (a v1beta1 claim names its warm pool, not its template)."""
    annotations = {kinds.ANNOTATION_NETWORK_POLICY: annotation} if annotation is not None else {}
    if kind == kinds.SANDBOX_CLAIM:
        return in_version(builders.sandbox_claim(annotations=annotations), version)
    return in_version(builders.sandbox(annotations=annotations), version)


# Each agent-sandbox release writes its own shapes; the override is read the same in each.
VERSIONS = pytest.mark.parametrize("version", builders.AGENT_SANDBOX_VERSIONS)


@VERSIONS
@pytest.mark.parametrize("kind", [kinds.SANDBOX, kinds.SANDBOX_CLAIM])
def test_override_set_by_agentcube_is_validated(
    adm_request: MakeRequest, settings: Settings, kind: kinds.Kind, version: str
) -> None:
    obj = sandbox(json.dumps(GOOD), kind=kind, version=version)
    good = adm_request(obj, kind=kind, user=AGENTCUBE_SA)
    assert good["kind"]["version"] == version
    assert validate(good, settings=settings)["allowed"] is True
    obj = sandbox(json.dumps(BAD), kind=kind, version=version)
    response = validate(adm_request(obj, kind=kind, user=AGENTCUBE_SA), settings=settings)
    assert response["allowed"] is False
    assert response["status"]["message"] == (
        f'{kind.kind} "demo-ab12cd34" is invalid: '
        "metadata.annotations[runtime.agentcube.io/network-policy].egress[0].cidrs[0]: must be a "
        'canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
    )


@VERSIONS
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{", "must be the JSON of a networkPolicy object"),
        ("[]", "must be a JSON object, not array"),
        ('{"mode": "Open"}', "must be one of None, Restricted, Custom"),
        ("{" + " " * 70000 + "}", "must be at most 65536 bytes"),
    ],
)
def test_override_that_is_not_a_policy_is_refused(
    adm_request: MakeRequest, settings: Settings, value: str, fragment: str, version: str
) -> None:
    response = validate(
        adm_request(sandbox(value, version=version), kind=kinds.SANDBOX, user=AGENTCUBE_SA),
        settings=settings,
    )
    assert response["allowed"] is False
    assert response["status"]["message"].startswith(
        'Sandbox "demo-ab12cd34" is invalid: metadata.annotations[runtime.agentcube.io/network-policy]'
    )
    assert fragment in response["status"]["message"]


@VERSIONS
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, json.dumps(GOOD)),
        (json.dumps(GOOD), json.dumps({"mode": "None"})),
        (json.dumps(GOOD), None),
    ],
    ids=["set", "change", "remove"],
)
def test_tenant_may_not_touch_the_override(
    adm_request: MakeRequest, settings: Settings, old: str | None, new: str | None, version: str
) -> None:
    operation = "CREATE" if old is None else "UPDATE"
    claim = kinds.SANDBOX_CLAIM
    request = adm_request(
        sandbox(new, kind=claim, version=version),
        kind=claim,
        operation=operation,
        old=sandbox(old, kind=claim, version=version) if operation == "UPDATE" else None,
        user=TENANT,
    )
    response = validate(request, settings=settings)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["message"] == (
        "metadata.annotations[runtime.agentcube.io/network-policy]: only group system:serviceaccounts:agentcube "
        "may set, change or remove the override; alice may not"
    )


@VERSIONS
def test_tenant_may_update_other_fields_of_an_overridden_sandbox(
    adm_request: MakeRequest, settings: Settings, version: str
) -> None:
    old = sandbox(json.dumps(GOOD), version=version)
    new = copy.deepcopy(old)
    # Suspending the sandbox, in each version's words.
    new["spec"].update(
        {"v1alpha1": {"replicas": 0}, "v1beta1": {"operatingMode": "Suspended"}}[version]
    )
    response = validate(
        adm_request(new, kind=kinds.SANDBOX, operation="UPDATE", old=old, user=TENANT),
        settings=settings,
    )
    assert response["allowed"] is True


def test_privileged_users_are_configurable(adm_request: MakeRequest) -> None:
    settings = Settings(privileged_groups=(), privileged_users=("alice",))
    response = validate(
        adm_request(sandbox(json.dumps(GOOD)), kind=kinds.SANDBOX, user=TENANT), settings=settings
    )
    assert response["allowed"] is True
    response = validate(
        adm_request(sandbox(json.dumps(GOOD)), kind=kinds.SANDBOX, user=AGENTCUBE_SA),
        settings=settings,
    )
    assert response["allowed"] is False


# --- the pod label guard -----------------------------------------------------------------


def pod(labels: dict[str, str] | None) -> dict[str, Any]:
    return builders.sandbox_pod(labels=labels)


@pytest.mark.parametrize(
    ("new_labels", "allowed"),
    [
        ({kinds.LABEL_SANDBOX_NAME: "demo-1", "extra": "x"}, True),
        ({}, False),
        ({kinds.LABEL_SANDBOX_NAME: "other"}, False),
        (None, False),
    ],
    ids=["other label", "removed", "changed", "labels gone"],
)
def test_tenant_cannot_step_out_of_its_policy(
    adm_request: MakeRequest, settings: Settings, new_labels: dict[str, str] | None, allowed: bool
) -> None:
    old = pod({kinds.LABEL_SANDBOX_NAME: "demo-1"})
    request = adm_request(pod(new_labels), kind=kinds.POD, operation="UPDATE", old=old, user=TENANT)
    response = validate(request, settings=settings)
    assert response["allowed"] is allowed
    if not allowed:
        assert response["status"]["code"] == 403
        assert response["status"]["message"].startswith(
            "metadata.labels[runtime.agentcube.io/sandbox-name]: only group"
        )
        assert response["status"]["message"].endswith(': "demo-1"')


def test_agentcube_may_relabel_and_anyone_may_label(
    adm_request: MakeRequest, settings: Settings
) -> None:
    old = pod({kinds.LABEL_SANDBOX_NAME: "demo-1"})
    request = adm_request(pod({}), kind=kinds.POD, operation="UPDATE", old=old, user=AGENTCUBE_SA)
    assert validate(request, settings=settings)["allowed"] is True
    request = adm_request(
        pod({kinds.LABEL_SANDBOX_NAME: "demo-1"}),
        kind=kinds.POD,
        operation="UPDATE",
        old=pod({}),
        user=TENANT,
    )
    assert validate(request, settings=settings)["allowed"] is True


# --- mutation ---------------------------------------------------------------------------


def claim(
    name: str = "demo-ab12cd34",
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return builders.sandbox_claim(name, uid="c1a1m", labels=labels, spec=spec)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (claim(labels={kinds.LABEL_SANDBOX_NAME: "sb-from-label"}), "sb-from-label"),
        (claim(), "demo-ab12cd34"),
        (
            claim(
                spec={
                    "sandboxTemplateRef": {"name": "demo"},
                    "additionalPodMetadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}},
                }
            ),
            "demo-ab12cd34",
        ),
        (
            claim(
                spec={
                    "sandboxTemplateRef": {"name": "demo"},
                    "additionalPodMetadata": {"labels": None},
                }
            ),
            "demo-ab12cd34",
        ),
    ],
    ids=["label", "name", "existing labels kept", "null labels"],
)
def test_claim_create_gets_the_pod_label(
    adm_request: MakeRequest, settings: Settings, obj: dict[str, Any], expected: str
) -> None:
    response = mutate(
        adm_request(obj, kind=kinds.SANDBOX_CLAIM), settings=settings, claims=NoClaims()
    )
    assert response["allowed"] is True
    patched = apply(obj, response)
    labels = patched["spec"]["additionalPodMetadata"]["labels"]
    assert labels[kinds.LABEL_SANDBOX_NAME] == expected
    original_labels = (obj["spec"].get("additionalPodMetadata") or {}).get("labels") or {}
    assert {k: v for k, v in labels.items() if k != kinds.LABEL_SANDBOX_NAME} == original_labels
    assert patched["spec"]["sandboxTemplateRef"] == {"name": "demo"}
    assert all(op["op"] in ("add", "replace") for op in patch_of(response))
    # Reinvocation (IfNeeded) sees the patched object: nothing more to do.
    again = mutate(
        adm_request(patched, kind=kinds.SANDBOX_CLAIM), settings=settings, claims=NoClaims()
    )
    assert again == {"uid": response["uid"], "allowed": True}


class Claims:
    def __init__(self, *claims: dict[str, Any]) -> None:
        self.by_uid = {(c["metadata"]["namespace"], c["metadata"]["uid"]): c for c in claims}

    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        return self.by_uid.get((namespace, uid))


def warm_pod(**extra_labels: str) -> dict[str, Any]:
    """A claimed warm pod with a big spec: the patch must still touch labels only."""
    obj = builders.claimed_pod("c1a1m")
    obj["metadata"]["labels"].update(extra_labels)
    obj["spec"]["containers"][0]["env"] = [
        {"name": f"E{i}", "value": "v" * 100} for i in range(100)
    ]
    return obj


@VERSIONS
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_claimed_warm_pod_gets_the_sandbox_labels(
    adm_request: MakeRequest, settings: Settings, operation: str, version: str
) -> None:
    labels = {kinds.LABEL_SANDBOX_NAME: "demo-ab12cd34", kinds.LABEL_SESSION_ID: "s-1"}
    claims = Claims(in_version(claim(labels=labels), version))
    obj = warm_pod()
    response = mutate(
        adm_request(obj, kind=kinds.POD, operation=operation, old=warm_pod()),
        settings=settings,
        claims=claims,
    )
    patched = apply(copy.deepcopy(obj), response)
    assert patched["metadata"]["labels"] == {
        **obj["metadata"]["labels"],
        kinds.LABEL_SANDBOX_NAME: "demo-ab12cd34",
        kinds.LABEL_SESSION_ID: "s-1",
    }
    assert patched["spec"] == obj["spec"]
    # The patch touches labels only, however big the pod is.
    assert all(op["path"].startswith("/metadata/labels/") for op in patch_of(response))
    again = mutate(
        adm_request(patched, kind=kinds.POD, operation=operation), settings=settings, claims=claims
    )
    assert "patch" not in again


def test_pod_of_an_unknown_claim_or_no_claim_is_left_alone(
    adm_request: MakeRequest, settings: Settings
) -> None:
    assert "patch" not in mutate(
        adm_request(warm_pod(), kind=kinds.POD), settings=settings, claims=Claims()
    )
    plain = pod({"app": "x"})
    assert "patch" not in mutate(
        adm_request(plain, kind=kinds.POD), settings=settings, claims=Claims(claim())
    )


def test_a_claim_in_another_namespace_never_labels_the_pod(
    adm_request: MakeRequest, settings: Settings
) -> None:
    """The pod in team-a carries the uid of a claim in team-b: it gets nothing of that claim."""
    elsewhere = builders.sandbox_claim(
        "demo-ab12cd34", "team-b", uid="c1a1m", labels={kinds.LABEL_SESSION_ID: "s-b"}
    )
    pod = warm_pod()
    assert pod["metadata"]["namespace"] == "team-a"
    answer = mutate(
        adm_request(pod, kind=kinds.POD, namespace="team-a"),
        settings=settings,
        claims=Claims(elsewhere),
    )
    assert "patch" not in answer
    # The same claim in the pod's own namespace does label it.
    own = builders.sandbox_claim("demo-ab12cd34", "team-a", uid="c1a1m")
    answer = mutate(
        adm_request(pod, kind=kinds.POD, namespace="team-a"),
        settings=settings,
        claims=Claims(elsewhere, own),
    )
    assert apply(pod, answer)["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME] == "demo-ab12cd34"


# --- the patch, against jsonpatch.make_patch ------------------------------------------

_keys = st.sampled_from(["a", "b", "x/y", "t~1", kinds.LABEL_SANDBOX_NAME])
_shapes = st.one_of(
    st.none(),
    st.integers(),
    st.dictionaries(_keys, st.one_of(st.text(max_size=3), st.none()), max_size=4),
)


@st.composite
def _objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": "X"}
    depth = draw(st.integers(0, 3))  # how far along spec.additionalPodMetadata.labels exists
    node = obj
    for key in ("spec", "additionalPodMetadata", "labels")[:depth]:
        node[key] = {"other": 1} if key != "labels" else {}
        node = node[key]
    if depth and draw(st.booleans()):
        parent_path = ("spec", "additionalPodMetadata", "labels")[: depth - 1]
        parent = obj
        for key in parent_path:
            parent = parent[key]
        parent[("spec", "additionalPodMetadata", "labels")[depth - 1]] = draw(_shapes)
    return obj


@settings(max_examples=500, deadline=None)
@given(obj=_objects(), wanted=st.dictionaries(_keys, st.text(max_size=3), min_size=1, max_size=3))
def test_patch_does_what_make_patch_would(obj: dict[str, Any], wanted: dict[str, str]) -> None:
    path = ("spec", "additionalPodMetadata", "labels")
    expected = copy.deepcopy(obj)
    node = expected
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if not isinstance(node.get(path[-1]), dict):
        node[path[-1]] = {}
    node[path[-1]].update(wanted)

    patch = patch_labels(obj, path, wanted)
    assert jsonpatch.apply_patch(obj, patch) == expected
    assert jsonpatch.apply_patch(obj, jsonpatch.make_patch(obj, expected)) == expected
    assert all(op["op"] in ("add", "replace") for op in patch)
    assert (patch == []) == (obj == expected)


# --- any JSON in, an answer out -------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)  # fmt: skip
handled_kinds = st.sampled_from(
    [kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER, kinds.SANDBOX, kinds.SANDBOX_CLAIM, kinds.POD]
)
label_maps = st.dictionaries(
    st.sampled_from([kinds.LABEL_SANDBOX_NAME, kinds.LABEL_CLAIM_UID, kinds.LABEL_SESSION_ID]),
    st.one_of(st.sampled_from(["c1a1m", "demo-1"]), json_values),
)


@st.composite
def objectish(draw: st.DrawFn) -> Any:
    """Objects of a handled kind with any value at the places the decisions read."""
    metadata = draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.one_of(st.just("demo"), json_values),
                    "namespace": st.one_of(st.just("team-a"), json_values),
                    "labels": st.one_of(label_maps, json_values),
                    "annotations": st.one_of(
                        st.dictionaries(
                            st.just(kinds.ANNOTATION_NETWORK_POLICY),
                            st.one_of(st.just('{"mode": "Restricted"}'), json_values),
                        ),
                        json_values,
                    ),
                },
            ),
        )
    )
    policy = draw(json_values)
    spec = draw(
        st.one_of(
            json_values,
            st.just({"template": {"networkPolicy": policy}}),
            st.just({"podTemplate": {"networkPolicy": policy}}),
            st.just({"additionalPodMetadata": draw(json_values)}),
        )
    )
    return draw(st.one_of(st.just({"metadata": metadata, "spec": spec}), json_values))


@st.composite
def requestish(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(handled_kinds)
    request = builders.admission_request(
        draw(objectish()),
        kind=kind,
        operation=draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
        old=draw(objectish()),
        user=draw(st.sampled_from([TENANT, AGENTCUBE_SA])),
    )
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=2)):
        request[key] = draw(json_values)
    if draw(st.booleans()):
        request["kind"] = {"group": kind.group, "version": kind.version, "kind": draw(json_values)}
    if draw(st.booleans()):
        request["userInfo"] = {"username": draw(json_values), "groups": draw(json_values)}
    return request


@settings(max_examples=500, deadline=None)
@given(request=requestish())
def test_no_request_makes_a_decision_raise(request: dict[str, Any]) -> None:
    """A raise would be answered allowed: false, code 500: a denial, even where the webhook's
    failurePolicy is Ignore. Every shape gets an answer: decided, or refused with code 400."""
    claims = Claims(claim(labels={kinds.LABEL_SANDBOX_NAME: "demo-1"}))
    for answer in (
        validate(request, settings=Settings()),
        mutate(request, settings=Settings(), claims=claims),
    ):
        assert isinstance(answer["allowed"], bool)
        assert answer.get("status", {}).get("code") in (None, 400, 403, 422)
        if answer.get("status", {}).get("code") == 400:
            assert answer["status"]["message"].startswith("malformed AdmissionRequest: request.")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", [], "request.kind must be an object or null, not array"),
        ("operation", 1, "request.operation must be a string, not number"),
        ("object", [], "request.object must be an object or null, not array"),
        ("oldObject", "x", "request.oldObject must be an object or null, not string"),
        ("userInfo", {"groups": "g"}, "request.userInfo.groups must be a list of strings"),
        ("namespace", {}, "request.namespace must be a string, not object"),
    ],
)
def test_a_request_of_the_wrong_shape_is_refused_naming_the_field(
    adm_request: MakeRequest, settings: Settings, field: str, value: Any, message: str
) -> None:
    request = adm_request(template("CodeInterpreter", BAD), kind=kinds.CODE_INTERPRETER)
    request[field] = value
    for answer in (
        validate(request, settings=settings),
        mutate(request, settings=settings, claims=NoClaims()),
    ):
        assert answer["uid"] == request["uid"]
        assert answer["allowed"] is False
        assert answer["status"] == {
            "code": 400,
            "reason": "BadRequest",
            "message": f"malformed AdmissionRequest: {message}",
        }


def test_null_metadata_is_read_as_absent(adm_request: MakeRequest, settings: Settings) -> None:
    obj = template("CodeInterpreter", BAD)
    obj["metadata"] = None
    request = adm_request(obj, kind=kinds.CODE_INTERPRETER)
    request["name"] = "from-the-request"
    answer = validate(request, settings=settings)
    assert answer["status"]["code"] == 422
    assert answer["status"]["message"].startswith('CodeInterpreter "from-the-request" is invalid: ')
    pod_update = adm_request(
        {"metadata": None}, kind=kinds.POD, operation="UPDATE", old={"metadata": {"labels": []}}
    )
    assert validate(pod_update, settings=settings)["allowed"] is True
    assert "patch" not in mutate(pod_update, settings=settings, claims=NoClaims())
