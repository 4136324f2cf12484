"""Parts a benchmark of this project reuses: load generation, server processes, reports.

A benchmark script in bench/ imports them as ``lib.load``, ``lib.procs`` and
``lib.report`` (Python puts the script's folder first on ``sys.path``).
"""
