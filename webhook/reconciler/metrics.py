"""Prometheus metrics of the reconciler, created at zero for every result (STYLE 12)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Result = Literal["success", "error", "requeue"]
RESULTS: tuple[Result, ...] = ("success", "error", "requeue")
WRITES = ("create", "update", "delete", "label", "ungate", "canary", "event")
DURATION_BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "agentcube_netpol_reconcile",
            "Reconciles of one managed NetworkPolicy, by result.",
            ("result",),
            registry=registry,
        )
        self.duration = Histogram(
            "agentcube_netpol_reconcile_duration_seconds",
            "Time to plan and carry out one reconcile.",
            buckets=DURATION_BUCKETS_SECONDS,
            registry=registry,
        )
        self.writes = Counter(
            "agentcube_netpol_writes",
            "Writes to the API server, by what was written.",
            ("write",),
            registry=registry,
        )
        self.api_errors = Counter(
            "agentcube_netpol_api_errors",
            "API errors met while reconciling, by HTTP status.",
            ("status",),
            registry=registry,
        )
        self.leader = Gauge(
            "agentcube_netpol_leader",
            "1 while this replica holds the lease and writes, else 0.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "agentcube_netpol_workqueue_depth",
            "NetworkPolicies waiting to be reconciled.",
            registry=registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result)
        for write in WRITES:
            self.writes.labels(write)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
