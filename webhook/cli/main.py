"""The command line: ``python -m webhook`` / ``agentcube-netpol``.

This is the only place that reads flags and the environment; it builds one
frozen ``Settings`` and hands it down. Each command group is a module of this
package with a ``register(commands)`` that adds its parsers, each setting
``run`` (``webhook.cli.options.Run``); a new command is one more entry in
``COMMAND_GROUPS``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from webhook import __version__
from webhook.api.exitcodes import EXIT_CLUSTER, EXIT_CODES, EXIT_FAILED, EXIT_USAGE
from webhook.api.settings import Settings
from webhook.cli import dev, isolation, offline, reconcile, serve
from webhook.cli.options import Run, settings_from_args
from webhook.policy.builder import settings_errors

if TYPE_CHECKING:
    from webhook.cli.options import Commands

# In the order ``--help`` lists them.
COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    serve.register,
    reconcile.register,
    offline.register,
    dev.register,
    isolation.register,
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentcube-netpol",
        description="Network isolation for AgentCube sandboxes.",
        epilog="exit codes:\n"
        + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES)
        + "\n\nCommands that talk to a cluster find it as kubectl does: --kubeconfig, "
        "$KUBECONFIG, ~/.kube/config, then the in-cluster service account; --context picks "
        "a context.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    # Every command but wait-isolated (an init container's, which needs none) takes the
    # policy options.
    settings = settings_from_args(args) if hasattr(args, "agentcube_namespace") else Settings()
    # Options that would make every NetworkPolicy one kube-apiserver refuses.
    problems = settings_errors(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    run: Run = args.run
    try:
        return run(args, settings)
    except Exception as exc:  # the one place an error becomes a line and an exit code
        line, code = explain(exc)
        print(f"error: {line}", file=sys.stderr)
        if code == EXIT_FAILED:
            logger.debug("the traceback of that error", exc_info=exc)
        return code


def explain(exc: Exception) -> tuple[str, int]:
    """One line that says what failed and what to do, and the exit code, for an error
    that ended a command."""
    from webhook.kube import errors
    from webhook.kube.kubeconfig import ConfigError

    if isinstance(exc, ConfigError):
        return f"no usable cluster configuration: {exc}", EXIT_CLUSTER
    if isinstance(exc, errors.Unreachable):
        return (
            f"cannot reach the API server: {exc.message}; check the server address in the "
            "kubeconfig and that the API server is up",
            EXIT_CLUSTER,
        )
    if isinstance(exc, errors.Unauthorized):
        return (
            f"the API server does not accept these credentials ({exc.message}); check the "
            "kubeconfig's user, or log in again",
            EXIT_CLUSTER,
        )
    if isinstance(exc, errors.Forbidden):
        return (
            f"forbidden: {exc.message}; ask a cluster admin for RBAC that allows it "
            "(deploy/base/rbac.yaml lists what agentcube-netpol needs)",
            EXIT_CLUSTER,
        )
    if isinstance(exc, errors.ApiError):
        return f"the API server refused a request: {exc}", EXIT_CLUSTER
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"internal error: {type(exc).__name__}{': ' + text if text else ''} "
        "(rerun with --log-level DEBUG for the traceback, and report it)",
        EXIT_FAILED,
    )


__all__ = ["build_parser", "main", "settings_from_args"]
