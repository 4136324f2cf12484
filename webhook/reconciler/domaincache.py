"""The addresses each domain name has, kept across DNS answers (README "Egress by domain name").

One ``DomainTracker`` per reconciler holds every name any shared domain NetworkPolicy needs,
once for the whole cluster however many sandboxes name it. It does no I/O and reads no
clock: the refresher (``webhook.reconciler.domains``) gives it each resolver answer and the
time, and asks it which names are due.

- A name is asked again when its answer's TTL runs out, clamped to [floor, ceiling], a
  little early (jitter, so names answered together do not come due together).
- An address stays allowed for ``grace`` seconds after the last answer that held it: a
  sandbox that resolved it a moment before a rotation keeps its connection, and an
  address a CDN hands out now and then is not added and removed at each answer.
- A failed lookup (timeout, SERVFAIL, garbage) changes no address: the ones seen stay
  until their grace runs out, and nothing is ever added but what an answer held. A name
  with no address (NXDOMAIN, no A or AAAA) has its addresses leave as their grace ends;
  one that never resolved has none (fail closed). Failures are retried from the floor,
  doubling to the ceiling.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

# Errors a resolution can end in. The first two say the name has no address; the others
# say the resolver could not tell.
NXDOMAIN = "nxdomain"
NO_ADDRESS = "no-address"
TIMEOUT = "timeout"
SERVFAIL = "servfail"
BAD_ANSWER = "bad-answer"
NO_SUCH_NAME = (NXDOMAIN, NO_ADDRESS)


@dataclass(frozen=True)
class Resolution:
    """What the resolver said about one name: its A and AAAA addresses after following
    CNAMEs, and the lowest TTL along the way; or an error (with the addresses of the
    family that did answer, when only one failed)."""

    addresses: tuple[str, ...] = ()
    ttl: float | None = None
    error: str | None = None
    cnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timing:
    ttl_floor: float = 30.0
    ttl_ceiling: float = 300.0
    grace: float = 300.0
    jitter: float = 0.1  # a refresh comes up to this fraction of its interval early
    max_addresses: int = 32  # per name: past it, the longest unseen leave first


@dataclass(frozen=True)
class NameState:
    """What a name's shared NetworkPolicy holds for it now."""

    addresses: tuple[str, ...]  # allowed now (before the entry's answer filter), sorted
    leaving: Mapping[str, int]  # of those, not in the last answer: when last seen (unix s)
    error: str | None  # the last lookup's error, if it failed
    cnames: tuple[str, ...] = ()

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {"addresses": list(self.addresses)}
        if self.leaving:
            out["leaving"] = dict(sorted(self.leaving.items()))
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class _Name:
    users: set[Hashable] = field(default_factory=set)
    last_seen: dict[str, float] = field(default_factory=dict)
    latest: frozenset[str] = frozenset()
    error: str | None = None
    cnames: tuple[str, ...] = ()
    resolved: bool = False
    failures: int = 0
    next_at: float = 0.0


def sort_addresses(addresses: Iterable[str]) -> list[str]:
    parsed = {ipaddress.ip_address(a) for a in addresses}
    return [str(ip) for ip in sorted(parsed, key=lambda ip: (ip.version, int(ip)))]


