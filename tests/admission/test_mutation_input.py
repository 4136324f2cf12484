"""/mutate decodes only what the mutation declares it reads (admission.MutationReview).

If mutate() ever reads a field the schema leaves out, the two answers below differ:
whole-decoded and schema-decoded requests must get the same response, patch included.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import review_of
from webhook.admission.decide import mutate
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.server.app import decode_review, parse_for_mutation, parse_whole

CLAIM = {
    "metadata": {
        "name": "ci-ab12cd34",
        "namespace": "team-a",
        "uid": "c1",
        "labels": {kinds.LABEL_SANDBOX_NAME: "ci-ab12cd34", kinds.LABEL_SESSION_ID: "s1"},
    }
}


class OneClaim:
    def claim_by_uid(self, namespace: str, uid: str) -> Any:
        return CLAIM if (namespace, uid) == ("team-a", "c1") else None


label_values = st.sampled_from(["c1", "c2", "ci-ab12cd34", "other", ""])
label_maps = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(
            [kinds.LABEL_CLAIM_UID, kinds.LABEL_SANDBOX_NAME, kinds.LABEL_SESSION_ID, "app"]
        ),
        label_values,
    ),
)
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": draw(st.sampled_from(["", "ci-ab12cd34", "p"])),
        "namespace": "team-a",
    }
    labels = draw(label_maps)
    if labels is not None or draw(st.booleans()):
        metadata["labels"] = labels
    metadata["annotations"] = draw(junk)
    obj: dict[str, Any] = {"metadata": metadata, "status": draw(junk)}
    spec = draw(st.sampled_from(["absent", "empty", "with-apm", "apm-null"]))
    if spec != "absent":
        obj["spec"] = {"containers": draw(junk), "sandboxTemplateRef": {"name": "ci"}}
        if spec == "with-apm":
            obj["spec"]["additionalPodMetadata"] = {
                "labels": draw(label_maps),
                "annotations": draw(junk),
            }
        elif spec == "apm-null":
            obj["spec"]["additionalPodMetadata"] = None
    return obj


@settings(max_examples=400, deadline=None)
@given(
    obj=objects(),
    old=st.one_of(st.none(), objects()),
    kind=st.sampled_from([kinds.POD, kinds.SANDBOX_CLAIM, kinds.SANDBOX, kinds.CODE_INTERPRETER]),
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
    sub_resource=st.sampled_from([None, "status"]),
)
def test_schema_decoded_requests_get_the_same_answer(
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    kind: kinds.Kind,
    operation: str,
    sub_resource: str | None,
) -> None:
    review = review_of(obj, kind=kind, operation=operation, old=old, sub_resource=sub_resource)
    body = orjson.dumps(review)
    _, whole = decode_review(body, parse_whole)
    _, schema = decode_review(body, parse_for_mutation)
    assert "oldObject" not in schema  # the point: the old pod is never built
    settings_ = Settings()
    assert mutate(schema, settings=settings_, claims=OneClaim()) == mutate(
        whole, settings=settings_, claims=OneClaim()
    )
