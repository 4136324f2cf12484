"""``run``, ``reconcile`` and ``audit``: the reconciler, alone, beside the server, or as a check.

``run`` is what deploy/ starts: the admission server and the reconciler in one
process, one manager (``webhook.runtime``) sharing the watch caches (the pod mutation
looks claims up in them) and one ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from webhook.api.exitcodes import EXIT_FINDINGS, EXIT_OK, EXIT_RESTART
from webhook.api.settings import Settings
from webhook.cli.options import (
    add_kubeconfig_option,
    add_policy_options,
    add_rate_limit_options,
    cluster_rest,
    port,
    positive_int,
    positive_seconds,
    seconds_or_zero,
)
from webhook.cli.serve import (
    add_cluster_options,
    add_server_options,
    cluster_trust,
    listen_on,
    tls_of,
)
from webhook.policy.domains import BACKEND_CLUSTER_NETWORK_POLICY

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from webhook.cli.options import Commands
    from webhook.kube.rest import Rest
    from webhook.reconciler.audit import Finding
    from webhook.reconciler.crdschema import SchemaPlan
    from webhook.runtime.manager import Manager
    from webhook.runtime.programs import Shared

logger = logging.getLogger(__name__)

LEASE_NAMESPACE = "agentcube-netpol-system"
DEFAULT_METRICS_PORT = 8080


def register(commands: Commands) -> None:
    run_parser = commands.add_parser(
        "run", help="the admission server and the reconciler in one process (what deploy/ runs)"
    )
    run_parser.set_defaults(run=run)
    add_server_options(run_parser)
    add_cluster_options(
        run_parser, watch_claims=False, kubeconfig_purpose="the cluster (watches and writes)"
    )
    _add_reconciler_options(run_parser)
    add_policy_options(run_parser)

    alone = commands.add_parser(
        "reconcile", help="the reconciler alone (metrics on --metrics-port)"
    )
    alone.set_defaults(run=reconcile)
    add_kubeconfig_option(alone, purpose="the cluster (watches and writes)")
    alone.add_argument("--metrics-host", default="0.0.0.0", help="(default: %(default)s)")
    alone.add_argument(
        "--metrics-port", type=port, default=DEFAULT_METRICS_PORT, help="(default: %(default)s)"
    )
    _add_reconciler_options(alone)
    add_policy_options(alone)

    audit_parser = commands.add_parser(
        "audit",
        help="check a live cluster: sandboxes whose policy is missing or drifted, pods missing "
        "their label, policies that widen ours; exit 1 when any",
    )
    audit_parser.set_defaults(run=audit)
    add_kubeconfig_option(audit_parser, purpose="the cluster to audit")
    audit_parser.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="(default: %(default)s)"
    )
    audit_parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="read and report on this namespace only: namespace-scoped RBAC is enough "
        "(default: all)",
    )
    audit_parser.add_argument(
        "--probe-webhooks",
        metavar="NAMESPACE",
        default=None,
        help="also check that the API server reaches the webhooks: a server-side dry run "
        "of a CodeInterpreter they must refuse, in NAMESPACE (stores nothing; needs create "
        "on codeinterpreters there)",
    )
    add_policy_options(audit_parser)


def _add_reconciler_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reconciler")
    add_rate_limit_options(group)
    group.add_argument(
        "--lease-namespace",
        default=LEASE_NAMESPACE,
        help="namespace of the leader-election Lease (default: %(default)s)",
    )
    group.add_argument(
        "--lease-name", default="agentcube-netpol", help="the Lease (default: %(default)s)"
    )
    group.add_argument(
        "--lease-seconds",
        type=positive_seconds,
        default=15.0,
        help="how long a leader's Lease holds without renewal (default: %(default)s)",
    )
    group.add_argument(
        "--workers", type=positive_int, default=4, help="reconciles at once (default: %(default)s)"
    )
    group.add_argument(
        "--rediscover-interval",
        type=seconds_or_zero,
        default=30.0,
        metavar="SECONDS",
        help="how often to ask again which versions agent-sandbox serves (a change: exit "
        f"{EXIT_RESTART} to be restarted) and, for --claim-label-injection=auto, its "
        "allow-list (a change: flipped in place); 0: never (default: %(default)s)",
    )
    group.add_argument(
        "--dns-server",
        metavar="HOST[:PORT]",
        help="the resolver for egress domains (default: the one /etc/resolv.conf names: in a "
        "pod, the cluster's DNS, which the sandboxes ask too)",
    )
    group.add_argument(
        "--domain-ttl-floor",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="ask a name again no sooner than this, whatever its TTL (default: %(default)s)",
    )
    group.add_argument(
        "--domain-ttl-ceiling",
        type=positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="ask a name again no later than this, whatever its TTL (default: %(default)s)",
    )
    group.add_argument(
        "--domain-grace",
        type=seconds_or_zero,
        default=300.0,
        metavar="SECONDS",
        help="keep allowing an address this long after the last answer that held it "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--patch-crds",
        action="store_true",
        help="keep the networkPolicy property in AgentCube's AgentRuntime and CodeInterpreter "
        "CRDs (added where missing, checked every 15 s: an AgentCube upgrade drops it); "
        "needs get and patch on those two CRDs",
    )


def _rest(args: argparse.Namespace) -> Rest:
    # A connection per worker and per watch (seven informers), and a few to spare.
    return cluster_rest(args, max_connections=getattr(args, "workers", 4) + 12)


def _add_reconciler_parts(
    manager: Manager,
    args: argparse.Namespace,
    *,
    rest: Rest,
    settings: Settings,
    from_flags: Settings,
    registry: CollectorRegistry,
    serving: bool,
) -> Shared:
    """What ``run`` and ``reconcile`` share: the caches, the reconciler and its Lease, and
    rediscovery (``serving``: a restart drains the webhook first)."""
    from webhook.runtime.programs import (
        DomainOptions,
        Lease,
        add_crd_schema_keeper,
        add_reconciler,
        add_rediscovery,
    )

    shared = add_reconciler(
        manager,
        rest=rest,
        settings=settings,
        registry=registry,
        lease=Lease(
            namespace=args.lease_namespace, name=args.lease_name, seconds=args.lease_seconds
        ),
        workers=args.workers,
        domains=DomainOptions(
            server=args.dns_server,
            ttl_floor=args.domain_ttl_floor,
            ttl_ceiling=max(args.domain_ttl_ceiling, args.domain_ttl_floor),
            grace=args.domain_grace,
        ),
    )
    if args.patch_crds:
        add_crd_schema_keeper(manager, rest=rest, shared=shared)
    add_rediscovery(
        manager,
        rest=rest,
        shared=shared,
        from_flags=from_flags,
        interval_seconds=args.rediscover_interval,
        serving=serving,
    )
    return shared


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The manager with the shared caches, the reconciler, rediscovery and the server."""
    from webhook.kube.discovery import resolve_claim_label_injection
    from webhook.kube.identity import with_own_gate_lifter
    from webhook.runtime.manager import Manager
    from webhook.runtime.programs import add_webhook_server
    from webhook.server.metrics import AdmissionMetrics
    from webhook.server.serve import Admission

    metrics = AdmissionMetrics()
    from_flags = settings
    rest = _rest(args)
    settings = resolve_claim_label_injection(settings, rest)
    # The reconciler beside the server lifts the gates the server guards, as whoever it is.
    settings = with_own_gate_lifter(settings, rest)
    manager = Manager(drain_seconds=args.shutdown_drain)
    shared = _add_reconciler_parts(
        manager,
        args,
        rest=rest,
        settings=settings,
        from_flags=from_flags,
        registry=metrics.registry,
        serving=True,
    )
    add_webhook_server(
        manager,
        Admission(
            settings=settings,
            claims=shared.caches,
            sandboxes=shared.caches,
            metrics=metrics,
            # What the reconciler plans with, read on each request: one value, flipped in
            # place when agent-sandbox's allow-list changes.
            live_settings=lambda: shared.reconciler.settings,
        ),
        listen_on(args),
        tls_of(args),
        trust=cluster_trust(args, rest),
    )
    return manager.run()


