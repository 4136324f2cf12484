"""What our webhooks add to the requests they intercept, measured through kube-apiserver.

    python bench/apiserver.py                      # 50 and 200 req/s, 3 rounds, ~6 minutes
    python bench/apiserver.py --rates 200 --rounds 5 --seconds 8

A control plane (etcd + kube-apiserver) with deploy/'s CRDs and RBAC, and
``python -m webhook run`` under deploy/'s service account, serving deploy/'s webhook
configurations (pointed at its loopback port, as the e2e tier does). Three requests, as
the clients that send them in a cluster would:

- **claim create**: a SandboxClaim CREATE (AgentCube's workload manager), which
  ``claims.netpol.agentcube.io`` mutates (our label into additionalPodMetadata);
- **pod update**: a claimed warm-pool pod's UPDATE (a merge patch of an annotation, as
  agent-sandbox's controllers write), through ``pods.netpol.agentcube.io``;
- **pod create**: a direct-path sandbox pod's CREATE, which ``pod-gates`` gates.

Each at a steady rate, open loop (a request is sent when due, whatever the answers
before it), latency counted from when it was due. Every round measures each request
under three configurations, in an order that turns, so all meet the same machine:

- **without**: no webhook configurations: the API server's own cost;
- **bare**: the same configurations (same rules, selectors and match conditions) calling
  a bare HTTPS endpoint that decodes the AdmissionReview and allows it, no patch, same
  uvicorn settings: what calling any webhook costs the API server;
- **with**: ours, calling ``run``.

Medians over rounds; what our webhooks add (with - without) and how it splits: the API
server's webhook machinery (bare - without), and our server over a bare one (with -
bare), beside our server's own time per request from its
``agentcube_netpol_admission_duration_seconds``. Nothing here asserts a threshold.
Loopback only; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import (
    LOOPBACK,
    WEBHOOK_CONFIGURATION_KINDS,
    ControlPlane,
    free_loopback_ports,
    load_manifests,
    point_webhooks_at,
    stop_process_group,
)
from lib.load import percentile
from reconciler import DEPLOY_DIR, cluster, create_namespace, run_process

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

GOAL_ADDED_P50_MS = 0.5
GOAL_ADDED_P99_MS = 1.0
NS = "bench-admission"
TEMPLATE = "py"
CLAIM_UID = "3f1c2a7e-0000-4000-8000-000000000001"
PODS_TO_UPDATE = 64
CLIENT_THREADS = 32


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": kinds.SANDBOX_CLAIM.api_version,
        "kind": kinds.SANDBOX_CLAIM.kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {kinds.LABEL_SESSION_ID: name},
        },
        "spec": {"sandboxTemplateRef": {"name": TEMPLATE}},
    }


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A sandbox pod of the size agent-sandbox makes (containers, env, probes)."""
    env = [{"name": f"VAR_{i}", "value": "x" * 24} for i in range(40)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "code-interpreter",
                    "image": "python:3.12",
                    "env": env,
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                }
            ]
        },
    }


def claimed_pod(name: str) -> dict[str, Any]:
    return pod(
        name,
        {
            kinds.LABEL_CLAIM_UID: CLAIM_UID,
            kinds.LABEL_SANDBOX_NAME: "claimed",
            kinds.LABEL_TEMPLATE_REF_HASH: "a1b2c3d4",
        },
    )


def direct_pod(name: str) -> dict[str, Any]:
    return pod(name, {kinds.LABEL_SANDBOX_NAME: name, kinds.LABEL_WORKLOAD_NAME: TEMPLATE})


class Requests:
    """The three requests, each a callable of a sequence number."""

    def __init__(self, rest: Rest) -> None:
        self.rest = rest
        self.round = 0

    def claim_create(self, i: int) -> None:
        self.rest.create(kinds.SANDBOX_CLAIM, NS, claim(f"c{self.round}-{i}"))

    def pod_update(self, i: int) -> None:
        patch = {"metadata": {"annotations": {"bench.agentcube.io/seen": str(i)}}}
        name = f"claimed-{i % PODS_TO_UPDATE}"
        self.rest.patch(kinds.POD, NS, name, patch, patch_type="merge")

    def pod_create(self, i: int) -> None:
        self.rest.create(kinds.POD, NS, direct_pod(f"d{self.round}-{i}"))


def paced(call: Callable[[int], None], rate: float, seconds: float) -> tuple[list[float], int]:
    """``call`` at ``rate`` per second for ``seconds``, open loop: latencies in ms from when
    each was due, and the count of errors."""
    count = int(rate * seconds)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def one(i: int) -> None:
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            call(i)
        except errors.ApiError:
            with lock:
                failures[0] += 1
            return
        with lock:
            latencies.append((time.monotonic() - due) * 1000)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for i in range(count):
            pool.submit(one, i)
    return latencies, failures[0]


