"""``run``, ``reconcile`` and ``audit``: the reconciler, alone, beside the server, or as a check.

``run`` is what deploy/ starts: the admission server and the reconciler in one
process, sharing the reconciler's watch caches (the pod mutation looks claims up
in them) and one ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from webhook.cli.options import Commands
    from webhook.kube.discovery import Rediscovery
    from webhook.kube.rest import Rest
    from webhook.reconciler.manager import ReconcilerRuntime

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


def _rest(args: argparse.Namespace) -> Rest:
    # A connection per worker and per watch (seven informers), and a few to spare.
    return cluster_rest(args, max_connections=getattr(args, "workers", 4) + 12)


def _runtime(
    args: argparse.Namespace, rest: Rest, settings: Settings, registry: CollectorRegistry
) -> ReconcilerRuntime:
    from webhook.reconciler.manager import ReconcilerRuntime

    lease = args.lease_seconds
    return ReconcilerRuntime(
        rest=rest,
        settings=settings,
        registry=registry,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        workers=args.workers,
        lease_seconds=lease,
        renew_deadline_seconds=lease * 2 / 3,
        retry_seconds=max(lease / 7.5, 0.2),
    )


# After the served versions change, /readyz fails this long before the server stops, so
# the readiness probe (deploy/: every 5 s, 3 failures) takes the replica out of the
# Service while it still answers the API server's calls.
RESTART_DRAIN_SECONDS = 15.0


def restart_schedule(*, leading: bool, interval_seconds: float) -> tuple[float, float]:
    """How long a replica that saw agent-sandbox's versions change keeps serving as it is,
    then how long it fails /readyz before it stops: (hold, drain).

    The replicas notice at their own moments, at most about two check intervals apart. A
    follower restarts at once; the Lease holder holds two intervals first, so the followers
    are back (and ready) before it goes: with the webhooks failing closed, the Service keeps
    an endpoint throughout, unless the replicas noticed further apart than that.
    """
    return (2 * interval_seconds if leading else 0.0), RESTART_DRAIN_SECONDS


def _rediscovery(
    args: argparse.Namespace,
    rest: Rest,
    from_flags: Settings,
    runtime: ReconcilerRuntime,
    *,
    on_versions_changed: Callable[[list[str]], None],
    on_settings_changed: Callable[[Settings], None] = lambda settings: None,
) -> Rediscovery:
    from webhook.kube.discovery import Rediscovery

    return Rediscovery(
        rest,
        in_use=runtime.caches.in_use,
        settings=runtime.reconciler.settings,
        configured=from_flags.claim_label_injection,
        on_versions_changed=on_versions_changed,
        on_settings_changed=on_settings_changed,
        interval_seconds=args.rediscover_interval,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.kube.discovery import resolve_claim_label_injection
    from webhook.kube.identity import with_own_gate_lifter
    from webhook.server.metrics import AdmissionMetrics
    from webhook.server.serve import Admission, Lifecycle, serve

    metrics = AdmissionMetrics()
    from_flags = settings
    rest = _rest(args)
    settings = resolve_claim_label_injection(settings, rest)
    # The reconciler beside the server lifts the gates the server guards, as whoever it is.
    settings = with_own_gate_lifter(settings, rest)
    runtime = _runtime(args, rest, settings, metrics.registry)
    runtime.start()
    restarting = threading.Event()
    stop = threading.Event()

    def on_versions_changed(changes: list[str]) -> None:
        hold, drain = restart_schedule(
            leading=runtime.reconciler.leading, interval_seconds=args.rediscover_interval
        )
        logger.warning(
            "restarting in %.0fs: not ready in %.0fs, stopping %.0fs after that",
            hold + drain, hold, drain,
        )  # fmt: skip

        def go_unready() -> None:  # not ready first; stopped once the probe has noticed
            restarting.set()
            call_later(drain, stop.set)

        call_later(hold, go_unready)

    rediscovery = _rediscovery(
        args,
        rest,
        from_flags,
        runtime,
        on_versions_changed=on_versions_changed,
        on_settings_changed=runtime.reconciler.use_settings,
    )
    rediscovery.start()
    try:
        code = serve(
            Admission(
                settings=settings,
                claims=runtime.caches,
                sandboxes=runtime.caches,
                ready=lambda: runtime.ready and not restarting.is_set(),
                metrics=metrics,
                # What the reconciler plans with, read on each request: one value, flipped
                # in place when agent-sandbox's allow-list changes.
                live_settings=lambda: runtime.reconciler.settings,
            ),
            listen_on(args),
            tls_of(args, cluster_trust(args, rest)),
            # The standby takes over while this replica drains: writes stop at once.
            Lifecycle(stop=stop, drain_seconds=args.shutdown_drain, on_shutdown=runtime.release),
        )
    finally:
        stop.set()
        rediscovery.stop()
        runtime.stop()
    return EXIT_RESTART if restarting.is_set() and code == EXIT_OK else code


def call_later(seconds: float, then: Callable[[], None]) -> None:
    timer = threading.Timer(seconds, then)
    timer.daemon = True
    timer.start()


def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from webhook.kube.discovery import resolve_claim_label_injection

    registry = CollectorRegistry()
    from_flags = settings
    # Resolved for the reconciler's ClaimLabelNotInjected Events (no claim mutation here).
    rest = _rest(args)
    settings = resolve_claim_label_injection(settings, rest)
    runtime = _runtime(args, rest, settings, registry)
    stop = threading.Event()
    restarting = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    def on_versions_changed(changes: list[str]) -> None:
        restarting.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server, _thread = start_http_server(args.metrics_port, args.metrics_host, registry=registry)
    runtime.start()
    rediscovery = _rediscovery(
        args,
        rest,
        from_flags,
        runtime,
        on_versions_changed=on_versions_changed,
        on_settings_changed=runtime.reconciler.use_settings,
    )
    rediscovery.start()
    try:
        stop.wait()
    finally:
        rediscovery.stop()
        runtime.stop()
        server.shutdown()
    return EXIT_RESTART if restarting.is_set() else EXIT_OK


def audit(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.kube.discovery import decide_claim_label_injection, discover_kinds
    from webhook.reconciler.audit import audit as find
    from webhook.reconciler.audit import claim_label_findings, render_json, render_text
    from webhook.reconciler.caches import list_cluster

    rest = _rest(args)
    # An error here (unreachable, forbidden, ...) is one line and exit 4 (cli/main.py).
    served = discover_kinds(rest)
    snapshot, policies, templates = list_cluster(rest, served, namespace=args.namespace)
    from_flags = settings.claim_label_injection
    decided, why = decide_claim_label_injection(from_flags, rest, served)
    found = find(
        snapshot, settings=settings, network_policies=policies, sandbox_templates=templates
    )
    found += claim_label_findings(from_flags, decided, why)
    findings = [
        finding
        for finding in sorted(found)
        if args.namespace is None or finding.namespace == args.namespace
    ]
    sys.stdout.write(render_json(findings) if args.output == "json" else render_text(findings))
    return EXIT_FINDINGS if findings else EXIT_OK
