"""The Helm chart (charts/agentcube-netpol): lint, one source of truth with deploy/, values.

Every check of test_manifests.py that takes ``install`` runs on the chart too (conftest).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.deploy.manifests import (
    CHART,
    HELM_LABELS,
    NAMESPACE,
    Doc,
    container,
    helm_template,
    hook_named,
    only,
    render_base,
    render_cert_manager,
    run_helm,
    webhooks,
)
from webhook.cli.main import build_parser
from webhook.reconciler.metrics import ReconcilerMetrics
from webhook.server.metrics import AdmissionMetrics


def test_the_chart_lints_clean() -> None:
    result = run_helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def keyed(docs: Sequence[Doc]) -> dict[tuple[str, str, str], Doc]:
    """Objects by kind, namespace and name, without Helm's own labels."""
    found: dict[tuple[str, str, str], Doc] = {}
    for doc in copy.deepcopy(list(docs)):
        labels = doc["metadata"].get("labels") or {}
        for label in HELM_LABELS:
            labels.pop(label, None)
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in found, f"{key} twice"
        found[key] = doc
    return found


@pytest.mark.parametrize(
    ("values", "kustomized"),
    [((), render_base), (("certificates.mode=cert-manager",), render_cert_manager)],
    ids=["self-managed CA", "cert-manager"],
)
def test_with_default_values_the_chart_installs_what_deploy_does(
    values: tuple[str, ...], kustomized: Any
) -> None:
    """One source of truth: kustomize's objects, but the Namespace (Helm installs into one
    made with --create-namespace)."""
    expected = {k: v for k, v in keyed(kustomized()).items() if k[0] != "Namespace"}
    chart = keyed(helm_template(*values))
    assert sorted(chart) == sorted(expected)
    for key, doc in expected.items():
        assert chart[key] == doc, key


def test_another_namespace_follows_everywhere() -> None:
    docs = helm_template(namespace="isolation")
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding") and "webhooks" not in doc:
            assert doc["metadata"]["namespace"] == "isolation", doc["metadata"]
    for _, hook in webhooks(docs):
        assert hook["clientConfig"]["service"]["namespace"] == "isolation"
        [excluded] = hook["namespaceSelector"]["matchExpressions"]
        assert excluded["values"] == ["kube-system", "isolation"]
    for doc in docs:
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == "isolation"
    args = container(docs)["args"]
    assert {
        "--service-namespace=isolation",
        "--lease-namespace=isolation",
        "--ca-secret=isolation/agentcube-netpol-ca",
    } <= set(args)
    assert "agentcube-netpol-system" not in str(docs)


def test_values_become_flags_the_program_accepts() -> None:
    docs = helm_template(
        "agentcube.namespace=agents",
        "agentcube.routerLabels.app=router",
        "agentcube.privilegedGroups={system:serviceaccounts:agents,ops}",
        "dns.peers[0].namespaceSelector.matchLabels.dns=yes",
        "denyWidening=true",
        "claimLabelInjection=off",
        "isolationHold.enabled=true",
        "isolationHold.canary=10.96.0.10:443",
        "image.repository=registry.example/acn",
        "image.tag=1.2.3",
        "logLevel=DEBUG",
        "leaseSeconds=30",
        "replicas=3",
    )
    pod = container(docs)
    args = pod["args"]
    assert pod["image"] == "registry.example/acn:1.2.3"
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    assert {
        "--agentcube-namespace=agents",
        "--router-label=app=router",
        "--privileged-group=system:serviceaccounts:agents",
        "--privileged-group=ops",
        '--dns-peer={"namespaceSelector":{"matchLabels":{"dns":"yes"}}}',
        "--deny-widening",
        "--claim-label-injection=off",
        "--isolation-canary=10.96.0.10:443",
        "--isolation-canary-image=registry.example/acn:1.2.3",
        "--lease-seconds=30",
    } <= set(args)
    # The program's own parser takes them: no value becomes a flag it refuses.
    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.log_level, parsed.deny_widening) == ("run", "DEBUG", True)


def test_crd_patches_off_drops_the_flag_and_its_grants() -> None:
    on = helm_template()
    assert "--patch-crds" in container(on)["args"]
    [role] = [
        d
        for d in on
        if d["metadata"]["name"] == "agentcube-netpol-crd-patches" and d["kind"] == "ClusterRole"
    ]
    assert role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": [
                "agentruntimes.runtime.agentcube.volcano.sh",
                "codeinterpreters.runtime.agentcube.volcano.sh",
            ],
            "verbs": ["get", "patch"],
        }
    ]
    off = helm_template("crdPatches.enabled=false")
    assert "--patch-crds" not in container(off)["args"]
    assert not [d for d in off if "crd-patches" in d["metadata"]["name"]]