class Webhooks:
    """deploy/'s webhook configurations, pointed at ``run`` or at the bare endpoint, or
    none."""

    def __init__(self, control_plane: ControlPlane, targets: dict[str, tuple[str, bytes]]) -> None:
        self.control_plane = control_plane
        manifests = [
            m
            for m in load_manifests(DEPLOY_DIR, control_plane=control_plane)
            if m["kind"] in WEBHOOK_CONFIGURATION_KINDS
        ]
        self.configurations = {
            config: [point_webhooks_at(m, base_url=url, ca_pem=ca) for m in manifests]
            for config, (url, ca) in targets.items()
        }
        if "bare" in self.configurations:
            for configuration in self.configurations["bare"]:
                for webhook in configuration["webhooks"]:
                    path = webhook["clientConfig"]["url"].rsplit("/", 1)[1]
                    webhook["clientConfig"]["url"] = webhook["clientConfig"]["url"].replace(
                        f"/{path}", "/bare"
                    )

    def use(self, config: str) -> None:
        if config == "without":
            self.remove()
            return
        items = self.configurations[config]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        self.control_plane.kubectl("apply", "-f", "-", input=body)
        time.sleep(2.0)  # the API server's webhook informers pick them up

    def remove(self) -> None:
        for kind in WEBHOOK_CONFIGURATION_KINDS:
            self.control_plane.kubectl(
                "delete", kind.lower(), "agentcube-netpol", "--ignore-not-found"
            )
        time.sleep(2.0)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-apiserver-") as tmp,
        cluster() as (
            control_plane,
            service_account,
        ),
    ):
        rest = Rest.from_config(control_plane.admin_kubeconfig, max_connections=CLIENT_THREADS + 4)
        create_namespace(rest, NS, with_interpreter=True)
        for i in range(PODS_TO_UPDATE):
            rest.create(kinds.POD, NS, claimed_pod(f"claimed-{i}"))
        with run_process(service_account, Path(tmp)) as run, bare_server(Path(tmp)) as bare:
            webhooks = Webhooks(
                control_plane,
                {
                    "with": (run.url, (run.cert_dir / "ca.crt").read_bytes()),
                    "bare": bare,
                },
            )
            requests = Requests(rest)
            calls = {
                "claim create": requests.claim_create,
                "pod update": requests.pod_update,
                "pod create": requests.pod_create,
            }
            rounds: list[dict[str, Any]] = []
            for rate in args.rates:
                for number in range(args.rounds):
                    turn = number % len(CONFIGS)
                    for config in CONFIGS[turn:] + CONFIGS[:turn]:
                        webhooks.use(config)
                        for name, call in calls.items():
                            requests.round += 1
                            before = server_seconds(run.metrics())
                            called_before = webhook_calls(control_plane)
                            latencies, failed = paced(call, rate, args.seconds)
                            after = server_seconds(run.metrics())
                            called_after = webhook_calls(control_plane)
                            served = after[1] - before[1]
                            calls_made = called_after[1] - called_before[1]
                            row = {
                                "rate": rate,
                                "round": number,
                                "config": config,
                                "request": name,
                                "p50_ms": percentile(latencies, 0.50),
                                "p99_ms": percentile(latencies, 0.99),
                                "failed": failed,
                                "server_ms": (after[0] - before[0]) / served * 1000
                                if served
                                else 0.0,
                                "server_requests": served,
                                # The API server's own measure of its webhook calls.
                                "calls_per_request": calls_made / len(latencies)
                                if latencies
                                else 0.0,
                                "call_ms": (called_after[0] - called_before[0]) / calls_made * 1000
                                if calls_made
                                else 0.0,
                            }
                            rounds.append(row)
                            print(
                                f"  {rate:>4.0f}/s round {number} {config:<7} {name:<12} "
                                f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms"
                                + (f"  {failed} failed" if failed else "")
                                + (
                                    f"  (API server: {row['calls_per_request']:.1f} calls a"
                                    f" request, {row['call_ms']:.2f} ms each"
                                    if calls_made
                                    else ""
                                )
                                + (
                                    f"; run: {row['server_ms']:.2f} ms a review)"
                                    if served
                                    else ")"
                                    if calls_made
                                    else ""
                                ),
                                flush=True,
                            )
            results["rounds"] = rounds
            results["cpu_seconds_run"] = run.cpu_seconds()
    results["summary"] = summarize(results["rounds"], args.rates, list(calls))
    return results


