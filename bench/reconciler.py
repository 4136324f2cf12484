"""Reconciler benchmarks (not a test): burst, latency and memory of ``agentcube-netpol run``.

    python bench/reconciler.py burst     # 1,000 Sandboxes at once vs a bare client's 1,000 creates
    python bench/reconciler.py latency   # 20 Sandboxes/s: create answered -> policy ADDED
    python bench/reconciler.py memory    # VmRSS of run with 10,000 sandboxes, pods, policies
    python bench/reconciler.py domains   # 1,000 sandboxes share a name; its address rotates
    python bench/reconciler.py all

Each command starts its own control plane (etcd + kube-apiserver from the build cache,
no kube-controller-manager, no webhook configurations: Sandbox creates go through no
webhook, and pods are created without the scheduling gate), installs deploy/crds and
deploy/'s RBAC, and starts ``python -m webhook run`` as a subprocess under deploy/'s
service account (a client-certificate user of that name, as tests/e2e/deployed.py does).

Every time is read in this process from its own watch of NetworkPolicies (one
monotonic clock, no polling). The machine is shared: rounds are interleaved with
their baseline and medians and ratios reported. Nothing here asserts a threshold.
Only loopback addresses are used; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import (
    LOOPBACK,
    ControlPlane,
    die_with_parent,
    find_binaries,
    free_loopback_ports,
    install_crds,
    is_healthy,
    load_manifests,
    log_tail,
    stop_process_group,
    tls_context,
)
from agentcube_netpol_dev.testdns import DnsServer
from lib.load import percentile, process_cpu_seconds

from webhook.api import kinds
from webhook.api.kinds import Kind
from webhook.api.settings import Settings
from webhook.kube.errors import Gone
from webhook.kube.rest import Rest
from webhook.policy.builder import build_network_policy
from webhook.policy.domains import domain_entries, domain_set_key
from webhook.reconciler.controller import WORKERS
from webhook.reconciler.domainplan import selected_names

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
LEASE_NAMESPACE = "agentcube-netpol-system"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{LEASE_NAMESPACE}:agentcube-netpol"
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{LEASE_NAMESPACE}")
RBAC_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)
WORKLOAD = "py"
RESTRICTED = {
    "mode": "Restricted",
    "egress": [{"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 443}]}],
}
NAMESPACE = Kind("", "v1", "Namespace", "namespaces")  # cluster-scoped
GOAL_BURST_RATIO = 1.5
GOAL_P99_S = 1.0
GOAL_RSS_MB = 200.0
RUN_START_TIMEOUT_S = 60.0
SYNC_TIMEOUT_S = 600.0


# --- objects, as tests/e2e/test_reconciler.py builds them ---------------------------------


def interpreter(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": kinds.CODE_INTERPRETER.api_version,
        "kind": "CodeInterpreter",
        "metadata": {"name": WORKLOAD, "namespace": ns},
        "spec": {"template": {"image": "python:3.12", "networkPolicy": RESTRICTED}},
    }


def sandbox(ns: str, name: str) -> dict[str, Any]:
    """A Sandbox as AgentCube's workload manager creates it (direct path)."""
    return {
        "apiVersion": kinds.SANDBOX.api_version,
        "kind": "Sandbox",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {kinds.LABEL_WORKLOAD_NAME: WORKLOAD, kinds.LABEL_SESSION_ID: "s-1"},
        },
        "spec": {
            "podTemplate": {
                "metadata": {
                    "labels": {kinds.LABEL_SANDBOX_NAME: name, kinds.LABEL_SESSION_ID: "s-1"}
                },
                "spec": {"containers": [{"name": "main", "image": "python:3.12"}]},
            }
        },
    }


def sandbox_pod(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The pod agent-sandbox's Sandbox controller creates for a Sandbox."""
    metadata = owner["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": owner["spec"]["podTemplate"]["metadata"]["labels"],
            "ownerReferences": [
                {
                    "apiVersion": kinds.SANDBOX.api_version,
                    "kind": "Sandbox",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]},
    }


def bare_policy(ns: str, name: str) -> dict[str, Any]:
    """The NetworkPolicy the reconciler would write for ``sandbox(ns, name)``."""
    owner = {
        "apiVersion": kinds.SANDBOX.api_version,
        "kind": "Sandbox",
        "name": name,
        "uid": f"00000000-0000-4000-8000-{abs(hash((ns, name))) % 10**12:012d}",
    }
    built = build_network_policy(
        RESTRICTED, sandbox=name, namespace=ns, settings=Settings(), owner=owner
    )
    assert built is not None
    return built


def names(count: int, prefix: str = "py") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


# --- the cluster and the process under test -----------------------------------------------


@contextlib.contextmanager
def cluster() -> Iterator[tuple[ControlPlane, Path]]:
    """A control plane with deploy/'s CRDs and RBAC; yields it and the service account's
    kubeconfig."""
    with ControlPlane(binaries=find_binaries(os.environ)) as control_plane:
        install_crds(control_plane, DEPLOY_DIR / "crds")
        rbac = [
            m
            for m in load_manifests(DEPLOY_DIR, control_plane=control_plane)
            if m["kind"] in RBAC_KINDS
        ]
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
        )
        yield (
            control_plane,
            control_plane.mint_user(SERVICE_ACCOUNT_USER, groups=SERVICE_ACCOUNT_GROUPS),
        )


class RunProcess:
    """``python -m webhook run`` on a loopback port, ready when /readyz says its caches synced."""

    def __init__(self, kubeconfig: Path, work: Path, *extra: str, code: Path = REPO_ROOT) -> None:
        self.code = code
        self.port = free_loopback_ports(1)[0]
        self.cert_dir = work / f"certs-{self.port}"
        self.log_path = work / f"run-{self.port}.log"
        argv = [
            sys.executable, "-m", "webhook", "run",
            f"--host={LOOPBACK}", f"--port={self.port}", f"--cert-dir={self.cert_dir}",
            f"--kubeconfig={kubeconfig}", f"--lease-namespace={LEASE_NAMESPACE}", *extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (only a prctl call)
                cwd=code,  # python -m webhook imports the package of this checkout
            )
        deadline = time.monotonic() + RUN_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"run exited:\n{log_tail(self.log_path)}")
            if (self.cert_dir / "ca.crt").is_file() and is_healthy(
                f"{self.url}/readyz", self._tls()
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"run not ready after {RUN_START_TIMEOUT_S}s:\n{log_tail(self.log_path)}"
        )

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def _tls(self) -> Any:
        return tls_context(ca_file=self.cert_dir / "ca.crt", client=None)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.popen.pid)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", context=self._tls(), timeout=10) as r:
            text = r.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("agentcube_netpol_") and " " in line:
                key, value = line.rsplit(" ", 1)
                found[key] = float(value)
        return found

    def leading(self) -> bool:
        return self.metrics().get("agentcube_netpol_leader", 0.0) == 1.0

    def stop(self) -> None:
        stop_process_group(self.popen, name="run", grace_s=15.0)


