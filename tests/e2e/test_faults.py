"""Faults with work running through them: kube-apiserver restarted mid-burst, etcd
compacted under a running ``run`` (a real 410 Gone), and the API server refusing ``run``'s
writes for a while (429 with Retry-After, then 500).

``run`` works as deploy/'s service account, through a relay (``tests/e2e/relay.py``) that
can cut it off from the API server or refuse its writes while everyone else reaches the API
server as usual. kube-apiserver runs with ``--watch-cache=false``, so a watch resumed from
a compacted resourceVersion reaches etcd and gets its 410, as it does behind a watch cache
that has also moved past it. The recorder (``tests/e2e/invariant.py``) watches pods and
NetworkPolicies throughout, directly, and fails loudly if it missed anything.

For each fault: every sandbox ends with exactly its NetworkPolicy, written once
(generation 1, one create each), every pod released, and no pod ever runnable without a
policy no looser than its sandbox's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import Binaries, ControlPlane, install_crds

from tests.e2e.deployed import deploy_manifests, install_rbac, install_webhooks
from tests.e2e.harness import CRD_DIR, Kubectl, WebhookServer, as_json
from tests.e2e.invariant import Recorder, breaches
from tests.e2e.relay import Relay
from tests.e2e.test_reconciler import (
    GATE,
    RESTRICTED,
    desired,
    eventually,
    grant_agentcube,
    interpreter,
    sandbox,
    sandbox_pod,
    start_run,
)
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

BURST = 30


@dataclass
class Faults:
    cluster: ControlPlane
    kube: Kubectl
    rest: Rest  # admin, straight to the API server
    relay: Relay
    run: WebhookServer


@pytest.fixture(scope="module")
def faults(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    work = tmp_path_factory.mktemp("faults")
    with ControlPlane(
        binaries=binaries,
        with_controller_manager=True,
        apiserver_extra_args=("--watch-cache=false",),
    ) as cluster:
        install_crds(cluster, CRD_DIR)
        kube = Kubectl(cluster)
        grant_agentcube(kube)
        manifests = deploy_manifests(cluster)
        relay = Relay(cluster, install_rbac(cluster, manifests), work / "relay")
        (work / "run").mkdir()
        run = start_run(cluster, relay.relayed_kubeconfig, work / "run")
        try:
            install_webhooks(cluster, manifests, base_url=run.url, ca_pem=run.ca_pem)
            yield Faults(cluster, kube, Rest.from_config(cluster.admin_kubeconfig), relay, run)
        finally:
            run.stop()
            relay.close()


@pytest.fixture
def ns(faults: Faults) -> Iterator[str]:
    name = f"fault-{time.monotonic_ns() % 10**8:08d}"
    faults.kube.ok("create", "namespace", name)
    faults.kube.ok("apply", "-f", "-", input=as_json(interpreter(name)))
    yield name
    faults.kube("delete", "namespace", name, "--wait=false")


RETRIED = (errors.Unreachable, errors.ServerError, errors.TooManyRequests)


def retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A read retried while the API server is away, as a well-behaved client does."""
    last: Exception | None = None
    for _ in range(200):
        try:
            return call(*args, **kwargs)
        except RETRIED as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{call} never answered: {last}")


def create_retrying(rest: Rest, kind: kinds.Kind, ns: str, body: dict[str, Any]) -> int:
    """Create as a well-behaved client does: retried while the API server is away; an
    AlreadyExists on a retry is the first try having gone through. Returns the retries."""
    for attempt in range(200):
        try:
            rest.create(kind, ns, body)
            return attempt
        except errors.AlreadyExists:
            if attempt:
                return attempt
            raise
        except RETRIED:
            time.sleep(0.2)
    raise AssertionError(f"{kind.kind} {body['metadata']['name']} never created")


