"""Egress by domain name on the real API server, with the real agent-sandbox controller.

A control plane of this module's own (``with_agent_sandbox``): the real agent-sandbox
controller (warm pool and claims), the fake kubelet, and ``run`` under deploy/'s RBAC with
deploy/'s webhooks, resolving names with a DNS server of the test's own on loopback
(``--dns-server``), with short timings: TTL floor 1 s, ceiling 2 s, grace 4 s.

What a user would notice: a CodeInterpreter with ``domains`` gets, for a claimed warm
session and a direct Sandbox alike, its own NetworkPolicy plus one shared policy holding
what the names resolve to; the direct pod runs only once both exist; a rotation is one
write; a rebinding answer or a name that does not resolve is dropped, told in Events and
found by ``audit``. Every pod and policy change is recorded, and no moment finds a
runnable sandbox pod selected by nothing or by something looser than its policy.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.agentsandbox import AgentSandboxBuild
from agentcube_netpol_dev.controlplane import Binaries
from agentcube_netpol_dev.testdns import DnsServer

from tests.builders import code_interpreter
from tests.cli.test_exit_codes import agentcube_netpol
from tests.e2e.harness import as_json
from tests.e2e.invariant import (
    Recorder,
    breaches,
    domain_policy_within,
    is_runnable,
    is_sandbox_pod,
)
from tests.e2e.test_reconciler import eventually, policy_of, sandbox
from tests.e2e.test_reconciler_warm_path import (
    Warm,
    adopted_pod,
    claim_session,
    with_agent_sandbox,
)
from webhook.api import kinds
from webhook.api.exitcodes import EXIT_FINDINGS
from webhook.policy.domains import domain_entries, domain_set_key
from webhook.reconciler.domainplan import selected_names, status_of

WAIT_S = 60.0
GRACE_S = 4.0
PYPI = ["203.0.113.7", "2001:db8::7"]
POLICY = {
    "mode": "Restricted",
    "egress": [
        {"cidrs": ["198.51.100.0/24"], "ports": [{"port": 8443}]},
        {"domains": ["pypi.test", "files.pypi.test"], "ports": [{"port": 443}]},
        {"domains": ["rebind.test", "typo.test"], "ports": [{"port": 443}]},
    ],
}
# Every address the DNS server may answer that a policy may hold; anything else is a breach.
PUBLIC = {"203.0.113.7", "203.0.113.8", "2001:db8::7", "198.51.100.9"}


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.set("pypi.test", a=[PYPI[0]], aaaa=[PYPI[1]], ttl=1)
        server.cname("files.pypi.test", "cdn.pypi.test", ttl=1)
        server.set("cdn.pypi.test", a=["198.51.100.9"], ttl=1)
        # A tenant's name pointed at the metadata service, the loopback and a private host.
        server.set("rebind.test", a=["169.254.169.254", "127.0.0.1", "10.0.0.5"], ttl=1)
        yield server  # typo.test: NXDOMAIN


@pytest.fixture(scope="module")
def warm(
    binaries: Binaries,
    agent_sandbox_build: AgentSandboxBuild,
    dns: DnsServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Warm]:
    run_args = (
        f"--dns-server={dns.address}",
        "--domain-ttl-floor=1",
        "--domain-ttl-ceiling=2",
        f"--domain-grace={GRACE_S:g}",
    )
    with with_agent_sandbox(
        binaries, agent_sandbox_build, tmp_path_factory.mktemp("domains"), *run_args
    ) as made:
        yield made


@pytest.fixture
def ns(warm: Warm) -> Iterator[str]:
    name = f"domains-{uuid.uuid4().hex[:6]}"
    warm.kube.ok("create", "namespace", name)
    yield name
    warm.kube("delete", "namespace", name, "--wait=false")


def shared_name(ns: str) -> str:
    return f"netpol-domains.{domain_set_key(ns, domain_entries(POLICY))}"


def host_blocks(policy: dict[str, Any]) -> set[str]:
    return {
        peer["ipBlock"]["cidr"].split("/")[0]
        for rule in policy["spec"].get("egress") or []
        for peer in rule["to"]
        if "ipBlock" in peer
    }


def check_no_breach(warm: Warm, ns: str, events: list[Any]) -> None:
    mine = [e for e in events if (e[3].get("metadata") or {}).get("namespace") == ns]
    own: dict[str, Any] = {}
    baselines: list[Any] = []  # a warm pool's: lets in the control plane, nothing out
    for _, kind, _, obj in mine:
        labels = obj["metadata"].get("labels") or {}
        if kind == "NetworkPolicy" and labels.get("netpol.agentcube.io/role") == "sandbox":
            own[labels[kinds.LABEL_SANDBOX_NAME]] = obj["spec"]
        if kind == "NetworkPolicy" and labels.get("netpol.agentcube.io/role") == "baseline":
            baselines.append(obj["spec"])

    def allowed(pod: Any) -> list[Any]:
        name = (pod["metadata"].get("labels") or {}).get(kinds.LABEL_SANDBOX_NAME, "")
        return [*([own[name]] if name in own else []), *baselines]

    found = breaches(
        mine,
        allowed_specs=allowed,
        also_allowed=lambda pod, policy: domain_policy_within(
            policy, PUBLIC, [{"protocol": "TCP", "port": 443}]
        ),
    )
    assert found == []
    assert any(e[1] == "Pod" and is_sandbox_pod(e[3]) and is_runnable(e[3]) for e in mine)


def interpreter(warm: Warm, ns: str, name: str, *, warm_pool_size: int) -> dict[str, Any]:
    from tests.e2e.test_agent_sandbox import is_running_and_ready, warm_pool_for
    from webhook.reconciler.agentsandbox import name_hash

    created: dict[str, Any] = json.loads(
        warm.kube.ok(
            "create", "-o", "json", "-f", "-",
            input=as_json(code_interpreter(name, ns, POLICY, warm_pool_size=warm_pool_size)),
        )
    )  # fmt: skip
    if warm_pool_size:
        warm.kube.ok("create", "-f", "-", input=as_json(*warm_pool_for(created)))
        label = f"agents.x-k8s.io/sandbox-template-ref-hash={name_hash(name)}"
        eventually(
            lambda: any(
                is_running_and_ready(p)
                for p in warm.kube.get("pods", "-n", ns, "-l", label)["items"]
            ),
            "the warm pool running",
            WAIT_S,
        )
    return created


def test_both_paths_share_one_policy_holding_the_names_and_the_pod_waits_for_it(
    warm: Warm, ns: str
) -> None:
    py = interpreter(warm, ns, "py", warm_pool_size=1)
    recorder = Recorder(warm.rest)
    recorder.start()
    claim = claim_session(warm, ns, py)
    claimed = claim["metadata"]["name"]
    adopted_pod(warm, ns, claim)
    direct = "py-direct01"
    warm.kube.ok("create", "-f", "-", input=as_json(sandbox(ns, direct, "py")))

    def both_selected() -> dict[str, Any] | None:
        shared = policy_of(warm.kube, ns, shared_name(ns))
        if shared is None or selected_names(shared) != sorted([claimed, direct]):
            return None
        return shared if host_blocks(shared) >= {*PYPI, "198.51.100.9"} else None

    shared = eventually(both_selected, "one shared policy selecting both sessions", WAIT_S)

    def direct_running() -> bool:
        result = warm.kube("get", "pod", direct, "-n", ns, "-o", "json")
        return result.returncode == 0 and is_runnable(json.loads(result.stdout))

    eventually(direct_running, "the direct pod released", WAIT_S)
    events = recorder.stop()

    # What the namespace holds: each session's own policy, naming the set, and one shared.
    policies = warm.kube.get("networkpolicies", "-n", ns)["items"]
    names = sorted(p["metadata"]["name"] for p in policies)
    assert names == sorted([claimed, direct, shared_name(ns), "netpol-baseline.py"])
    for name in (claimed, direct):
        own = policy_of(warm.kube, ns, name)
        assert own is not None
        assert own["metadata"]["labels"][kinds.LABEL_DOMAIN_SET] == shared_name(ns).split(".")[1]
        assert host_blocks(own) == {"198.51.100.0"}  # the cidrs entry only
    assert shared["spec"]["egress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [
                {"ipBlock": {"cidr": "198.51.100.9/32"}},
                {"ipBlock": {"cidr": "203.0.113.7/32"}},
                {"ipBlock": {"cidr": "2001:db8::7/128"}},
            ],
        }
    ]  # rebind.test and typo.test: nothing

    # The direct pod left its gate only once the shared policy selected it with answers.
    latest_shared: dict[str, Any] | None = None
    for _, kind, _, obj in events:
        if obj["metadata"].get("namespace") != ns:
            continue
        if kind == "NetworkPolicy" and obj["metadata"]["name"] == shared_name(ns):
            latest_shared = obj
        if kind == "Pod" and obj["metadata"]["name"] == direct and is_runnable(obj):
            assert latest_shared is not None and direct in selected_names(latest_shared)
            assert host_blocks(latest_shared) >= set(PYPI)
            break
    else:
        raise AssertionError("the direct pod never ran")
    check_no_breach(warm, ns, events)


def test_a_rotation_is_one_write_and_the_old_address_leaves_after_the_grace(
    warm: Warm, ns: str, dns: DnsServer
) -> None:
    interpreter(warm, ns, "rot", warm_pool_size=0)
    sessions = [f"rot-s{i}" for i in range(3)]
    for name in sessions:
        warm.kube.ok("create", "-f", "-", input=as_json(sandbox(ns, name, "rot")))
    name = shared_name(ns)
    eventually(
        lambda: (
            (p := policy_of(warm.kube, ns, name)) is not None
            and selected_names(p) == sessions
            and PYPI[0] in host_blocks(p)
        ),
        "the shared policy",
        WAIT_S,
    )
    own_versions = {s: policy_of(warm.kube, ns, s)["metadata"]["resourceVersion"] for s in sessions}  # type: ignore[index]
    recorder = Recorder(warm.rest)
    recorder.start()
    listed = len(recorder.recorded)  # what existed, as ADDED; the changes come after
    try:
        dns.set("pypi.test", a=["203.0.113.8"], aaaa=[PYPI[1]], ttl=1)
        rotated_at = time.monotonic()
        both = eventually(
            lambda: (
                (p := policy_of(warm.kube, ns, name)) is not None
                and {"203.0.113.7", "203.0.113.8"} <= host_blocks(p)
                and p
            ),
            "the new address added, the old one kept",
            WAIT_S,
        )
        added_s = time.monotonic() - rotated_at
        leaving = status_of(both)["pypi.test"]["leaving"]
        assert list(leaving) == ["203.0.113.7"]
        eventually(
            lambda: (
                (p := policy_of(warm.kube, ns, name)) is not None
                and "203.0.113.7" not in host_blocks(p)
            ),
            "the old address gone after the grace",
            WAIT_S,
        )
        gone_s = time.monotonic() - rotated_at
    finally:
        dns.set("pypi.test", a=[PYPI[0]], aaaa=[PYPI[1]], ttl=1)
        events = recorder.stop()
    assert added_s < 1 + 2 + 5  # the TTL floor, the ceiling, and a reconcile
    assert gone_s >= GRACE_S - 1  # not before the grace window
    writes = [
        e for e in events[listed:]
        if e[1] == "NetworkPolicy" and e[3]["metadata"].get("namespace") == ns
    ]  # fmt: skip
    assert {e[3]["metadata"]["name"] for e in writes} == {name}  # no sandbox's own policy
    assert len(writes) <= 3  # added; the old one gone (the status write may be the same)
    for session in sessions:
        own = policy_of(warm.kube, ns, session)
        assert own is not None and own["metadata"]["resourceVersion"] == own_versions[session]
    print(f"\nrotation: new address in {added_s:.1f}s, old gone {gone_s:.1f}s after, "
          f"{len(writes)} writes for {len(sessions)} sandboxes")  # fmt: skip


def test_rebinding_answers_and_unresolved_names_are_dropped_told_and_audited(
    warm: Warm, ns: str, tmp_path: Path
) -> None:
    interpreter(warm, ns, "reb", warm_pool_size=0)
    warm.kube.ok("create", "-f", "-", input=as_json(sandbox(ns, "reb-s1", "reb")))
    name = shared_name(ns)
    shared = eventually(
        lambda: (
            (p := policy_of(warm.kube, ns, name)) is not None
            and "typo.test" in status_of(p)
            and not status_of(p)["typo.test"].get("pending")
            and p
        ),
        "the shared policy with every name asked",
        WAIT_S,
    )
    status = status_of(shared)
    assert status["typo.test"] == {"addresses": [], "error": "nxdomain"}
    assert status["rebind.test"]["dropped"] == {
        "10.0.0.5": "a private address (RFC 1918)",
        "127.0.0.1": "loopback",
        "169.254.169.254": "the cloud metadata address",
    }
    assert not host_blocks(shared) & {"10.0.0.5", "127.0.0.1", "169.254.169.254"}

    def reasons() -> set[str]:
        found = warm.kube.get("events.events.k8s.io", "-n", ns)["items"]
        return {
            (e["regarding"]["kind"], e["reason"]) for e in found if e["reason"].startswith("Domain")
        }

    eventually(
        lambda: (
            reasons()
            >= {
                ("Sandbox", "DomainUnresolved"),
                ("Sandbox", "DomainAnswerDropped"),
                ("NetworkPolicy", "DomainUnresolved"),
                ("NetworkPolicy", "DomainAnswerDropped"),
            }
        ),
        "Events on the sandbox and on the shared policy",
        WAIT_S,
    )
    result = agentcube_netpol(
        "audit", "-n", ns, "-o", "json",
        "--kubeconfig", str(warm.control_plane.admin_kubeconfig), home=tmp_path,
    )  # fmt: skip
    findings = json.loads(result.stdout)["findings"]
    problems = sorted({(f["name"], f["problem"]) for f in findings})
    assert problems == [(name, "domain-answer-dropped"), (name, "domain-unresolved")]
    assert result.returncode == EXIT_FINDINGS