@contextlib.contextmanager
def run_process(
    kubeconfig: Path, work: Path, *extra: str, code: Path = REPO_ROOT
) -> Iterator[RunProcess]:
    process = RunProcess(kubeconfig, work, *extra, code=code)
    try:
        wait_for(process.leading, "run to take the lease", 60.0)
        yield process
    finally:
        process.stop()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class PolicyWatch:
    """A watch of NetworkPolicies (one namespace, or all): when each name was first ADDED,
    on this process's monotonic clock. Resumes after the server ends the watch."""

    def __init__(self, rest: Rest, namespace: str | None = None, *, keep: bool = False) -> None:
        self._rest = rest
        self._namespace = namespace
        self.added: dict[tuple[str, str], float] = {}
        # With ``keep`` (for a watch of one namespace: by name): every event, (time, type,
        # name, object), and each name's latest object.
        self._keep = keep
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._stopping = False
        self._watch: Any = None
        listed = rest.list(kinds.NETWORK_POLICY, namespace=namespace, limit=1)
        self._version = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._follow, name="policy-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stopping:
            try:
                self._watch = self._rest.watch(
                    kinds.NETWORK_POLICY, namespace=self._namespace, resource_version=self._version
                )
                with self._watch as events:
                    for event in events:
                        at = time.perf_counter()
                        metadata = event["object"]["metadata"]
                        self._version = metadata.get("resourceVersion", self._version)
                        if self._keep and event["type"] != "BOOKMARK":
                            with self._changed:
                                name = metadata["name"]
                                self.events.append((at, event["type"], name, event["object"]))
                                if event["type"] == "DELETED":
                                    self.latest.pop(name, None)
                                else:
                                    self.latest[name] = event["object"]
                                self._changed.notify_all()
                        if event["type"] == "ADDED":
                            with self._changed:
                                key = (metadata["namespace"], metadata["name"])
                                self.added.setdefault(key, at)
                                self._changed.notify_all()
            except Gone:
                raise
            except Exception:  # a dropped watch: resume
                if not self._stopping:
                    time.sleep(0.2)

    def wait_count(self, namespace: str, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.count(namespace) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def wait_until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        """Waits until ``check`` (called under the watch's lock, after each event) holds."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def count(self, namespace: str) -> int:
        return sum(1 for ns, _ in list(self.added) if ns == namespace)

    def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.close()
        self._thread.join(timeout=5)


def client(control_plane: ControlPlane, threads: int) -> Rest:
    return Rest.from_config(control_plane.admin_kubeconfig, max_connections=threads + 4)


def create_namespace(rest: Rest, name: str, *, with_interpreter: bool) -> None:
    rest.create(
        NAMESPACE, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    if with_interpreter:
        rest.create(kinds.CODE_INTERPRETER, name, interpreter(name))


# --- 1. burst ------------------------------------------------------------------------------


def unowned_sandbox(ns: str, name: str) -> dict[str, Any]:
    """``sandbox(ns, name)`` without the workload-name label: not AgentCube's, so the
    reconciler leaves it alone (same size: the label is renamed, not dropped)."""
    body = sandbox(ns, name)
    labels = body["metadata"]["labels"]
    labels["bench.agentcube.io/workload-name"] = labels.pop(kinds.LABEL_WORKLOAD_NAME)
    return body


def owned_policy(created: Mapping[str, Any]) -> dict[str, Any]:
    """The NetworkPolicy the reconciler writes for a created Sandbox."""
    metadata = created["metadata"]
    built = build_network_policy(
        RESTRICTED,
        sandbox=metadata["name"],
        namespace=metadata["namespace"],
        settings=Settings(),
        owner=created,
    )
    assert built is not None
    return built


# What one client thread does per name, on each side of the burst.
BURST_SIDES: dict[str, str] = {
    "bare": "a bare client creates the 1,000 NetworkPolicies (the baseline)",
    "sandbox+policy": "a bare client does the API work of a zero-lag reconciler: each Sandbox "
    "(not AgentCube's, so run ignores it), then its NetworkPolicy (no Event)",
    "reconciler": "the client creates the 1,000 Sandboxes; run creates the NetworkPolicies",
}


def burst_task(rest: Rest, side: str, ns: str) -> Callable[[str], None]:
    def bare(name: str) -> None:
        rest.create(kinds.NETWORK_POLICY, ns, bare_policy(ns, name))

    def sandbox_and_policy(name: str) -> None:
        created = rest.create(kinds.SANDBOX, ns, unowned_sandbox(ns, name))
        rest.create(kinds.NETWORK_POLICY, ns, owned_policy(created))

    def reconciled(name: str) -> None:
        rest.create(kinds.SANDBOX, ns, sandbox(ns, name))

    return {"bare": bare, "sandbox+policy": sandbox_and_policy, "reconciler": reconciled}[side]


def timed_burst(
    task: Callable[[str], None], *, watch: PolicyWatch, ns: str, count: int, threads: int
) -> dict[str, float]:
    """``task`` for ``count`` names from ``threads`` threads; seconds from the first create
    until the watch has seen all ``count`` NetworkPolicies ADDED in ``ns``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(task, names(count)))
    creates_done = time.perf_counter()
    if not watch.wait_count(ns, count, 300.0):
        raise TimeoutError(f"{ns}: {watch.count(ns)} of {count} NetworkPolicies after 300s")
    last = max(at for (n, _), at in list(watch.added.items()) if n == ns)
    return {"seconds": last - started, "creates_seconds": creates_done - started}


def writes(run: RunProcess) -> dict[str, float]:
    return {
        key.split('"')[1]: value
        for key, value in run.metrics().items()
        if key.startswith("agentcube_netpol_writes_total{")
    }


def queue_drained(run: RunProcess) -> bool:
    return run.metrics().get("agentcube_netpol_workqueue_depth", 1.0) == 0.0


