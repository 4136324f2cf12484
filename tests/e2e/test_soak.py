"""A soak of mixed load on ``run`` under deploy/'s RBAC, with the real agent-sandbox
controller and the fake kubelet: for ``AGENTCUBE_NETPOL_SOAK_SECONDS`` (40 in ``make
test``; ``make bench-soak`` runs 600 and prints the same figures), in a seeded random
order:

- direct-path Sandboxes created and deleted (AgentCube's workload manager), their pods
  made by agent-sandbox's controller, gated, released;
- sessions claimed from a warm pool and their claims deleted;
- the template's networkPolicy edited back and forth (every sandbox's policy follows);
- the override annotation set and cleared on running sandboxes;
- a tenant relabelling a sandbox pod to another sandbox's name: refused (or, on a claimed
  pod, put back by the pod mutation), every time.

Throughout, the recorder watches every pod and NetworkPolicy: no sandbox pod ever runnable
without a policy no looser than one its sandbox could have had. At the end, ``audit``
finds nothing, the log of ``run`` has no error, and its resident memory has not grown
(the slope over the second half is printed and bounded).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane

from tests.builders import code_interpreter, sandbox_claim
from tests.e2e.harness import Kubectl, WebhookServer
from tests.e2e.invariant import Recorder, breaches
from tests.e2e.test_agent_sandbox import owner_reference, warm_pool_for
from tests.e2e.test_reconciler import desired, eventually, sandbox
from tests.e2e.test_reconciler_warm_path import with_agent_sandbox
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest
from webhook.policy.builder import FAIL_CLOSED_POLICY

SOAK_SECONDS = float(os.environ.get("AGENTCUBE_NETPOL_SOAK_SECONDS", "40"))
TEMPLATE = "soak"
POLICY_A = {"mode": "Restricted", "egress": [{"cidrs": ["10.8.0.0/16"]}]}
POLICY_B = {"mode": "Restricted", "egress": [{"cidrs": ["10.9.0.0/16"], "ports": [{"port": 443}]}]}
LIVE_AT_MOST = 8
# Resident memory may wander (allocator, caches filling); a leak shows as a steady climb.
RSS_SLOPE_LIMIT_MB_PER_MIN = 4.0


@dataclass
class Soak:
    cluster: ControlPlane
    kube: Kubectl
    run: WebhookServer
    admin: Rest
    agentcube: Rest
    tenant: Path
    ns: str
    interpreter: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def soak(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Soak]:
    with with_agent_sandbox(binaries, agent_sandbox_build, tmp_path_factory.mktemp("soak")) as warm:
        cluster, kube = warm.control_plane, warm.kube
        ns = f"soak-{uuid.uuid4().hex[:6]}"
        kube.ok("create", "namespace", ns)
        kube.ok("create", "role", "pod-editor", "--verb=get,patch", "--resource=pods", "-n", ns)
        kube.ok(
            "create", "rolebinding", "tenants", "--role=pod-editor", "--group=tenants", "-n", ns
        )  # fmt: skip
        agentcube = cluster.mint_user(
            "system:serviceaccount:agentcube:workloadmanager",
            groups=["system:serviceaccounts", "system:serviceaccounts:agentcube"],
        )
        yield Soak(
            cluster, kube, warm.run, warm.rest, Rest.from_config(agentcube),
            cluster.mint_user("tenant-eve", groups=["tenants"]), ns,
        )  # fmt: skip


def rss_mb(run: WebhookServer) -> float:
    assert run._process is not None
    for line in Path(f"/proc/{run._process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB a minute."""
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / den


