"""The install manifests in deploy/ and the Dockerfile (fast tier, no cluster).

The kustomizations are rendered with ``kubectl kustomize`` (``$KUBECTL``, else
``kubectl`` on PATH) and checked for what a cluster admin relies on: the webhooks
reach our Service and fail safely, the Deployment is hardened and highly
available, RBAC is least privilege, and the CRDs store the networkPolicy field.
Whether a real kube-apiserver accepts them is the e2e tier's job.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import jsonpatch
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.manifests import (
    CA_SECRET,
    CERT_DIR,
    CLAIMS,
    CRDS,
    DEPLOY,
    MAX_WEBHOOK_TIMEOUT_SECONDS,
    NAMESPACE,
    NONROOT_UID,
    OVERRIDES,
    POD_GATES,
    POD_LABELS,
    PODS,
    REPO,
    SERVER_PORT,
    SERVICE,
    TEMPLATES,
    WIDENING,
    Doc,
    container,
    hook_named,
    only,
    pod_spec,
    root_schema,
    run_kubectl,
    schema_at,
    webhooks,
)
from webhook.api import kinds
from webhook.cli.main import build_parser

# --- webhook configurations ---------------------------------------------------


# webhook name -> (configuration kind, path, {(group, version, plural): operations})
def in_every_version(*of: kinds.Kind) -> list[tuple[str, str, str]]:
    """(group, version, plural) of each kind, agent-sandbox's in every version it serves."""
    return [
        (k.group, version, k.plural)
        for k in of
        for version in (
            kinds.AGENT_SANDBOX_VERSIONS if k in kinds.AGENT_SANDBOX_KINDS else (k.version,)
        )
    ]


EXPECTED_WEBHOOKS: dict[str, tuple[str, str, dict[tuple[str, str, str], set[str]]]] = {
    TEMPLATES: (
        "ValidatingWebhookConfiguration",
        "/validate",
        {
            (k.group, k.version, k.plural): {"CREATE", "UPDATE"}
            for k in (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER)
        },
    ),
    OVERRIDES: (
        "ValidatingWebhookConfiguration",
        "/validate",
        {
            rule: {"CREATE", "UPDATE"}
            for rule in in_every_version(kinds.SANDBOX, kinds.SANDBOX_CLAIM)
        },
    ),
    POD_LABELS: (
        "ValidatingWebhookConfiguration",
        "/validate",
        {(kinds.POD.group, kinds.POD.version, kinds.POD.plural): {"UPDATE"}},
    ),
    CLAIMS: (
        "MutatingWebhookConfiguration",
        "/mutate",
        {rule: {"CREATE"} for rule in in_every_version(kinds.SANDBOX_CLAIM)},
    ),
    PODS: (
        "MutatingWebhookConfiguration",
        "/mutate",
        {(kinds.POD.group, kinds.POD.version, kinds.POD.plural): {"CREATE", "UPDATE"}},
    ),
    POD_GATES: (
        "MutatingWebhookConfiguration",
        "/mutate",
        {(kinds.POD.group, kinds.POD.version, kinds.POD.plural): {"CREATE"}},
    ),
    WIDENING: (
        "ValidatingWebhookConfiguration",
        "/validate",
        {
            rule: {"CREATE", "UPDATE"}
            for rule in in_every_version(kinds.NETWORK_POLICY, kinds.SANDBOX_TEMPLATE)
        },
    ),
}


def covered(hook: Doc) -> dict[tuple[str, str, str], set[str]]:
    """(group, version, resource) -> operations, as the API server matches them."""
    result: dict[tuple[str, str, str], set[str]] = {}
    for rule in hook["rules"]:
        for group in rule["apiGroups"]:
            for version in rule["apiVersions"]:
                for resource in rule["resources"]:
                    result.setdefault((group, version, resource), set()).update(rule["operations"])
    return result