def burst_side(
    side: str, *, rest: Rest, watch: PolicyWatch, ns: str, args: argparse.Namespace,
    run: RunProcess | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One timed burst in a fresh namespace; with ``run``, its CPU time and writes too."""
    create_namespace(rest, ns, with_interpreter=side == "reconciler")
    cpu_before = run.cpu_seconds() if run else 0.0
    writes_before = writes(run) if run else {}
    result: dict[str, Any] = timed_burst(
        burst_task(rest, side, ns), watch=watch, ns=ns, count=args.count, threads=args.threads
    )
    if run is not None:
        wait_for(lambda: queue_drained(run), "the reconciler's queue to drain", 120.0)
        result["run cpu"] = run.cpu_seconds() - cpu_before
        result["run writes"] = {
            key: value - writes_before.get(key, 0.0)
            for key, value in writes(run).items()
            if value != writes_before.get(key, 0.0)
        }
    return result


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """Each round: the two baselines and one reconciler burst per ``--workers`` value, in an
    order that turns with the round; ``run`` is started afresh (and has listed what earlier
    rounds made, and drained its queue) before its burst, and stopped after."""
    rows: list[dict[str, Any]] = []
    sides = ["bare", "sandbox+policy", *(f"w{workers}" for workers in args.workers)]
    with cluster() as (control_plane, service_account), tempfile.TemporaryDirectory() as work:
        rest = client(control_plane, args.threads)
        watch = PolicyWatch(rest)
        try:
            for round_ in range(args.rounds):
                row: dict[str, Any] = {"round": round_ + 1}
                shift = round_ % len(sides)
                for side in sides[shift:] + sides[:shift]:  # each side first in turn
                    ns = f"burst-r{round_}-{side.replace('+', '-')}"
                    if side in BURST_SIDES:
                        row[side] = burst_side(side, rest=rest, watch=watch, ns=ns, args=args)
                        continue
                    with run_process(service_account, Path(work), f"--workers={side[1:]}") as run:
                        wait_for(lambda run=run: queue_drained(run), "run's first pass", 300.0)
                        row[side] = burst_side(
                            "reconciler", rest=rest, watch=watch, ns=ns, args=args, run=run
                        )
                rows.append(row)
                line = ", ".join(f"{side} {row[side]['seconds']:.2f}s" for side in sides)
                print(f"  round {round_ + 1}: {line}", flush=True)
                for side in sides[2:]:
                    r = row[side]
                    print(f"    {side}: its Sandbox creates {r['creates_seconds']:.2f}s, run CPU "
                          f"{r['run cpu']:.1f}s, writes {r['run writes']} -> x{r['seconds'] / row['bare']['seconds']:.2f} "
                          f"bare, x{r['seconds'] / row['sandbox+policy']['seconds']:.2f} sandbox+policy", flush=True)  # fmt: skip
        finally:
            watch.stop()

    def median(values: Iterator[float]) -> float:
        return statistics.median(list(values))

    summary = []
    for side in sides[2:]:
        summary.append({
            "workers": int(side[1:]),
            "bare s": median(r["bare"]["seconds"] for r in rows),
            "sandbox+policy s": median(r["sandbox+policy"]["seconds"] for r in rows),
            "reconciler s": median(r[side]["seconds"] for r in rows),
            "ratio": median(r[side]["seconds"] / r["bare"]["seconds"] for r in rows),
            "ratios": [round(r[side]["seconds"] / r["bare"]["seconds"], 2) for r in rows],
            "ratio to sandbox+policy": median(
                r[side]["seconds"] / r["sandbox+policy"]["seconds"] for r in rows),
            "tail s": median(r[side]["seconds"] - r[side]["creates_seconds"] for r in rows),
            "run cpu s": median(r[side]["run cpu"] for r in rows),
        })  # fmt: skip
    print(f"\nburst: {args.count} per round, {args.threads} client threads, medians of "
          f"{args.rounds} rounds; goal: reconciler / bare <= {GOAL_BURST_RATIO}")  # fmt: skip
    for side, meaning in BURST_SIDES.items():
        print(f"  {side}: {meaning}")
    print("  tail: from the last Sandbox create's answer to the last NetworkPolicy")
    print(f"{'workers':>7} {'bare s':>7} {'sbx+pol s':>9} {'reconciler s':>12} {'x bare':>6} "
          f"{'(rounds)':>16} {'x sbx+pol':>9} {'tail s':>6} {'run CPU s':>9}")  # fmt: skip
    for s in summary:
        print(f"{s['workers']:7d} {s['bare s']:7.2f} {s['sandbox+policy s']:9.2f} "
              f"{s['reconciler s']:12.2f} {s['ratio']:6.2f} {' '.join(map(str, s['ratios'])):>16} "
              f"{s['ratio to sandbox+policy']:9.2f} {s['tail s']:6.2f} {s['run cpu s']:9.1f}")  # fmt: skip
    return {"rows": rows, "summary": summary}


# --- 2. latency ----------------------------------------------------------------------------


def paced(
    rest: Rest,
    watch: PolicyWatch,
    ns: str,
    *,
    rate: float,
    seconds: float,
    body: Callable[[str], dict[str, Any]],
    kind: Kind,
) -> list[float]:
    """Creates at ``rate`` per second (each on time, in a pool, so one slow answer does not
    delay the next); seconds from each create's answer to its policy's ADDED event."""
    count = round(rate * seconds)
    answered: dict[str, float] = {}

    def create(name: str) -> None:
        rest.create(kind, ns, body(name))
        answered[name] = time.perf_counter()

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        for i, name in enumerate(names(count)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(create, name)
    if not watch.wait_count(ns, count, 120.0):
        raise TimeoutError(f"{ns}: {watch.count(ns)} of {count} NetworkPolicies")
    return [watch.added[(ns, name)] - at for name, at in answered.items()]


def latency(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with cluster() as (control_plane, service_account), tempfile.TemporaryDirectory() as work:
        rest = client(control_plane, 16)
        watch = PolicyWatch(rest)
        try:
            with run_process(service_account, Path(work)):
                for round_ in range(args.rounds):
                    for side in ("bare", "reconciler"):
                        ns = f"latency-r{round_}-{side}"
                        create_namespace(rest, ns, with_interpreter=side == "reconciler")
                        if side == "bare":
                            samples = paced(rest, watch, ns, rate=args.rate, seconds=args.seconds,
                                            body=lambda name, ns=ns: bare_policy(ns, name), kind=kinds.NETWORK_POLICY)  # fmt: skip
                        else:
                            samples = paced(rest, watch, ns, rate=args.rate, seconds=args.seconds,
                                            body=lambda name, ns=ns: sandbox(ns, name), kind=kinds.SANDBOX)  # fmt: skip
                        results.setdefault(side, []).append(samples)
                        print(f"  round {round_ + 1} {side:10s}: n={len(samples)} "
                              f"p50 {percentile(samples, 0.5) * 1000:7.1f} ms  "
                              f"p99 {percentile(samples, 0.99) * 1000:7.1f} ms  "
                              f"max {max(samples) * 1000:7.1f} ms", flush=True)  # fmt: skip
        finally:
            watch.stop()
    summary = {
        side: {
            "p50_ms": statistics.median(percentile(s, 0.5) * 1000 for s in rounds),
            "p99_ms": statistics.median(percentile(s, 0.99) * 1000 for s in rounds),
            "p99_ms_rounds": [round(percentile(s, 0.99) * 1000, 1) for s in rounds],
        }
        for side, rounds in results.items()
    }
    print(f"\nlatency at {args.rate:g}/s for {args.seconds:g}s, medians of {args.rounds} rounds "
          "(create answered -> NetworkPolicy ADDED; bare: a NetworkPolicy's own create -> ADDED)")  # fmt: skip
    for side, s in summary.items():
        print(f"  {side:10s} p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  "
              f"(p99 per round {s['p99_ms_rounds']})  goal p99 < {GOAL_P99_S * 1000:.0f} ms")  # fmt: skip
    return {"summary": summary}


# --- 3. memory -----------------------------------------------------------------------------

MEMORY_NAMESPACES = 10


def mb(value: int) -> float:
    return value / 2**20


def settle(run: RunProcess, watch: PolicyWatch, namespaces: Sequence[str], per_ns: int) -> None:
    """Waits until every NetworkPolicy exists and the leader's queue is empty."""
    for ns in namespaces:
        if not watch.wait_count(ns, per_ns, SYNC_TIMEOUT_S):
            raise TimeoutError(f"{ns}: {watch.count(ns)} of {per_ns} NetworkPolicies")
    wait_for(lambda: run.metrics().get("agentcube_netpol_workqueue_depth", 1) == 0,
             "the reconciler's queue to drain", 120.0)  # fmt: skip
    time.sleep(3.0)  # the last watch events reach every replica's caches


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """One ``run`` per checkout in ``--code`` against the same cluster (the first leads and
    writes; the others only cache, as a standby replica does)."""
    checkpoints = sorted(args.checkpoints)
    per_ns_steps = [c // MEMORY_NAMESPACES for c in checkpoints]
    namespaces = [f"mem-{i}" for i in range(MEMORY_NAMESPACES)]
    codes: list[Path] = [c.resolve() for c in args.code]
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget
    with (
        cluster() as (control_plane, service_account),
        tempfile.TemporaryDirectory() as work,
        contextlib.ExitStack() as stack,
    ):
        rest = client(control_plane, args.threads)
        watch = PolicyWatch(rest)
        stack.callback(watch.stop)
        runs = [stack.enter_context(run_process(service_account, Path(work), code=codes[0]))]
        for code in codes[1:]:
            standby = RunProcess(service_account, Path(work), code=code)
            stack.callback(standby.stop)
            runs.append(standby)
        time.sleep(3.0)

        labels = [
            f"{run.code}{' (leader)' if i == 0 else f' (standby {i})'}"
            for i, run in enumerate(runs)
        ]

        def record(total: int, elapsed: float) -> None:
            for label, run in zip(labels, runs, strict=True):
                rss = run.rss_bytes()
                rows.append(
                    {"process": label, "sandboxes": total, "rss_mb": mb(rss), "seconds": elapsed}
                )
                print(f"  {total:6d} sandboxes + pods + policies (after {elapsed:4.0f}s), "
                      f"{label}: VmRSS {mb(rss):.1f} MB", flush=True)  # fmt: skip

        record(0, 0.0)
        for ns in namespaces:
            create_namespace(rest, ns, with_interpreter=True)

        def create_pair(ns: str, name: str) -> None:
            created = rest.create(kinds.SANDBOX, ns, sandbox(ns, name))
            rest.create(kinds.POD, ns, sandbox_pod(created))

        started = time.perf_counter()
        done_per_ns = 0
        for per_ns in per_ns_steps:
            if time.monotonic() > deadline:
                print(f"  time budget ({args.budget:.0f}s) spent: stopping before "
                      f"{per_ns * MEMORY_NAMESPACES}", flush=True)  # fmt: skip
                break
            todo = [(ns, name) for name in names(per_ns)[done_per_ns:] for ns in namespaces]
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(lambda item: create_pair(*item), todo))
            done_per_ns = per_ns
            settle(runs[0], watch, namespaces, per_ns)
            record(per_ns * MEMORY_NAMESPACES, time.perf_counter() - started)
        total = done_per_ns * MEMORY_NAMESPACES
        resync = restart_and_resync(runs[0], service_account, Path(work), codes[0], total)
    print("\nmemory: VmRSS of run (caches synced, queue empty)")
    for label in dict.fromkeys(r["process"] for r in rows):
        mine = [r for r in rows if r["process"] == label]
        print(f"  {label}:")
        for row in mine:
            grown = row["rss_mb"] - mine[0]["rss_mb"]
            per = grown * 1024 / row["sandboxes"] if row["sandboxes"] else 0.0
            print(f"    {row['sandboxes']:6d} sandboxes: {row['rss_mb']:7.1f} MB  (+{grown:6.1f} MB "
                  f"over empty, {per:5.2f} KB per sandbox)  goal < {GOAL_RSS_MB:.0f} MB")  # fmt: skip
        if len(mine) >= 3 and mine[-1]["sandboxes"] < 10_000:
            (n1, r1), (n2, r2) = [(r["sandboxes"], r["rss_mb"]) for r in mine[-2:]]
            slope = (r2 - r1) / (n2 - n1)
            print(f"    extrapolated to 10,000: {r2 + slope * (10_000 - n2):.1f} MB "
                  "(linear through the last two points)")  # fmt: skip
    return {"rows": rows, "resync": resync}


def restart_and_resync(
    leader: RunProcess, kubeconfig: Path, work: Path, code: Path, total: int
) -> dict[str, float]:
    """The leader stopped (SIGTERM: it releases the Lease) and a fresh ``run`` started on the
    same cluster, as after a rollout: seconds until /readyz (every informer listed), until
    it leads, and until its first full pass is done (queue empty), with the writes of that
    pass (everything already in sync: none expected) and its VmRSS."""
    leader.stop()
    started = time.monotonic()
    fresh = RunProcess(kubeconfig, work, code=code)
    try:
        ready_s = time.monotonic() - started
        wait_for(fresh.leading, "the fresh run to lead", 120.0)
        leading_s = time.monotonic() - started
        time.sleep(1.0)  # the full pass is queued the moment it leads
        wait_for(lambda: fresh.metrics().get("agentcube_netpol_workqueue_depth", 1) == 0,
                 "the first full pass", 600.0)  # fmt: skip
        pass_s = time.monotonic() - started
        wrote = sum(v for k, v in writes(fresh).items() if k != "event")
        rss = mb(fresh.rss_bytes())
    finally:
        fresh.stop()
    print(f"\nresync: a fresh run with {total} sandboxes in the cluster: Ready after "
          f"{ready_s:.1f}s, leading after {leading_s:.1f}s, first full pass done after "
          f"{pass_s:.1f}s with {wrote:.0f} writes; VmRSS {rss:.1f} MB", flush=True)  # fmt: skip
    return {"sandboxes": total, "ready_s": ready_s, "leading_s": leading_s,
            "pass_s": pass_s, "writes": wrote, "rss_mb": rss}  # fmt: skip


# --- 5. the warm path ------------------------------------------------------------------------


def warm_objects(
    interpreter_obj: Mapping[str, Any], pool: int
) -> list[tuple[Kind, dict[str, Any]]]:
    """The SandboxTemplate and SandboxWarmPool AgentCube makes beside a CodeInterpreter with
    a warm pool: named after it, owned by it, agent-sandbox's own policy off."""
    meta = interpreter_obj["metadata"]
    owner = {"apiVersion": interpreter_obj["apiVersion"], "kind": "CodeInterpreter",
             "name": meta["name"], "uid": meta["uid"], "controller": True,
             "blockOwnerDeletion": True}  # fmt: skip
    base = {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": [owner]}
    template = {
        "apiVersion": kinds.SANDBOX_TEMPLATE.api_version, "kind": "SandboxTemplate",
        "metadata": base,
        "spec": {"networkPolicyManagement": "Unmanaged", "podTemplate": {
            "spec": {"containers": [{"name": "code-interpreter", "image": "python:3.12"}]}}},
    }  # fmt: skip
    warm_pool = {
        "apiVersion": kinds.SANDBOX_WARM_POOL.api_version, "kind": "SandboxWarmPool",
        "metadata": base, "spec": {"replicas": pool, "sandboxTemplateRef": {"name": meta["name"]}},
    }  # fmt: skip
    return [(kinds.SANDBOX_TEMPLATE, template), (kinds.SANDBOX_WARM_POOL, warm_pool)]


def warm(args: argparse.Namespace) -> dict[str, Any]:
    """Sessions claimed from a warm pool in a burst, with the real agent-sandbox controller
    adopting warm pods and the fake kubelet running them: per claim, the lag from its
    create's answer to its NetworkPolicy's ADDED, and the tail after the last claim."""
    from agentcube_netpol_dev.agentsandbox import AgentSandboxController, find_agent_sandbox
    from agentcube_netpol_dev.kubelet import FakeKubelet
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    ns, count = "warm-burst", args.claims
    with cluster() as (control_plane, service_account), tempfile.TemporaryDirectory() as work:
        rest = client(control_plane, args.threads)
        api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
        controller = AgentSandboxController(
            build=find_agent_sandbox(os.environ), control_plane=control_plane,
            work_dir=Path(work) / "as",
        )  # fmt: skip
        with (
            controller,
            FakeKubelet(CoreV1Api(api_client)),
            run_process(service_account, Path(work)) as run,
        ):
            create_namespace(rest, ns, with_interpreter=False)
            body = interpreter(ns)
            body["spec"]["warmPoolSize"] = count
            made = rest.create(kinds.CODE_INTERPRETER, ns, body)
            for kind, obj in warm_objects(made, count):
                rest.create(kind, ns, obj)
            selector = "agents.x-k8s.io/sandbox-template-ref-hash"

            def pool_running() -> bool:
                pods = rest.list(kinds.POD, namespace=ns, label_selector=selector)["items"]
                return sum((p.get("status") or {}).get("phase") == "Running" for p in pods) >= count

            wait_for(pool_running, f"{count} warm pods running", 300.0)
            watch = PolicyWatch(rest, ns)
            answered: dict[str, float] = {}
            owner = {"apiVersion": made["apiVersion"], "kind": "CodeInterpreter",
                     "name": WORKLOAD, "uid": made["metadata"]["uid"], "controller": True}  # fmt: skip

            def claim(name: str) -> None:
                rest.create(kinds.SANDBOX_CLAIM, ns, {
                    "apiVersion": kinds.SANDBOX_CLAIM.api_version, "kind": "SandboxClaim",
                    "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner],
                                 "labels": {kinds.LABEL_SANDBOX_NAME: name,
                                            kinds.LABEL_SESSION_ID: name}},
                    "spec": {"sandboxTemplateRef": {"name": WORKLOAD}},
                })  # fmt: skip
                answered[name] = time.perf_counter()

            claims = names(count, "py-c")
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(claim, claims))
            # The baseline was written before the watch began: the count is the claims'.
            if not watch.wait_count(ns, count, SYNC_TIMEOUT_S):
                raise TimeoutError(f"{watch.count(ns)} of {count} policies")
            lags = sorted(watch.added[(ns, name)] - answered[name] for name in claims)
            tail = max(watch.added[(ns, n)] for n in claims) - max(answered.values())
            watch.stop()
            cpu = run.cpu_seconds()
        api_client.close()
    result = {"claims": count, "p50_s": percentile(lags, 0.5), "p99_s": percentile(lags, 0.99),
              "max_s": lags[-1], "tail_s": tail, "run_cpu_s": cpu}  # fmt: skip
    print(f"warm path: {count} claims from {args.threads} threads on a pool of {count}: claim "
          f"answered -> its NetworkPolicy p50 {result['p50_s'] * 1000:.0f} ms, p99 "
          f"{result['p99_s'] * 1000:.0f} ms, max {result['max_s'] * 1000:.0f} ms; last policy "
          f"{tail:.2f} s after the last claim; run CPU {cpu:.1f} s", flush=True)  # fmt: skip
    return result


