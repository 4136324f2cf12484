"""``wait-isolated``: the init container that holds a sandbox pod until its policy is enforced.

With ``--isolation-canary`` the pod webhook puts this command first among a gated sandbox
pod's init containers (webhook.policy.canary). It connects to the canary, an address the
sandbox's NetworkPolicy does not allow, again and again: while a connection gets through, the
policy is not enforced yet; after ``REFUSALS_NEEDED`` refusals in a row, it is, and the pod's
own containers start. A canary that still answers at the timeout fails the init container
(and the kubelet tries again): the pod does not start unisolated.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webhook.api import kinds
from webhook.api.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from webhook.api.settings import Settings
from webhook.cli.options import positive_seconds
from webhook.policy.canary import Canary, format_canary, parse_canary

if TYPE_CHECKING:
    from webhook.cli.options import Commands

DEFAULT_TIMEOUT_S = 120.0
# A connection that takes longer is taken as refused: an implementation that drops packets
# (rather than rejecting them) refuses by never answering.
ATTEMPT_TIMEOUT_S = 0.25
INTERVAL_S = 0.05
# Refusals in a row before the policy counts as enforced: one lost SYN is not isolation.
REFUSALS_NEEDED = 3

Connect = Callable[[str, int, float], bool]


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "wait-isolated",
        help="(the init container of --isolation-canary) wait until this pod's NetworkPolicy "
        "is enforced",
    )
    parser.set_defaults(run=run)
    parser.add_argument(
        "--canary",
        default=None,
        metavar="ADDRESS:PORT",
        help=f"the address this pod's policy refuses (default: ${kinds.ISOLATION_CANARY_ENV}, "
        f"which the pod webhook fills from the pod's {kinds.ANNOTATION_ISOLATION_CANARY} "
        "annotation; empty: nothing to check, start at once)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait before failing (default: %(default)s)",
    )


@dataclass(frozen=True)
class Waited:
    isolated: bool
    seconds: float
    through: int  # connections that got through before the refusals


def connects(address: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to ``address:port`` is made within ``timeout_s``."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:  # refused, unreachable, timed out: not through
        return False


def wait_until_refused(
    canary: Canary,
    *,
    timeout_s: float,
    connect: Connect = connects,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Waited:
    """Tries ``canary`` until ``REFUSALS_NEEDED`` refusals in a row, or ``timeout_s``."""
    address, port = canary
    started = clock()
    refusals = through = 0
    while True:
        if connect(address, port, ATTEMPT_TIMEOUT_S):
            through += 1
            refusals = 0
        else:
            refusals += 1
            if refusals >= REFUSALS_NEEDED:
                return Waited(True, clock() - started, through)
        if clock() - started >= timeout_s:
            return Waited(False, clock() - started, through)
        sleep(INTERVAL_S)


def run(args: argparse.Namespace, _settings: Settings) -> int:
    text = args.canary if args.canary is not None else os.environ.get(kinds.ISOLATION_CANARY_ENV)
    if not text:
        print(
            "wait-isolated: nothing to check for this pod (its sandbox has no NetworkPolicy, "
            "or the policy lets the canary through): starting",
            flush=True,
        )
        return EXIT_OK
    try:
        canary = parse_canary(text)
    except ValueError as exc:
        print(f"wait-isolated: error: the canary {text!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    waited = wait_until_refused(canary, timeout_s=args.timeout)
    shown = format_canary(canary)
    if waited.isolated:
        print(
            f"wait-isolated: {shown} refused: the NetworkPolicy is enforced "
            f"({waited.seconds:.2f}s, {waited.through} connections got through before)",
            flush=True,
        )
        return EXIT_OK
    print(
        f"wait-isolated: error: {shown} still answers after {waited.seconds:.0f}s: this pod's "
        "NetworkPolicy is not enforced (does the cluster run a NetworkPolicy implementation?), "
        "or it lets the canary through (a peer that selects the canary's pod or namespace?)",
        file=sys.stderr,
    )
    return EXIT_FAILED
