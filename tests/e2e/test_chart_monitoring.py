"""The chart's ServiceMonitor and PrometheusRule, applied (server-side dry run) to a real
API server serving prometheus-operator's CRDs at the version versions.env pins
(tests/controlplane/build-prometheus-crds.sh generates them from its API module)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agentcube_netpol_dev.controlplane import VERSIONS_FILE, cache_root, read_versions

from tests.deploy.manifests import helm_template
from tests.e2e.harness import Kubectl, as_json, wait_established

NAMESPACE = "agentcube-netpol-system"


def prometheus_operator_crds() -> Path:
    version = read_versions(VERSIONS_FILE)["PROMETHEUS_OPERATOR_VERSION"]
    directory = cache_root(os.environ) / "crds" / f"prometheus-operator-{version}"
    if not (directory / ".complete").is_file():
        pytest.fail(
            f"prometheus-operator {version} CRDs missing: `make controlplane` generates them "
            "(tests/controlplane/build-prometheus-crds.sh)"
        )
    return directory


def test_the_api_server_accepts_the_service_monitor_and_the_alerts(kubectl: Kubectl) -> None:
    kubectl.ok("apply", "--server-side", "-f", str(prometheus_operator_crds()))
    wait_established(
        kubectl, "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"
    )
    if kubectl("get", "namespace", NAMESPACE).returncode != 0:
        kubectl.ok("create", "namespace", NAMESPACE)
    docs = [
        d
        for d in helm_template(
            "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"
        )
        if d["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    assert {d["kind"] for d in docs} == {"ServiceMonitor", "PrometheusRule"}
    output = kubectl.ok("apply", "--dry-run=server", "-f", "-", "-o", "name", input=as_json(*docs))
    assert "servicemonitor.monitoring.coreos.com/agentcube-netpol" in output
    assert "prometheusrule.monitoring.coreos.com/agentcube-netpol" in output
