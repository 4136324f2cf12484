"""The addresses each domain name has: TTL refresh, the grace window, failures, takeover.

A scripted resolver (a list of ``Resolution``s) and a clock the test moves.
"""

from __future__ import annotations

from webhook.reconciler.domaincache import (
    NXDOMAIN,
    SERVFAIL,
    TIMEOUT,
    DomainTracker,
    Resolution,
    Timing,
)

TIMING = Timing(ttl_floor=30, ttl_ceiling=300, grace=120, jitter=0.0)
USER = ("team-a", "netpol-domains.0123456789")


def tracker(timing: Timing = TIMING, rand: float = 0.0) -> DomainTracker:
    return DomainTracker(timing, random=lambda: rand)


def answer(*addresses: str, ttl: float = 60) -> Resolution:
    return Resolution(tuple(addresses), ttl)


def test_a_new_name_is_due_at_once_and_unknown_until_answered() -> None:
    t = tracker()
    assert t.want(USER, ["pypi.org"], now=1000) == ["pypi.org"]
    assert t.due(1000) == ["pypi.org"]
    assert t.state("pypi.org") is None  # the policy holds it as pending: pods stay gated
    assert t.record("pypi.org", answer("151.101.0.223"), now=1000)
    state = t.state("pypi.org")
    assert state is not None and state.addresses == ("151.101.0.223",)
    assert state.status() == {"addresses": ["151.101.0.223"]}


def test_the_ttl_sets_the_next_lookup_within_the_floor_and_the_ceiling() -> None:
    t = tracker()
    t.want(USER, ["a.test", "b.test", "c.test"], now=0)
    t.record("a.test", answer("198.51.100.1", ttl=60), now=0)
    t.record("b.test", answer("198.51.100.2", ttl=1), now=0)  # a tenant's TTL 1: the floor
    t.record("c.test", answer("198.51.100.3", ttl=86400), now=0)  # a day: the ceiling
    assert t.due(29.9) == []
    assert t.due(30) == ["b.test"]
    assert t.due(60) == ["a.test", "b.test"]
    assert t.due(299) == ["a.test", "b.test"]
    assert t.due(300) == ["a.test", "b.test", "c.test"]


def test_jitter_asks_a_little_early_never_late() -> None:
    t = tracker(Timing(ttl_floor=30, ttl_ceiling=300, grace=120, jitter=0.1), rand=1.0)
    t.want(USER, ["a.test"], now=0)
    t.record("a.test", answer("198.51.100.1", ttl=100), now=0)
    assert t.due(89.9) == []
    assert t.due(90) == ["a.test"]


def test_a_rotation_keeps_the_old_address_for_the_grace_window_then_drops_it() -> None:
    t = tracker()
    t.want(USER, ["pypi.org"], now=0)
    t.record("pypi.org", answer("203.0.113.1"), now=0)
    assert t.record("pypi.org", answer("203.0.113.2"), now=60)  # rotated
    state = t.state("pypi.org")
    assert state is not None
    assert state.addresses == ("203.0.113.1", "203.0.113.2")
    assert state.leaving == {"203.0.113.1": 0}  # last seen at 0
    assert t.wake_at() == 120  # its grace ends: the policy changes then, with no lookup
    assert t.expire(119.9) == []
    assert t.expire(120) == ["pypi.org"]
    state = t.state("pypi.org")
    assert state is not None and state.addresses == ("203.0.113.2",) and state.leaving == {}


def test_an_address_seen_again_within_the_window_never_leaves() -> None:
    t = tracker()
    t.want(USER, ["cdn.test"], now=0)
    t.record("cdn.test", answer("203.0.113.1", "203.0.113.2"), now=0)
    t.record("cdn.test", answer("203.0.113.2", "203.0.113.3"), now=60)
    assert not t.record("cdn.test", answer("203.0.113.2", "203.0.113.3"), now=90)
    t.record("cdn.test", answer("203.0.113.1", "203.0.113.3"), now=110)  # .1 back in time
    assert t.expire(209.9) == []
    assert t.expire(210) == ["cdn.test"]  # .2, last seen at 90
    state = t.state("cdn.test")
    assert state is not None
    assert state.addresses == ("203.0.113.1", "203.0.113.3")


def test_the_same_answer_again_changes_nothing() -> None:
    t = tracker()
    t.want(USER, ["a.test"], now=0)
    assert t.record("a.test", answer("198.51.100.1", "2001:db8::1"), now=0)
    assert not t.record("a.test", answer("2001:db8::1", "198.51.100.1"), now=60)
    state = t.state("a.test")
    assert state is not None and state.addresses == ("198.51.100.1", "2001:db8::1")


def test_a_name_that_stops_resolving_keeps_its_addresses_for_the_window_only() -> None:
    t = tracker()
    t.want(USER, ["gone.test"], now=0)
    t.record("gone.test", answer("203.0.113.9"), now=0)
    assert t.record("gone.test", Resolution(error=NXDOMAIN), now=60)
    state = t.state("gone.test")
    assert state is not None
    assert state.error == NXDOMAIN
    assert state.leaving == {"203.0.113.9": 0}
    assert t.expire(120) == ["gone.test"]
    state = t.state("gone.test")
    assert state is not None and state.addresses == () and state.error == NXDOMAIN