# --- 6. egress by domain name: a rotation ----------------------------------------------------

DOMAINS_NS = "domains"
ROTATED = "pypi.test"  # its address rotates
STEADY = "files.pypi.test"  # resolved as often, never changes: no write
FIRST_ADDRESS = "203.0.113.7"
STEADY_ADDRESS = "198.51.100.9"
DOMAINS_POLICY: dict[str, Any] = {
    "mode": "Restricted",
    "egress": [
        {"cidrs": ["10.8.0.0/16"], "ports": [{"protocol": "TCP", "port": 443}]},
        {"domains": [ROTATED, STEADY], "ports": [{"port": 443}]},
    ],
}
DOMAIN_TTL_S = 1
DOMAIN_TIMING = ("--domain-ttl-floor=1", "--domain-ttl-ceiling=2", "--domain-grace=3")
QUIET_S = 2.5  # after the old address is gone: the TTL ceiling and a little, nothing more due
BASELINE_ANNOTATION = "bench.agentcube.io/round"
RUN_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # webhook.cli.main's LOG_FORMAT asctime


def host_blocks(policy: Mapping[str, Any] | None) -> set[str]:
    """The addresses of a NetworkPolicy's egress ipBlocks."""
    spec = (policy or {}).get("spec") or {}
    return {
        peer["ipBlock"]["cidr"].split("/")[0]
        for rule in spec.get("egress") or ()
        for peer in rule.get("to") or ()
        if "ipBlock" in peer
    }


