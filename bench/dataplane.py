"""What one NetworkPolicy per sandbox costs the NetworkPolicy implementation: kube-router
(the dataplane tier's) programming a new sandbox pod with 10, 100 and 1,000 sandbox
policies already in its namespace.

    python bench/dataplane.py                       # 10, 100, 1000 policies, 3 pods each, ~6 min
    python bench/dataplane.py --policies 10 100 --pods 5

Needs root, iptables and ipset, and the kube-router build (``make dataplane-packages
controlplane``). A control plane; the dataplane node (a network namespace with kube-router,
pods as namespaces, the fake kubelet) as ``tests/e2e/test_dataplane.py`` has it; ``run``
under deploy/'s RBAC with deploy/'s webhooks. For each count N, a namespace of its own with
one CodeInterpreter (Restricted) and N Sandboxes, so ``run`` writes N NetworkPolicies, of
which the first 20 have a running pod (a namespace each); then, one at a time, a new
Sandbox and its pod: the time from the moment the API server has the pod's IP (what
kube-router waits for) until a connection from the pod to a host outside its policy is
first refused, polled every 20 ms from inside the pod's namespace. Beside it, kube-router's
CPU seconds while the N policies were programmed. The baseline is N = 10 in the same run.

Only addresses this benchmark created (in namespaces it made) are sent to; every process
started is stopped by its PID and every namespace removed, as in the dataplane tier.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.controlplane import (
    WEBHOOK_CONFIGURATION_KINDS,
    ControlPlane,
    find_binaries,
    install_crds,
    load_manifests,
    point_webhooks_at,
)
from agentcube_netpol_dev.dataplane import Dataplane, Host, running_node, socket_in
from lib.load import process_cpu_seconds
from reconciler import (
    DEPLOY_DIR,
    RBAC_KINDS,
    SERVICE_ACCOUNT_GROUPS,
    SERVICE_ACCOUNT_USER,
    RunProcess,
    create_namespace,
    sandbox,
    sandbox_pod,
    wait_for,
)

from webhook.api import kinds
from webhook.kube.rest import Rest

FORBIDDEN_HOST = "198.51.100.10"  # outside the policy's CIDR: refused once enforced
FORBIDDEN_PORT = 443
PODS_PER_NAMESPACE = 20
POLL_S = 0.02
ENFORCE_TIMEOUT_S = 120.0


def refused(host: Host) -> bool:
    """One connection from ``host``'s namespace to the forbidden host: refused or dropped."""
    sock = socket_in(host.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(0.2)
    try:
        sock.connect((FORBIDDEN_HOST, FORBIDDEN_PORT))
        return False
    except OSError:
        return True
    finally:
        sock.close()


def pod_ip(rest: Rest, ns: str, name: str) -> str | None:
    status = rest.get(kinds.POD, ns, name).get("status") or {}
    return status.get("podIP")


def new_sandbox(rest: Rest, plane: Dataplane, ns: str, name: str) -> dict[str, float]:
    """A Sandbox and its pod; seconds from the pod's IP in the API to the first refusal."""
    created = rest.create(kinds.SANDBOX, ns, sandbox(ns, name))
    rest.create(kinds.POD, ns, sandbox_pod(created))
    deadline = time.monotonic() + ENFORCE_TIMEOUT_S
    while (ip := pod_ip(rest, ns, name)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}/{name} got no IP")
        time.sleep(POLL_S)
    ip_at = time.monotonic()
    host = plane.pod(ns, name)
    assert host.address == ip
    through = 0
    while not refused(host):
        through += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}/{name}: never refused")
        time.sleep(POLL_S)
    return {"enforced_s": time.monotonic() - ip_at, "through": float(through)}


def fill(rest: Rest, ns: str, count: int, with_pods: int) -> None:
    for i in range(count):
        created = rest.create(kinds.SANDBOX, ns, sandbox(ns, f"py-f{i:05d}"))
        if i < with_pods:
            rest.create(kinds.POD, ns, sandbox_pod(created))


def policies_in(rest: Rest, ns: str) -> int:
    return len(rest.list(kinds.NETWORK_POLICY, namespace=ns)["items"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp,
        ControlPlane(binaries=find_binaries(os.environ)) as control_plane,
    ):
        work = Path(tmp)
        install_crds(control_plane, DEPLOY_DIR / "crds")
        manifests = load_manifests(DEPLOY_DIR, control_plane=control_plane)
        rbac = [m for m in manifests if m["kind"] in RBAC_KINDS]
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
        )
        account = control_plane.mint_user(SERVICE_ACCOUNT_USER, groups=SERVICE_ACCOUNT_GROUPS)
        rest = Rest.from_config(control_plane.admin_kubeconfig, max_connections=8)
        with running_node(control_plane, work / "plane") as (plane, _kubelet):
            plane.serve(plane.add_host(FORBIDDEN_HOST), "forbidden", FORBIDDEN_PORT)
            run = RunProcess(account, work)
            try:
                wait_for(run.leading, "run to lead", 60.0)
                configurations = [
                    point_webhooks_at(
                        m, base_url=run.url, ca_pem=(run.cert_dir / "ca.crt").read_bytes()
                    )
                    for m in manifests
                    if m["kind"] in WEBHOOK_CONFIGURATION_KINDS
                ]
                control_plane.kubectl(
                    "apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configurations}),
                )  # fmt: skip
                time.sleep(2.0)
                assert plane.kube_router is not None
                router_pid = plane.kube_router.pid
                for count in args.policies:
                    ns = f"bench-n{count}"
                    create_namespace(rest, ns, with_interpreter=True)
                    cpu_before, started = process_cpu_seconds(router_pid), time.monotonic()
                    fill(rest, ns, count, min(count, PODS_PER_NAMESPACE))
                    wait_for(lambda ns=ns, count=count: policies_in(rest, ns) >= count,
                             f"{count} policies", 600.0)  # fmt: skip
                    time.sleep(args.settle)  # kube-router's sync of them
                    fill_s = time.monotonic() - started
                    cpu = process_cpu_seconds(router_pid) - cpu_before
                    for i in range(args.pods):
                        result = new_sandbox(rest, plane, ns, f"py-new{i:03d}")
                        row = {"policies": count, "pod": i, **result,
                               "router_cpu_fill_s": cpu, "fill_s": fill_s}  # fmt: skip
                        rows.append(row)
                        print(f"  {count:5d} policies: pod {i}: refused {result['enforced_s']:.2f} s "
                              f"after its IP ({result['through']:.0f} connections through first); "
                              f"kube-router CPU while the {count} were written: {cpu:.1f} s",
                              flush=True)  # fmt: skip
            finally:
                run.stop()
    print(
        "\n| sandbox policies in the namespace | pod IP -> first refusal (median, max) | kube-router CPU for the N |"
    )
    print("|---:|---:|---:|")
    for count in args.policies:
        mine = [r for r in rows if r["policies"] == count]
        times = [r["enforced_s"] for r in mine]
        print(f"| {count} | {statistics.median(times):.2f} s, {max(times):.2f} s "
              f"| {mine[0]['router_cpu_fill_s']:.1f} s |")  # fmt: skip
    return {"rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--policies", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--pods", type=int, default=3, help="new sandboxes timed per count")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the N exist")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "load": os.getloadavg(),
              **measure(args)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