def test_each_concern_has_its_webhook_with_the_right_rules(install: list[Doc]) -> None:
    found = {hook["name"]: (kind, hook) for kind, hook in webhooks(install)}
    assert set(found) == set(EXPECTED_WEBHOOKS)
    for name, (kind, path, rules) in EXPECTED_WEBHOOKS.items():
        actual_kind, hook = found[name]
        assert actual_kind == kind, name
        assert hook["clientConfig"]["service"]["path"] == path, name
        assert covered(hook) == rules, name


def test_webhooks_call_our_service_on_the_server_port(install: list[Doc]) -> None:
    deployment = only(install, "Deployment")
    service = only(install, "Service", SERVICE)
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container(install)["ports"]}
    assert container_ports[service_port["targetPort"]] == SERVER_PORT
    for _, hook in webhooks(install):
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref.get("port", 443)) == (
            SERVICE,
            NAMESPACE,
            service_port["port"],
        ), hook["name"]
        assert "url" not in hook["clientConfig"], hook["name"]


def test_every_webhook_is_safe_to_call(install: list[Doc]) -> None:
    for kind, hook in webhooks(install):
        name = hook["name"]
        assert hook["sideEffects"] == "None", name
        assert 1 <= hook["timeoutSeconds"] <= MAX_WEBHOOK_TIMEOUT_SECONDS, name
        assert "v1" in hook["admissionReviewVersions"], name
        assert hook["failurePolicy"] in ("Fail", "Ignore"), name
        assert hook["matchPolicy"] == "Equivalent", name
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded", name


def test_every_webhook_leaves_out_kube_system_and_its_own_namespace(
    install: list[Doc],
) -> None:
    own_namespace = only(install, "Deployment")["metadata"]["namespace"]
    for _, hook in webhooks(install):
        excluded: set[str] = set()
        for expr in hook["namespaceSelector"]["matchExpressions"]:
            if expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn":
                excluded.update(expr["values"])
        assert {"kube-system", own_namespace} <= excluded, hook["name"]


def test_pod_webhooks_only_see_sandbox_pods(install: list[Doc]) -> None:
    sandbox_pod_labels = {kinds.LABEL_CLAIM_UID, kinds.LABEL_SANDBOX_NAME}
    for _, hook in webhooks(install):
        if not any(resource == kinds.POD.plural for _, _, resource in covered(hook)):
            continue
        required = {
            expr["key"]
            for expr in hook["objectSelector"]["matchExpressions"]
            if expr["operator"] == "Exists"
        }
        assert required & sandbox_pod_labels, hook["name"]
    # The mutation is for claimed warm-pool pods; the guard for pods that have the label.
    assert _exists_keys(hook_named(install, PODS)) == {kinds.LABEL_CLAIM_UID}
    assert _exists_keys(hook_named(install, POD_LABELS)) == {kinds.LABEL_SANDBOX_NAME}
    # The gate: pods created with the sandbox-name label, and it fails closed.
    assert _exists_keys(hook_named(install, POD_GATES)) == {kinds.LABEL_SANDBOX_NAME}
    assert hook_named(install, POD_GATES)["failurePolicy"] == "Fail"


def _exists_keys(hook: Doc) -> set[str]:
    return {
        e["key"] for e in hook["objectSelector"]["matchExpressions"] if e["operator"] == "Exists"
    }


def test_match_conditions_name_the_label_gate_and_annotation_we_use(install: list[Doc]) -> None:
    """The CEL conditions narrow fail-closed webhooks; a renamed key would silence them."""
    guard = " ".join(c["expression"] for c in hook_named(install, POD_LABELS)["matchConditions"])
    assert f"'{kinds.LABEL_SANDBOX_NAME}' in oldObject.metadata.labels" in guard
    # ... or the gate removed: old pod has it, new one not (tests/e2e/test_reconciler.py).
    gate = f"schedulingGates.exists(g, g.name == '{kinds.SCHEDULING_GATE}')"
    assert f"oldObject.spec.{gate}" in guard
    assert f"!(has(object.spec.schedulingGates) && object.spec.{gate})" in guard
    overrides = " ".join(c["expression"] for c in hook_named(install, OVERRIDES)["matchConditions"])
    assert f"'{kinds.ANNOTATION_NETWORK_POLICY}' in object.metadata.annotations" in overrides
    assert f"'{kinds.ANNOTATION_NETWORK_POLICY}' in oldObject.metadata.annotations" in overrides