def make_sandboxes(rest: Rest, ns: str, names: list[str]) -> tuple[dict[str, Any], int]:
    """Each sandbox's pod, then the Sandbox (the tightest race a controller makes); the
    desired policy spec of each, and how many creates had to be retried."""
    specs: dict[str, Any] = {}
    retries = 0
    for name in names:
        pod = sandbox_pod(ns, {**sandbox(ns, name), "metadata": {"name": name, "uid": "x"}})
        del pod["metadata"]["ownerReferences"]
        retries += create_retrying(rest, kinds.POD, ns, pod)
        retries += create_retrying(rest, kinds.SANDBOX, ns, sandbox(ns, name))
        created = retrying(rest.get, kinds.SANDBOX, ns, name)
        specs[name] = desired(ns, name, RESTRICTED, created)["spec"]
    return specs, retries


def creates_so_far(run: WebhookServer) -> float:
    return run.metric('agentcube_netpol_writes_total{write="create"}') or 0.0


def settled(
    faults: Faults,
    ns: str,
    specs: dict[str, Any],
    recorder: Recorder,
    *,
    ever: dict[str, Any] | None = None,
) -> None:
    """Every sandbox in ``specs`` has exactly its policy, written once; every pod released;
    and the recorder saw no pod runnable without it (``ever``: the policy of each sandbox
    there was, deleted ones included)."""

    def done() -> bool:
        policies = retrying(faults.rest.list, kinds.NETWORK_POLICY, namespace=ns)["items"]
        pods = retrying(faults.rest.list, kinds.POD, namespace=ns)["items"]
        return {p["metadata"]["name"]: p["spec"] for p in policies} == specs and all(
            {"name": GATE} not in (p["spec"].get("schedulingGates") or []) for p in pods
        )

    eventually(done, "every sandbox with its policy and its pod released", timeout_s=120)
    events = [e for e in recorder.stop() if (e[3].get("metadata") or {}).get("namespace") == ns]

    def allowed(pod: Any) -> list[Any]:
        return [(ever or specs)[pod["metadata"]["labels"][kinds.LABEL_SANDBOX_NAME]]]

    assert breaches(events, allowed_specs=allowed) == []
    policies = faults.rest.list(kinds.NETWORK_POLICY, namespace=ns)["items"]
    assert sorted(p["metadata"]["generation"] for p in policies) == [1] * len(specs)


def test_api_server_restarted_mid_burst(faults: Faults, ns: str) -> None:
    recorder = Recorder(faults.rest)
    recorder.start()
    creates_before = creates_so_far(faults.run)
    names = [f"py-rs{i:05d}" for i in range(BURST)]
    first, second = names[: BURST // 3], names[BURST // 3 :]
    specs, retries = make_sandboxes(faults.rest, ns, first)
    made: list[tuple[dict[str, Any], int]] = []
    burst = threading.Thread(target=lambda: made.append(make_sandboxes(faults.rest, ns, second)))
    burst.start()
    time.sleep(0.5)
    # From this thread: the control plane's processes die with the thread that started them.
    faults.cluster.restart_apiserver(down_s=2.0)
    burst.join(timeout=120)
    [(more, more_retries)] = made
    specs |= more
    print(f"API server restarted mid-burst: {retries + more_retries} creates retried by the client")
    settled(faults, ns, specs, recorder)
    # Nothing written twice: one create per sandbox (a create whose answer was lost, then
    # found existing, counts none), no update.
    assert creates_so_far(faults.run) - creates_before <= BURST
    assert faults.run.running  # reconnected, not restarted


def test_a_compacted_history_is_relisted_and_no_change_is_missed(faults: Faults, ns: str) -> None:
    """run is cut off; meanwhile sandboxes come and go, and etcd is compacted past
    everything run saw. On its return its watches get 410 Gone and it lists again: the new
    sandboxes get their policies, the deleted ones' policies are gone."""
    recorder = Recorder(faults.rest)
    recorder.start()
    before, _ = make_sandboxes(faults.rest, ns, [f"py-old{i:05d}" for i in range(6)])
    settled_before = dict(before)

    def has_policies() -> bool:
        policies = faults.rest.list(kinds.NETWORK_POLICY, namespace=ns)["items"]
        return {p["metadata"]["name"] for p in policies} == set(settled_before)

    eventually(has_policies, "the first sandboxes' policies")
    log_before = faults.run.log()
    faults.relay.cut()
    try:
        gone = [f"py-old{i:05d}" for i in range(3)]
        for name in gone:
            faults.rest.delete(kinds.SANDBOX, ns, name)
            faults.rest.delete(kinds.POD, ns, name)
        # The Sandbox's policy goes by garbage collection too (ownerReference): take that
        # way out, so only run's relist can remove what it should.
        for name in gone:
            faults.rest.delete(kinds.NETWORK_POLICY, ns, name)
            faults.rest.create(
                kinds.NETWORK_POLICY,
                ns,
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {
                        "name": name,
                        "labels": {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY_VALUE},
                    },
                    "spec": {
                        "podSelector": {"matchLabels": {kinds.LABEL_SANDBOX_NAME: name}},
                        "policyTypes": ["Ingress"],
                    },
                },
            )
        new, _ = make_sandboxes(faults.rest, ns, [f"py-new{i:05d}" for i in range(6)])
        compacted = faults.cluster.compact_etcd()
        time.sleep(1.0)
    finally:
        faults.relay.restore()
    specs = {name: spec for name, spec in before.items() if name not in gone} | new
    settled(faults, ns, specs, recorder, ever=before | new)
    log = faults.run.log()[len(log_before) :]
    expired = [line for line in log.splitlines() if "watch expired" in line]
    assert expired, log[-3000:]  # the informers' 410 Gone, then a list
    print(
        f"etcd compacted to revision {compacted}; {len(expired)} watches got 410 Gone and relisted"
    )


