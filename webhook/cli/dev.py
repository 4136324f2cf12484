"""``dev``: the local playground on a real control plane (``webhook.devtools``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from webhook.api.settings import Settings
from webhook.cli.options import add_policy_options

if TYPE_CHECKING:
    from webhook.cli.options import Commands

DEFAULT_KUBECONFIG = Path("certs/dev.kubeconfig")


def register(commands: Commands) -> None:
    parser = commands.add_parser("dev", help="a local playground on a real control plane")
    parser.set_defaults(run=run)
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=DEFAULT_KUBECONFIG,
        help="where to write the admin kubeconfig (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="webhook port (default: a free one)")
    parser.add_argument(
        "--without-agent-sandbox",
        action="store_true",
        help="start no agent-sandbox controller nor stand-in kubelet (nothing to build first)",
    )
    add_policy_options(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.devtools.devenv import run_dev

    return run_dev(
        kubeconfig=args.kubeconfig,
        port=args.port,
        settings=settings,
        environ=os.environ,
        with_agent_sandbox=not args.without_agent_sandbox,
    )