def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """The manager with the shared caches, the reconciler, rediscovery and /metrics."""
    from prometheus_client import CollectorRegistry

    from webhook.kube.discovery import resolve_claim_label_injection
    from webhook.runtime.manager import Manager
    from webhook.runtime.programs import add_metrics_server

    registry = CollectorRegistry()
    from_flags = settings
    rest = _rest(args)
    # Resolved for the reconciler's ClaimLabelNotInjected Events (no claim mutation here).
    settings = resolve_claim_label_injection(settings, rest)
    manager = Manager()
    _add_reconciler_parts(
        manager,
        args,
        rest=rest,
        settings=settings,
        from_flags=from_flags,
        registry=registry,
        serving=False,
    )
    add_metrics_server(manager, host=args.metrics_host, port=args.metrics_port, registry=registry)
    return manager.run()


def _crd_schema_plans(rest: Rest) -> list[SchemaPlan]:
    """AgentCube's two CRDs as ``run --patch-crds`` would judge them; none where these
    credentials may not read CRDs."""
    from webhook.kube import errors
    from webhook.reconciler.crdschema import TEMPLATE_KINDS, fetch_crd, plan_schema

    plans = []
    for kind in TEMPLATE_KINDS:
        try:
            plans.append(plan_schema(fetch_crd(rest, kind), kind.kind))
        except errors.Forbidden:
            continue
    return plans


