"""Prometheus metrics of the reconciler, created at zero for every result (STYLE 12)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from webhook.api.kinds import has_scheduling_gate

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
        self.gated_pods = Gauge(
            "agentcube_netpol_gated_pods",
            "Sandbox pods held by the scheduling gate until their NetworkPolicy exists.",
            registry=registry,
        )
        self.gated_oldest = Gauge(
            "agentcube_netpol_gated_pod_oldest_seconds",
            "How long the oldest sandbox pod still held by the gate has existed (0: none).",
            registry=registry,
        )
        self.crd_schema_declared = Gauge(
            "agentcube_netpol_crd_schema_declared",
            "1 when AgentCube's CRD declares networkPolicy, 0 when not (the API server then"
            " drops the field from every template); the Lease holder's, with --patch-crds.",
            ("crd",),
            registry=registry,
        )
        self.domain_lookups = Counter(
            "agentcube_netpol_domain_lookups",
            "DNS lookups of the domain names in Restricted egress entries, by result (ok, or"
            " the error: nxdomain, no-address, timeout, servfail, bad-answer).",
            ("result",),
            registry=registry,
        )
        self.domain_names = Gauge(
            "agentcube_netpol_domain_names",
            "Domain names the reconciler keeps resolved (each once, however many sandboxes"
            " name it).",
            registry=registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result)
        for write in WRITES:
            self.writes.labels(write)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def track_gated(
        self, pods: Callable[[], Iterable[Mapping[str, Any]]], now: Callable[[], datetime]
    ) -> None:
        """The gauges of held pods, computed from ``pods`` (the cache) when scraped."""
        self.gated_pods.set_function(lambda: float(held_at_gate(pods(), now())[0]))
        self.gated_oldest.set_function(lambda: held_at_gate(pods(), now())[1])


def held_at_gate(pods: Iterable[Mapping[str, Any]], now: datetime) -> tuple[int, float]:
    """How many of ``pods`` carry our scheduling gate, and the age in seconds of the oldest
    (by creationTimestamp; 0.0 when none)."""
    count, oldest = 0, 0.0
    for pod in pods:
        if not has_scheduling_gate(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        count += 1
        created = (pod.get("metadata") or {}).get("creationTimestamp")
        if isinstance(created, str):
            try:
                age = (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
            except ValueError:
                continue
            oldest = max(oldest, age)
    return count, oldest
