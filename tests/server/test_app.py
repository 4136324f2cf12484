"""The HTTP layer, through the real ASGI app."""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 and warns when its TestClient runs on httpx;
    # either works for these tests, so the suite does not depend on which is installed.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from tests import builders
from webhook.admission import decide
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.server.app import create_app
from webhook.server.metrics import AdmissionMetrics

SETTINGS = Settings()
JSON = {"content-type": "application/json"}
# The largest body the API server can send (two ~3 MiB objects and change; the reason is
# written beside the limit in webhook/server/app.py). Written out here, not imported, so
# that a change of the limit is a change this test notices.
SEVEN_MIB = 7 * 1024 * 1024


class OneClaim:
    """A claim lookup that knows one SandboxClaim."""

    def __init__(self, claim: dict[str, Any]) -> None:
        self.claim = claim
        self.asked: list[tuple[str, str]] = []

    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        self.asked.append((namespace, uid))
        return self.claim if uid == self.claim["metadata"]["uid"] else None


CLAIM = builders.sandbox_claim(
    "ci-abc12345", uid="claim-uid-1", labels={kinds.LABEL_SESSION_ID: "session-1"}
)


@pytest.fixture
def claims() -> OneClaim:
    return OneClaim(copy.deepcopy(CLAIM))


@pytest.fixture
def client(claims: OneClaim) -> Iterator[TestClient]:
    with TestClient(create_app(settings=SETTINGS, claims=claims)) as test_client:
        yield test_client


def review(
    *,
    kind: kinds.Kind = kinds.POD,
    obj: dict[str, Any] | None = None,
    uid: str = "7f3c-uid",
    **fields: Any,
) -> dict[str, Any]:
    """A tenant's review of ``obj`` (default: a plain pod "pod-1")."""
    return builders.review_of(
        obj if obj is not None else builders.sandbox_pod("pod-1"), kind=kind, uid=uid, **fields
    )


def claimed_pod() -> dict[str, Any]:
    return builders.claimed_pod("claim-uid-1")


def post(client: TestClient, path: str, body: Any, headers: Mapping[str, str] = JSON) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers=dict(headers))


# --- probes ---------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "ok")


@pytest.mark.parametrize(
    ("failing", "status", "text"),
    [
        ([], 200, "ok"),
        (["caches: pods, sandboxes"], 503, "not ready: caches: pods, sandboxes"),
        (["certificates: not loaded", "shutting down"], 503,
         "not ready: certificates: not loaded; shutting down"),
    ],
)  # fmt: skip
def test_readyz_names_each_failing_check(failing: list[str], status: int, text: str) -> None:
    app = create_app(settings=SETTINGS, claims=decide.NoClaims(), not_ready=lambda: failing)
    with TestClient(app) as client:
        answer = client.get("/readyz")
    assert (answer.status_code, answer.text) == (status, text)


# --- bad HTTP requests ----------------------------------------------------------

GOOD = orjson.dumps(review())


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"", JSON, 400, "empty"),
        (b"{not json", JSON, 400, "not JSON"),
        (b"\xff\xfe\x00", JSON, 400, "not JSON"),
        (b"[1, 2]", JSON, 400, "not a JSON object"),
        (b'"AdmissionReview"', JSON, 400, "not a JSON object"),
        (orjson.dumps({**review(), "kind": "Pod"}), JSON, 400, "not an AdmissionReview"),
        (orjson.dumps({**review(), "apiVersion": "v1"}), JSON, 400, "not an AdmissionReview"),
        (orjson.dumps({**review(), "request": None}), JSON, 400, "no request"),
        (orjson.dumps({**review(), "request": []}), JSON, 400, "no request"),
        (orjson.dumps(review(uid="")), JSON, 400, "no uid"),
        (orjson.dumps({**review(), "request": {"kind": {}}}), JSON, 400, "no uid"),
        (GOOD, {"content-type": "text/plain"}, 415, "application/json"),
        (GOOD, {"content-type": "application/yaml"}, 415, "application/json"),
        (GOOD, {}, 415, "application/json"),
    ],
)
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_bad_requests_get_a_4xx_with_a_reason(  # noqa: PLR0917 (parametrized)
    client: TestClient, path: str, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    answer = post(client, path, body, headers)
    assert answer.status_code == status
    assert reason in answer.text


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("where", ["whole body", "inside the object"])
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_body_nested_5000_levels_deep_is_400(client: TestClient, path: str, where: str) -> None:
    if where == "whole body":
        body = nested(5000)
    else:
        head, tail = orjson.dumps(review(obj={"metadata": {"labels": 0}})).split(b"0", 1)
        body = head + nested(5000) + tail
    answer = post(client, path, body)
    assert answer.status_code == 400
    assert "nested too deeply" in answer.text


@pytest.mark.parametrize("kind", [kinds.CODE_INTERPRETER, kinds.POD], ids=lambda k: k.kind)
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_json_deeper_than_python_recurses_is_refused_not_crashed(
    client: TestClient, path: str, kind: kinds.Kind
) -> None:
    """1000 levels: JSON the decoder reads, deeper than Python's recursion limit."""
    obj = (
        builders.code_interpreter(policy={"mode": 0})
        if kind == kinds.CODE_INTERPRETER
        else (builders.sandbox_pod(labels={kinds.LABEL_CLAIM_UID: 0}))
    )
    head, tail = orjson.dumps(review(kind=kind, obj=obj, operation="UPDATE", old=obj)).split(
        b"0", 1
    )
    answer = post(client, path, head + nested(1000) + tail)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 200:
        assert answer.json()["response"].get("status", {}).get("code") != 500, answer.text


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"]
)
def test_json_content_type_with_parameters_is_accepted(
    client: TestClient, content_type: str
) -> None:
    answer = post(client, "/validate", GOOD, {"content-type": content_type})
    assert answer.status_code == 200


def review_of_size(
    size: int, obj: dict[str, Any] | None = None, kind: kinds.Kind = kinds.POD
) -> bytes:
    """A valid review of ``obj`` (default: a plain pod) of exactly ``size`` bytes (padded in
    an annotation)."""

    def with_padding(padding: int) -> bytes:
        padded = copy.deepcopy(obj) if obj is not None else builders.sandbox_pod("pod-1")
        padded["metadata"].setdefault("annotations", {})["x"] = "y" * padding
        return orjson.dumps(review(obj=padded, kind=kind))

    body = with_padding(size - len(with_padding(0)))
    assert len(body) == size
    return body


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_body_one_byte_over_7_mib_is_413(client: TestClient, path: str) -> None:
    answer = post(client, path, review_of_size(SEVEN_MIB + 1))
    assert answer.status_code == 413
    assert "7340032 bytes" in answer.text


def test_body_of_exactly_7_mib_is_validated(client: TestClient) -> None:
    """The decision runs on the whole 7 MiB body: a bad CIDR in it is denied with its field
    named (a decision that raised would answer code 500 instead)."""
    bad = builders.code_interpreter(
        policy={"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
    )
    answer = post(client, "/validate", review_of_size(SEVEN_MIB, bad, kinds.CODE_INTERPRETER))
    assert answer.status_code == 200
    response = answer.json()["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "spec.template.networkPolicy.egress[0].cidrs[0]" in response["status"]["message"]


def test_body_of_exactly_7_mib_is_mutated(client: TestClient) -> None:
    """The mutation runs on the whole 7 MiB body: the claim gets its sandbox-name label."""
    claim = builders.sandbox_claim("py-s3ss10n1")
    answer = post(client, "/mutate", review_of_size(SEVEN_MIB, claim, kinds.SANDBOX_CLAIM))
    assert answer.status_code == 200
    response = answer.json()["response"]
    assert response["allowed"] is True
    patch = orjson.loads(base64.b64decode(response["patch"]))
    assert patch == [
        {
            "op": "add",
            "path": "/spec/additionalPodMetadata",
            "value": {"labels": {kinds.LABEL_SANDBOX_NAME: "py-s3ss10n1"}},
        }
    ]


def test_oversized_body_is_not_read_to_the_end() -> None:
    """A client that streams a huge body is cut off once the limit is passed."""
    app = create_app(settings=SETTINGS, claims=decide.NoClaims())
    chunk = b"x" * (1024 * 1024)
    chunks_sent = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal chunks_sent
        chunks_sent += 1
        return {"type": "http.request", "body": chunk, "more_body": chunks_sent < 100}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/validate",
        "raw_path": b"/validate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],  # no content-length: chunked
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9443),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert chunks_sent == 8  # 7 MiB in 1 MiB chunks, and the one that passed the limit


def test_declared_oversized_body_is_refused_before_reading() -> None:
    app = create_app(settings=SETTINGS, claims=decide.NoClaims())
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    length = str(SEVEN_MIB + 1).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/validate",
        "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
        "query_string": b"",
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert reads == 0


def test_get_on_a_webhook_path_is_405(client: TestClient) -> None:
    assert client.get("/validate").status_code == 405


# --- AdmissionReview in, AdmissionReview out ------------------------------------


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_review_echoes_uid_api_version_and_kind(
    client: TestClient, path: str, api_version: str
) -> None:
    answer = post(client, path, review(uid="abc-123", api_version=api_version))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["apiVersion"] == api_version
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == "abc-123"
    assert body["response"]["allowed"] is True


def test_validate_denies_an_invalid_code_interpreter(client: TestClient) -> None:
    interpreter = builders.code_interpreter(
        "ci", policy={"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
    )
    answer = post(client, "/validate", review(kind=kinds.CODE_INTERPRETER, obj=interpreter))
    result = answer.json()["response"]
    assert answer.status_code == 200
    assert result["allowed"] is False
    assert "spec.template.networkPolicy.egress[0].cidrs[0]" in result["status"]["message"]


def test_mutate_patches_a_claimed_pod_from_the_claim_lookup(
    client: TestClient, claims: OneClaim
) -> None:
    answer = post(client, "/mutate", review(operation="UPDATE", obj=claimed_pod()))
    result = answer.json()["response"]
    assert claims.asked == [("team-a", "claim-uid-1")]
    assert result["allowed"] is True
    assert result["patchType"] == "JSONPatch"
    patch = orjson.loads(base64.b64decode(result["patch"]))
    added = {op["path"]: op["value"] for op in patch}
    assert added["/metadata/labels/runtime.agentcube.io~1sandbox-name"] == "ci-abc12345"


# --- errors inside a decision ---------------------------------------------------


def explode(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom in the decision")


@pytest.mark.parametrize(("path", "function"), [("/validate", "validate"), ("/mutate", "mutate")])
def test_exception_in_the_decision_is_allowed_false_code_500(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
    function: str,
) -> None:
    monkeypatch.setattr(decide, function, explode)
    with caplog.at_level(logging.ERROR, logger="webhook.server.app"):
        answer = post(client, path, review(uid="uid-500"))
    assert answer.status_code == 200
    result = answer.json()["response"]
    assert result["uid"] == "uid-500"
    assert result["allowed"] is False
    assert result["status"]["code"] == 500
    assert "boom in the decision" in result["status"]["message"]
    failures = [r for r in caplog.records if r.exc_info]
    assert failures, "the exception is logged with its traceback"
    assert "uid-500" in failures[0].getMessage()


def test_unencodable_answer_is_allowed_false_code_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        decide, "validate", lambda request, **_: {"uid": request["uid"], "allowed": {1, 2}}
    )
    result = post(client, "/validate", review(uid="u")).json()["response"]
    assert (result["uid"], result["allowed"], result["status"]["code"]) == ("u", False, 500)


# --- observability --------------------------------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not in metrics")


def test_metrics_count_requests_by_webhook_kind_operation_verdict() -> None:
    metrics = AdmissionMetrics()
    app = create_app(settings=SETTINGS, claims=OneClaim(copy.deepcopy(CLAIM)), metrics=metrics)
    with TestClient(app) as client:
        for _ in range(3):
            post(client, "/validate", review())
        post(client, "/mutate", review(operation="UPDATE", obj=claimed_pod()))
        made_up = kinds.Kind("evil.example", "v1", "Kind-" + "x" * 50, "xs")
        post(client, "/validate", review(kind=made_up, operation="CREATE"))
        post(client, "/validate", b"", JSON)
        text = client.get("/metrics").text

    requests = "agentcube_netpol_admission_requests_total"
    common = {"webhook": "validate", "kind": "Pod", "operation": "CREATE", "verdict": "allowed"}
    assert metric_value(text, requests, **common) == 3
    assert metric_value(text, requests, webhook="mutate", kind="Pod", operation="UPDATE",
                        verdict="patched") == 1  # fmt: skip
    assert metric_value(text, requests, **{**common, "kind": "other"}) == 1
    assert "Kind-xxx" not in text
    histogram = "agentcube_netpol_admission_duration_seconds_count"
    assert metric_value(text, histogram, **common) == 3
    assert metric_value(text, "agentcube_netpol_bad_requests_total", webhook="validate",
                        code="400") == 1  # fmt: skip


def test_one_log_line_per_request_without_the_object(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    obj = {"metadata": {"name": "pod-1"}, "data": {"password": "hunter2-secret"}}
    with caplog.at_level(logging.INFO, logger="webhook.server.app"):
        post(client, "/validate", review(uid="log-uid", obj=obj))
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook.server.app"]
    assert len(lines) == 1
    line = lines[0]
    for part in ("log-uid", "kind=Pod", "team-a/pod-1", "CREATE", "user=alice", "verdict=allowed"):
        assert part in line
    assert "ms=" in line
    assert "hunter2" not in line


# --- no input makes it answer 5xx -----------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)  # fmt: skip

known_kinds = st.sampled_from(
    [kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER, kinds.SANDBOX, kinds.SANDBOX_CLAIM, kinds.POD]
)


@st.composite
def admission_reviewish(draw: st.DrawFn) -> dict[str, Any]:
    """AdmissionReviews with the right frame and anything inside it."""
    kind = draw(known_kinds)
    base = review(
        kind=kind,
        operation=draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "PATCH"])),
        uid=draw(st.text(min_size=1, max_size=8)),
    )
    request = base["request"]
    policy_places = {
        kinds.CODE_INTERPRETER.kind: ("template", "networkPolicy"),
        kinds.AGENT_RUNTIME.kind: ("podTemplate", "networkPolicy"),
    }
    obj: dict[str, Any] = {"metadata": draw(json_values)}
    if kind.kind in policy_places:
        outer, inner = policy_places[kind.kind]
        obj["spec"] = {outer: {inner: draw(json_values)}}
    obj["metadata"] = draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"name": st.text(max_size=8), "labels": json_values, "annotations": json_values}
            ),
        )
    )
    request["object"] = draw(st.one_of(st.just(obj), json_values))
    request["oldObject"] = draw(st.one_of(st.just(obj), json_values))
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=3)):
        if key != "uid":
            request[key] = draw(json_values)
    return base


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    admission_reviewish().map(orjson.dumps),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(["/validate", "/mutate"]))
def test_no_body_makes_the_app_answer_5xx_or_crash_in_the_decision(body: bytes, path: str) -> None:
    """A crash inside the decision is answered ``allowed: false, code 500``: a denial, even on
    the webhooks whose failurePolicy is Ignore. No input may cause one."""
    app = create_app(settings=SETTINGS, claims=OneClaim(copy.deepcopy(CLAIM)))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post(path, content=body, headers=JSON)
    assert answer.status_code < 500, answer.text
    if answer.status_code == 200:
        result = answer.json()["response"]
        assert isinstance(result["allowed"], bool)
        assert result.get("status", {}).get("code") != 500, result["status"]["message"]