def test_a_name_that_never_resolved_has_no_address_and_is_retried_from_the_floor() -> None:
    t = tracker()
    t.want(USER, ["typo.test"], now=0)
    t.record("typo.test", Resolution(error=NXDOMAIN), now=0)
    state = t.state("typo.test")
    assert state is not None and state.addresses == () and state.error == NXDOMAIN
    assert t.due(30) == ["typo.test"]
    t.record("typo.test", Resolution(error=NXDOMAIN), now=30)
    assert t.due(89) == [] and t.due(90) == ["typo.test"]  # doubling
    for now in (90, 210, 450, 750):
        t.record("typo.test", Resolution(error=NXDOMAIN), now=now)
    assert t.due(750 + 299) == [] and t.due(750 + 300) == ["typo.test"]  # up to the ceiling


def test_a_resolver_failure_adds_nothing_removes_nothing_until_the_window_ends() -> None:
    t = tracker()
    t.want(USER, ["api.test"], now=0)
    t.record("api.test", answer("203.0.113.5"), now=0)
    for error in (TIMEOUT, SERVFAIL):
        assert t.record("api.test", Resolution(error=error), now=60)
        state = t.state("api.test")
        assert state is not None
        assert state.addresses == ("203.0.113.5",) and state.error == error
    # The DNS stays down: what was last seen leaves when its grace ends; nothing widens.
    assert t.expire(120) == ["api.test"]
    state = t.state("api.test")
    assert state is not None and state.addresses == ()
    assert t.record("api.test", answer("203.0.113.5"), now=130)  # back
    state = t.state("api.test")
    assert state is not None and state.addresses == ("203.0.113.5",) and state.error is None


def test_a_partial_answer_adds_what_came_and_removes_nothing() -> None:
    t = tracker()
    t.want(USER, ["dual.test"], now=0)
    t.record("dual.test", answer("203.0.113.5", "2001:db8::5"), now=0)
    t.record("dual.test", Resolution(("203.0.113.6",), 60, TIMEOUT), now=60)  # AAAA timed out
    state = t.state("dual.test")
    assert state is not None
    assert state.addresses == ("203.0.113.5", "203.0.113.6", "2001:db8::5")
    assert state.leaving == {}


def test_cnames_followed_are_kept_for_the_status() -> None:
    t = tracker()
    t.want(USER, ["www.test"], now=0)
    t.record("www.test", Resolution(("203.0.113.5",), 5, None, ("cdn.test",)), now=0)
    state = t.state("www.test")
    assert state is not None and state.cnames == ("cdn.test",)
    assert t.due(29) == [] and t.due(30) == ["www.test"]  # the chain's lowest TTL, floored


def test_a_name_answering_ever_more_addresses_is_bounded() -> None:
    t = tracker(Timing(ttl_floor=30, ttl_ceiling=300, grace=1000, jitter=0, max_addresses=4))
    t.want(USER, ["many.test"], now=0)
    for i in range(10):
        t.record("many.test", answer(f"203.0.113.{i}"), now=i)
    state = t.state("many.test")
    assert state is not None
    assert state.addresses == ("203.0.113.6", "203.0.113.7", "203.0.113.8", "203.0.113.9")


def test_a_name_is_kept_once_for_every_policy_that_needs_it_and_forgotten_after() -> None:
    t = tracker()
    other = ("team-b", "netpol-domains.abcdefabcd")
    assert t.want(USER, ["pypi.org"], now=0) == ["pypi.org"]
    assert t.want(other, ["pypi.org", "a.test"], now=0) == ["a.test"]
    assert t.users("pypi.org") == {USER, other}
    t.want(USER, [], now=1)
    assert t.names() == ["a.test", "pypi.org"]
    t.want(other, [], now=1)
    assert t.names() == []


def test_a_new_leader_starts_from_what_the_policy_holds() -> None:
    t = tracker()
    t.want(USER, ["pypi.org"], now=1000)
    t.seed(
        "pypi.org",
        {"addresses": ["203.0.113.1", "203.0.113.2"], "leaving": {"203.0.113.1": 950}},
        now=1000,
    )
    state = t.state("pypi.org")
    assert state is not None
    assert state.addresses == ("203.0.113.1", "203.0.113.2")
    assert state.leaving == {"203.0.113.1": 950}
    assert t.due(1000) == ["pypi.org"]  # asked again at once
    t.record("pypi.org", answer("203.0.113.2"), now=1001)
    assert t.expire(1069.9) == []
    assert t.expire(1070) == ["pypi.org"]  # 950 + the 120 s window


def test_seeding_ignores_what_is_not_an_address() -> None:
    t = tracker()
    t.want(USER, ["pypi.org"], now=0)
    t.seed("pypi.org", {"addresses": ["203.0.113.1", "nope", 7], "leaving": "x"}, now=0)
    state = t.state("pypi.org")
    assert state is not None and state.addresses == ("203.0.113.1",)
