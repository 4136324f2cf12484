"""Exit codes of the ``agentcube-netpol`` commands, said once (README "Exit codes", and
``agentcube-netpol --help``).

Each tells a case apart that a script or a Deployment acts on differently: findings are
not failures, a usage error is not a cluster that cannot be reached, and a restart that
was asked for is not a crash.
"""

from __future__ import annotations

EXIT_OK = 0
# check: some object is invalid; audit: some sandbox is less isolated than its policy says.
EXIT_INVALID = 1
EXIT_FINDINGS = 1
# A usage or settings error: a bad flag value, options that make every NetworkPolicy
# invalid, unreadable input files (argparse exits with 2 too).
EXIT_USAGE = 2
# run, reconcile: agent-sandbox's served versions changed under us; restart to watch them (the
# Deployment restarts the container). Nothing is wrong.
EXIT_RESTART = 3
# The cluster could not be used: no configuration found, an unusable kubeconfig, the API
# server unreachable, or it refused us (unauthorized, forbidden by RBAC).
EXIT_CLUSTER = 4
# serve, run, reconcile, dev: could not start (a port taken, certificates that cannot be
# made) or stopped on an error; any unexpected internal error.
EXIT_FAILED = 5

# (code, meaning) in the order ``--help`` and the README list them.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success; nothing found"),
    (EXIT_FINDINGS, "check: some object is invalid; audit: findings"),
    (EXIT_USAGE, "usage or settings error, unreadable input"),
    (EXIT_RESTART, "run, reconcile: restart wanted (agent-sandbox's served versions changed)"),
    (
        EXIT_CLUSTER,
        "the cluster could not be used: no config, unreachable, unauthorized, forbidden",
    ),
    (EXIT_FAILED, "could not start, stopped on an error, or an internal error"),
)