RECONCILER_WRITES = frozenset({"networkpolicies", "pods"})
TOO_MANY_S, RETRY_AFTER_S, FAILING_S = 6.0, 2, 4.0


def refused_in_a_window(relay: Relay, seconds: float) -> int:
    """The reconciler's writes refused in ``seconds`` from the first one refused from now on
    (a busy machine may delay that first one: a Lease renewal missed under load costs the
    leader its Lease for a few seconds)."""
    since = time.monotonic()

    def first() -> float | None:
        times = [
            t
            for t, resource in list(relay.refusals)
            if t >= since and resource in RECONCILER_WRITES
        ]
        return min(times) if times else None

    start: float = eventually(first, "run to write again, and be refused", 60)
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    return len(
        [
            t
            for t, resource in list(relay.refusals)
            if start <= t <= start + seconds and resource in RECONCILER_WRITES
        ]
    )


def test_refused_writes_are_backed_off_as_asked_and_the_work_completes(
    faults: Faults, ns: str
) -> None:
    """The API server refuses run's writes: 429 with Retry-After: 2, then 500 (no
    Retry-After), then takes them again; counted over 6 s and 4 s from the first refusal
    of each. Leases pass, as API Priority and Fairness
    keeps leader election apart. Every worker waits out a Retry-After (one refused write
    holds them all), a 500 is retried on the work queue's backoff, and nothing spins."""
    recorder = Recorder(faults.rest)
    recorder.start()
    log_before = faults.run.log()
    faults.relay.refuse_writes(429, RETRY_AFTER_S)
    try:
        specs, _ = make_sandboxes(faults.rest, ns, [f"py-429{i:05d}" for i in range(20)])
        too_many = refused_in_a_window(faults.relay, TOO_MANY_S)
        faults.relay.refuse_writes(500, None)
        failing = refused_in_a_window(faults.relay, FAILING_S)
    finally:
        faults.relay.restore()
    settled(faults, ns, specs, recorder)
    log = faults.run.log()[len(log_before) :]
    print(
        f"refused writes: {too_many} in {TOO_MANY_S:.0f}s of 429 (Retry-After {RETRY_AFTER_S}s),"
        f" {failing} in {FAILING_S:.0f}s of 500"
    )
    assert "the API server asks to wait 2s (429 TooManyRequests): reconciles held" in log
    # At most one round of the workers per Retry-After (a round: each worker's write in
    # flight, and the first write of each reconcile it then starts).
    rounds = TOO_MANY_S / RETRY_AFTER_S + 1
    assert too_many <= rounds * 4 * 2, too_many
    # 500s: all workers hold 0.5 s, 1 s, 2 s, ... (doubling with each failure in a row).
    assert "the API server fails; waiting" in log
    holds = 1 + len([s for s in (0.5, 1, 2, 4, 8) if s < FAILING_S])
    assert failing <= holds * 4 * 2, failing
