"""The HTTP layer: decode an AdmissionReview, call the decision, encode the answer.

Two error channels. A request that is not a usable AdmissionReview (no body, not
JSON, not an AdmissionReview, too large, wrong content type) gets an HTTP 4xx
with a short reason, as kopf's webhook server does (``kopf/_kits/webhooks.py``
raises ``HTTPBadRequest``); controller-runtime's ``http.go`` answers those with
HTTP 200 and a code-400 review instead. Anything that goes wrong inside a
decision becomes HTTP 200 with ``allowed: false`` and code 500, the uid echoed,
as controller-runtime's ``Errored`` does; the server itself never answers 5xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
import orjson
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from webhook.admission import decide, response
from webhook.admission.decide import ClaimLookup
from webhook.admission.widening import SandboxLookup
from webhook.api.settings import Settings
from webhook.api.wire import AdmissionRequest, AdmissionResponse
from webhook.server.metrics import (
    METRICS_CONTENT_TYPE,
    AdmissionMetrics,
    Webhook,
    kind_label,
    operation_label,
    verdict_of,
)

logger = logging.getLogger(__name__)

# Why 7 MiB (the number controller-runtime's webhook uses): etcd accepts requests
# of up to 1.5 MiB by default, and the API server allows twice that for a
# request body, because an object written as JSON shrinks when it is stored as
# protobuf; so one object is at most about 3 MiB. An AdmissionReview carries at
# most two objects (``object`` and, on UPDATE, ``oldObject``) plus less than
# 1 MiB of everything else: 2 x 3 MiB + 1 MiB = 7 MiB. A body larger than that
# cannot come from a real API server, so it is refused before it is parsed.
MAX_REQUEST_BYTES = 7 * 1024 * 1024

ADMISSION_API_VERSIONS = frozenset({"admission.k8s.io/v1", "admission.k8s.io/v1beta1"})
JSON_MEDIA_TYPE = "application/json"

Decide = Callable[[AdmissionRequest], AdmissionResponse]


class BadRequestError(Exception):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def create_app(
    *,
    settings: Settings,
    claims: ClaimLookup,
    sandboxes: SandboxLookup | None = None,
    not_ready: Callable[[], Sequence[str]] = lambda: (),
    metrics: AdmissionMetrics | None = None,
    live_settings: Callable[[], Settings] | None = None,
) -> Starlette:
    """The ASGI app: POST /validate and /mutate; GET /healthz, /readyz, /metrics.

    ``not_ready`` answers /readyz: the checks that fail (certificates not loaded,
    caches not synced, shutting down), each named in the 503's body; none: 200. ``live_settings``, when given, is asked on
    each request instead of ``settings`` (``run`` flips claim label injection in place).
    """
    settings_now = live_settings or (lambda: settings)
    admission_metrics = metrics if metrics is not None else AdmissionMetrics()

    # Looked up on the module at call time, so a test can replace the decision.
    def decide_validate(request: AdmissionRequest) -> AdmissionResponse:
        return decide.validate(request, settings=settings_now(), sandboxes=sandboxes)

    def decide_mutate(request: AdmissionRequest) -> AdmissionResponse:
        return decide.mutate(request, settings=settings_now(), claims=claims)

    async def validate_endpoint(request: HTTPRequest) -> Response:
        return await _handle(request, "validate", decide_validate, admission_metrics, parse_whole)

    async def mutate_endpoint(request: HTTPRequest) -> Response:
        return await _handle(
            request, "mutate", decide_mutate, admission_metrics, parse_for_mutation
        )

    async def healthz(request: HTTPRequest) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: HTTPRequest) -> Response:
        failing = not_ready()
        if not failing:
            return PlainTextResponse("ok")
        return PlainTextResponse(f"not ready: {'; '.join(failing)}", status_code=503)

    async def metrics_endpoint(request: HTTPRequest) -> Response:
        return Response(admission_metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/validate", validate_endpoint, methods=["POST"]),
            Route("/mutate", mutate_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )


async def _handle(
    http_request: HTTPRequest,
    webhook: Webhook,
    decide: Decide,
    metrics: AdmissionMetrics,
    parse: Callable[[bytes], Any],
) -> Response:
    started = time.perf_counter()
    try:
        _check_content_type(http_request)
        body = await _read_body(http_request)
        api_version, request = decode_review(body, parse)
    except BadRequestError as exc:
        logger.info("refused a %s request: HTTP %d %s", webhook, exc.status_code, exc.reason)
        metrics.bad_request(webhook=webhook, code=exc.status_code)
        return PlainTextResponse(exc.reason, status_code=exc.status_code)

    uid: str = request["uid"]
    try:
        answer = decide(request)
        content = encode_review(api_version, answer)
    except Exception as exc:
        logger.exception("%s failed on uid=%s", webhook, uid)
        answer = response.errored(uid, 500, f"internal error in the {webhook} webhook: {exc!r}")
        content = encode_review(api_version, answer)
    seconds = time.perf_counter() - started

    verdict = verdict_of(answer)
    kind = kind_label(request.get("kind"))
    operation = operation_label(request.get("operation"))
    metrics.observe(
        webhook=webhook, kind=kind, operation=operation, verdict=verdict, seconds=seconds
    )
    logger.info(
        "%s uid=%s kind=%s object=%s/%s operation=%s user=%s verdict=%s ms=%.3f",
        webhook, uid, kind, request.get("namespace", ""), request.get("name", ""), operation,
        _username(request), verdict, seconds * 1000,
    )  # fmt: skip
    return Response(content, media_type=JSON_MEDIA_TYPE)


def _check_content_type(request: HTTPRequest) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise BadRequestError(415, f"content type must be {JSON_MEDIA_TYPE}, not {content_type!r}")


async def _read_body(request: HTTPRequest) -> bytes:
    """The body, read in chunks and abandoned as soon as it passes the limit."""
    too_large = BadRequestError(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise too_large
        chunks.append(chunk)
    if size == 0:
        raise BadRequestError(400, "request body is empty")
    return b"".join(chunks)


# /mutate reads only what the mutation declares it reads (decide.MutationReview):
# decoding a claimed pod's 32 KB UPDATE that way costs a third of decoding it whole.
_decode_for_mutation = msgspec.json.Decoder(decide.MutationReview).decode


def parse_for_mutation(body: bytes) -> Any:
    try:
        return _decode_for_mutation(body)
    except msgspec.ValidationError:
        # Not shaped as a review should be: parsed whole, so the checks in
        # decode_review and the decision see it exactly as /validate would.
        return parse_whole(body)
    except msgspec.DecodeError:
        raise BadRequestError(400, "request body is not JSON") from None
    except RecursionError:  # msgspec stops at Python's recursion limit
        raise _nested_too_deeply() from None


def parse_whole(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson stops at 1024 levels
            raise _nested_too_deeply() from None
        raise BadRequestError(400, "request body is not JSON") from None


def _nested_too_deeply() -> BadRequestError:
    # The objects our webhooks match are a few dozen levels deep at most.
    return BadRequestError(400, "request body is not JSON we read: nested too deeply")


def decode_review(
    body: bytes, parse: Callable[[bytes], Any] = parse_whole
) -> tuple[str, AdmissionRequest]:
    """The AdmissionReview's apiVersion and its request, or ``BadRequestError``."""
    review: Any = parse(body)
    if not isinstance(review, dict):
        raise BadRequestError(400, "request body is not a JSON object")
    api_version = review.get("apiVersion")
    if review.get("kind") != "AdmissionReview" or api_version not in ADMISSION_API_VERSIONS:
        raise BadRequestError(
            400,
            "not an AdmissionReview (want kind AdmissionReview, apiVersion admission.k8s.io/v1)",
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadRequestError(400, "AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadRequestError(400, "AdmissionReview request has no uid")
    return api_version, cast(AdmissionRequest, request)


def encode_review(api_version: str, answer: AdmissionResponse) -> bytes:
    return orjson.dumps({"apiVersion": api_version, "kind": "AdmissionReview", "response": answer})


def _username(request: AdmissionRequest) -> str:
    user_info: Any = request.get("userInfo")
    if isinstance(user_info, dict):
        name = user_info.get("username")
        if isinstance(name, str):
            return name
    return ""
