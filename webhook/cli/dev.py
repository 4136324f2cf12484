"""``dev``: the local playground on a real control plane, from the dev kit
(``agentcube_netpol_dev``, the agentcube-netpol-dev distribution in devkit/), imported only
when ``dev`` runs: the product runs without it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from webhook.api.exitcodes import EXIT_USAGE
from webhook.api.settings import Settings
from webhook.cli.options import add_policy_options, free_or_port

if TYPE_CHECKING:
    from webhook.cli.options import Commands

DEFAULT_KUBECONFIG = Path("certs/dev.kubeconfig")


def register(commands: Commands) -> None:
    parser = commands.add_parser("dev", help="a local playground on a real control plane")
    parser.set_defaults(run=run)
    parser.add_argument(
        "--write-kubeconfig",
        type=Path,
        default=DEFAULT_KUBECONFIG,
        metavar="PATH",
        help="where to write the admin kubeconfig once everything is ready (default: %(default)s)",
    )
    # Every other command reads --kubeconfig; dev wrote to it. Still taken, with a notice.
    parser.add_argument(
        "--kubeconfig", dest="deprecated_kubeconfig", type=Path, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--port", type=free_or_port, default=0, help="webhook port (default: a free one)"
    )
    parser.add_argument(
        "--agent-sandbox",
        metavar="VERSION",
        default=None,
        help="the agent-sandbox release to run (one of AGENT_SANDBOX_VERSIONS in versions.env, "
        "built with tests/controlplane/build-agent-sandbox.sh VERSION; default: "
        "AGENT_SANDBOX_VERSION)",
    )
    parser.add_argument(
        "--without-agent-sandbox",
        action="store_true",
        help="start no agent-sandbox controller nor stand-in kubelet (nothing to build first)",
    )
    parser.add_argument(
        "--dataplane",
        action="store_true",
        help="pods are network namespaces and kube-router enforces the NetworkPolicies on them; "
        "prints, for each pod, commands to try from it (needs root, iptables, ipset: "
        "`make dataplane-packages`; kube-router: `make controlplane`). Direct-path sandboxes "
        "are held by --isolation-canary (default here: the playground's host outside every "
        "CIDR, port 443)",
    )
    add_policy_options(parser)


def write_kubeconfig_path(args: argparse.Namespace) -> Path:
    """Where dev writes its kubeconfig: --write-kubeconfig, or the deprecated --kubeconfig."""
    if args.deprecated_kubeconfig is None:
        path: Path = args.write_kubeconfig
        return path
    print(
        "warning: dev --kubeconfig is deprecated (every other command reads that flag); "
        "use --write-kubeconfig",
        file=sys.stderr,
    )
    deprecated: Path = args.deprecated_kubeconfig
    return deprecated


DEV_KIT_MISSING = (
    "error: dev needs the development kit, which this install (the production image, or the "
    "agentcube-netpol wheel alone) leaves out: from a checkout, `pip install ./devkit` "
    "(or `make dev`)"
)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from agentcube_netpol_dev.devenv import run_dev
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("agentcube_netpol_dev"):
            raise
        print(DEV_KIT_MISSING, file=sys.stderr)
        return EXIT_USAGE

    if args.dataplane and settings.isolation_canary is None:
        # Sandboxes held until kube-router enforces their policy, as a cluster should run
        # them (deploy/README.md): the canary is the playground's host outside every CIDR.
        from agentcube_netpol_dev.devdataplane import FORBIDDEN_HOST

        settings = dataclasses.replace(settings, isolation_canary=(FORBIDDEN_HOST, 443))

    return run_dev(
        kubeconfig=write_kubeconfig_path(args),
        port=args.port,
        settings=settings,
        environ=os.environ,
        with_agent_sandbox=not args.without_agent_sandbox,
        agent_sandbox_version=args.agent_sandbox,
        with_dataplane=args.dataplane,
    )
