"""Fuzz against the running server: generated and mutated AdmissionReviews of every kind we
handle, and bodies that are not AdmissionReviews at all, sent over TLS to ``python -m
webhook serve`` as a process (the session's server, the one the API server calls in the
other e2e tests).

Every answer is a 4xx with a reason (not an AdmissionReview, malformed) or a 200
AdmissionReview that echoes the uid and decides (allowed, or denied with a code and a
message that is not an internal error); never a 5xx, never a dropped connection, and the
server answers /healthz and a real review afterwards as before.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import builders
from tests.admission.test_decide import requestish
from tests.e2e.harness import WebhookServer
from tests.server.test_app import bodies
from webhook.api import kinds

JSON = {"Content-Type": "application/json"}


class Client:
    """One keep-alive HTTPS connection to the server, opened again if it closes."""

    def __init__(self, server: WebhookServer) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(server.ca_file))
        self.connection: http.client.HTTPSConnection | None = None
        self.reconnects = 0

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(
                "127.0.0.1", self.server.port, context=self.context, timeout=10
            )
        self.connection.request("POST", path, body=body, headers=JSON)
        answer = self.connection.getresponse()
        data = answer.read()
        if answer.getheader("connection", "").lower() == "close":
            self.close()
            self.reconnects += 1
        return answer.status, data

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@pytest.fixture(scope="module")
def client(webhook_server: WebhookServer) -> Iterator[Client]:
    made = Client(webhook_server)
    yield made
    made.close()


def judge(status: int, data: bytes, sent: Any) -> None:
    assert status < 500, data[:500]
    if status != 200:
        assert data.strip(), "a refusal without a reason"
        return
    review = orjson.loads(data)
    response = review["response"]
    assert isinstance(response["allowed"], bool)
    uid = (sent.get("request") or {}).get("uid") if isinstance(sent, dict) else None
    if isinstance(uid, str):
        assert response["uid"] == uid
    status_field = response.get("status") or {}
    assert status_field.get("code") != 500, status_field.get("message")
    if not response["allowed"]:
        assert status_field.get("message"), response


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(["/validate", "/mutate"]))
def test_hostile_bodies_get_a_4xx_or_a_decision(client: Client, body: bytes, path: str) -> None:
    status, data = client.post(path, body)
    try:
        sent = orjson.loads(body)
    except orjson.JSONDecodeError:
        sent = None
    judge(status, data, sent)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requestish(), path=st.sampled_from(["/validate", "/mutate"]))
def test_generated_requests_of_every_kind_get_a_decision(
    client: Client, request: dict[str, Any], path: str
) -> None:
    review = builders.admission_review(request)
    status, data = client.post(path, orjson.dumps(review))
    judge(status, data, review)


def test_the_server_still_serves_after_the_fuzz(
    client: Client, webhook_server: WebhookServer
) -> None:
    assert webhook_server.running
    assert webhook_server.answers_200("/healthz")
    bad = builders.code_interpreter(
        "after-fuzz", "default", {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
    )
    review = builders.review_of(bad, kind=kinds.CODE_INTERPRETER)
    status, data = client.post("/validate", orjson.dumps(review))
    response = orjson.loads(data)["response"]
    assert (status, response["allowed"]) == (200, False)
    assert "10.0.0.1/8" in response["status"]["message"]
