"""Servers under test as child processes, and the cores load and servers run on.

A benchmark starts each server with its command line (given a loopback port),
pinned to ``SERVER_CORE`` when the machine has two cores, waits until the port
accepts connections, and stops every one when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOAD_CORE, SERVER_CORE = 0, 1
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
# A port found free can be taken before the server binds it: tries before giving up.
START_ATTEMPTS = 3


@dataclass(frozen=True)
class Server:
    role: str
    port: int
    pid: int


def pin_load_to_its_core() -> bool:
    """Pins this process (and the load generators it starts) to ``LOAD_CORE``.

    True when pinned; False on a machine with fewer than two cores, where
    servers are not pinned either.
    """
    if len(os.sched_getaffinity(0)) < 2:
        return False
    os.sched_setaffinity(0, {LOAD_CORE})
    return True


@contextlib.contextmanager
def started_servers(
    commands: Mapping[str, Callable[[int], Sequence[str]]], *, log_dir: Path, pin: bool
) -> Iterator[dict[str, Server]]:
    """Each role's command, given a free loopback port, started and answering; all stopped
    (SIGTERM, then SIGKILL) on leaving. Each server's output goes to ``log_dir/<role>.log``."""
    processes: list[subprocess.Popen[bytes]] = []
    servers: dict[str, Server] = {}
    try:
        for role, command in commands.items():
            log = log_dir / f"{role}.log"
            for attempt in range(1, START_ATTEMPTS + 1):
                port = free_port()
                with log.open("wb") as output:
                    process = subprocess.Popen(
                        list(command(port)), stdout=output, stderr=subprocess.STDOUT
                    )
                processes.append(process)
                if pin:
                    os.sched_setaffinity(process.pid, {SERVER_CORE})
                if wait_for_port(port, process, log, last_attempt=attempt == START_ATTEMPTS):
                    servers[role] = Server(role, port, process.pid)
                    break
        yield servers
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, *, last_attempt: bool = True
) -> bool:
    """True once ``port`` accepts connections; False if the server lost the port to another
    process and may be tried again; RuntimeError (with its log) otherwise."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            if not last_attempt and "address already in use" in output.lower():
                return False
            raise RuntimeError(f"server exited {process.returncode}: {output}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return True
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start: {log.read_text(errors='replace')}")
