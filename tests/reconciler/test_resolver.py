"""The resolver edge against a real DNS server on loopback, and the refresher that drives it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dns.resolver as dns_resolver
import pytest
from agentcube_netpol_dev.testdns import DnsServer

from webhook.reconciler.domaincache import DomainTracker, Resolution, Timing
from webhook.reconciler.domains import DomainRefresher
from webhook.reconciler.resolver import DnsResolver, parse_server


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def test_a_and_aaaa_are_asked_and_the_ttl_is_the_answer_s(dns: DnsServer) -> None:
    dns.set("pypi.test", a=["203.0.113.7", "203.0.113.8"], aaaa=["2001:db8::7"], ttl=17)
    result = DnsResolver(dns.address).resolve("pypi.test")
    assert result == Resolution(("203.0.113.7", "203.0.113.8", "2001:db8::7"), 17.0)
    assert sorted(q for n, q in dns.queries if n == "pypi.test") == ["A", "AAAA"]


def test_a_cname_chain_is_followed_and_its_lowest_ttl_counts(dns: DnsServer) -> None:
    dns.cname("www.pypi.test", "edge.pypi.test", ttl=300)
    dns.cname("edge.pypi.test", "cdn.pypi.test", ttl=5)
    dns.set("cdn.pypi.test", a=["198.51.100.1"], ttl=60)
    result = DnsResolver(dns.address).resolve("www.pypi.test")
    assert result.addresses == ("198.51.100.1",)
    assert result.ttl == 5.0
    assert result.cnames == ("edge.pypi.test", "cdn.pypi.test")


def test_a_name_is_asked_as_is_never_with_search_domains(dns: DnsServer) -> None:
    result = DnsResolver(dns.address).resolve("nowhere.test")
    assert result.error == "nxdomain"
    assert {n for n, _ in dns.queries} == {"nowhere.test"}


@pytest.mark.parametrize(
    ("fail", "error"),
    [
        ("servfail", "servfail"),
        ("refused", "servfail"),
        ("drop", "timeout"),
        ("garbage", "timeout"),  # an answer that is not DNS is ignored, as dnspython does
    ],
)
def test_a_failing_server_gives_an_error_not_an_exception(
    dns: DnsServer, fail: str, error: str
) -> None:
    dns.set("flaky.test", a=["203.0.113.1"])
    dns.fail("flaky.test", fail)
    result = DnsResolver(dns.address, lifetime=0.5).resolve("flaky.test")
    assert result.error == error and result.addresses == ()


def test_a_name_with_no_address_records(dns: DnsServer) -> None:
    dns.set("empty.test")
    assert DnsResolver(dns.address).resolve("empty.test").error == "no-address"


def test_server_addresses_are_parsed() -> None:
    assert parse_server("10.96.0.10") == ("10.96.0.10", 53)
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("[fd00::a]:53") == ("fd00::a", 53)
    assert parse_server("fd00::a") == ("fd00::a", 53)
    with pytest.raises(ValueError):
        parse_server("dns.example.com")


def test_the_refresher_resolves_what_is_due_and_queues_the_policies_of_changed_names(
    dns: DnsServer,
) -> None:
    dns.set("pypi.test", a=["203.0.113.7"], ttl=1)
    now = [1000.0]
    tracker = DomainTracker(
        Timing(ttl_floor=1, ttl_ceiling=5, grace=10, jitter=0), random=lambda: 0
    )
    queued: list[object] = []
    refresher = DomainRefresher(
        tracker, DnsResolver(dns.address), queued.append, clock=lambda: now[0]
    )
    tracker.want("policy-a", ["pypi.test"], now[0])
    tracker.want("policy-b", ["pypi.test"], now[0])
    assert refresher.refresh() == {"pypi.test"}
    assert sorted(queued) == ["policy-a", "policy-b"]  # one reconcile each, not one per sandbox
    queued.clear()
    now[0] += 1
    assert refresher.refresh() == set()  # asked again: the same answer, nothing queued
    assert queued == [] and dns.asked("pypi.test") == 4
    dns.set("pypi.test", a=["203.0.113.8"], ttl=1)
    now[0] += 1
    assert refresher.refresh() == {"pypi.test"}
    now[0] += 10
    assert refresher.refresh() == {"pypi.test"}  # .7's grace ended
    state = tracker.state("pypi.test")
    assert state is not None and state.addresses == ("203.0.113.8",)


def test_the_refresher_thread_asks_a_new_name_when_woken(dns: DnsServer) -> None:
    dns.set("new.test", a=["203.0.113.9"])
    tracker = DomainTracker(Timing(), random=lambda: 0)
    done = threading.Event()
    refresher = DomainRefresher(tracker, DnsResolver(dns.address), lambda r: done.set())
    refresher.start()
    try:
        tracker.want("policy", ["new.test"], 0)  # due long ago
        refresher.wake()
        assert done.wait(10)
    finally:
        refresher.stop()
    state = tracker.state("new.test")
    assert state is not None and state.addresses == ("203.0.113.9",)


def test_without_a_resolver_configuration_every_name_fails_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_configuration(self: object, *args: object, **kwargs: object) -> None:
        raise dns_resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns_resolver.Resolver, "read_resolv_conf", no_configuration)
    resolver = DnsResolver()  # the process starts
    assert resolver.unconfigured is not None
    assert resolver.resolve("pypi.org") == Resolution(error="servfail")