def _probe_webhooks(rest: Rest, namespace: str) -> list[Finding]:
    from webhook.api import kinds
    from webhook.kube import errors
    from webhook.reconciler.audit import probe_findings, webhook_probe

    try:
        rest.create(kinds.CODE_INTERPRETER, namespace, webhook_probe(namespace), dry_run=True)
    except errors.ApiError as exc:
        # Not about the webhooks (RBAC, no such CRD, the API server away): one line, exit 4.
        rbac = isinstance(exc, errors.Forbidden) and "cannot create resource" in exc.message
        if rbac or isinstance(exc, errors.NotFound | errors.Unreachable):
            raise
        return probe_findings(namespace, exc.message)
    return probe_findings(namespace, None)


def audit(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.kube.discovery import decide_claim_label_injection, discover_kinds
    from webhook.reconciler.audit import audit as find
    from webhook.reconciler.audit import (
        claim_label_findings,
        crd_schema_findings,
        render_json,
        render_text,
    )
    from webhook.reconciler.caches import list_cluster

    rest = _rest(args)
    # An error here (unreachable, forbidden, ...) is one line and exit 4 (cli/main.py).
    served = discover_kinds(rest)
    snapshot, policies, templates = list_cluster(
        rest,
        served,
        namespace=args.namespace,
        cluster_network_policies=settings.domain_backend == BACKEND_CLUSTER_NETWORK_POLICY,
    )
    from_flags = settings.claim_label_injection
    decided, why = decide_claim_label_injection(from_flags, rest, served)
    found = find(
        snapshot, settings=settings, network_policies=policies, sandbox_templates=templates
    )
    found += claim_label_findings(from_flags, decided, why)
    if args.namespace is None:  # CRDs are cluster-wide: not a namespace admin's to fix
        found += crd_schema_findings(_crd_schema_plans(rest))
    if args.probe_webhooks:
        found += _probe_webhooks(rest, args.probe_webhooks)
    findings = [
        finding
        for finding in sorted(found)
        if args.namespace is None or finding.namespace == args.namespace
    ]
    sys.stdout.write(render_json(findings) if args.output == "json" else render_text(findings))
    return EXIT_FINDINGS if findings else EXIT_OK