class DomainTracker:
    def __init__(self, timing: Timing, *, random: Callable[[], float]) -> None:
        self.timing = timing
        self._random = random
        self._names: dict[str, _Name] = {}
        self._wants: dict[Hashable, frozenset[str]] = {}
        self._lock = threading.Lock()

    # --- who needs which names --------------------------------------------------------------

    def want(self, user: Hashable, names: Iterable[str], now: float) -> list[str]:
        """``user`` (a shared policy's request) needs exactly ``names`` now; the names new to
        the tracker are returned, due at once. Names no one needs are forgotten."""
        wanted = frozenset(names)
        with self._lock:
            before = self._wants.get(user, frozenset())
            if wanted:
                self._wants[user] = wanted
            else:
                self._wants.pop(user, None)
            added = []
            for name in wanted - before:
                entry = self._names.get(name)
                if entry is None:
                    entry = self._names[name] = _Name(next_at=now)
                    added.append(name)
                entry.users.add(user)
            for name in before - wanted:
                entry = self._names.get(name)
                if entry is not None:
                    entry.users.discard(user)
                    if not entry.users:
                        del self._names[name]
            return sorted(added)

    def users(self, name: str) -> set[Hashable]:
        with self._lock:
            entry = self._names.get(name)
            return set(entry.users) if entry else set()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    # --- when to ask ------------------------------------------------------------------------

    def due(self, now: float) -> list[str]:
        with self._lock:
            return sorted(n for n, e in self._names.items() if e.next_at <= now)

    def wake_at(self) -> float | None:
        """The next moment something changes by itself: a name due, or an address whose
        grace ends."""
        with self._lock:
            times = [e.next_at for e in self._names.values()]
            for entry in self._names.values():
                times += [
                    seen + self.timing.grace
                    for address, seen in entry.last_seen.items()
                    if address not in entry.latest
                ]
            return min(times) if times else None

    # --- what the resolver said -------------------------------------------------------------

    def record(self, name: str, resolution: Resolution, now: float) -> bool:
        """Take one answer; True when what the name's policy holds changed."""
        with self._lock:
            entry = self._names.get(name)
            if entry is None:
                return False  # no longer wanted
            before = self._visible(entry)
            timing = self.timing
            if resolution.error is None and resolution.addresses:
                for address in resolution.addresses:
                    entry.last_seen[address] = now
                entry.latest = frozenset(resolution.addresses)
                entry.error = None
                entry.cnames = resolution.cnames
                entry.failures = 0
                ttl = resolution.ttl if resolution.ttl is not None else timing.ttl_floor
                interval = min(max(ttl, timing.ttl_floor), timing.ttl_ceiling)
            else:
                error = resolution.error or NO_ADDRESS
                for address in resolution.addresses:  # a partial answer: one family failed
                    entry.last_seen[address] = now
                entry.latest |= frozenset(resolution.addresses)
                if error in NO_SUCH_NAME:
                    entry.latest = frozenset()  # what it had leaves as its grace ends
                    entry.cnames = resolution.cnames
                entry.error = error
                entry.failures += 1
                interval = min(
                    timing.ttl_floor * 2 ** min(entry.failures - 1, 16), timing.ttl_ceiling
                )
            entry.resolved = True
            entry.next_at = now + interval * (1 - timing.jitter * self._random())
            self._expire(entry, now)
            return self._visible(entry) != before

    def seed(self, name: str, status: Mapping[str, object], now: float) -> None:
        """A name's last known state from its shared policy's status (a new leader starts
        where the last one left off, not from nothing: no address drops at a takeover)."""
        with self._lock:
            entry = self._names.get(name)
            if entry is None or entry.resolved or entry.last_seen:
                return
            addresses = status.get("addresses")
            leaving = status.get("leaving")
            leaving = leaving if isinstance(leaving, Mapping) else {}
            for address in addresses if isinstance(addresses, list) else ():
                if not _is_address(address):
                    continue
                since = leaving.get(address)
                entry.last_seen[address] = float(since) if isinstance(since, int | float) else now
            entry.latest = frozenset(a for a in entry.last_seen if a not in leaving)
            error = status.get("error")
            entry.error = error if isinstance(error, str) else None
            entry.resolved = True  # known; still due now, to be asked again

    def expire(self, now: float) -> list[str]:
        """Let addresses whose grace has ended go; the names that changed."""
        with self._lock:
            changed = []
            for name, entry in self._names.items():
                before = len(entry.last_seen)
                self._expire(entry, now)
                if len(entry.last_seen) != before:
                    changed.append(name)
            return changed

    def _expire(self, entry: _Name, now: float) -> None:
        grace = self.timing.grace
        for address, seen in list(entry.last_seen.items()):
            if now - seen >= grace:
                del entry.last_seen[address]
        entry.latest = frozenset(a for a in entry.latest if a in entry.last_seen)
        extra = len(entry.last_seen) - self.timing.max_addresses
        if extra > 0:
            oldest = sorted(
                (a for a in entry.last_seen if a not in entry.latest),
                key=lambda a: entry.last_seen[a],
            )
            for address in oldest[:extra]:
                del entry.last_seen[address]

    # --- what the policy holds --------------------------------------------------------------

    def state(self, name: str) -> NameState | None:
        """None until the name has been resolved (or seeded) once."""
        with self._lock:
            entry = self._names.get(name)
            if entry is None or not entry.resolved:
                return None
            return self._state(entry)

    def _state(self, entry: _Name) -> NameState:
        addresses = sort_addresses(entry.last_seen)
        leaving = {a: int(entry.last_seen[a]) for a in addresses if a not in entry.latest}
        return NameState(tuple(addresses), leaving, entry.error, entry.cnames)

    def _visible(self, entry: _Name) -> object:
        if not entry.resolved:
            return None
        return self._state(entry)


def _is_address(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