CONFIGS = ("without", "bare", "with")


def webhook_calls(control_plane: ControlPlane) -> tuple[float, float]:
    """kube-apiserver's time in webhook calls so far (its
    ``apiserver_admission_webhook_admission_duration_seconds``: from sending the review to
    having the answer), and how many."""
    text = control_plane.kubectl("get", "--raw", "/metrics").stdout
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_admission_webhook_admission_duration_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("apiserver_admission_webhook_admission_duration_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def server_seconds(metrics: dict[str, float]) -> tuple[float, float]:
    """Our server's time answering AdmissionReviews so far, and how many."""
    total = sum(
        v
        for k, v in metrics.items()
        if k.startswith("agentcube_netpol_admission_duration_seconds_sum")
    )
    count = sum(
        v
        for k, v in metrics.items()
        if k.startswith("agentcube_netpol_admission_duration_seconds_count")
    )
    return total, count


@contextlib.contextmanager
def bare_server(work: Path) -> Iterator[tuple[str, bytes]]:
    """This script as the bare endpoint (``--serve-bare``): its URL and CA."""
    cert_dir = work / "bare-certs"
    port = free_loopback_ports(1)[0]
    log = work / "bare.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare", str(port), "--cert-dir", str(cert_dir)],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (cert_dir / "ca.crt").is_file() or not _answers(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"bare endpoint did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"https://{LOOPBACK}:{port}", (cert_dir / "ca.crt").read_bytes()
    finally:
        stop_process_group(process, name="bare", grace_s=5.0)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return False


def serve_bare(port: int, cert_dir: Path) -> int:
    """Allows every AdmissionReview: decodes it for its uid, answers, nothing else."""
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from webhook.server.serve import run_server, uvicorn_config
    from webhook.tls.certs import CertificateReloader

    async def bare(request: Request) -> Response:
        review = orjson.loads(await request.body())
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    reloader = CertificateReloader(cert_dir, dns_names=[])
    reloader.check(at=datetime.now(UTC))
    app = Starlette(routes=[Route("/bare", bare, methods=["POST"])])
    config = uvicorn_config(app, host=LOOPBACK, port=port, ssl_context=reloader.context)
    return 0 if run_server(config) else 1


def summarize(
    rounds: list[dict[str, Any]], rates: Sequence[float], requests: Sequence[str]
) -> list[dict[str, Any]]:
    summary = []
    print(
        "\n| rate | request | p50 without | added p50: any webhook (bare) | ours | ours over bare"
        " | p99 without | added p99: bare | ours | calls a request | a call, as the API server"
        " times it: bare | ours | run's own time a review |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in rates:
        for request in requests:

            def median(config: str, key: str, rate: float = rate, request: str = request) -> float:
                return statistics.median(
                    r[key]
                    for r in rounds
                    if (r["rate"], r["request"], r["config"]) == (rate, request, config)
                )

            row: dict[str, Any] = {"rate": rate, "request": request}
            for key in ("p50_ms", "p99_ms"):
                for config in CONFIGS:
                    row[f"{key}_{config}"] = median(config, key)
                row[f"added_{key}"] = row[f"{key}_with"] - row[f"{key}_without"]
                row[f"bare_{key}"] = row[f"{key}_bare"] - row[f"{key}_without"]
            row["server_ms"] = median("with", "server_ms")
            row["call_ms"] = median("with", "call_ms")
            row["bare_call_ms"] = median("bare", "call_ms")
            row["calls_per_request"] = median("with", "calls_per_request")
            summary.append(row)
            print(
                f"| {rate:.0f}/s | {request} | {row['p50_ms_without']:.2f} ms"
                f" | {row['bare_p50_ms']:+.2f} ms | **{row['added_p50_ms']:+.2f} ms**"
                f" | {row['added_p50_ms'] - row['bare_p50_ms']:+.2f} ms"
                f" | {row['p99_ms_without']:.2f} ms | {row['bare_p99_ms']:+.2f} ms"
                f" | **{row['added_p99_ms']:+.2f} ms** | {row['calls_per_request']:.1f}"
                f" | {row['bare_call_ms']:.2f} ms | {row['call_ms']:.2f} ms"
                f" | {row['server_ms']:.2f} ms |"
            )
    print(
        f"\ngoals: added p50 <= {GOAL_ADDED_P50_MS} ms, added p99 <= {GOAL_ADDED_P99_MS} ms at 200/s"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per request and config")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--cert-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.serve_bare, args.cert_dir)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": os.getloadavg(),
        **measure(args),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