class Load:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.random = random.Random(20261204)
        self.live_direct: list[str] = []
        self.live_claims: list[str] = []
        self.ever: set[str] = set()
        self.policy: dict[str, Any] = POLICY_A
        self.counts: dict[str, int] = {}
        self.relabels_refused = 0

    def step(self) -> None:
        action = self.random.choice(
            ["direct", "direct", "delete", "claim", "unclaim", "template", "override", "tenant"]
        )
        self.counts[action] = self.counts.get(action, 0) + 1
        getattr(self, f"do_{action}")()

    def do_direct(self) -> None:
        if len(self.live_direct) >= LIVE_AT_MOST:
            return self.do_delete()
        name = f"{TEMPLATE}-{uuid.uuid4().hex[:8]}"
        self.soak.agentcube.create(
            kinds.SANDBOX, self.soak.ns, sandbox(self.soak.ns, name, TEMPLATE)
        )
        self.live_direct.append(name)
        self.ever.add(name)

    def do_delete(self) -> None:
        if self.live_direct:
            name = self.live_direct.pop(self.random.randrange(len(self.live_direct)))
            self.soak.agentcube.delete(kinds.SANDBOX, self.soak.ns, name)

    def do_claim(self) -> None:
        if len(self.live_claims) >= 2:
            return self.do_unclaim()
        name = f"{TEMPLATE}-c{uuid.uuid4().hex[:7]}"
        body = sandbox_claim(
            name, self.soak.ns, template=TEMPLATE,
            labels={kinds.LABEL_SANDBOX_NAME: name, kinds.LABEL_SESSION_ID: name},
        )  # fmt: skip
        body["metadata"]["ownerReferences"] = [owner_reference(self.soak.interpreter)]
        self.soak.agentcube.create(kinds.SANDBOX_CLAIM, self.soak.ns, body)
        self.live_claims.append(name)
        self.ever.add(name)

    def do_unclaim(self) -> None:
        if self.live_claims:
            name = self.live_claims.pop(0)
            self.soak.agentcube.delete(kinds.SANDBOX_CLAIM, self.soak.ns, name)

    def do_template(self) -> None:
        self.policy = POLICY_B if self.policy is POLICY_A else POLICY_A
        patch = {"spec": {"template": {"networkPolicy": self.policy}}}
        self.soak.admin.patch(
            kinds.CODE_INTERPRETER, self.soak.ns, TEMPLATE, patch, patch_type="merge"
        )

    def do_override(self) -> None:
        if not self.live_direct:
            return
        name = self.random.choice(self.live_direct)
        value = json.dumps(FAIL_CLOSED_POLICY) if self.random.random() < 0.5 else None
        patch = {"metadata": {"annotations": {kinds.ANNOTATION_NETWORK_POLICY: value}}}
        self.soak.agentcube.patch(kinds.SANDBOX, self.soak.ns, name, patch, patch_type="merge")

    def do_tenant(self) -> None:
        pods = self.soak.admin.list(
            kinds.POD, namespace=self.soak.ns, label_selector=kinds.LABEL_SANDBOX_NAME
        )["items"]
        if not pods:
            return
        pod = self.random.choice(pods)
        result = self.soak.kube(
            "label", "pod", pod["metadata"]["name"], "-n", self.soak.ns, "--overwrite",
            f"{kinds.LABEL_SANDBOX_NAME}=someone-else", user=self.soak.tenant,
        )  # fmt: skip
        name = pod["metadata"]["name"]
        if result.returncode != 0 and "NotFound" in result.stderr:
            return  # the pod went between the list and the label (its sandbox was deleted)
        if result.returncode != 0:  # refused by pod-labels.netpol.agentcube.io
            assert "pod-labels.netpol.agentcube.io" in result.stderr, result.stderr
        else:  # a claimed pod: pods.netpol.agentcube.io put the claim's name back
            now = self.soak.admin.get(kinds.POD, self.soak.ns, name)
            label = now["metadata"]["labels"].get(kinds.LABEL_SANDBOX_NAME)
            assert label == pod["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME], (name, label)
        self.relabels_refused += 1


@pytest.mark.timeout(SOAK_SECONDS + 300)  # the soak itself, then settling and the checks
def test_mixed_load_leaves_no_breach_no_error_no_growth_and_a_clean_audit(soak: Soak) -> None:
    ns = soak.ns
    interpreter = code_interpreter(TEMPLATE, ns, POLICY_A, warm_pool_size=2)
    soak.interpreter = soak.admin.create(kinds.CODE_INTERPRETER, ns, interpreter)
    for obj in warm_pool_for(soak.interpreter):
        soak.admin.create(
            kinds.SANDBOX_TEMPLATE if obj["kind"] == "SandboxTemplate" else kinds.SANDBOX_WARM_POOL,
            ns,
            obj,
        )
    baseline = eventually(
        lambda: _get(soak.admin, ns, f"netpol-baseline.{TEMPLATE}"), "the warm pool's baseline"
    )
    recorder = Recorder(soak.admin)
    recorder.start()
    load = Load(soak)
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    next_sample = started
    while (now := time.monotonic()) - started < SOAK_SECONDS:
        if now >= next_sample:
            samples.append((now - started, rss_mb(soak.run)))
            next_sample += 5.0
        # A Conflict: another writer (the controller) got there first; a client tries later.
        with contextlib.suppress(errors.Conflict):
            load.step()
        time.sleep(0.15)

    def audit_clean() -> bool:
        result = subprocess.run(
            [sys.executable, "-m", "webhook", "audit", "-n", ns,
             f"--kubeconfig={soak.cluster.admin_kubeconfig}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.returncode == 0

    eventually(audit_clean, "audit to find nothing", 90)
    events = recorder.stop()

    def allowed(pod: Any) -> list[Any]:
        name = (pod["metadata"].get("labels") or {}).get(kinds.LABEL_SANDBOX_NAME, "")
        owner = {"metadata": {"name": name, "uid": "x"}, "apiVersion": "v1", "kind": "Sandbox"}
        own = [desired(ns, name, policy, owner)["spec"] for policy in (POLICY_A, POLICY_B)]
        return [*own, baseline["spec"]]

    found = breaches(
        [e for e in events if (e[3].get("metadata") or {}).get("namespace") == ns],
        allowed_specs=allowed,
    )
    log = soak.run.log()
    late = [s for s in samples if s[0] >= SOAK_SECONDS / 2]
    slope = slope_mb_per_min(late) if len(late) >= 3 else 0.0
    print(
        f"soak {SOAK_SECONDS:.0f}s: {sum(load.counts.values())} steps {load.counts}; "
        f"{len(load.ever)} sandboxes and sessions; {load.relabels_refused} tenant relabels "
        f"refused; run RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB, slope over the "
        f"second half {slope:+.2f} MB/min; {len(events)} pod and policy changes recorded"
    )
    first = {}
    for breach in found:
        first.setdefault(breach.pod, breach)
    for breach in list(first.values())[:5]:
        states = [
            (e[0], e[1], e[2], bool(e[3]["metadata"].get("deletionTimestamp")))
            for e in events
            if e[3]["metadata"].get("name", "").endswith(breach.pod.split("/")[1])
        ]
        print(breach, states)
    assert found == []
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
    assert slope < RSS_SLOPE_LIMIT_MB_PER_MIN
    assert load.counts.get("direct", 0) and load.counts.get("claim", 0)


def _get(rest: Rest, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return rest.get(kinds.NETWORK_POLICY, ns, name)
    except errors.NotFound:
        return None
