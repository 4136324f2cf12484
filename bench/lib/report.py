"""Medians over rounds, ratios to a baseline endpoint, and the table that shows them.

Rounds are interleaved across endpoints (baseline, a, b, baseline, ...) by the
benchmark, so a burst of someone else's load on a shared machine hits every column
alike; medians over rounds then keep one bad round from deciding the result.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lib.load import PacedResult, WrkResult, percentile


@dataclass(frozen=True)
class Goals:
    """What an endpoint must reach: throughput relative to the baseline, p99 at the rate."""

    throughput_ratio: float
    p99_ms: float


def summarize(
    throughput: Mapping[str, list[WrkResult]],
    paced: Mapping[str, list[PacedResult]],
    wrk_paced: Mapping[str, list[WrkResult]],
    *,
    baseline: str,
) -> dict[str, Any]:
    """Per endpoint: medians over rounds, and ratios to the ``baseline`` endpoint's rounds."""
    summary: dict[str, Any] = {}
    baseline_rounds = throughput[baseline]
    for name, rounds in throughput.items():
        pairs = list(zip(rounds, baseline_rounds, strict=True))
        fixed = paced[name]
        summary[name] = {
            "rps_median": statistics.median(r.requests_per_second for r in rounds),
            "rps_rounds": [round(r.requests_per_second) for r in rounds],
            "server_cpu_us_per_request_median": statistics.median(
                r.server_cpu_us_per_request for r in rounds),
            # Requests one core can serve, relative to the baseline: the ratio of CPU
            # costs, which holds up better than req/s when the machine is busy.
            "cpu_ratio_to_bare_median": statistics.median(
                b.server_cpu_us_per_request / r.server_cpu_us_per_request for r, b in pairs),
            "ratio_to_bare_median": statistics.median(
                r.requests_per_second / b.requests_per_second for r, b in pairs),
            "saturated_p50_ms_median": statistics.median(r.p50_ms for r in rounds),
            "saturated_p99_ms_median": statistics.median(r.p99_ms for r in rounds),
            "errors": sum(r.errors for r in rounds) + sum(p.errors for p in fixed),
            "fixed_p50_ms_median": statistics.median(
                percentile(p.latency_from_due_ms, 0.5) for p in fixed),
            "fixed_p99_ms_median": statistics.median(
                percentile(p.latency_from_due_ms, 0.99) for p in fixed),
            "fixed_p99_ms_rounds": [round(percentile(p.latency_from_due_ms, 0.99), 2) for p in fixed],
            "fixed_p99_from_send_ms_median": statistics.median(
                percentile(p.latency_from_send_ms, 0.99) for p in fixed),
            "fixed_requests": sum(p.sent for p in fixed),
            "wrk_paced_rps_median": statistics.median(
                r.requests_per_second for r in wrk_paced[name]),
            "wrk_paced_p99_ms_median": statistics.median(r.p99_ms for r in wrk_paced[name]),
            "wrk_paced_p99_ms_rounds": [r.p99_ms for r in wrk_paced[name]],
        }  # fmt: skip
    return summary


def print_table(
    implementations: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    heading: str,
    baseline: str,
    goals: Goals,
) -> None:
    """One row per implementation and endpoint; each non-baseline row checked against
    ``goals``."""
    print()
    print(heading)
    header = (f"{'http':9} {'endpoint':9} {'req/s':>7} {'x bare':>6} {'cpu us':>6} "
              f"{'x bare':>6} {'sat p50':>7} {'sat p99':>7} {'@rate p50':>9} {'@rate p99':>9} "
              f"{'wrk@rate p99':>12} {'err':>4}  goal")  # fmt: skip
    print(header)
    print("-" * len(header))
    for http, summary in implementations.items():
        for name, row in summary.items():
            goal = ""
            if name != baseline:
                ok_ratio = row["ratio_to_bare_median"] >= goals.throughput_ratio
                ok_p99 = row["fixed_p99_ms_median"] < goals.p99_ms
                goal = (f"{'ok' if ok_ratio else 'MISS'} >= {goals.throughput_ratio}x, "
                        f"{'ok' if ok_p99 else 'MISS'} p99 < {goals.p99_ms:g} ms")  # fmt: skip
            print(f"{http:9} {name:9} {row['rps_median']:7.0f} {row['ratio_to_bare_median']:6.2f} "
                  f"{row['server_cpu_us_per_request_median']:6.0f} "
                  f"{row['cpu_ratio_to_bare_median']:6.2f} "
                  f"{row['saturated_p50_ms_median']:6.2f}m {row['saturated_p99_ms_median']:6.2f}m "
                  f"{row['fixed_p50_ms_median']:8.2f}m {row['fixed_p99_ms_median']:8.2f}m "
                  f"{row['wrk_paced_p99_ms_median']:11.2f}m {row['errors']:4d}  {goal}")  # fmt: skip
    print(f"req/s and its 'x bare': wrk throughput relative to {baseline}; 'cpu us' and its "
          "'x bare': server CPU time per request and the capacity ratio it implies (steadier "
          "on a busy machine); 'sat' = wrk latency at saturation; '@rate' = the paced client, "
          "latency from when each request was due; 'wrk@rate' = wrk paced to about the same "
          "rate, latency from the send; m = milliseconds")  # fmt: skip
