"""Asking DNS for a name's addresses: the one place the reconciler talks to a resolver.

By default the resolver is the one the process's ``/etc/resolv.conf`` names, which in a
pod is the cluster's DNS, the one the sandboxes ask: the answers the policy holds are the
answers they get. ``--dns-server HOST[:PORT]`` names another (the tests' DNS server).
Names are asked as absolute names (no search domains), for A and AAAA, and CNAMEs are
followed; what comes back is a ``Resolution``, never an exception.
"""

from __future__ import annotations

import ipaddress
import logging

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from webhook.reconciler.domaincache import (
    BAD_ANSWER,
    NO_ADDRESS,
    NXDOMAIN,
    SERVFAIL,
    TIMEOUT,
    Resolution,
    sort_addresses,
)

logger = logging.getLogger(__name__)

LIFETIME_SECONDS = 3.0  # per name and family, retries included


def parse_server(text: str) -> tuple[str, int]:
    """``HOST[:PORT]``, ``[V6]:PORT`` or a bare IPv6 address; port 53 by default."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return host, port


class DnsResolver:
    def __init__(self, server: str | None = None, *, lifetime: float = LIFETIME_SECONDS) -> None:
        self.unconfigured: str | None = None
        if server is None:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as exc:
                # No /etc/resolv.conf, or no nameserver in it: every name fails closed (and
                # says why) rather than the process failing to start.
                self._resolver = dns.resolver.Resolver(configure=False)
                self.unconfigured = f"no resolver: /etc/resolv.conf: {exc}"
                logger.warning(
                    "%s; egress domains open nothing (--dns-server names one)", self.unconfigured
                )
        else:
            host, port = parse_server(server)
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.lifetime = lifetime
        self._resolver.cache = None  # every refresh asks; the tracker keeps what was seen

    def resolve(self, name: str) -> Resolution:
        if self.unconfigured is not None:
            return Resolution(error=SERVFAIL)
        qname = dns.name.from_text(name)  # absolute: no search domains
        addresses: list[str] = []
        ttls: list[float] = []
        cnames: list[str] = []
        errors: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = self._resolver.resolve(qname, rdtype, search=False)
            except dns.resolver.NXDOMAIN:
                return Resolution(error=NXDOMAIN)
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.LifetimeTimeout:
                errors.append(TIMEOUT)
                continue
            except dns.resolver.NoNameservers:
                errors.append(SERVFAIL)
                continue
            except dns.exception.DNSException as exc:
                logger.debug("resolving %s %s: %s", name, rdtype.name, exc)
                errors.append(BAD_ANSWER)
                continue
            if answer.rrset is None:
                continue
            for rdata in answer.rrset:
                try:
                    addresses.append(str(ipaddress.ip_address(rdata.address)))
                except (AttributeError, ValueError):
                    errors.append(BAD_ANSWER)
            chain = answer.chaining_result
            ttls.append(float(chain.minimum_ttl))
            for cname in chain.cnames:
                target = cname[0].target.to_text(omit_final_dot=True) if len(cname) else ""
                if target and target not in cnames:
                    cnames.append(target)
        if errors:
            # A family failed: what the other said is not the whole answer. The tracker adds
            # what came and removes nothing.
            found = tuple(sort_addresses(addresses))
            return Resolution(found, min(ttls) if ttls else None, errors[0], tuple(cnames))
        if not addresses:
            return Resolution(error=NO_ADDRESS, cnames=tuple(cnames))
        return Resolution(tuple(sort_addresses(addresses)), min(ttls), None, tuple(cnames))
