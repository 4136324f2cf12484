"""Exit codes of the ``agentcube-netpol`` commands (DESIGN.md section 7), said once."""

from __future__ import annotations

EXIT_OK = 0
# check, render: some object is invalid.
EXIT_INVALID = 1
# serve, dev: could not start, or stopped on an error.
EXIT_FAILED = 1
# Unreadable input or a usage error (argparse exits with 2 too).
EXIT_USAGE = 2
# audit: some sandbox is less isolated than its policy says (2: the cluster could not be read).
EXIT_FINDINGS = 1
# run, reconcile: agent-sandbox's served versions changed under us; restart to watch them (the
# Deployment restarts the container). Distinct from EXIT_FAILED: nothing is wrong.
EXIT_RESTART = 3
