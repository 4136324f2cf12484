"""Leader election against the real kube-apiserver: of two electors one leads; a clean stop
hands the Lease over at the other's next check (released, not left to expire); a killed
leader (no release) is replaced once its Lease has expired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane, die_with_parent

from tests.e2e.harness import REPO_ROOT
from tests.e2e.test_reconciler import eventually
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.leader import LeaderElector
from webhook.kube.rest import Rest

WAIT_S = 30.0

# A second process standing for the same Lease, killed with SIGKILL mid-term: what a crashed
# or OOM-killed replica leaves behind.
ELECTOR_PROCESS = """
import sys, threading
from webhook.kube.leader import LeaderElector
from webhook.kube.rest import Rest

kubeconfig, namespace, name, identity = sys.argv[1:5]
elector = LeaderElector(
    Rest.from_config(kubeconfig), namespace=namespace, name=name, identity=identity,
    lease_seconds=4.0, renew_deadline_seconds=3.0, retry_seconds=0.5,
)
elector.start(lambda: print("leading", flush=True), lambda: print("stopped", flush=True))
threading.Event().wait()
"""


@pytest.fixture(scope="module")
def rest(control_plane: ControlPlane) -> Iterator[Rest]:
    rest = Rest.from_config(control_plane.admin_kubeconfig)
    yield rest
    rest.close()


class Log:
    def __init__(self) -> None:
        self.entries: list[str] = []
        self.changed = threading.Condition()

    def callbacks(self, who: str) -> tuple[Any, Any]:
        def say(what: str) -> None:
            with self.changed:
                self.entries.append(f"{who} {what}")
                self.changed.notify_all()

        return (lambda: say("started")), (lambda: say("stopped"))

    def wait_for(self, *expected: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.entries) >= len(expected), WAIT_S), (
                f"only {self.entries}"
            )
            assert self.entries == list(expected)


class CountingLeaseReads(Rest):
    """The real client, counting an elector's reads of its Lease: each is one check."""

    reads = 0

    def with_timeout(self, timeout_seconds: float) -> Rest:
        return self  # the elector's own timeout does not matter here; its reads do

    def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any]:
        if kind == kinds.LEASE:
            self.reads += 1
        return super().get(kind, namespace, name)


def checked(rest: CountingLeaseReads, times: int) -> None:
    start = rest.reads
    eventually(lambda: rest.reads >= start + times, f"{times} checks of the Lease")


def holder(rest: Rest, namespace: str, name: str) -> str:
    try:
        return str(rest.get(kinds.LEASE, namespace, name)["spec"].get("holderIdentity") or "")
    except errors.NotFound:
        return ""


def test_one_of_two_leads_and_a_clean_stop_hands_over_at_once(rest: Rest, namespace: str) -> None:
    # A long lease: the handover below can only be this quick because the lease was released.
    timings = {"lease_seconds": 60.0, "renew_deadline_seconds": 40.0, "retry_seconds": 0.5}
    a = LeaderElector(rest, namespace=namespace, name="netpol", identity="a", **timings)
    b_rest = CountingLeaseReads(rest.cluster)
    b = LeaderElector(b_rest, namespace=namespace, name="netpol", identity="b", **timings)
    log = Log()
    a.start(*log.callbacks("a"))
    log.wait_for("a started")
    b.start(*log.callbacks("b"))
    try:
        checked(b_rest, 3)
        assert log.entries == ["a started"]
        assert a.is_leader and not b.is_leader
        assert holder(rest, namespace, "netpol") == "a"

        a.stop()
        # Within WAIT_S, half the lease: b did not wait for it to expire.
        log.wait_for("a started", "a stopped", "b started")
        assert b.is_leader and not a.is_leader
        lease = rest.get(kinds.LEASE, namespace, "netpol")
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
    finally:
        b.stop()
        a.stop()
    assert holder(rest, namespace, "netpol") == ""  # b released it too


def test_a_killed_leader_is_replaced_after_its_lease_expires(
    rest: Rest, namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    out = tmp_path / "elector.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                ELECTOR_PROCESS,
                str(control_plane.admin_kubeconfig),
                namespace,
                "netpol",
                "killed",
            ],
            cwd=REPO_ROOT,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509  (only a prctl call)
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while holder(rest, namespace, "netpol") != "killed":
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"the other process never led: {out.read_text()}"
            time.sleep(0.2)

        survivor_rest = CountingLeaseReads(rest.cluster)
        survivor = LeaderElector(
            survivor_rest,
            namespace=namespace,
            name="netpol",
            identity="survivor",
            lease_seconds=4.0,
            renew_deadline_seconds=3.0,
            retry_seconds=0.5,
        )
        log = Log()
        survivor.start(*log.callbacks("survivor"))
        try:
            checked(survivor_rest, 3)
            assert log.entries == []  # the lease is held and renewed: the survivor waits
            assert holder(rest, namespace, "netpol") == "killed"

            os.kill(process.pid, signal.SIGKILL)  # no release
            process.wait(10)
            log.wait_for("survivor started")
            lease = rest.get(kinds.LEASE, namespace, "netpol")
            assert lease["spec"]["holderIdentity"] == "survivor"
            assert lease["spec"]["leaseTransitions"] == 1
        finally:
            survivor.stop()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert "leading" in out.read_text()
