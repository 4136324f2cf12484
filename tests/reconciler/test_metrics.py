"""The gauges an operator alerts on: sandbox pods held at the scheduling gate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from webhook.api.kinds import SCHEDULING_GATE
from webhook.reconciler.caches import slim_pod
from webhook.reconciler.metrics import ReconcilerMetrics, held_at_gate

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def pod(name: str, created: str, *, gated: bool = True, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-04T12:00:00Z"
    gates = [{"name": "other.io/gate"}] + ([{"name": SCHEDULING_GATE}] if gated else [])
    # As the cache keeps it: the timestamp survives the slimming.
    return slim_pod({"metadata": metadata, "spec": {"schedulingGates": gates}})


def test_counts_our_gated_pods_and_ages_the_oldest() -> None:
    pods = [
        pod("a", "2026-12-04T11:59:30Z"),
        pod("b", "2026-12-04T11:55:00Z"),  # the oldest: 300 s
        pod("c", "2026-12-04T11:00:00Z", gated=False),  # only someone else's gate
        pod("d", "2026-12-04T10:00:00Z", deleting=True),  # going: not held
    ]
    assert held_at_gate(pods, NOW) == (2, 300.0)


def test_none_held_is_zero() -> None:
    assert held_at_gate([pod("c", "2026-12-04T11:00:00Z", gated=False)], NOW) == (0, 0.0)


def test_the_gauges_are_computed_when_scraped() -> None:
    registry = CollectorRegistry()
    metrics = ReconcilerMetrics(registry)
    pods: list[dict[str, Any]] = []
    metrics.track_gated(lambda: pods, lambda: NOW)
    assert registry.get_sample_value("agentcube_netpol_gated_pods") == 0.0
    pods.append(pod("a", "2026-12-04T11:58:00Z"))
    assert registry.get_sample_value("agentcube_netpol_gated_pods") == 1.0
    assert registry.get_sample_value("agentcube_netpol_gated_pod_oldest_seconds") == 120.0