def written_since(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """run's writes by kind between two reads of ``writes(run)`` (the kinds that moved)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def reconciles(run: RunProcess) -> tuple[float, float]:
    """run's reconciles so far (every result) and the seconds they took, summed."""
    metrics = run.metrics()
    count = sum(v for k, v in metrics.items() if k.startswith("agentcube_netpol_reconcile_total{"))
    return count, metrics.get("agentcube_netpol_reconcile_duration_seconds_sum", 0.0)


def lookups(run: RunProcess) -> dict[str, float]:
    """run's DNS lookups so far, by result."""
    return {
        key.split('"')[1]: value
        for key, value in run.metrics().items()
        if key.startswith("agentcube_netpol_domain_lookups_total{")
    }


def reconciled_since(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    return {"reconciles": after[0] - before[0], "reconcile s": after[1] - before[1]}


def count_events(
    events: Sequence[tuple[float, str, str, Any]], which: Callable[[str], bool]
) -> dict[str, int]:
    """Watch events by type, of the NetworkPolicies whose name ``which`` accepts."""
    counted: dict[str, int] = {}
    for _, kind, name, _ in events:
        if which(name):
            counted[kind] = counted.get(kind, 0) + 1
    return counted


def own_versions(rest: Rest, ns: str) -> dict[str, str]:
    """Each sandbox's own NetworkPolicy in ``ns``: its resourceVersion."""
    listed = rest.list(kinds.NETWORK_POLICY, namespace=ns,
                       label_selector="netpol.agentcube.io/role=sandbox")  # fmt: skip
    return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in listed["items"]}


def seen_in_log(run: RunProcess, address: str, since: float) -> float | None:
    """When run's log says ``ROTATED now holds`` ``address`` (unix time), the first such
    line at or after ``since``; None if there is none."""
    for line in run.log_path.read_text(errors="replace").splitlines():
        if f" {ROTATED} now holds " not in line or address not in line.split(" now holds ")[1]:
            continue
        with contextlib.suppress(ValueError):
            at = datetime.strptime(line[:23], RUN_LOG_TIME).timestamp()
            if at >= since - 0.01:
                return at
    return None


def settled(run: RunProcess, watch: PolicyWatch, quiet_s: float, timeout_s: float) -> None:
    """Until run's queue is empty and for ``quiet_s`` neither the watch has seen anything nor
    run's writes have moved (its Events trail its writes: a thread of their own sends them)."""
    deadline = time.monotonic() + timeout_s
    wrote, since = writes(run), time.perf_counter()
    while time.monotonic() < deadline:
        now = writes(run)
        if now != wrote:
            wrote, since = now, time.perf_counter()
        last = max(watch.events[-1][0] if watch.events else 0.0, since)
        if time.perf_counter() - last >= quiet_s and queue_drained(run):
            return
        time.sleep(0.2)
    raise TimeoutError(f"run did not settle in {timeout_s:.0f}s")


def rotation(
    round_: int, *, dns: DnsServer, run: RunProcess, rest: Rest, watch: PolicyWatch, shared: str,
    own: Sequence[str], old: str,
) -> dict[str, Any]:  # fmt: skip
    """``ROTATED`` moved from ``old`` to a new address: seconds until the shared policy
    (as watched) holds it and until ``old`` is gone (after the grace), and everything
    written from the change until run is quiet again."""
    new = f"203.0.113.{10 + round_}"
    versions = own_versions(rest, DOMAINS_NS)
    writes_before, cpu_before, mark = writes(run), run.cpu_seconds(), len(watch.events)
    lookups_before, reconciles_before = lookups(run), reconciles(run)
    changed_unix = time.time()
    dns.set(ROTATED, a=[new], ttl=DOMAIN_TTL_S)
    changed = time.perf_counter()

    def first(check: Callable[[dict[str, Any]], bool]) -> float | None:
        for at, _, name, obj in watch.events[mark:]:
            if name == shared and check(obj):
                return at - changed
        return None

    if not watch.wait_until(lambda: new in host_blocks(watch.latest.get(shared)), 60.0):
        raise TimeoutError(f"round {round_ + 1}: {new} never reached {shared}")
    if not watch.wait_until(lambda: old not in host_blocks(watch.latest.get(shared)), 60.0):
        raise TimeoutError(f"round {round_ + 1}: {old} never left {shared}")
    settled(run, watch, QUIET_S, 120.0)
    window = watch.events[mark:]
    after = writes(run)
    seen = seen_in_log(run, new, changed_unix)
    by_name: dict[str, dict[str, int]] = {}
    for _, kind, name, _ in window:
        by_name.setdefault(name, {}).setdefault(kind, 0)
        by_name[name][kind] += 1
    moved = sorted(n for n, v in own_versions(rest, DOMAINS_NS).items() if versions.get(n) != v)
    return {
        "new": new,
        "new_s": first(lambda p: new in host_blocks(p)),
        "old_gone_s": first(lambda p: old not in host_blocks(p)),
        "noticed_s": None if seen is None else seen - changed_unix,
        "window_s": window[-1][0] - changed if window else 0.0,
        "run writes": written_since(writes_before, after),
        "policy writes": sum(
            after.get(k, 0.0) - writes_before.get(k, 0.0) for k in ("create", "update", "delete")
        ),
        "watched": by_name,
        "watched writes": len(window),
        "own policies watched": sum(1 for n in by_name if n != shared),
        "own versions changed": len(moved) + len(set(own) - set(versions)),
        "run cpu": run.cpu_seconds() - cpu_before,
        "lookups": written_since(lookups_before, lookups(run)),
        **reconciled_since(reconciles_before, reconciles(run)),
    }


def naive_rewrite(
    round_: int, *, run: RunProcess, rest: Rest, watch: PolicyWatch, own: Sequence[str],
    threads: int,
) -> dict[str, Any]:  # fmt: skip
    """The naive design's cost: every sandbox's own NetworkPolicy written once (a merge
    patch of an annotation, a fresh value each round), from ``threads`` threads; seconds
    from the first patch until the watch has seen all of them, and what run wrote meanwhile
    (it sees the changes: nothing to write is expected)."""
    value = f"r{round_}"
    writes_before, cpu_before, mark = writes(run), run.cpu_seconds(), len(watch.events)
    reconciles_before = reconciles(run)
    body = {"metadata": {"annotations": {BASELINE_ANNOTATION: value}}}

    def patch(name: str) -> None:
        rest.patch(kinds.NETWORK_POLICY, DOMAINS_NS, name, body, patch_type="merge")

    def annotated(obj: Mapping[str, Any]) -> bool:
        return (obj["metadata"].get("annotations") or {}).get(BASELINE_ANNOTATION) == value

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(patch, own))
    answered = time.perf_counter()
    wanted = set(own)

    def seen() -> list[float]:
        return [at for at, kind, name, obj in watch.events[mark:]
                if kind == "MODIFIED" and name in wanted and annotated(obj)]  # fmt: skip

    if not watch.wait_until(lambda: len(seen()) >= len(wanted), 120.0):
        raise TimeoutError(f"round {round_ + 1}: not every patch was watched")
    last = max(seen())
    settled(run, watch, 1.0, 120.0)
    after = writes(run)
    return {
        "seconds": last - started,
        "answered_s": answered - started,
        "writes": len(own),
        "run writes": written_since(writes_before, after),
        "run cpu": run.cpu_seconds() - cpu_before,  # seeing the N changes, writing nothing
        **reconciled_since(reconciles_before, reconciles(run)),
    }


