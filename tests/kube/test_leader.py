"""Leader election: what to do about a Lease (pure, with a fake clock), and the elector's
loop over an in-memory Lease store that can be made to fail. Two electors against the
real API server: tests/e2e/test_kube_leader.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.leader import (
    Action,
    LeaderElector,
    acquired,
    decide,
    micro_time,
    observe,
    read_record,
    released,
    renewed,
)

AT = datetime(2026, 12, 2, 18, 0, 0, 123456, tzinfo=UTC)


def lease(
    holder: str,
    *,
    seconds: int = 15,
    renew: str = "2026-12-02T18:00:00.000000Z",
    rv: str = "7",
    transitions: int = 2,
) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "netpol", "namespace": "system", "resourceVersion": rv},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": seconds,
            "acquireTime": "2026-12-02T17:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": transitions,
        },
    }


def action(
    lease_obj: dict[str, Any] | None, *, seen_at: float, now: float, leading: bool = False
) -> Action:
    return decide(observe(None, lease_obj, seen_at), identity="me", now=now, leading=leading)


def test_no_lease_or_a_released_one_is_taken_at_once() -> None:
    assert action(None, seen_at=0, now=0) is Action.ACQUIRE
    assert action(lease("", seconds=1), seen_at=100, now=100) is Action.ACQUIRE


def test_a_current_lease_of_another_is_waited_on_until_it_stops_changing_for_its_duration() -> None:
    theirs = lease("other", seconds=15)
    seen = observe(None, theirs, 100.0)
    assert decide(seen, identity="me", now=100.0, leading=False) is Action.WAIT
    assert (
        decide(observe(seen, theirs, 114.9), identity="me", now=114.9, leading=False) is Action.WAIT
    )
    assert (
        decide(observe(seen, theirs, 115.1), identity="me", now=115.1, leading=False)
        is Action.ACQUIRE
    )


def test_expiry_is_measured_on_our_clock_from_each_change_not_from_renew_time() -> None:
    # The holder's clock is a day behind ours: its renewTime looks ancient. It renews.
    first = observe(None, lease("other", renew="2026-12-01T18:00:00.000000Z", rv="7"), 100.0)
    again = observe(first, lease("other", renew="2026-12-01T18:00:10.000000Z", rv="8"), 112.0)
    assert again.at == 112.0  # a change: the clock starts again
    assert decide(again, identity="me", now=120.0, leading=False) is Action.WAIT
    unchanged = observe(again, lease("other", renew="2026-12-01T18:00:10.000000Z", rv="8"), 126.0)
    assert unchanged.at == 112.0
    assert decide(unchanged, identity="me", now=127.1, leading=False) is Action.ACQUIRE


def test_our_own_lease_is_renewed() -> None:
    assert action(lease("me"), seen_at=0, now=1000, leading=True) is Action.RENEW
    # After a restart with the same identity, too (client-go: IsLeader is the holder).
    assert action(lease("me"), seen_at=0, now=1, leading=False) is Action.RENEW


def test_a_leader_that_finds_another_holder_or_no_lease_has_lost() -> None:
    assert action(lease("other"), seen_at=0, now=1, leading=True) is Action.LOST
    assert action(lease("other"), seen_at=0, now=100, leading=True) is Action.LOST
    assert action(lease("", seconds=1), seen_at=0, now=1, leading=True) is Action.LOST
    assert action(None, seen_at=0, now=1, leading=True) is Action.LOST


def test_acquiring_counts_a_transition_and_keeps_the_version_read() -> None:
    body = acquired(
        lease("other", transitions=2),
        identity="me",
        namespace="system",
        name="netpol",
        lease_seconds=15.0,
        at=AT,
    )
    assert body["metadata"]["resourceVersion"] == "7"  # a stale takeover fails with Conflict
    assert body["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T18:00:00.123456Z",
        "renewTime": "2026-12-02T18:00:00.123456Z",
        "leaseTransitions": 3,
    }
    created = acquired(
        None, identity="me", namespace="system", name="netpol", lease_seconds=15.0, at=AT
    )
    assert created["metadata"] == {"name": "netpol", "namespace": "system"}
    assert created["spec"]["leaseTransitions"] == 0
    assert read_record(created) is not None


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    body = renewed(lease("me", transitions=4), identity="me", lease_seconds=15.0, at=AT)
    assert body["spec"]["acquireTime"] == "2026-12-02T17:00:00.000000Z"
    assert body["spec"]["renewTime"] == micro_time(AT)
    assert body["spec"]["leaseTransitions"] == 4
    assert body["metadata"]["resourceVersion"] == "7"


def test_releasing_leaves_no_holder_and_a_one_second_lease() -> None:
    body = released(lease("me"), at=AT)
    assert body["spec"]["holderIdentity"] == ""
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["metadata"]["resourceVersion"] == "7"
    # Another elector takes a released lease at its next check.
    assert action(body, seen_at=50, now=50) is Action.ACQUIRE


def test_the_timings_must_leave_the_leader_time_to_stop_first() -> None:
    with pytest.raises(ValueError, match="lease_seconds > renew_deadline_seconds"):
        LeaderElector(
            LeaseServer(),
            namespace="n",
            name="l",
            identity="me",
            lease_seconds=10,
            renew_deadline_seconds=10,
        )  # type: ignore[arg-type]


# --- the elector's loop over an in-memory Lease store ----------------------------------------


class LeaseServer:
    """get/create/replace of Leases with the API server's resourceVersion checks; ``down``
    makes every request fail as a lost connection would."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False
        self.lock = threading.Lock()

    def with_timeout(self, seconds: float) -> LeaseServer:
        return self

    def _check(self, kind: kinds.Kind) -> None:
        assert kind == kinds.LEASE
        if self.down:
            raise ConnectionRefusedError("connection refused")

    def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            self._check(kind)
            if (namespace, name) not in self.leases:
                raise errors.NotFound(f"leases {name!r} not found")
            return dict(self.leases[namespace, name])

    def create(self, kind: kinds.Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._check(kind)
            name = body["metadata"]["name"]
            if (namespace, name) in self.leases:
                raise errors.AlreadyExists(f"leases {name!r} already exists")
            return self._store(namespace, name, body)

    def replace(
        self, kind: kinds.Kind, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        with self.lock:
            self._check(kind)
            current = self.leases.get((namespace, name))
            if current is None:
                raise errors.NotFound(f"leases {name!r} not found")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise errors.Conflict("the object has been modified")
            return self._store(namespace, name, body)

    def _store(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        self.leases[namespace, name] = stored
        return dict(stored)

    def holder(self) -> str | None:
        with self.lock:
            current = self.leases.get(("system", "netpol"))
            return None if current is None else current["spec"]["holderIdentity"]


class Callbacks:
    def __init__(self, name: str, log: list[str], changed: threading.Condition) -> None:
        self.name = name
        self.log = log
        self.changed = changed

    def started(self) -> None:
        with self.changed:
            self.log.append(f"{self.name} started")
            self.changed.notify_all()

    def stopped(self) -> None:
        with self.changed:
            self.log.append(f"{self.name} stopped")
            self.changed.notify_all()


def elector(server: LeaseServer, identity: str) -> LeaderElector:
    return LeaderElector(
        server,  # type: ignore[arg-type]
        namespace="system",
        name="netpol",
        identity=identity,
        # Short, but long enough that a busy machine's scheduling does not lose the lease.
        lease_seconds=3.0,
        renew_deadline_seconds=2.0,
        retry_seconds=0.05,
    )


def wait_for(changed: threading.Condition, log: list[str], *expected: str) -> None:
    """Until the callbacks have said ``expected``, in that order."""
    with changed:
        assert changed.wait_for(lambda: len(log) >= len(expected), 10), f"only {log}"
        assert log == list(expected)


def test_a_leader_cut_off_from_the_api_stops_leading_and_stands_again() -> None:
    server = LeaseServer()
    log: list[str] = []
    changed = threading.Condition()
    a = elector(server, "a")
    calls = Callbacks("a", log, changed)
    a.start(calls.started, calls.stopped)
    try:
        wait_for(changed, log, "a started")
        assert a.is_leader
        assert server.holder() == "a"
        server.down = True
        wait_for(changed, log, "a started", "a stopped")
        assert not a.is_leader
        server.down = False
        wait_for(changed, log, "a started", "a stopped", "a started")  # it stands again
    finally:
        a.stop()
    assert server.holder() == ""  # released on stop


def test_two_electors_one_leads_and_a_clean_stop_hands_over() -> None:
    server = LeaseServer()
    log: list[str] = []
    changed = threading.Condition()
    a, b = elector(server, "a"), elector(server, "b")
    a_calls, b_calls = Callbacks("a", log, changed), Callbacks("b", log, changed)
    a.start(a_calls.started, a_calls.stopped)
    wait_for(changed, log, "a started")
    b.start(b_calls.started, b_calls.stopped)
    try:
        threading.Event().wait(0.3)  # b checks a few times, and waits
        assert not b.is_leader
        assert b.holder == "a"
        a.stop()
        wait_for(changed, log, "a started", "a stopped", "b started")
        assert server.holder() == "b"
        assert server.leases["system", "netpol"]["spec"]["leaseTransitions"] == 1
    finally:
        b.stop()
        a.stop()
