"""Prometheus metrics of the admission server.

Label values are kept to small fixed sets: a kind the webhook does not know is
counted as ``other``, and so is an operation outside admission's four, so a
caller cannot grow the series without bound by sending made-up kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from webhook.api.kinds import kind_of
from webhook.api.wire import AdmissionResponse

Webhook = Literal["validate", "mutate"]
Verdict = Literal["allowed", "denied", "patched", "errored"]

OTHER = "other"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
# Admission decisions take well under a millisecond; the API server gives up
# after the webhook's timeoutSeconds (at most 30 s, ours is a few seconds).
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def kind_label(kind: Any) -> str:
    """The request's ``kind`` (a GroupVersionKind) as a bounded label value."""
    if not isinstance(kind, dict):
        return OTHER
    group, name = kind.get("group", ""), kind.get("kind")
    if not isinstance(group, str) or not isinstance(name, str):
        return OTHER
    known = kind_of(group, name)
    return known.kind if known is not None else OTHER


def operation_label(operation: Any) -> str:
    return operation if isinstance(operation, str) and operation in OPERATIONS else OTHER


def verdict_of(response: AdmissionResponse) -> Verdict:
    if response.get("allowed"):
        return "patched" if response.get("patch") else "allowed"
    code = response.get("status", {}).get("code", 0)
    return "errored" if isinstance(code, int) and code >= 500 else "denied"


class AdmissionMetrics:
    """Counters and latency histograms, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _new_registry()
        labels = ("webhook", "kind", "operation", "verdict")
        self._requests = Counter(
            "agentcube_netpol_admission_requests",
            "Admission requests answered, by webhook, kind, operation and verdict.",
            labels,
            registry=self.registry,
        )
        self._duration = Histogram(
            "agentcube_netpol_admission_duration_seconds",
            "Time to read, decode, decide and encode one AdmissionReview.",
            labels,
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self._bad_requests = Counter(
            "agentcube_netpol_bad_requests",
            "HTTP requests refused before a decision (empty, not JSON, too large, ...).",
            ("webhook", "code"),
            registry=self.registry,
        )
        self._certificate_expiry = Gauge(
            "agentcube_netpol_serving_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time; 0 before one is loaded).",
            registry=self.registry,
        )
        # Children by label values: ``labels()`` is a lock and a dict lookup per
        # call; this keeps the hot path to one lookup.
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def observe(
        self, *, webhook: Webhook, kind: str, operation: str, verdict: Verdict, seconds: float
    ) -> None:
        key = (webhook, kind, operation, verdict)
        children = self._children.get(key)
        if children is None:
            children = (self._requests.labels(*key), self._duration.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def track_certificate(self, not_after: Callable[[], datetime | None]) -> None:
        """The expiry gauge reads ``not_after`` (the reloader's) when scraped."""

        def timestamp() -> float:
            expiry = not_after()
            return expiry.timestamp() if expiry is not None else 0.0

        self._certificate_expiry.set_function(timestamp)

    def bad_request(self, *, webhook: Webhook, code: int) -> None:
        self._bad_requests.labels(webhook, str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
