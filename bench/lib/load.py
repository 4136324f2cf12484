"""Load on an HTTPS endpoint: wrk for throughput, a paced client for latency at a fixed rate.

wrk (keep-alive, TLS, a Lua script for the POST body) gives saturated throughput
and, paced with a per-request delay, latency at about a rate; the paced client of
our own sends at an exact rate and counts latency from when each request was due,
so a stalled server counts against every request queued behind it (wrk2 is not
packaged by Debian). Only loopback addresses; every run bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = file:read("*a")
file:close()
"""

# wrk waits this long before each request on a connection: with C connections
# and a delay of C/rate seconds the rate comes out a little under ``rate``
# (each connection also waits for its answer). Latency is counted from the
# send, so unlike the paced client it leaves queueing out; but wrk is C and
# barely jitters, which the paced client on a busy core does.
WRK_PACED_SCRIPT = (
    WRK_SCRIPT
    + """
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS"))
function delay()
  return delay_ms
end
"""
)


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # The server's CPU time per request: what one core can serve, read from
    # /proc, so it holds up when other work on the machine steals wall time.
    server_cpu_us_per_request: float = 0.0


def run_wrk(
    url: str, body_file: Path, script: Path, *, connections: int, seconds: float,
    server_pid: int | None = None, delay_ms: float | None = None,
) -> WrkResult:  # fmt: skip
    command = [
        "wrk", "--threads", "1", "--connections", str(connections), "--duration", f"{max(1, round(seconds))}s",
        "--timeout", "5s", "--latency", "--script", str(script), url,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    if delay_ms is not None:
        env["BENCH_DELAY_MS"] = f"{delay_ms:g}"
    cpu_before = process_cpu_seconds(server_pid) if server_pid else 0.0
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    rps = float(_search(r"Requests/sec:\s+([\d.]+)", output))
    errors = int(_search(r"Non-2xx or 3xx responses:\s+(\d+)", output, default="0"))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    requests = int(_search(r"(\d+) requests in", output))
    cpu_used = process_cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    return WrkResult(
        requests=requests,
        server_cpu_us_per_request=cpu_used / requests * 1e6 if requests else 0.0,
        requests_per_second=rps,
        p50_ms=_duration_ms(_search(r"\n\s+50%\s+(\S+)", output)),
        p99_ms=_duration_ms(_search(r"\n\s+99%\s+(\S+)", output)),
        errors=errors,
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _search(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is not None:
        return default
    raise RuntimeError(f"wrk output has no {pattern!r}:\n{text}")


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise RuntimeError(f"cannot read the duration {text!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass
class PacedResult:
    sent: int
    errors: int
    # From the moment a request was due (so a stalled server counts against
    # every request queued behind it) and from the moment it was written.
    latency_from_due_ms: list[float] = field(default_factory=list)
    latency_from_send_ms: list[float] = field(default_factory=list)


async def paced_load(
    port: int, path: str, body: bytes, ca_file: Path, *, rate: float, seconds: float,
    connections: int,
) -> PacedResult:  # fmt: skip
    """``rate`` requests/s for ``seconds`` over ``connections`` keep-alive connections."""
    context = ssl.create_default_context(cafile=str(ca_file))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    total = int(rate * seconds)
    result = PacedResult(sent=0, errors=0)
    loop = asyncio.get_running_loop()
    next_index = 0
    start = loop.time() + 0.2

    async def connection() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=context, server_hostname="localhost"
        )
        try:
            while next_index < total:
                index, next_index = next_index, next_index + 1
                due = start + index / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at = loop.time()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                done = loop.time()
                result.sent += 1
                if not status_line.startswith(b"HTTP/1.1 200"):
                    result.errors += 1
                result.latency_from_due_ms.append((done - due) * 1000)
                result.latency_from_send_ms.append((done - sent_at) * 1000)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.wait_for(
        asyncio.gather(*(connection() for _ in range(connections))), timeout=seconds * 3 + 30
    )
    return result


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def write_wrk_scripts(directory: Path) -> tuple[Path, Path]:
    """The wrk Lua scripts, saturating and paced, written into ``directory``."""
    script, paced_script = directory / "post.lua", directory / "paced.lua"
    script.write_text(WRK_SCRIPT)
    paced_script.write_text(WRK_PACED_SCRIPT)
    return script, paced_script


# --- rounds: every target in turn, so a burst of outside load hits them all alike --------------


@dataclass(frozen=True)
class Target:
    """One endpoint under load: ``group`` (e.g. the HTTP implementation) and ``name`` key
    its results."""

    group: str
    name: str
    port: int
    path: str
    body_file: Path
    pid: int

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}{self.path}"


Results = dict[tuple[str, str], list[WrkResult]]


def warm_up(targets: Sequence[Target], script: Path, *, connections: int) -> None:
    """A second of load on each: imports, caches, first connections."""
    for target in targets:
        run_wrk(target.url, target.body_file, script, connections=connections, seconds=1)


def throughput_rounds(
    targets: Sequence[Target], script: Path, *, rounds: int, seconds: float, connections: int
) -> Results:
    """``rounds`` wrk runs per target at saturation, interleaved."""
    results: Results = {(t.group, t.name): [] for t in targets}
    for round_number in range(rounds):
        for target in targets:
            result = run_wrk(
                target.url, target.body_file, script,
                connections=connections, seconds=seconds, server_pid=target.pid,
            )  # fmt: skip
            results[target.group, target.name].append(result)
            print(f"  round {round_number + 1} {target.group:9} {target.name:8} "
                  f"{result.requests_per_second:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                  f"p99 {result.p99_ms:6.2f} ms  server CPU {result.server_cpu_us_per_request:5.0f} us/req  "
                  f"errors {result.errors}", flush=True)  # fmt: skip
    return results


def fixed_rate_rounds(
    targets: Sequence[Target], paced_script: Path, ca_file: Path, *,
    rounds: int, seconds: float, rate: float, connections: int,
) -> tuple[dict[tuple[str, str], list[PacedResult]], Results]:  # fmt: skip
    """``rounds`` of the paced client and of paced wrk per target at ``rate``, interleaved."""
    paced: dict[tuple[str, str], list[PacedResult]] = {(t.group, t.name): [] for t in targets}
    wrk_paced: Results = {(t.group, t.name): [] for t in targets}
    for round_number in range(rounds):
        for target in targets:
            result_paced = asyncio.run(paced_load(
                target.port, target.path, target.body_file.read_bytes(), ca_file,
                rate=rate, seconds=seconds, connections=connections,
            ))  # fmt: skip
            paced[target.group, target.name].append(result_paced)
            print(f"  fixed {rate:.0f}/s round {round_number + 1} {target.group:9} "
                  f"{target.name:8} p50 {percentile(result_paced.latency_from_due_ms, 0.5):6.2f} ms  "
                  f"p99 {percentile(result_paced.latency_from_due_ms, 0.99):6.2f} ms  "
                  f"(from send {percentile(result_paced.latency_from_send_ms, 0.99):6.2f} ms)  "
                  f"errors {result_paced.errors}", flush=True)  # fmt: skip
            result_wrk = run_wrk(
                target.url, target.body_file, paced_script,
                connections=connections, seconds=seconds, delay_ms=connections / rate * 1000,
            )  # fmt: skip
            wrk_paced[target.group, target.name].append(result_wrk)
            print(f"  wrk paced round {round_number + 1} {target.group:9} {target.name:8} "
                  f"{result_wrk.requests_per_second:6.0f} req/s  p50 {result_wrk.p50_ms:6.2f} ms  "
                  f"p99 {result_wrk.p99_ms:6.2f} ms  errors {result_wrk.errors}", flush=True)  # fmt: skip
    return paced, wrk_paced


def of_group(results: Mapping[tuple[str, str], list[Any]], group: str) -> dict[str, list[Any]]:
    """The results of one group, by target name."""
    return {name: rounds for (g, name), rounds in results.items() if g == group}