def test_the_claim_mutation_reads_the_current_settings_on_each_request() -> None:
    """`run` flips claim label injection in place when agent-sandbox's allow-list changes."""
    current = [Settings(claim_label_injection="off")]
    claim = builders.sandbox_claim("demo-ab12cd34", uid="c1a1m")
    claim["apiVersion"] = f"{kinds.SANDBOX_EXT_GROUP}/v1beta1"
    claim["spec"] = {"warmPoolRef": {"name": "demo"}}
    app = create_app(settings=SETTINGS, claims=OneClaim(CLAIM), live_settings=lambda: current[0])
    with TestClient(app) as client:

        def patched() -> bool:
            answer = post(client, "/mutate", review(kind=kinds.SANDBOX_CLAIM, obj=claim))
            return "patch" in answer.json()["response"]

        assert patched() is False
        current[0] = Settings(claim_label_injection="on")
        assert patched() is True


def test_metrics_say_when_the_serving_certificate_expires(tmp_path: Any) -> None:
    from datetime import UTC, datetime

    from webhook.tls.certs import CertificateReloader

    metrics = AdmissionMetrics()
    reloader = CertificateReloader(tmp_path, dns_names=["localhost"])
    metrics.track_certificate(lambda: reloader.not_after)
    name = "agentcube_netpol_serving_certificate_expiry_timestamp_seconds"
    assert metrics.registry.get_sample_value(name) == 0.0  # nothing served yet
    reloader.check(at=datetime.now(UTC))
    assert reloader.not_after is not None
    assert metrics.registry.get_sample_value(name) == reloader.not_after.timestamp()
    assert reloader.not_after.timestamp() > datetime.now(UTC).timestamp() + 86400