def domains(args: argparse.Namespace) -> dict[str, Any]:
    """N sandboxes sharing one domain set; the name's address rotated ``--rotations``
    times. Each round, in an order that turns: one rotation (what run writes) and the
    naive design's cost (a bare client writing all N own policies)."""
    ns, count = DOMAINS_NS, args.sandboxes
    shared = kinds.DOMAIN_POLICY_PREFIX + domain_set_key(ns, domain_entries(DOMAINS_POLICY))
    own = names(count)
    rounds: list[dict[str, Any]] = []
    with (
        cluster() as (control_plane, service_account),
        tempfile.TemporaryDirectory() as work,
        DnsServer() as dns,
    ):
        dns.set(ROTATED, a=[FIRST_ADDRESS], ttl=DOMAIN_TTL_S)
        dns.set(STEADY, a=[STEADY_ADDRESS], ttl=DOMAIN_TTL_S)
        rest = client(control_plane, args.threads)
        # The naive design's writer: run's connection pool (a connection per worker and per
        # watch, and a few to spare) and its workers.
        naive = Rest.from_config(control_plane.admin_kubeconfig, max_connections=WORKERS + 12)
        create_namespace(rest, ns, with_interpreter=False)
        watch = PolicyWatch(rest, ns, keep=True)
        run_args = (f"--dns-server={dns.address}", *DOMAIN_TIMING)
        with run_process(service_account, Path(work), *run_args) as run:
            try:
                body = interpreter(ns)
                body["spec"]["template"]["networkPolicy"] = DOMAINS_POLICY
                rest.create(kinds.CODE_INTERPRETER, ns, body)

                def create_pair(name: str) -> None:
                    created = rest.create(kinds.SANDBOX, ns, sandbox(ns, name))
                    rest.create(kinds.POD, ns, sandbox_pod(created))

                started = time.perf_counter()
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(create_pair, own))
                created_s = time.perf_counter() - started

                def complete() -> bool:
                    policy = watch.latest.get(shared)
                    return (
                        all(n in watch.latest for n in own)
                        and policy is not None
                        and len(selected_names(policy)) == count
                        and {FIRST_ADDRESS, STEADY_ADDRESS} <= host_blocks(policy)
                    )

                if not watch.wait_until(complete, SYNC_TIMEOUT_S):
                    raise TimeoutError(f"{ns}: the {count} own policies and {shared}")
                complete_s = time.perf_counter() - started
                settled(run, watch, QUIET_S, 300.0)
                setup: dict[str, Any] = {
                    "created_s": created_s,
                    "complete_s": complete_s,
                    "shared writes": sum(1 for e in watch.events if e[2] == shared),
                    "own watched": count_events(watch.events, lambda n: n != shared),
                    "run writes": writes(run),
                }
                print(f"  {count} Sandboxes and pods created in {created_s:.1f}s; the {count} "
                      f"own policies and {shared} (selecting all, holding {FIRST_ADDRESS}) after "
                      f"{complete_s:.1f}s; the shared policy written {setup['shared writes']} "
                      f"times meanwhile, the own policies {setup['own watched']}; run's writes "
                      f"{written_since({}, setup['run writes'])}", flush=True)  # fmt: skip

                old = FIRST_ADDRESS
                for round_ in range(args.rotations):
                    row: dict[str, Any] = {"round": round_ + 1}
                    for side in ("ours", "naive") if round_ % 2 == 0 else ("naive", "ours"):
                        if side == "ours":
                            row["ours"] = rotation(round_, dns=dns, run=run, rest=rest,
                                                   watch=watch, shared=shared, own=own, old=old)  # fmt: skip
                            old = row["ours"]["new"]
                        else:
                            row["naive"] = naive_rewrite(round_, run=run, rest=naive, watch=watch,
                                                         own=own, threads=WORKERS)  # fmt: skip
                    rounds.append(row)
                    o, b = row["ours"], row["naive"]
                    print(f"  round {round_ + 1}: ours: {o['new']} in the shared policy after "
                          f"{o['new_s']:.2f}s (run's log: noticed after "
                          f"{o['noticed_s'] if o['noticed_s'] is None else round(o['noticed_s'], 2)}s), "
                          f"the old address gone after {o['old_gone_s']:.2f}s; run wrote "
                          f"{o['run writes']}; watched {o['watched']}; own policies changed "
                          f"{o['own versions changed']}; run CPU {o['run cpu']:.2f}s, "
                          f"{o['reconciles']:.0f} reconciles ({o['reconcile s']:.2f}s) | naive: "
                          f"{b['writes']} patches in {b['seconds']:.2f}s (answered "
                          f"{b['answered_s']:.2f}s), run wrote {b['run writes']}, run CPU "
                          f"{b['run cpu']:.2f}s, {b['reconciles']:.0f} reconciles "
                          f"({b['reconcile s']:.2f}s)", flush=True)  # fmt: skip
            finally:
                watch.stop()
                log = run.log_path.read_text(errors="replace").splitlines()
                if args.json:  # run's log beside the results, to read what it did
                    args.json.with_suffix(".run.log").write_text("\n".join(log) + "\n")
        naive.close()
    problems = [line for line in log if " WARNING " in line or " ERROR " in line
                or "Traceback" in line]  # fmt: skip
    summary = domains_summary(rounds, count, WORKERS)
    summary["setup"] = setup
    summary["run log warnings"] = problems[:50]
    if problems:
        print(f"\n  run's log: {len(problems)} WARNING/ERROR lines, the first:")
        for line in problems[:10]:
            print(f"    {line}")
    return {"rounds": rounds, "summary": summary}