def test_domain_values_become_flags_and_the_native_backend_brings_its_grant() -> None:
    default = helm_template()
    assert not [a for a in container(default)["args"] if "domain" in a or "answers" in a]
    assert not [d for d in default if "cluster-network-policies" in d["metadata"]["name"]]
    docs = helm_template(
        "domains.backend=cluster-network-policy",
        "domains.denyAnswers={10.96.0.0/12,192.0.2.0/24}",
        "domains.dnsServer=10.96.0.10",
        "domains.ttlFloorSeconds=10",
        "domains.ttlCeilingSeconds=120",
        "domains.graceSeconds=600",
    )
    args = container(docs)["args"]
    assert {
        "--domain-backend=cluster-network-policy",
        "--deny-answers=10.96.0.0/12",
        "--deny-answers=192.0.2.0/24",
        "--dns-server=10.96.0.10",
        "--domain-ttl-floor=10",
        "--domain-ttl-ceiling=120",
        "--domain-grace=600",
    } <= set(args)
    parsed = build_parser().parse_args(args)
    assert (parsed.domain_backend, parsed.domain_grace) == ("cluster-network-policy", 600.0)
    # The grant deploy/overlays/cluster-network-policy adds, to the release's account.
    [role] = [
        d for d in docs if d["kind"] == "ClusterRole" and "cluster-network" in d["metadata"]["name"]
    ]
    assert role["rules"][0]["resources"] == ["clusternetworkpolicies"]
    [binding] = [
        d for d in docs
        if d["kind"] == "ClusterRoleBinding" and "cluster-network" in d["metadata"]["name"]
    ]  # fmt: skip
    assert binding["subjects"][0]["namespace"] == only(docs, "Deployment")["metadata"]["namespace"]


def test_a_digest_wins_over_the_tag() -> None:
    docs = helm_template("image.repository=r/acn", "image.digest=sha256:" + "a" * 64)
    assert container(docs)["image"] == "r/acn@sha256:" + "a" * 64


def test_each_failure_policy_is_a_value_and_only_fail_or_ignore_is_taken() -> None:
    docs = helm_template("failurePolicy.pods=Fail", "failurePolicy.templates=Ignore")
    assert hook_named(docs, "pods.netpol.agentcube.io")["failurePolicy"] == "Fail"
    assert hook_named(docs, "templates.netpol.agentcube.io")["failurePolicy"] == "Ignore"
    result = run_helm("template", "x", str(CHART), "--set", "failurePolicy.claims=Sometimes")
    assert result.returncode != 0
    assert "failurePolicy.claims: Fail or Ignore, got Sometimes" in result.stderr


def test_an_unknown_certificates_mode_is_refused() -> None:
    result = run_helm("template", "x", str(CHART), "--set", "certificates.mode=vault")
    assert result.returncode != 0
    assert 'certificates.mode: self or cert-manager, got "vault"' in result.stderr


def test_the_isolation_hold_without_a_canary_says_how_on_a_first_install() -> None:
    """The canary defaults to our Service's ClusterIP, which exists only once installed."""
    result = run_helm(
        "template", "x", str(CHART), "-n", NAMESPACE, "--set", "isolationHold.enabled=true"
    )
    assert result.returncode != 0
    assert "set isolationHold.canary" in result.stderr


def test_monitoring_is_off_by_default_and_renders_when_asked() -> None:
    assert not [d for d in helm_template() if d["apiVersion"].startswith("monitoring.coreos")]
    docs = helm_template(
        "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"
    )
    monitor = only(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "https"
    rule = only(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "AgentcubeNetpolWebhookErrors",
        "AgentcubeNetpolWebhookSlow",
        "AgentcubeNetpolReconcileErrors",
        "AgentcubeNetpolSandboxHeldAtGate",
        "AgentcubeNetpolNoLeader",
        "AgentcubeNetpolCRDSchemaMissing",
        "AgentcubeNetpolDomainLookupsFailing",
        "AgentcubeNetpolCertificateExpiresSoon",
    }


def exported_series() -> set[str]:
    """Every series name the program exports (counters with _total, histograms' parts)."""
    admission = AdmissionMetrics()
    registry = CollectorRegistry()
    ReconcilerMetrics(registry)
    names: set[str] = set()
    for source in (admission.registry, registry):
        for family in source.collect():
            names.add(family.name)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    return names


def test_every_metric_an_alert_names_is_exported() -> None:
    docs = helm_template("metrics.prometheusRule.enabled=true")
    rule = only(docs, "PrometheusRule")
    exported = exported_series()
    named = {
        name
        for group in rule["spec"]["groups"]
        for alert in group["rules"]
        for name in re.findall(r"agentcube_netpol_[a-z_]+", alert["expr"])
    }
    assert named, "no metric named"
    assert named <= exported, named - exported


def test_helm_test_audits_and_probes_the_webhooks_from_our_image() -> None:
    docs = [
        doc
        for doc in helm_template("image.tag=9.9.9", "tests.probeNamespace=agents", tests=True)
        if "helm.sh/hook" in doc["metadata"].get("annotations", {})
    ]
    pod = only(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "agentcube-netpol-test"
    [check] = pod["spec"]["containers"]
    assert check["image"] == "agentcube-netpol:9.9.9"
    parsed = build_parser().parse_args(check["args"])
    assert (parsed.command, parsed.probe_webhooks) == ("audit", "agents")
    # The test's account may create CodeInterpreters (a dry run) in that namespace only,
    # and exists only for the test, made before its pod.
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == "agents"
    assert role["rules"] == [
        {
            "apiGroups": ["runtime.agentcube.volcano.sh"],
            "resources": ["codeinterpreters"],
            "verbs": ["create"],
        }
    ]
    for doc in docs:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert int(annotations.get("helm.sh/hook-weight", "0")) < 0 or doc["kind"] == "Pod"
