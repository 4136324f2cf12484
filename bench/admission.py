"""Admission benchmark (not a test): our /validate and /mutate against a bare endpoint.

    python bench/admission.py                 # the full run, a few minutes
    python bench/admission.py --rounds 2 --duration 3 --fixed-seconds 3   # a quick look

Three HTTPS servers run side by side on one core, each one uvicorn worker with
the settings ``webhook serve`` uses (``webhook.server.serve.uvicorn_config``):

- ``webhook``: the real ``webhook.server.serve`` (certificates, logging at INFO,
  metrics), answering ``/validate`` and ``/mutate``;
- ``bare``: a starlette endpoint that reads the body and returns a fixed
  AdmissionReview: what the HTTP stack costs with no decision at all.

Load runs on the other core: ``wrk`` (keep-alive, TLS, a Lua script for the POST
bodies) for throughput, then a paced client of our own at a fixed rate (default
1,000 requests/s) for latency, since wrk2 is not packaged by Debian. Rounds are
interleaved (bare, validate, mutate, bare, ...) and medians reported, because
the machine is shared and noisy. Only loopback addresses are used, and every
run is bounded in count and time.

Requests:
- /validate: a CodeInterpreter CREATE with a Restricted networkPolicy;
- /mutate: a Pod UPDATE of a claimed warm-pool pod (the Sandbox controller's
  update: claim-uid added, warm-pool labels removed), about 14 KB per pod
  object; the AdmissionReview carries object and oldObject. The claim lookup
  knows the claim, so the answer is a real JSON patch.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from webhook.api import kinds

GOAL_THROUGHPUT_RATIO = 0.5
GOAL_P99_MS = 5.0
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_SECONDS = 30.0
LOAD_CORE, SERVER_CORE = 0, 1
NAMESPACE = "team-a"
CLAIM_UID = "5f0c2f8e-1c1e-4d0a-9a57-0c9b1f7d2a11"

# --- request bodies ---------------------------------------------------------------


def review(kind: kinds.Kind, operation: str, obj: dict[str, Any], old: Any = None) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0b8e3e2a-6c55-4f4e-bd0c-3a1a4e1f9d10",
                "kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
                "resource": {"group": kind.group, "version": kind.version,
                             "resource": kind.plural},
                "requestKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
                "namespace": NAMESPACE,
                "name": obj["metadata"]["name"],
                "operation": operation,
                "userInfo": {
                    "username": "system:serviceaccount:agent-sandbox-system:agent-sandbox-controller",
                    "uid": "e1b6d0a4-0c47-4a55-8d0f-2d1f3c0b7a55",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:agent-sandbox-system",
                               "system:authenticated"],
                },
                "object": obj,
                "oldObject": old,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
            },
        }
    )  # fmt: skip


def code_interpreter_create() -> bytes:
    interpreter = {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": kinds.CODE_INTERPRETER.kind,
        "metadata": {"name": "python-sandbox", "namespace": NAMESPACE,
                     "labels": {"app": "python-sandbox"}},
        "spec": {
            "warmPoolSize": 2,
            "template": {
                "image": "ghcr.io/volcano-sh/picod:v0.1.0",
                "runtimeClassName": "kata",
                "labels": {"team": "a"},
                "networkPolicy": {
                    "mode": "Restricted",
                    "ingress": [{"cidrs": ["10.8.0.0/16"],
                                 "ports": [{"protocol": "TCP", "port": 8080}]}],
                    "egress": [
                        {"cidrs": ["0.0.0.0/0"],
                         "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                    "169.254.0.0/16"],
                         "ports": [{"protocol": "TCP", "port": 443},
                                   {"protocol": "TCP", "port": 8000, "endPort": 8100}]},
                        {"cidrs": ["2001:db8::/32"], "ports": [{"protocol": "UDP", "port": 4500}]},
                    ],
                },
            },
        },
    }  # fmt: skip
    return review(kinds.CODE_INTERPRETER, "CREATE", interpreter)


def warm_pool_pod(*, claimed: bool) -> dict[str, Any]:
    """A warm-pool pod as the API server stores it, managedFields and all."""
    labels = {
        "agents.x-k8s.io/sandbox-template-ref-hash": "7c9d6b5f4",
        "app": "python-sandbox",
    }
    if claimed:
        labels[kinds.LABEL_CLAIM_UID] = CLAIM_UID
    else:
        labels[kinds.LABEL_WARM_POOL_SANDBOX] = "python-sandbox"
        labels["agents.x-k8s.io/sandbox-pod-template-hash"] = "5d8f7c6b9"
    env = [{"name": f"SANDBOX_SETTING_{i}", "value": f"value-{i:04d}-" + "x" * 24}
           for i in range(80)]  # fmt: skip
    container = {
        "name": "picod",
        "image": "ghcr.io/volcano-sh/picod:v0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                      "requests": {"cpu": "250m", "memory": "256Mi"}},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5, "timeoutSeconds": 1,
                           "successThreshold": 1, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"mountPath": "/workspace", "name": "workspace"},
                         {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                          "name": "kube-api-access-7xk2p", "readOnly": True}],
    }  # fmt: skip
    managed = {
        "f:metadata": {"f:labels": {f"f:{k}": {} for k in labels},
                       "f:ownerReferences": {'k:{"uid":"9a1f"}': {}}},
        "f:spec": {"f:containers": {'k:{"name":"picod"}': {
            f"f:{k}": {} for k in ("env", "image", "ports", "resources", "readinessProbe")}}},
    }  # fmt: skip
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "python-sandbox-x7k2p",
            "namespace": NAMESPACE,
            "uid": "3b0e8d6c-9f4a-4c3e-8b1d-7a6e5f4d3c2b",
            "resourceVersion": "912345",
            "creationTimestamp": "2026-11-29T03:00:00Z",
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/default-container": "picod"},
            "ownerReferences": [{"apiVersion": kinds.SANDBOX.api_version, "kind": "Sandbox",
                                 "name": "python-sandbox-x7k2p", "uid": "9a1f",
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "agent-sandbox-controller", "operation": "Update",
                               "apiVersion": "v1", "time": "2026-11-29T03:00:00Z",
                               "fieldsType": "FieldsV1", "fieldsV1": managed}],
        },
        "spec": {
            "containers": [container],
            "initContainers": [{**copy.deepcopy(container), "name": "init-workspace"}],
            "volumes": [{"name": "workspace", "emptyDir": {}},
                        {"name": "kube-api-access-7xk2p", "projected": {"sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt",
                                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "runtimeClassName": "kata",
            "serviceAccountName": "default",
            "nodeName": "worker-3",
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {"phase": "Running", "podIP": "10.244.3.17", "hostIP": "172.18.0.5",
                   "qosClass": "Burstable",
                   "conditions": [{"type": t, "status": "True",
                                   "lastTransitionTime": "2026-11-29T03:00:05Z"}
                                  for t in ("Initialized", "Ready", "ContainersReady",
                                            "PodScheduled")]},
    }  # fmt: skip
    return pod


def claimed_pod_update() -> bytes:
    return review(
        kinds.POD, "UPDATE", warm_pool_pod(claimed=True), old=warm_pool_pod(claimed=False)
    )


CLAIM = {
    "apiVersion": kinds.SANDBOX_CLAIM.api_version,
    "kind": kinds.SANDBOX_CLAIM.kind,
    "metadata": {"name": "python-sandbox-a1b2c3d4", "namespace": NAMESPACE, "uid": CLAIM_UID,
                 "labels": {kinds.LABEL_SESSION_ID: "session-42",
                            kinds.LABEL_SANDBOX_NAME: "python-sandbox-a1b2c3d4"}},
    "spec": {"sandboxTemplateRef": {"name": "python-sandbox"}},
}  # fmt: skip

BARE_ANSWER = orjson.dumps(
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
     "response": {"uid": "0b8e3e2a-6c55-4f4e-bd0c-3a1a4e1f9d10", "allowed": True}}
)  # fmt: skip


# --- the servers (run in child processes) ----------------------------------------


class BenchClaims:
    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        return CLAIM if (namespace, uid) == (NAMESPACE, CLAIM_UID) else None


def run_webhook(port: int, cert_dir: Path, http: str) -> int:
    from webhook.api.settings import Settings
    from webhook.server.serve import serve

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(
        settings=Settings(), host=LOOPBACK, port=port, cert_dir=cert_dir, dns_names=[],
        claims=BenchClaims(), http_implementation=http,
    )  # fmt: skip


def run_bare(port: int, cert_dir: Path, http: str) -> int:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from webhook.server.serve import run_server, uvicorn_config
    from webhook.tls.certs import CertificateReloader

    async def bare(request: Request) -> Response:
        await request.body()
        return Response(BARE_ANSWER, media_type="application/json")

    reloader = CertificateReloader(cert_dir, dns_names=[])
    reloader.check(at=datetime.now(UTC))
    app = Starlette(routes=[Route("/bare", bare, methods=["POST"])])
    config = uvicorn_config(app, host=LOOPBACK, port=port, ssl_context=reloader.context, http=http)
    return 0 if run_server(config) else 1


# --- load: wrk for throughput -------------------------------------------------------

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


# --- load: a paced client for latency at a fixed rate --------------------------------


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


# --- where the time goes, in process (no TLS, no sockets) -------------------------------


async def call_asgi(app: Any, path: str, body: bytes) -> None:
    """One POST through an ASGI app, as uvicorn would make it."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {
        "type": "http", "method": "POST", "path": path, "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    await app(scope, receive, send)


