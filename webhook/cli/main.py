"""The command line: ``python -m webhook`` / ``agentcube-netpol``.

This is the only place that reads flags and the environment; it builds one
frozen ``Settings`` and hands it down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook import __version__
from webhook.api.exitcodes import EXIT_USAGE
from webhook.api.settings import DEFAULT_DNS_PEERS, Settings
from webhook.policy.builder import settings_errors

if TYPE_CHECKING:
    from webhook.kube.cabundle import ClusterTrust


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy")
    group.add_argument(
        "--agentcube-namespace",
        default="agentcube",
        help="namespace of the AgentCube router and workload manager (default: %(default)s)",
    )
    group.add_argument(
        "--router-label",
        type=_label,
        action="append",
        metavar="KEY=VALUE",
        help="label of the router pods (repeatable; default: app=agentcube-router)",
    )
    group.add_argument(
        "--workload-manager-label",
        type=_label,
        action="append",
        metavar="KEY=VALUE",
        help="label of the workload manager pods (repeatable; default: app=workloadmanager)",
    )
    group.add_argument(
        "--dns-peer",
        type=_json_object,
        action="append",
        metavar="JSON",
        help="a NetworkPolicyPeer allowed on port 53 in Restricted mode (repeatable; "
        "default: kube-dns pods in kube-system)",
    )
    group.add_argument(
        "--dns-to-anywhere",
        action="store_true",
        help="allow port 53 to any destination (an exfiltration channel: not the default)",
    )
    group.add_argument(
        "--privileged-group",
        action="append",
        metavar="GROUP",
        help="group allowed to set the override annotation and sandbox-name labels "
        "(repeatable; default: system:serviceaccounts:agentcube)",
    )
    group.add_argument(
        "--privileged-user",
        action="append",
        metavar="USER",
        help="user allowed to set the override annotation and sandbox-name labels (repeatable)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    namespace: str = args.agentcube_namespace
    return Settings(
        agentcube_namespace=namespace,
        router_labels=dict(args.router_label or [("app", "agentcube-router")]),
        workload_manager_labels=dict(args.workload_manager_label or [("app", "workloadmanager")]),
        dns_peers=tuple(args.dns_peer) if args.dns_peer else DEFAULT_DNS_PEERS,
        dns_to_anywhere=args.dns_to_anywhere,
        privileged_groups=tuple(args.privileged_group or [f"system:serviceaccounts:{namespace}"]),
        privileged_users=tuple(args.privileged_user or ()),
    )


def _api_client(args: argparse.Namespace) -> Any:
    """A Kubernetes API client from ``--kubeconfig``, else the in-cluster service account."""
    from kubernetes import client, config

    if args.kubeconfig is not None:
        return config.new_client_from_config(config_file=str(args.kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


def _cluster_trust(args: argparse.Namespace) -> ClusterTrust | None:
    """The shared-CA keeper for ``serve --ca-secret``; None without it."""
    if args.ca_secret is None:
        return None
    from webhook.kube.cabundle import ClusterTrust, WebhookConfigurations, parse_secret_ref

    namespace, name = parse_secret_ref(args.ca_secret)
    return ClusterTrust(
        _api_client(args),
        namespace=namespace,
        secret_name=name,
        cert_dir=args.cert_dir,
        configurations=WebhookConfigurations(
            validating=args.webhook_configuration, mutating=args.webhook_configuration
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentcube-netpol",
        description="Network isolation for AgentCube sandboxes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTPS admission server")
    serve.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=9443, help="port (default: %(default)s)")
    serve.add_argument(
        "--cert-dir",
        type=Path,
        default=Path("certs"),
        help="tls.crt/tls.key (generated with a CA when absent) (default: %(default)s)",
    )
    serve.add_argument(
        "--dns-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name for a generated serving certificate (repeatable)",
    )
    serve.add_argument(
        "--service-name",
        default="agentcube-netpol-webhook",
        help="in-cluster Service name for a generated certificate (default: %(default)s)",
    )
    serve.add_argument(
        "--service-namespace",
        default="agentcube-netpol-system",
        help="in-cluster Service namespace for a generated certificate (default: %(default)s)",
    )
    serve.add_argument(
        "--cert-check-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to look for a renewed or replaced certificate (default: %(default)s)",
    )
    cluster = serve.add_argument_group(
        "in-cluster trust (without cert-manager)",
        "keep one CA in a Secret shared by every replica and write it into the webhooks' "
        "caBundle, at start and every few minutes",
    )
    cluster.add_argument(
        "--ca-secret",
        metavar="NAMESPACE/NAME",
        default=None,
        help="the Secret that holds the shared CA (created when absent)",
    )
    cluster.add_argument(
        "--webhook-configuration",
        default="agentcube-netpol",
        metavar="NAME",
        help="name of the Validating- and MutatingWebhookConfiguration (default: %(default)s)",
    )
    cluster.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig for --ca-secret and --watch-claims "
        "(default: the in-cluster service account)",
    )
    cluster.add_argument(
        "--watch-claims",
        action="store_true",
        help="keep SandboxClaims in memory (list + watch) so claimed warm-pool pods get "
        "their sandbox labels; /readyz waits for the first list",
    )
    _add_policy_options(serve)

    check = commands.add_parser("check", help="validate objects in YAML/JSON files offline")
    check.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for standard input")
    _add_policy_options(check)

    render = commands.add_parser("render", help="print the NetworkPolicy a sandbox would get")
    render.add_argument("file", metavar="FILE", help="an AgentRuntime or CodeInterpreter")
    render.add_argument("--sandbox", required=True, help="the sandbox name")
    render.add_argument("--namespace", default=None, help="namespace (default: the template's)")
    _add_policy_options(render)

    dev = commands.add_parser("dev", help="a local playground on a real control plane")
    dev.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path("certs/dev.kubeconfig"),
        help="where to write the admin kubeconfig (default: %(default)s)",
    )
    dev.add_argument("--port", type=int, default=0, help="webhook port (default: a free one)")
    _add_policy_options(dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from_args(args)
    problems = settings_errors(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "serve":
        from webhook.server.serve import serve

        try:
            trust = _cluster_trust(args)
        except ValueError as exc:
            parser.error(str(exc))
        claims = None
        if args.watch_claims:
            from kubernetes.client import CustomObjectsApi

            from webhook.kube.claimcache import ClaimCache

            claims = ClaimCache(CustomObjectsApi(_api_client(args)))
            claims.start()
        return serve(
            trust=trust,
            claims=claims,
            ready=None if claims is None else (lambda: claims.synced),
            settings=settings,
            host=args.host,
            port=args.port,
            cert_dir=args.cert_dir,
            dns_names=[
                *args.dns_name,
                args.service_name,
                f"{args.service_name}.{args.service_namespace}",
                f"{args.service_name}.{args.service_namespace}.svc",
                f"{args.service_name}.{args.service_namespace}.svc.cluster.local",
            ],
            cert_check_interval_seconds=args.cert_check_interval,
        )
    if args.command == "check":
        from webhook.cli.offline import check

        return check(args.files, settings=settings, stdout=sys.stdout, stderr=sys.stderr)
    if args.command == "render":
        from webhook.cli.offline import render

        return render(
            args.file,
            sandbox=args.sandbox,
            namespace=args.namespace,
            settings=settings,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    if args.command == "dev":
        from webhook.devtools.devenv import run_dev

        return run_dev(
            kubeconfig=args.kubeconfig, port=args.port, settings=settings, environ=os.environ
        )
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE
