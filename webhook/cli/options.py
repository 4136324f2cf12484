"""Options several commands share, and the one place they become a ``Settings``."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from webhook import __version__
from webhook.api.settings import DEFAULT_DNS_PEERS, DEFAULT_GATE_LIFTERS, Limits, Settings
from webhook.policy.canary import Canary, parse_canary
from webhook.policy.cidr import CidrProblem, parse_cidr
from webhook.policy.domains import BACKEND_CLUSTER_NETWORK_POLICY, BACKEND_RESOLVE, BACKENDS

if TYPE_CHECKING:
    from webhook.kube.rest import Rest

    # What ``add_subparsers`` returns: a command group's ``register`` adds its parsers to it.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

# A command's entry point: the parsed flags and the settings built from them in, an
# exit code (webhook.api.exitcodes) out. Each command's parser sets it as ``run``.
Run: TypeAlias = Callable[[argparse.Namespace, Settings], int]


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    return _int_in(text, 1, 65535, "a port")


def free_or_port(text: str) -> int:
    """A TCP port, or 0 for a free one."""
    return _int_in(text, 0, 65535, "a port (0: a free one)")


def positive_int(text: str) -> int:
    return _int_in(text, 1, None, "a whole number")


def positive_seconds(text: str) -> float:
    """A duration in seconds, more than 0."""
    return _number_from(text, 0.0, inclusive=False, unit=" seconds")


def seconds_or_zero(text: str) -> float:
    """A duration in seconds, 0 or more."""
    return _number_from(text, 0.0, inclusive=True, unit=" seconds")


def non_negative(text: str) -> float:
    return _number_from(text, 0.0, inclusive=True, unit="")


def _number_from(text: str, low: float, *, inclusive: bool, unit: str) -> float:
    value = _number(text)
    if value < low or (value == low and not inclusive):
        bound = f"{low:g}{unit} or more" if inclusive else f"more than {low:g}{unit}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _int_in(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f"{low} or more"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def canary(text: str) -> Canary:
    try:
        return parse_canary(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The options every NetworkPolicy depends on; each command takes them."""
    group = parser.add_argument_group("policy")
    group.add_argument(
        "--agentcube-namespace",
        default="agentcube",
        help="namespace of the AgentCube router and workload manager (default: %(default)s)",
    )
    group.add_argument(
        "--router-label",
        type=label,
        action="append",
        metavar="KEY=VALUE",
        help="label of the router pods (repeatable; default: app=agentcube-router)",
    )
    group.add_argument(
        "--workload-manager-label",
        type=label,
        action="append",
        metavar="KEY=VALUE",
        help="label of the workload manager pods (repeatable; default: app=workloadmanager)",
    )
    group.add_argument(
        "--dns-peer",
        type=json_object,
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
    group.add_argument(
        "--gate-lifter",
        action="append",
        metavar="USER",
        help="user allowed to remove the scheduling gate netpol.agentcube.io/network-policy "
        "from a sandbox pod besides the privileged ones: the reconciler's identity "
        f"(repeatable; default: {', '.join(DEFAULT_GATE_LIFTERS)}; run adds its own)",
    )
    group.add_argument(
        "--deny-widening",
        action="store_true",
        help="refuse a NetworkPolicy or SandboxTemplate that would loosen a sandbox's isolation "
        "(default: admit it with a warning; run and audit report it either way)",
    )
    group.add_argument(
        "--claim-label-injection",
        choices=("auto", "on", "off"),
        default="auto",
        help="add runtime.agentcube.io/sandbox-name to a SandboxClaim's additionalPodMetadata "
        "labels; auto (default): where agent-sandbox accepts it (v0.4, or v0.5+ with "
        "runtime.agentcube.io in its allowed-label-domains); otherwise the claimed pod is "
        "labelled by the pod webhook and the reconciler",
    )
    group.add_argument(
        "--isolation-canary",
        type=canary,
        metavar="ADDRESS:PORT",
        help="hold a sandbox pod's containers until its NetworkPolicy is enforced: an init "
        "container waits until a TCP connection to ADDRESS:PORT (a listener the sandbox's "
        "policy does not allow, e.g. this webhook's Service) is refused. Give it to the "
        "webhook and the reconciler alike (default: off)",
    )
    group.add_argument(
        "--domain-backend",
        choices=BACKENDS,
        default=BACKEND_RESOLVE,
        help="how egress domains are enforced: resolve (default): the reconciler resolves "
        "each name and allows its addresses, on any NetworkPolicy implementation; "
        "cluster-network-policy: ClusterNetworkPolicy domainNames, where the network plugin "
        "serves them (wildcards allowed). Give it to the webhook and the reconciler alike",
    )
    group.add_argument(
        "--deny-answers",
        type=cidr,
        action="append",
        metavar="CIDR",
        help="a range a domain's answer may never add (repeatable): the cluster's pod and "
        "service ranges and the nodes' addresses, beside the built-in private, loopback, "
        "link-local and metadata ones",
    )
    group.add_argument(
        "--isolation-canary-image",
        default=f"agentcube-netpol:{__version__}",
        metavar="IMAGE",
        help="the image of that init container: this project's (default: %(default)s)",
    )


def cidr(text: str) -> str:
    parsed = parse_cidr(text)
    if isinstance(parsed, CidrProblem):
        raise argparse.ArgumentTypeError(parsed.message())
    return str(parsed)


def settings_from_args(args: argparse.Namespace) -> Settings:
    namespace: str = args.agentcube_namespace
    backend: str = args.domain_backend
    return Settings(
        agentcube_namespace=namespace,
        router_labels=dict(args.router_label or [("app", "agentcube-router")]),
        workload_manager_labels=dict(args.workload_manager_label or [("app", "workloadmanager")]),
        dns_peers=tuple(args.dns_peer) if args.dns_peer else DEFAULT_DNS_PEERS,
        dns_to_anywhere=args.dns_to_anywhere,
        privileged_groups=tuple(args.privileged_group or [f"system:serviceaccounts:{namespace}"]),
        privileged_users=tuple(args.privileged_user or ()),
        gate_lifters=tuple(args.gate_lifter or DEFAULT_GATE_LIFTERS),
        deny_widening=args.deny_widening,
        claim_label_injection=args.claim_label_injection,
        isolation_canary=args.isolation_canary,
        isolation_canary_image=args.isolation_canary_image,
        limits=Limits(domain_wildcards=backend == BACKEND_CLUSTER_NETWORK_POLICY),
        domain_backend=backend,
        deny_answers=tuple(args.deny_answers or ()),
    )


def add_kubeconfig_option(parser: argparse._ActionsContainer, *, purpose: str) -> None:
    """``--kubeconfig`` and ``--context``: the cluster to talk to, found as kubectl finds it."""
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help=f"kubeconfig for {purpose} (default: as kubectl: $KUBECONFIG, then "
        "~/.kube/config, then the in-cluster service account)",
    )
    parser.add_argument(
        "--context",
        default=None,
        help="the kubeconfig context to use (default: its current context)",
    )


# The reconciler's client-side rate limit (client-go's QPS and Burst). A full drift of
# 10,000 sandboxes (policy, pod and Event writes) is spread over minutes instead of arriving
# as fast as the workers can send; a 1,000-sandbox burst on a 2-core API server ran at about
# this rate unlimited (bench/README.md), so ordinary bursts are not slowed.
DEFAULT_KUBE_API_QPS = 200.0
DEFAULT_KUBE_API_BURST = 400


def add_rate_limit_options(parser: argparse._ActionsContainer) -> None:
    """``--kube-api-qps`` and ``--kube-api-burst``: how fast the reconciler may call the API."""
    parser.add_argument(
        "--kube-api-qps",
        type=non_negative,
        default=DEFAULT_KUBE_API_QPS,
        metavar="QPS",
        help="requests a second to the API server on average (lists, gets and writes; not "
        "watches); 0: no client-side limit, API Priority and Fairness alone "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--kube-api-burst",
        type=positive_int,
        default=DEFAULT_KUBE_API_BURST,
        metavar="N",
        help="requests at once above --kube-api-qps (default: %(default)s)",
    )


def cluster_rest(args: argparse.Namespace, *, max_connections: int | None = None) -> Rest:
    """The API client for the cluster ``--kubeconfig``/``--context``, ``$KUBECONFIG``,
    ``~/.kube/config`` or the in-cluster service account names (``ConfigError`` if none);
    the one place the CLI turns those into a client."""
    from webhook.kube.kubeconfig import Lookup, load
    from webhook.kube.rest import DEFAULT_MAX_CONNECTIONS, RateLimiter, Rest

    lookup = Lookup.from_environ(os.environ, kubeconfig=args.kubeconfig, context=args.context)
    qps: float = getattr(args, "kube_api_qps", 0.0)
    limiter = RateLimiter(qps, args.kube_api_burst) if qps > 0 else None
    return Rest(
        load(lookup),
        max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
        limiter=limiter,
    )
