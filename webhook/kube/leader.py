"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's ``leaderelection`` does.

Every replica runs an elector; one holds the Lease and only that one writes. The holder
renews every ``retry_seconds``; the others check as often (with jitter) and take the Lease
over once it has not changed for ``leaseDurationSeconds``, as they measure it on their own
clock from the moment they first saw it as it is (never by comparing the ``renewTime``
written there with their clock: the replicas' clocks may disagree). A holder that cannot
renew for ``renew_deadline_seconds`` stops leading, which is before anyone else may start
(``renew_deadline < lease``). Every write carries the resourceVersion it was decided on, so
of two electors that decide at once, one write fails with ``Conflict``: two never both
lead. On a clean shutdown the holder stops its work, then releases the Lease (no holder,
``leaseDurationSeconds: 1``, client-go's ``ReleaseOnCancel``), and a standby takes over at
its next check rather than a lease duration later.

What to do about a Lease is decided by pure functions (``decide``, ``acquired``,
``renewed``, ``released``) tested with a fake clock; ``LeaderElector`` is the thread around
them. After losing the Lease the elector stands again: ``on_started_leading`` and
``on_stopped_leading`` alternate, each called from the elector's thread, and must return
promptly (start or stop threads, no long work): the elector renews nothing while they run.
"""

from __future__ import annotations

import copy
import enum
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

logger = logging.getLogger(__name__)

LEASE_SECONDS = 15.0  # client-go's and controller-runtime's defaults
RENEW_DEADLINE_SECONDS = 10.0
RETRY_SECONDS = 2.0
JITTER_FACTOR = 1.2  # candidates wait retry * (1 + 1.2 * rand): client-go's JitterUntil
RELEASED_LEASE_SECONDS = 1
STOP_JOIN_SECONDS = 10.0

Clock = Callable[[], float]
WallClock = Callable[[], datetime]


class Action(enum.Enum):
    ACQUIRE = "acquire"  # no lease, a released one, or one that expired: take it
    RENEW = "renew"  # ours: write a fresh renewTime
    WAIT = "wait"  # another holds it and it is current
    LOST = "lost"  # we were leading and another holds it now


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder."""

    holder: str
    lease_seconds: int
    acquire_time: str
    renew_time: str
    transitions: int


def read_record(lease: Mapping[str, Any] | None) -> LeaseRecord | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


@dataclass(frozen=True)
class Observation:
    """A Lease record and when (local monotonic clock) it was first seen as it is."""

    record: LeaseRecord | None
    at: float


def observe(
    previous: Observation | None, lease: Mapping[str, Any] | None, now: float
) -> Observation:
    """The observation after reading ``lease`` at ``now``: unchanged record, unchanged time."""
    record = read_record(lease)
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(observation: Observation, *, identity: str, now: float, leading: bool) -> Action:
    """What to do about the Lease as last observed."""
    record = observation.record
    if record is None:
        return Action.LOST if leading else Action.ACQUIRE
    if record.holder == identity:
        return Action.RENEW
    if leading:
        return Action.LOST  # someone else holds it (or released it: we did not)
    if record.holder and observation.at + record.lease_seconds > now:
        return Action.WAIT
    return Action.ACQUIRE


def micro_time(at: datetime) -> str:
    """A ``MicroTime`` as the API server writes it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acquired(
    lease: Mapping[str, Any] | None,
    *,
    identity: str,
    namespace: str,
    name: str,
    lease_seconds: float,
    at: datetime,
) -> dict[str, Any]:
    """The Lease to write to take it over (or create it): held by ``identity`` from ``at``,
    one more transition; the resourceVersion read is kept, so a stale takeover fails."""
    now = micro_time(at)
    if lease is None:
        return {
            "apiVersion": kinds.LEASE.api_version,
            "kind": kinds.LEASE.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": _whole_seconds(lease_seconds),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
    previous = read_record(lease)
    body = _copy(lease)
    body["spec"].update(
        holderIdentity=identity,
        leaseDurationSeconds=_whole_seconds(lease_seconds),
        acquireTime=now,
        renewTime=now,
        leaseTransitions=(previous.transitions if previous else 0) + 1,
    )
    return body


def renewed(
    lease: Mapping[str, Any], *, identity: str, lease_seconds: float, at: datetime
) -> dict[str, Any]:
    """Our Lease with a fresh renewTime; acquireTime and transitions kept."""
    body = _copy(lease)
    body["spec"].update(
        holderIdentity=identity,
        leaseDurationSeconds=_whole_seconds(lease_seconds),
        renewTime=micro_time(at),
    )
    return body


def released(lease: Mapping[str, Any], *, at: datetime) -> dict[str, Any]:
    """Our Lease given up: no holder, expiring in a second (client-go's release)."""
    now = micro_time(at)
    body = _copy(lease)
    body["spec"].update(
        holderIdentity="",
        leaseDurationSeconds=RELEASED_LEASE_SECONDS,
        acquireTime=now,
        renewTime=now,
    )
    return body


def _copy(lease: Mapping[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(dict(lease))
    body.setdefault("spec", {})
    body.get("metadata", {}).pop("managedFields", None)
    return body


def _whole_seconds(seconds: float) -> int:
    return max(round(seconds), 1)


def default_identity() -> str:
    """Unique per process, readable per host: client-go's ``hostname_uuid``."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class LeaderElector:
    """Holds the Lease ``namespace/name`` while it can; says so through ``is_leader`` and
    the two callbacks given to ``start``."""

    def __init__(
        self,
        rest: Rest,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = LEASE_SECONDS,
        renew_deadline_seconds: float = RENEW_DEADLINE_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        clock: Clock = time.monotonic,
        wall_clock: WallClock = lambda: datetime.now(UTC),
    ) -> None:
        if not lease_seconds > renew_deadline_seconds > retry_seconds > 0:
            raise ValueError("need lease_seconds > renew_deadline_seconds > retry_seconds > 0")
        if not identity:
            raise ValueError("an elector needs an identity")
        # One request may not outlast the deadline it is meant to meet.
        self._rest = rest.with_timeout(renew_deadline_seconds / 2)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._lease: dict[str, Any] | None = None  # as last read or written
        self._observation: Observation | None = None
        self._leading = False
        self._renewed_at = 0.0  # when the last successful write was sent (local clock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_started: Callable[[], None] = _nothing
        self._on_stopped: Callable[[], None] = _nothing

    @property
    def is_leader(self) -> bool:
        """Leading, and renewed recently enough that nobody else can have taken over."""
        return self._leading and self._clock() - self._renewed_at < self.renew_deadline_seconds

    @property
    def holder(self) -> str:
        """Who held the Lease when this elector last looked ("" for nobody)."""
        record = self._observation.record if self._observation else None
        return record.holder if record else ""

    def start(
        self,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
    ) -> None:
        if self._thread is not None:
            raise RuntimeError("the elector is already started")
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop leading (``on_stopped_leading`` first) and release the Lease."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_JOIN_SECONDS)

    def _run(self) -> None:
        logger.info(
            "standing for leader of lease %s/%s as %s", self.namespace, self.name, self.identity
        )
        while not self._stopping.is_set():
            sent_at = self._clock()
            action, wrote = self._try_acquire_or_renew(sent_at)
            if wrote:
                self._renewed_at = sent_at
                if not self._leading:
                    self._leading = True
                    logger.info("became leader of lease %s/%s", self.namespace, self.name)
                    self._call(self._on_started)
            elif self._leading and (
                action is Action.LOST
                or self._clock() - self._renewed_at >= self.renew_deadline_seconds
            ):
                logger.warning(
                    "lost lease %s/%s (%s)",
                    self.namespace,
                    self.name,
                    f"held by {self.holder!r}"
                    if action is Action.LOST
                    else "renew deadline passed",
                )
                self._stop_leading()
            delay = self.retry_seconds
            if not self._leading:
                delay *= 1 + JITTER_FACTOR * random.random()
            self._stopping.wait(delay)
        if self._leading:
            self._stop_leading()
            self._release()

    def _stop_leading(self) -> None:
        self._leading = False
        self._call(self._on_stopped)

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.exception("leader election callback failed")

    def _try_acquire_or_renew(self, now: float) -> tuple[Action | None, bool]:
        """One round: what was decided, and whether our write (so our hold) went through."""
        try:
            # Fast path: the leader renews what it last wrote, one request.
            if self._leading and self._lease is not None:
                try:
                    self._write(renewed(self._lease, **self._renew_args()), now)
                    return Action.RENEW, True
                except errors.ApiError as exc:
                    logger.info("optimistic renew failed (%s); reading the lease", exc)
            try:
                self._lease = self._rest.get(kinds.LEASE, self.namespace, self.name)
            except errors.NotFound:
                self._lease = None
            self._observation = observe(self._observation, self._lease, now)
            action = decide(
                self._observation, identity=self.identity, now=now, leading=self._leading
            )
            if action is Action.WAIT or action is Action.LOST:
                return action, False
            if action is Action.ACQUIRE:
                self._write(
                    acquired(
                        self._lease,
                        identity=self.identity,
                        namespace=self.namespace,
                        name=self.name,
                        lease_seconds=self.lease_seconds,
                        at=self._wall_clock(),
                    ),
                    now,
                )
            elif self._lease is not None:  # RENEW
                self._write(renewed(self._lease, **self._renew_args()), now)
            return action, True
        except errors.ApiError as exc:
            if not isinstance(exc, errors.Conflict | errors.AlreadyExists):
                logger.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return None, False  # another elector wrote first, or the API failed: next round
        except Exception as exc:
            logger.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return None, False

    def _renew_args(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "lease_seconds": self.lease_seconds,
            "at": self._wall_clock(),
        }

    def _write(self, body: dict[str, Any], now: float) -> None:
        if "resourceVersion" in body.get("metadata", {}):
            written = self._rest.replace(kinds.LEASE, self.namespace, self.name, body)
        else:
            written = self._rest.create(kinds.LEASE, self.namespace, body)
        self._lease = written
        self._observation = Observation(read_record(written), now)

    def _release(self) -> None:
        if self._lease is None or read_record(self._lease) is None:
            return
        try:
            self._lease = self._rest.replace(
                kinds.LEASE, self.namespace, self.name, released(self._lease, at=self._wall_clock())
            )
            logger.info("released lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            # Someone else wrote it already, or the API is away: it expires on its own.
            logger.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)


def _nothing() -> None:
    pass