def test_every_failure_policy_has_its_reason_written_beside_it() -> None:
    lines = (REPO / "webhook" / "manifests" / "webhooks" / "webhooks.yaml").read_text().splitlines()
    policies = [i for i, line in enumerate(lines) if line.strip().startswith("failurePolicy:")]
    assert len(policies) == len(EXPECTED_WEBHOOKS)
    for index in policies:
        policy = lines[index].split(":", 1)[1].strip()
        reason = lines[index - 1].strip()
        assert reason.startswith("#"), f"no reason above line {index + 1}"
        # The comment block opens with the policy it explains.
        block_start = index - 1
        while lines[block_start - 1].strip().startswith("#"):
            block_start -= 1
        assert lines[block_start].strip().startswith(f"# {policy}:"), f"line {block_start + 1}"


# --- Deployment, PDB, Service ---------------------------------------------------


def test_deployment_is_highly_available(install: list[Doc]) -> None:
    deployment = only(install, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pdb = only(install, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] >= 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_spec(install)["topologySpreadConstraints"]
    assert "priorityClassName" not in pod_spec(install)


def test_deployment_runs_non_root_on_a_read_only_root(install: list[Doc]) -> None:
    pod = pod_spec(install)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NONROOT_UID
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container(install)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    # Every place the server writes is a volume.
    mounts = {m["mountPath"] for m in container(install)["volumeMounts"]}
    assert {CERT_DIR, "/tmp"} <= mounts


def test_probes_hit_the_server_health_endpoints_over_https(install: list[Doc]) -> None:
    main = container(install)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = main[probe]["httpGet"]
        assert get["path"] == path
        assert get["scheme"] == "HTTPS"
        assert ports.get(get["port"], get["port"]) == SERVER_PORT
    assert main["resources"]["requests"]["cpu"]
    assert main["resources"]["requests"]["memory"]
    assert main["resources"]["limits"]["memory"]


def test_server_is_started_on_its_port_and_cert_dir(install: list[Doc]) -> None:
    args = container(install)["args"]
    assert args[0] == "run"  # the admission server and the reconciler
    assert f"--cert-dir={CERT_DIR}" in args
    assert f"--port={SERVER_PORT}" in args
    assert f"--service-name={SERVICE}" in args
    assert f"--service-namespace={NAMESPACE}" in args


def test_container_args_are_ones_the_cli_accepts(install: list[Doc]) -> None:
    """An unknown flag would crash-loop every replica; the CLI's own parser decides."""
    parser = build_parser()
    args = parser.parse_args(container(install)["args"])
    assert args.cert_dir == Path(CERT_DIR)
    assert args.port == SERVER_PORT


def test_server_keeps_the_ca_its_rbac_allows(base: list[Doc], cert_manager: list[Doc]) -> None:
    """The Secret and configurations named in the args are the ones RBAC grants."""
    args = container(base)["args"]
    assert f"--ca-secret={NAMESPACE}/{CA_SECRET}" in args
    configuration = next(a for a in args if a.startswith("--webhook-configuration="))
    name = configuration.split("=", 1)[1]
    assert {d["metadata"]["name"] for d in base if d["kind"].endswith("WebhookConfiguration")} == {
        name
    }
    ca_rules = only(base, "ClusterRole", "agentcube-netpol-ca-injector")["rules"]
    assert all(rule["resourceNames"] == [name] for rule in ca_rules)
    assert not any(a.startswith("--ca-secret") for a in container(cert_manager)["args"])


def test_namespace_enforces_restricted_pod_security(base: list[Doc]) -> None:
    namespace = only(base, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- RBAC -----------------------------------------------------------------------


def allows(rules: Sequence[Doc], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


def rbac_rules(docs: Sequence[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                yield doc, rule


NEEDED_CLUSTER_WIDE = [
    *[
        (k.group, k.plural, verb)
        for k in (
            kinds.AGENT_RUNTIME,
            kinds.CODE_INTERPRETER,
            kinds.SANDBOX,
            kinds.SANDBOX_TEMPLATE,
            kinds.SANDBOX_CLAIM,
            kinds.SANDBOX_WARM_POOL,
            kinds.POD,
        )
        for verb in ("get", "list", "watch")
    ],
    (kinds.POD.group, kinds.POD.plural, "patch"),
    *[
        (kinds.NETWORK_POLICY.group, kinds.NETWORK_POLICY.plural, verb)
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
    ],
    ("events.k8s.io", "events", "create"),
    ("", "events", "create"),
]

NEVER = [
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "update"),
    ("", "secrets", "delete"),
    ("", "pods", "delete"),
    ("", "pods", "update"),
    ("", "pods", "create"),
    ("", "configmaps", "get"),
    (kinds.NETWORK_POLICY.group, kinds.NETWORK_POLICY.plural, "deletecollection"),
    (kinds.AGENT_RUNTIME.group, kinds.AGENT_RUNTIME.plural, "update"),
    (kinds.SANDBOX.group, kinds.SANDBOX.plural, "patch"),
    (kinds.SANDBOX_CLAIM.group, kinds.SANDBOX_CLAIM.plural, "update"),
    ("rbac.authorization.k8s.io", "clusterroles", "bind"),
]


def test_service_account_is_bound_to_what_the_reconciler_needs(install: list[Doc]) -> None:
    account = pod_spec(install)["serviceAccountName"]
    bound_roles = {
        (b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in install
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and any(
            s["kind"] == "ServiceAccount" and (s["name"], s["namespace"]) == (account, NAMESPACE)
            for s in b["subjects"]
        )
    }
    cluster_rules = [
        rule
        for doc, rule in rbac_rules(install)
        if doc["kind"] == "ClusterRole" and ("ClusterRole", doc["metadata"]["name"]) in bound_roles
    ]
    for group, resource, verb in NEEDED_CLUSTER_WIDE:
        assert allows(cluster_rules, group, resource, verb), (group, resource, verb)
    role = only(install, "Role", "agentcube-netpol-leader-election")
    assert ("Role", role["metadata"]["name"]) in bound_roles
    assert role["metadata"]["namespace"] == NAMESPACE
    for verb in ("get", "create", "update"):
        assert allows(role["rules"], "coordination.k8s.io", "leases", verb)


def test_rbac_is_least_privilege(install: list[Doc]) -> None:
    rules = [rule for _, rule in rbac_rules(install)]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule
        assert "nonResourceURLs" not in rule, rule
    any_name = [rule for rule in rules if not rule.get("resourceNames")]
    for group, resource, verb in NEVER:
        assert not allows(any_name, group, resource, verb), (group, resource, verb)
    # ConfigMaps: only agent-sandbox's allow-list, read by name.
    for rule in rules:
        if "configmaps" in rule.get("resources", []):
            assert (rule["resources"], rule["verbs"]) == (["configmaps"], ["get"]), rule
            assert rule["resourceNames"] == [kinds.AGENT_SANDBOX_CONFIG_MAP], rule
    # Secrets: at most the shared CA, in our namespace: read or replaced by name, or created.
    for doc, rule in rbac_rules(install):
        if any("secrets" in resource for resource in rule.get("resources", [])):
            assert doc["kind"] == "Role", rule
            assert doc["metadata"]["namespace"] == NAMESPACE
            assert rule["resources"] == ["secrets"], rule
            assert set(rule["verbs"]) <= {"get", "update", "create"}, rule
            if {"get", "update"} & set(rule["verbs"]):
                assert rule["resourceNames"] == [CA_SECRET], rule
    # Leases only in our own namespace, never cluster-wide.
    for doc, rule in rbac_rules(install):
        if doc["kind"] == "ClusterRole":
            assert "leases" not in rule.get("resources", [])
        # Anything on the webhook configurations is pinned to ours by name.
        if "admissionregistration.k8s.io" in rule.get("apiGroups", []):
            assert rule["resourceNames"] == ["agentcube-netpol"], rule


def test_base_lets_the_server_keep_its_own_ca(base: list[Doc]) -> None:
    configurations = {
        doc["metadata"]["name"] for doc in base if doc["kind"].endswith("WebhookConfiguration")
    }
    assert configurations == {"agentcube-netpol"}
    rules = [rule for _, rule in rbac_rules(base)]
    for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        assert allows(rules, "admissionregistration.k8s.io", resource, "patch")
        assert not allows(rules, "admissionregistration.k8s.io", resource, "create")
        assert not allows(rules, "admissionregistration.k8s.io", resource, "list")
    secret_role = only(base, "Role", "agentcube-netpol-ca-secret")
    assert allows(secret_role["rules"], "", "secrets", "get")
    assert allows(secret_role["rules"], "", "secrets", "update")  # the CA's renewal
    assert allows(secret_role["rules"], "", "secrets", "create")


# --- cert-manager overlay ---------------------------------------------------------


def test_cert_manager_issues_the_served_certificate(cert_manager: list[Doc]) -> None:
    certificates = {d["metadata"]["name"]: d for d in cert_manager if d["kind"] == "Certificate"}
    serving = certificates["agentcube-netpol-webhook"]
    assert f"{SERVICE}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in pod_spec(cert_manager)["volumes"]}
    (cert_mount,) = [
        m for m in container(cert_manager)["volumeMounts"] if m["mountPath"] == CERT_DIR
    ]
    assert volumes[cert_mount["name"]]["secret"]["secretName"] == serving["spec"]["secretName"]
    # Signed by a CA that is itself a Certificate, so renewing the serving
    # certificate keeps the injected CA.
    issuer = only(cert_manager, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca = certificates[issuer["spec"]["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True


def test_cert_manager_injects_the_ca_into_both_configurations(cert_manager: list[Doc]) -> None:
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = only(cert_manager, kind)["metadata"]["annotations"]
        namespace, name = annotations["cert-manager.io/inject-ca-from"].split("/")
        certificate = only(cert_manager, "Certificate", name)
        assert certificate["metadata"]["namespace"] == namespace
    # cainjector writes the caBundle and cert-manager keeps the CA, so the server gets
    # no access to the configurations and none to Secrets.
    for _, rule in rbac_rules(cert_manager):
        assert "admissionregistration.k8s.io" not in rule.get("apiGroups", [])
        assert "secrets" not in rule.get("resources", [])


def test_base_leaves_the_ca_bundle_to_the_server(base: list[Doc]) -> None:
    for _, hook in webhooks(base):
        assert not hook["clientConfig"].get("caBundle")
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = only(base, kind)["metadata"].get("annotations") or {}
        assert "cert-manager.io/inject-ca-from" not in annotations
    volumes = {v["name"]: v for v in pod_spec(base)["volumes"]}
    (cert_mount,) = [m for m in container(base)["volumeMounts"] if m["mountPath"] == CERT_DIR]
    assert "emptyDir" in volumes[cert_mount["name"]]


# --- CRDs ---------------------------------------------------------------------------

ALL_KINDS = [
    kinds.AGENT_RUNTIME,
    kinds.CODE_INTERPRETER,
    kinds.SANDBOX,
    kinds.SANDBOX_TEMPLATE,
    kinds.SANDBOX_CLAIM,
    kinds.SANDBOX_WARM_POOL,
]


def structural_problems(schema: Doc, where: str = "") -> Iterator[str]:
    """Nodes without a type: the API server refuses a CRD that is not structural."""
    if not (
        schema.get("type")
        or schema.get("x-kubernetes-int-or-string")
        or schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        yield f"{where or '<root>'}: no type"
    for name, child in (schema.get("properties") or {}).items():
        yield from structural_problems(child, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from structural_problems(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from structural_problems(schema["additionalProperties"], f"{where}{{}}")


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_crd_serves_the_kind_we_use(crds: dict[str, Doc], kind: kinds.Kind) -> None:
    crd = crds[kind.kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{kind.plural}.{kind.group}"
    assert crd["spec"]["group"] == kind.group
    assert crd["spec"]["names"]["plural"] == kind.plural
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (kind.version, True, True)
    assert "status" in version["subresources"]
    assert list(structural_problems(root_schema(crd))) == []


# The fields agent-sandbox and AgentCube write, which must be stored.
STORED_FIELDS = [
    (kinds.AGENT_RUNTIME, "spec.podTemplate.labels"),
    (kinds.AGENT_RUNTIME, "spec.podTemplate.annotations"),
    (kinds.AGENT_RUNTIME, "spec.podTemplate.spec.containers"),
    (kinds.AGENT_RUNTIME, "spec.podTemplate.spec.runtimeClassName"),
    (kinds.CODE_INTERPRETER, "spec.template.labels"),
    (kinds.CODE_INTERPRETER, "spec.template.annotations"),
    (kinds.CODE_INTERPRETER, "spec.template.runtimeClassName"),
    (kinds.CODE_INTERPRETER, "spec.template.image"),
    (kinds.CODE_INTERPRETER, "spec.warmPoolSize"),
    (kinds.SANDBOX, "spec.podTemplate.metadata.labels"),
    (kinds.SANDBOX, "spec.podTemplate.metadata.annotations"),
    (kinds.SANDBOX, "spec.podTemplate.spec.containers"),
    (kinds.SANDBOX_TEMPLATE, "spec.podTemplate.metadata.labels"),
    (kinds.SANDBOX_TEMPLATE, "spec.networkPolicyManagement"),
    (kinds.SANDBOX_CLAIM, "spec.sandboxTemplateRef.name"),
    (kinds.SANDBOX_CLAIM, "spec.additionalPodMetadata.labels"),
    (kinds.SANDBOX_CLAIM, "spec.additionalPodMetadata.annotations"),
    (kinds.SANDBOX_CLAIM, "status.sandbox.name"),
    (kinds.SANDBOX_WARM_POOL, "spec.replicas"),
    (kinds.SANDBOX_WARM_POOL, "spec.sandboxTemplateRef.name"),
]


@pytest.mark.parametrize(
    ("kind", "field"), STORED_FIELDS, ids=[f"{k.kind}.{f}" for k, f in STORED_FIELDS]
)
def test_crd_stores_the_fields_upstream_writes(
    crds: dict[str, Doc], kind: kinds.Kind, field: str
) -> None:
    assert schema_at(root_schema(crds[kind.kind]), field.split(".")) is not None


def network_policy_schema(crd: Doc, kind: str) -> Doc | None:
    return schema_at(root_schema(crd), kinds.TEMPLATE_POLICY_PATH[kind])


@pytest.mark.parametrize("kind", sorted(kinds.TEMPLATE_POLICY_PATH))
def test_crd_declares_network_policy_structurally(crds: dict[str, Doc], kind: str) -> None:
    policy = network_policy_schema(crds[kind], kind)
    assert policy is not None
    assert policy["type"] == "object"
    assert not policy.get("x-kubernetes-preserve-unknown-fields")
    fields = policy["properties"]
    assert set(fields) == {"mode", "ingress", "egress", "custom"}
    # The webhook, not the schema, judges the values: its messages name the fix.
    assert fields["mode"] == {**fields["mode"], "type": "string"}
    assert "enum" not in fields["mode"]
    for direction, extra in (("ingress", set()), ("egress", {"domains", "allowAnswersIn"})):
        rule = fields[direction]["items"]
        # Without domains and allowAnswersIn declared, strict decoding refuses an entry
        # naming hosts before the webhook sees it (unknown field "...egress[0].domains").
        assert set(rule["properties"]) == {"cidrs", "except", "ports"} | extra
        port = rule["properties"]["ports"]["items"]["properties"]
        assert set(port) == {"protocol", "port", "endPort"}
        assert port["port"].get("x-kubernetes-int-or-string") is True
        for name in extra:
            assert rule["properties"][name]["items"] == {"type": "string"}
    ingress, egress = fields["ingress"]["items"], fields["egress"]["items"]
    assert ingress["properties"]["ports"] == egress["properties"]["ports"]
    for direction in ("ingress", "egress"):
        raw = fields["custom"]["properties"][direction]["items"]
        assert raw == {**raw, "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    text = yaml.safe_dump(policy)
    assert not re.search(r"\b(enum|pattern|minimum|maximum|maxItems|minItems)\b", text)


def test_both_templates_share_one_network_policy_schema(crds: dict[str, Doc]) -> None:
    schemas = [network_policy_schema(crds[kind], kind) for kind in kinds.TEMPLATE_POLICY_PATH]
    assert schemas[0] == schemas[1]


@pytest.mark.parametrize("kind", [kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER], ids=str)
def test_patch_adds_network_policy_to_the_upstream_crd(
    crds: dict[str, Doc], kind: kinds.Kind, tmp_path: Path
) -> None:
    """`kubectl patch --type json` with the shipped patch turns AgentCube's CRD into ours."""
    full = crds[kind.kind]
    upstream = copy.deepcopy(full)
    path = kinds.TEMPLATE_POLICY_PATH[kind.kind]
    parent = schema_at(root_schema(upstream), path[:-1])
    assert parent is not None
    del parent["properties"][path[-1]]
    assert network_policy_schema(upstream, kind.kind) is None
    patch_file = CRDS / "patches" / f"{kind.plural}-networkpolicy.yaml"

    assert jsonpatch.apply_patch(upstream, yaml.safe_load(patch_file.read_text())) == full

    upstream_file = tmp_path / "upstream.yaml"
    upstream_file.write_text(yaml.safe_dump(upstream))
    patched = yaml.safe_load(
        run_kubectl(
            "patch",
            "--local",
            "-f",
            str(upstream_file),
            "--type",
            "json",
            "--patch-file",
            str(patch_file),
            "-o",
            "yaml",
        )
    )
    assert network_policy_schema(patched, kind.kind) == network_policy_schema(full, kind.kind)


# --- Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_matches_the_deployment(base: list[Doc]) -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    values = {op: arg for op, arg in final_stage}
    assert values["USER"].split(":")[0] == str(pod_spec(base)["securityContext"]["runAsUser"])
    assert values["EXPOSE"] == str(SERVER_PORT)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^agentcube-netpol = "webhook\.cli\.main:main"$', pyproject, re.MULTILINE)
    assert values["ENTRYPOINT"] == '["agentcube-netpol"]'
    assert values["CMD"] == f'["serve", "--cert-dir", "{CERT_DIR}"]'


def test_dockerfile_pins_its_base_image() -> None:
    images = [arg for op, arg in dockerfile_instructions() if op == "ARG" and "IMAGE" in arg]
    assert images
    for image in images:
        reference = image.split("=", 1)[1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", reference), image


def test_image_pins_every_runtime_dependency_to_a_version_it_accepts() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins: dict[str, Version] = {}
    for line in (DEPLOY / "image" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    for dependency in pyproject["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in deploy/image/constraints.txt"
        assert pins[name] in requirement.specifier, (dependency, str(pins[name]))


def test_dockerfile_copies_only_files_the_build_context_sends() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copies = [arg for op, arg in dockerfile_instructions() if op == "COPY" and "--from" not in arg]
    assert copies
    for arg in copies:
        for source in arg.split()[:-1]:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is left out by .dockerignore"