def domains_summary(rounds: Sequence[dict[str, Any]], count: int, threads: int) -> dict[str, Any]:
    """Medians over the rounds. Each of our shared-policy writes is, in the naive design, a
    pass writing all ``count`` own policies: the naive writes a rotation are ``count`` times
    ours; its seconds, one measured pass (the DNS change seen at the same moment as ours)."""

    def median(values: Iterable[float | None]) -> float:
        found = [v for v in values if v is not None]
        return statistics.median(found) if found else float("nan")

    ours = [r["ours"] for r in rounds]
    naive = [r["naive"] for r in rounds]
    pairs = list(zip(ours, naive, strict=True))
    noticed = [(o, b) for o, b in pairs if o["noticed_s"] is not None]
    ours_writes = median(o["policy writes"] for o in ours)
    s = {
        "sandboxes": count,
        "rotations": len(rounds),
        "ours policy writes": ours_writes,
        "ours events": median(o["run writes"].get("event", 0.0) for o in ours),
        "ours watched writes": median(float(o["watched writes"]) for o in ours),
        "ours own changed": max(o["own versions changed"] for o in ours),
        "ours lookups": median(sum(o["lookups"].values()) for o in ours),
        "ours new s": median(o["new_s"] for o in ours),
        "ours new s rounds": [round(o["new_s"], 2) for o in ours],
        "ours noticed s": median(o["noticed_s"] for o, _ in noticed),
        "ours write s": median(o["new_s"] - o["noticed_s"] for o, _ in noticed),
        "ours old gone s": median(o["old_gone_s"] for o in ours),
        "ours run cpu s": median(o["run cpu"] for o in ours),
        "naive writes": count * ours_writes,
        "naive pass writes": count,
        "naive s": median(b["seconds"] for b in naive),
        "naive s rounds": [round(b["seconds"], 2) for b in naive],
        "naive run writes": [b["run writes"] for b in naive],
        "naive run cpu s": median(b["run cpu"] for b in naive),
        "naive run reconciles": median(b["reconciles"] for b in naive),
        "naive run reconcile s": median(b["reconcile s"] for b in naive),
        "writes ratio": count,
        # The write itself: one pass of N against ours (run's log line -> watched).
        "write s ratio": median(
            b["seconds"] / max(o["new_s"] - o["noticed_s"], 1e-3) for o, b in noticed
        ),
        # The new address in place: the same wait for the refresh, then N writes or one.
        "new s ratio": median((o["noticed_s"] + b["seconds"]) / o["new_s"] for o, b in noticed),
    }
    print(f"\ndomains: {count} sandboxes sharing one domain set, {len(rounds)} rotations of "
          f"{ROTATED} (TTL {DOMAIN_TTL_S}s, {' '.join(DOMAIN_TIMING)}), medians")  # fmt: skip
    print("  ours: DNS change -> the shared policy holds the new address (this process's watch; "
          "'noticed': run's log line saying so); writes from the change until run is quiet, the "
          "old address's removal after the grace included")  # fmt: skip
    print(f"  naive: a bare client patches the {count} own policies ({threads} threads, run's "
          "connection pool), first patch -> the last one watched; each write of ours is one such "
          "pass")  # fmt: skip
    print(f"  ours:  {s['ours policy writes']:.0f} NetworkPolicy writes a rotation (+"
          f"{s['ours events']:.0f} Events; {s['ours watched writes']:.0f} watched; own policies "
          f"changed: {s['ours own changed']}); new address after {s['ours new s']:.2f}s (rounds "
          f"{s['ours new s rounds']}): noticed after {s['ours noticed s']:.2f}s, written and "
          f"watched {s['ours write s']:.3f}s later; old address gone after "
          f"{s['ours old gone s']:.2f}s; run CPU {s['ours run cpu s']:.2f}s, "
          f"{s['ours lookups']:.0f} lookups")  # fmt: skip
    print(f"  naive: {s['naive writes']:.0f} writes a rotation ({count} a pass); a pass "
          f"{s['naive s']:.2f}s (rounds {s['naive s rounds']}); run CPU meanwhile (seeing the "
          f"changes) {s['naive run cpu s']:.2f}s, {s['naive run reconciles']:.0f} reconciles "
          f"taking {s['naive run reconcile s']:.2f}s")  # fmt: skip
    print(f"  ratios: writes x{s['writes ratio']}; the write, naive pass / ours "
          f"x{s['write s ratio']:.0f}; the new address in place, (noticed + naive pass) / ours "
          f"x{s['new s ratio']:.2f}")  # fmt: skip
    return s


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "benchmark", choices=["burst", "latency", "memory", "warm", "domains", "all"]
    )
    parser.add_argument("--claims", type=int, default=100, help="warm: claims (and pool size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000, help="burst: Sandboxes per round")
    parser.add_argument("--threads", type=int, default=16, help="client threads (creates)")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16],
                        help="burst: run --workers values to compare")  # fmt: skip
    parser.add_argument("--rate", type=float, default=20.0, help="latency: Sandboxes per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: seconds per round")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[2000, 5000, 10000],
                        help="memory: sandbox counts at which VmRSS is read")  # fmt: skip
    parser.add_argument("--budget", type=float, default=900.0,
                        help="memory: seconds of creating before the last checkpoints are skipped")  # fmt: skip
    parser.add_argument("--code", type=Path, nargs="+", default=[REPO_ROOT],
                        help="memory: checkouts whose run to measure side by side (first leads)")  # fmt: skip
    parser.add_argument("--sandboxes", type=int, default=1000,
                        help="domains: sandboxes sharing the domain set")  # fmt: skip
    parser.add_argument("--rotations", type=int, default=5,
                        help="domains: rotations of the name's address")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    every = ["burst", "latency", "memory", "warm", "domains"]
    chosen = every if args.benchmark == "all" else [args.benchmark]
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "load": os.getloadavg()}  # fmt: skip
    for name in chosen:
        print(f"== {name}", flush=True)
        commands = {"burst": burst, "latency": latency, "memory": memory, "warm": warm,
                    "domains": domains}  # fmt: skip
        report[name] = commands[name](args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