def microseconds_per_call(function: Any, count: int) -> float:
    """CPU time per call: steadier than wall time on a machine others are using."""
    for _ in range(count // 10):
        function()
    started = time.process_time()
    for _ in range(count):
        function()
    return (time.process_time() - started) / count * 1e6


def breakdown(count: int, profile: bool) -> None:
    """Microseconds per request for each layer, and optionally a pyinstrument profile."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from webhook.admission import decide
    from webhook.api.settings import Settings
    from webhook.server.app import create_app

    logging.basicConfig(level="INFO", filename=os.devnull)  # log lines formatted, then dropped
    settings = Settings()
    claims = BenchClaims()
    app = create_app(settings=settings, claims=claims)

    async def bare(request: Request) -> Response:
        await request.body()
        return Response(BARE_ANSWER, media_type="application/json")

    bare_app = Starlette(routes=[Route("/bare", bare, methods=["POST"])])
    loop = asyncio.new_event_loop()
    bodies = {"validate": code_interpreter_create(), "mutate": claimed_pod_update()}
    decisions = {
        "validate": lambda request: decide.validate(request, settings=settings),
        "mutate": lambda request: decide.mutate(request, settings=settings, claims=claims),
    }
    print(f"{'endpoint':9} {'bare app':>9} {'decode':>7} {'decision':>9} {'our app':>8} "
          f"{'our app, decision stubbed':>26}   (CPU microseconds per request, in process)")  # fmt: skip
    for name, body in bodies.items():
        _breakdown_row(name, body, app, bare_app, decisions[name], loop, count, profile)
    loop.close()


def _breakdown_row(  # noqa: PLR0917
    name: str, body: bytes, app: Any, bare_app: Any, decide: Any,
    loop: asyncio.AbstractEventLoop, count: int, profile: bool,
) -> None:  # fmt: skip
    from webhook.admission import decide, response

    request = orjson.loads(body)["request"]
    path = f"/{name}"

    def through(target: Any, route: str) -> Any:
        return lambda: loop.run_until_complete(call_asgi(target, route, body))

    bare_us = microseconds_per_call(through(bare_app, "/bare"), count)
    decode_us = microseconds_per_call(lambda: orjson.loads(body), count)
    decision_us = microseconds_per_call(lambda: decide(request), count)
    full_us = microseconds_per_call(through(app, path), count)
    real = getattr(decide, name)
    setattr(decide, name, lambda request, **_: response.allowed(request["uid"]))
    try:
        stubbed_us = microseconds_per_call(through(app, path), count)
    finally:
        setattr(decide, name, real)
    print(f"{name:9} {bare_us:9.0f} {decode_us:7.0f} {decision_us:9.0f} {full_us:8.0f} "
          f"{stubbed_us:26.0f}")  # fmt: skip
    if not profile:
        return
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument: pip install pyinstrument", file=sys.stderr)
        return
    profiler = Profiler(interval=0.0001)
    profiler.start()
    run = through(app, path)
    for _ in range(count):
        run()
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


# --- the run ----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    path: str
    body_file: Path
    pid: int


@contextlib.contextmanager
def started_servers(work: Path, http: str, pin: bool) -> Iterator[dict[str, tuple[int, int]]]:
    """Role -> (port, pid) of each server."""
    ports: dict[str, tuple[int, int]] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for role in ("webhook", "bare"):
            port = _free_port()
            log = (work / f"{role}-{http}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", role, "--port", str(port),
                 "--cert-dir", str(work / "certs"), "--http", http],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            if pin:
                os.sched_setaffinity(process.pid, {SERVER_CORE})
            processes.append(process)
            ports[role] = (port, process.pid)
            _wait_for_port(port, process, work / f"{role}-{http}.log")
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start: {log.read_text()}")


def check_answers(targets: Sequence[Target], ca_file: Path) -> None:
    """Benchmark the path we mean to: validate allows, mutate patches, bare answers."""
    import http.client

    for target in targets:
        connection = http.client.HTTPSConnection(
            "localhost", target.port, context=ssl.create_default_context(cafile=str(ca_file))
        )
        connection.request(
            "POST", target.path, body=target.body_file.read_bytes(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        answer = connection.getresponse()
        payload = orjson.loads(answer.read())
        connection.close()
        response = payload["response"]
        if answer.status != 200 or not response["allowed"]:
            raise RuntimeError(f"{target.name}: unexpected answer {payload}")
        if target.name == "mutate":
            patch = orjson.loads(base64.b64decode(response["patch"]))
            if not any(op["path"].endswith("sandbox-name") for op in patch):
                raise RuntimeError(f"mutate: the patch adds no sandbox-name label: {patch}")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {LOAD_CORE})  # wrk and the paced client inherit this core
    work = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    bodies = {"validate": code_interpreter_create(), "mutate": claimed_pod_update(),
              "bare": claimed_pod_update()}  # fmt: skip
    # The bare endpoint gets the larger body, so it pays the same transfer cost as mutate.
    for name, body in bodies.items():
        (work / f"{name}.json").write_bytes(body)
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    paced_script = work / "paced.lua"
    paced_script.write_text(WRK_PACED_SCRIPT)
    print(f"pinning: load on core {LOAD_CORE}, servers on core {SERVER_CORE}" if pin
          else "pinning: fewer than 2 cores, not pinned")  # fmt: skip
    print(f"bodies: validate {len(bodies['validate'])} B, mutate {len(bodies['mutate'])} B "
          f"(pod object {len(orjson.dumps(warm_pool_pod(claimed=True)))} B), "
          f"bare {len(bodies['bare'])} B")  # fmt: skip

    report: dict[str, Any] = {"args": vars(args), "pinned": pin, "implementations": {}}
    ca_file = work / "certs" / "ca.crt"
    with contextlib.ExitStack() as stack:
        # Every implementation's servers run at once and rounds go round all of
        # them, so a burst of someone else's load hits every column alike.
        targets: list[tuple[str, Target]] = []
        for http in args.http:
            ports = stack.enter_context(started_servers(work, http, pin))
            (bare_port, bare_pid), (webhook_port, webhook_pid) = ports["bare"], ports["webhook"]
            targets += [
                (http, Target("bare", bare_port, "/bare", work / "bare.json", bare_pid)),
                (http, Target("validate", webhook_port, "/validate", work / "validate.json",
                              webhook_pid)),
                (http, Target("mutate", webhook_port, "/mutate", work / "mutate.json",
                              webhook_pid)),
            ]  # fmt: skip
        check_answers([target for _, target in targets], ca_file)
        for _, target in targets:  # warm up: imports, caches, first connections
            run_wrk(f"https://{LOOPBACK}:{target.port}{target.path}", target.body_file, script,
                    connections=args.connections, seconds=1)  # fmt: skip
        throughput: dict[tuple[str, str], list[WrkResult]] = {(h, t.name): [] for h, t in targets}
        for round_number in range(args.rounds):
            for http, target in targets:
                result = run_wrk(
                    f"https://{LOOPBACK}:{target.port}{target.path}", target.body_file, script,
                    connections=args.connections, seconds=args.duration, server_pid=target.pid,
                )  # fmt: skip
                throughput[http, target.name].append(result)
                print(f"  round {round_number + 1} {http:9} {target.name:8} "
                      f"{result.requests_per_second:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                      f"p99 {result.p99_ms:6.2f} ms  server CPU {result.server_cpu_us_per_request:5.0f} us/req  "
                      f"errors {result.errors}", flush=True)  # fmt: skip
        paced: dict[tuple[str, str], list[PacedResult]] = {(h, t.name): [] for h, t in targets}
        wrk_paced: dict[tuple[str, str], list[WrkResult]] = {(h, t.name): [] for h, t in targets}
        for round_number in range(args.fixed_rounds):
            for http, target in targets:
                result_paced = asyncio.run(paced_load(
                    target.port, target.path, target.body_file.read_bytes(), ca_file,
                    rate=args.rate, seconds=args.fixed_seconds, connections=args.paced_connections,
                ))  # fmt: skip
                paced[http, target.name].append(result_paced)
                print(f"  fixed {args.rate:.0f}/s round {round_number + 1} {http:9} "
                      f"{target.name:8} p50 {percentile(result_paced.latency_from_due_ms, 0.5):6.2f} ms  "
                      f"p99 {percentile(result_paced.latency_from_due_ms, 0.99):6.2f} ms  "
                      f"(from send {percentile(result_paced.latency_from_send_ms, 0.99):6.2f} ms)  "
                      f"errors {result_paced.errors}", flush=True)  # fmt: skip
                result_wrk = run_wrk(
                    f"https://{LOOPBACK}:{target.port}{target.path}", target.body_file,
                    paced_script, connections=args.paced_connections, seconds=args.fixed_seconds,
                    delay_ms=args.paced_connections / args.rate * 1000,
                )  # fmt: skip
                wrk_paced[http, target.name].append(result_wrk)
                print(f"  wrk paced round {round_number + 1} {http:9} {target.name:8} "
                      f"{result_wrk.requests_per_second:6.0f} req/s  p50 {result_wrk.p50_ms:6.2f} ms  "
                      f"p99 {result_wrk.p99_ms:6.2f} ms  errors {result_wrk.errors}", flush=True)  # fmt: skip
    for http in args.http:
        report["implementations"][http] = summarize(
            {name: rounds for (h, name), rounds in throughput.items() if h == http},
            {name: rounds for (h, name), rounds in paced.items() if h == http},
            {name: rounds for (h, name), rounds in wrk_paced.items() if h == http},
        )
    print_table(report, args)
    shutil.rmtree(work, ignore_errors=True)
    return report


def summarize(
    throughput: Mapping[str, list[WrkResult]],
    paced: Mapping[str, list[PacedResult]],
    wrk_paced: Mapping[str, list[WrkResult]],
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    bare_rounds = throughput["bare"]
    for name, rounds in throughput.items():
        ratios = [
            r.requests_per_second / b.requests_per_second
            for r, b in zip(rounds, bare_rounds, strict=True)
        ]
        fixed = paced[name]
        summary[name] = {
            "rps_median": statistics.median(r.requests_per_second for r in rounds),
            "rps_rounds": [round(r.requests_per_second) for r in rounds],
            "server_cpu_us_per_request_median": statistics.median(
                r.server_cpu_us_per_request for r in rounds),
            # Requests one core can serve, relative to bare: the ratio of CPU
            # costs, which holds up better than req/s when the machine is busy.
            "cpu_ratio_to_bare_median": statistics.median(
                b.server_cpu_us_per_request / r.server_cpu_us_per_request
                for r, b in zip(rounds, bare_rounds, strict=True)),
            "ratio_to_bare_median": statistics.median(ratios),
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


def print_table(report: Mapping[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"wrk: {args.rounds} rounds x {args.duration:g} s, {args.connections} connections, "
          f"1 thread; fixed rate: {args.fixed_rounds} rounds x {args.fixed_seconds:g} s at "
          f"{args.rate:g} req/s over {args.paced_connections} connections. Medians over rounds.")  # fmt: skip
    header = (f"{'http':9} {'endpoint':9} {'req/s':>7} {'x bare':>6} {'cpu us':>6} "
              f"{'x bare':>6} {'sat p50':>7} {'sat p99':>7} {'@rate p50':>9} {'@rate p99':>9} "
              f"{'wrk@rate p99':>12} {'err':>4}  goal")  # fmt: skip
    print(header)
    print("-" * len(header))
    for http, summary in report["implementations"].items():
        for name, row in summary.items():
            goal = ""
            if name != "bare":
                ok_ratio = row["ratio_to_bare_median"] >= GOAL_THROUGHPUT_RATIO
                ok_p99 = row["fixed_p99_ms_median"] < GOAL_P99_MS
                goal = (f"{'ok' if ok_ratio else 'MISS'} >= {GOAL_THROUGHPUT_RATIO}x, "
                        f"{'ok' if ok_p99 else 'MISS'} p99 < {GOAL_P99_MS:g} ms")  # fmt: skip
            print(f"{http:9} {name:9} {row['rps_median']:7.0f} {row['ratio_to_bare_median']:6.2f} "
                  f"{row['server_cpu_us_per_request_median']:6.0f} "
                  f"{row['cpu_ratio_to_bare_median']:6.2f} "
                  f"{row['saturated_p50_ms_median']:6.2f}m {row['saturated_p99_ms_median']:6.2f}m "
                  f"{row['fixed_p50_ms_median']:8.2f}m {row['fixed_p99_ms_median']:8.2f}m "
                  f"{row['wrk_paced_p99_ms_median']:11.2f}m {row['errors']:4d}  {goal}")  # fmt: skip
    print("req/s and its 'x bare': wrk throughput; 'cpu us' and its 'x bare': server CPU time "
          "per request and the capacity ratio it implies (steadier on a busy machine); "
          "'sat' = wrk latency at saturation; '@rate' = the paced client, latency from when "
          "each request was due; 'wrk@rate' = wrk paced to about the same rate, latency from the "
          "send; m = milliseconds")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="wrk rounds per endpoint")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk round")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate, requests/s")
    parser.add_argument("--fixed-rounds", type=int, default=3)
    parser.add_argument("--fixed-seconds", type=float, default=5.0)
    parser.add_argument("--paced-connections", type=int, default=8)
    parser.add_argument(
        "--http", nargs="+", default=["httptools", "h11"], choices=["h11", "httptools"],
        help="uvicorn HTTP implementations to compare",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--breakdown", action="store_true",
        help="only time each layer in process (no TLS, no wrk): where the time goes",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="with --breakdown: pyinstrument")
    parser.add_argument("--serve", choices=["webhook", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve == "webhook":
        return run_webhook(args.port, args.cert_dir, args.http[0])
    if args.serve == "bare":
        return run_bare(args.port, args.cert_dir, args.http[0])

    if args.breakdown:
        breakdown(count=2000, profile=args.profile)
        return 0
    if shutil.which("wrk") is None:
        print("bench/admission.py needs wrk (HTTP load generator): "
              "apt-get update && apt-get install -y wrk", file=sys.stderr)  # fmt: skip
        return 2
    if args.rounds * args.duration * len(args.http) * 3 > 1800:
        parser.error("more than 30 minutes of wrk load: lower --rounds or --duration")
    report = benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
