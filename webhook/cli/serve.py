"""``serve``: the HTTPS admission server, and the in-cluster parts it may run beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from webhook.api.exitcodes import EXIT_USAGE
from webhook.api.settings import Settings
from webhook.cli.options import (
    add_kubeconfig_option,
    add_policy_options,
    cluster_rest,
    port,
    positive_seconds,
    seconds_or_zero,
)

if TYPE_CHECKING:
    from webhook.cli.options import Commands
    from webhook.kube.cabundle import ClusterTrust
    from webhook.kube.rest import Rest
    from webhook.server.serve import Listen, Tls

DEFAULT_PORT = 9443
DEFAULT_CERT_DIR = Path("certs")
SERVICE_NAME = "agentcube-netpol-webhook"
SERVICE_NAMESPACE = "agentcube-netpol-system"
WEBHOOK_CONFIGURATION = "agentcube-netpol"
CERT_CHECK_INTERVAL_S = 10.0


def register(commands: Commands) -> None:
    parser = commands.add_parser("serve", help="run the HTTPS admission server")
    parser.set_defaults(run=run)
    add_server_options(parser)
    add_cluster_options(parser)
    add_policy_options(parser)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the HTTPS server listens (``serve`` and ``run``)."""
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help="port (default: %(default)s)"
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=DEFAULT_CERT_DIR,
        help="tls.crt/tls.key (generated with a CA when absent) (default: %(default)s)",
    )
    parser.add_argument(
        "--dns-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name for a generated serving certificate (repeatable)",
    )
    parser.add_argument(
        "--service-name",
        default=SERVICE_NAME,
        help="in-cluster Service name for a generated certificate (default: %(default)s)",
    )
    parser.add_argument(
        "--service-namespace",
        default=SERVICE_NAMESPACE,
        help="in-cluster Service namespace for a generated certificate (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-drain",
        type=seconds_or_zero,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM, fail /readyz and keep answering this long before closing the port, "
        "so the endpoint leaves the Service first; run releases its Lease at once "
        "(deploy/: 5; default: %(default)s)",
    )
    parser.add_argument(
        "--cert-check-interval",
        type=positive_seconds,
        default=CERT_CHECK_INTERVAL_S,
        metavar="SECONDS",
        help="how often to look for a renewed or replaced certificate (default: %(default)s)",
    )


def add_cluster_options(
    parser: argparse.ArgumentParser,
    *,
    watch_claims: bool = True,
    kubeconfig_purpose: str = "--ca-secret and --watch-claims",
) -> None:
    cluster = parser.add_argument_group(
        "in-cluster trust (without cert-manager)",
        "keep one CA in a Secret shared by every replica and write it into the webhooks' "
        "caBundle, at start and every few minutes",
    )
    cluster.add_argument(
        "--ca-secret",
        type=_secret_ref,
        metavar="NAMESPACE/NAME",
        default=None,
        help="the Secret that holds the shared CA (created when absent)",
    )
    cluster.add_argument(
        "--webhook-configuration",
        default=WEBHOOK_CONFIGURATION,
        metavar="NAME",
        help="name of the Validating- and MutatingWebhookConfiguration (default: %(default)s)",
    )
    add_kubeconfig_option(cluster, purpose=kubeconfig_purpose)
    if not watch_claims:
        return
    cluster.add_argument(
        "--watch-claims",
        action="store_true",
        help="keep SandboxClaims in memory (list + watch) so claimed warm-pool pods get "
        "their sandbox labels; /readyz waits for the first list",
    )


def _secret_ref(text: str) -> tuple[str, str]:
    from webhook.kube.cabundle import parse_secret_ref

    try:
        return parse_secret_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The manager with the server alone, or beside a claim cache and the CA keeper."""
    from webhook.runtime.manager import Manager
    from webhook.runtime.programs import add_claim_cache, add_webhook_server
    from webhook.server.serve import Admission

    if settings.deny_widening:
        # The widening check reads sandboxes and pods from the reconciler's caches; serve
        # alone has none, so the flag would deny nothing. Say so rather than pretend.
        print(
            "error: serve --deny-widening: serve keeps no cache of sandboxes and pods to check "
            "a widening against; use `agentcube-netpol run --deny-widening` (what deploy/ runs)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    rest = cluster_rest(args) if args.watch_claims or args.ca_secret is not None else None
    manager = Manager(drain_seconds=args.shutdown_drain)
    claims = None
    if rest is not None and args.watch_claims:
        from webhook.kube.discovery import resolve_claim_label_injection

        settings = resolve_claim_label_injection(settings, rest)
        claims = add_claim_cache(manager, rest=rest, settings=settings)
    add_webhook_server(
        manager,
        Admission(settings=settings, claims=claims),
        listen_on(args),
        tls_of(args),
        trust=cluster_trust(args, rest),
    )
    return manager.run()


def listen_on(args: argparse.Namespace) -> Listen:
    from webhook.server.serve import Listen

    return Listen(host=args.host, port=args.port)


def tls_of(args: argparse.Namespace) -> Tls:
    """The serving certificate ``--cert-dir`` and the Service names ask for."""
    from webhook.server.serve import Tls

    return Tls(
        cert_dir=args.cert_dir,
        dns_names=serving_dns_names(
            args.dns_name, service=args.service_name, namespace=args.service_namespace
        ),
        check_interval_seconds=args.cert_check_interval,
    )


def serving_dns_names(extra: list[str], *, service: str, namespace: str) -> list[str]:
    """The names a generated serving certificate covers: ``extra`` and the Service's."""
    return [
        *extra,
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def cluster_trust(args: argparse.Namespace, rest: Rest | None) -> ClusterTrust | None:
    """The shared-CA keeper for ``--ca-secret``; None without it."""
    if args.ca_secret is None or rest is None:
        return None
    from webhook.kube.cabundle import ClusterTrust, WebhookConfigurations

    namespace, name = args.ca_secret
    return ClusterTrust(
        rest,
        namespace=namespace,
        secret_name=name,
        cert_dir=args.cert_dir,
        configurations=WebhookConfigurations(
            validating=args.webhook_configuration, mutating=args.webhook_configuration
        ),
    )
