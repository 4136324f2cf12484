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
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from lib import load, procs, report
from lib.load import LOOPBACK, Target
from lib.report import Goals

from webhook.api import kinds

GOALS = Goals(throughput_ratio=0.5, p99_ms=5.0)
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
    from webhook.runtime.programs import admission_server
    from webhook.server.serve import Admission, Listen, Tls

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return admission_server(
        Admission(settings=Settings(), claims=BenchClaims()),
        Listen(host=LOOPBACK, port=port, http_implementation=http),
        Tls(cert_dir=cert_dir, dns_names=[]),
    ).run()


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
    _isolation_hold_row(count)


def _isolation_hold_row(count: int) -> None:
    """The pod-gates decision for a direct-path pod's CREATE, without and with the
    --isolation-canary init container (the gate alone is the baseline)."""
    from webhook.admission import decide
    from webhook.api.settings import Settings

    pod = warm_pool_pod(claimed=False)
    labels = pod["metadata"]["labels"]
    labels.pop(kinds.LABEL_WARM_POOL_SANDBOX)
    labels[kinds.LABEL_SANDBOX_NAME] = pod["metadata"]["name"]
    request = orjson.loads(review(kinds.POD, "CREATE", pod))["request"]
    gate = Settings()
    hold = Settings(isolation_canary=("10.96.0.10", 443), isolation_canary_image="netpol:1")
    claims = BenchClaims()
    gate_us = microseconds_per_call(
        lambda: decide.mutate(request, settings=gate, claims=claims), count
    )
    hold_us = microseconds_per_call(
        lambda: decide.mutate(request, settings=hold, claims=claims), count
    )
    print(f"direct-path pod CREATE decision: {gate_us:.0f} us with the gate, {hold_us:.0f} us "
          f"with the gate and the --isolation-canary init container ({hold_us / gate_us:.2f}x)")  # fmt: skip


def _breakdown_row(  # noqa: PLR0917
    name: str, body: bytes, app: Any, bare_app: Any, decision: Any,
    loop: asyncio.AbstractEventLoop, count: int, profile: bool,
) -> None:  # fmt: skip
    # ``decide`` is the module: the stubbed run replaces its function for a while.
    from webhook.admission import decide, response

    request = orjson.loads(body)["request"]
    path = f"/{name}"

    def through(target: Any, route: str) -> Any:
        return lambda: loop.run_until_complete(call_asgi(target, route, body))

    bare_us = microseconds_per_call(through(bare_app, "/bare"), count)
    decode_us = microseconds_per_call(lambda: orjson.loads(body), count)
    decision_us = microseconds_per_call(lambda: decision(request), count)
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


def server_commands(work: Path, http: str) -> dict[str, Callable[[int], list[str]]]:
    """This script again, as the webhook and as the bare server, on a given port."""

    def command(role: str) -> Callable[[int], list[str]]:
        return lambda port: [
            sys.executable, __file__, "--serve", role, "--port", str(port),
            "--cert-dir", str(work / "certs"), "--http", http,
        ]  # fmt: skip

    return {"webhook": command("webhook"), "bare": command("bare")}


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


def write_bodies(work: Path) -> dict[str, Path]:
    bodies = {"validate": code_interpreter_create(), "mutate": claimed_pod_update(),
              "bare": claimed_pod_update()}  # fmt: skip
    # The bare endpoint gets the larger body, so it pays the same transfer cost as mutate.
    for name, body in bodies.items():
        (work / f"{name}.json").write_bytes(body)
    print(f"bodies: validate {len(bodies['validate'])} B, mutate {len(bodies['mutate'])} B "
          f"(pod object {len(orjson.dumps(warm_pool_pod(claimed=True)))} B), "
          f"bare {len(bodies['bare'])} B")  # fmt: skip
    return {name: work / f"{name}.json" for name in bodies}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    pin = procs.pin_load_to_its_core()  # wrk and the paced client inherit the load core
    print(f"pinning: load on core {procs.LOAD_CORE}, servers on core {procs.SERVER_CORE}" if pin
          else "pinning: fewer than 2 cores, not pinned")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    bodies = write_bodies(work)
    script, paced_script = load.write_wrk_scripts(work)
    ca_file = work / "certs" / "ca.crt"
    with contextlib.ExitStack() as stack:
        # Every implementation's servers run at once and rounds go round all of
        # them, so a burst of someone else's load hits every column alike.
        targets: list[Target] = []
        for http in args.http:
            (work / http).mkdir()
            servers = stack.enter_context(
                procs.started_servers(server_commands(work, http), log_dir=work / http, pin=pin)
            )
            bare, webhook = servers["bare"], servers["webhook"]
            targets += [
                Target(http, "bare", bare.port, "/bare", bodies["bare"], bare.pid),
                Target(
                    http, "validate", webhook.port, "/validate", bodies["validate"], webhook.pid
                ),
                Target(http, "mutate", webhook.port, "/mutate", bodies["mutate"], webhook.pid),
            ]
        check_answers(targets, ca_file)
        load.warm_up(targets, script, connections=args.connections)
        throughput = load.throughput_rounds(
            targets, script, rounds=args.rounds, seconds=args.duration, connections=args.connections
        )
        paced, wrk_paced = load.fixed_rate_rounds(
            targets, paced_script, ca_file, rounds=args.fixed_rounds, seconds=args.fixed_seconds,
            rate=args.rate, connections=args.paced_connections,
        )  # fmt: skip
    implementations = {
        http: report.summarize(
            load.of_group(throughput, http),
            load.of_group(paced, http),
            load.of_group(wrk_paced, http),
            baseline="bare",
        )
        for http in args.http
    }
    report.print_table(
        implementations,
        heading=f"wrk: {args.rounds} rounds x {args.duration:g} s, {args.connections} connections, "
        f"1 thread; fixed rate: {args.fixed_rounds} rounds x {args.fixed_seconds:g} s at "
        f"{args.rate:g} req/s over {args.paced_connections} connections. Medians over rounds.",
        baseline="bare",
        goals=GOALS,
    )
    shutil.rmtree(work, ignore_errors=True)
    return {"args": vars(args), "pinned": pin, "implementations": implementations}


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
