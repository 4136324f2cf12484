"""CIDRs in canonical form, as defined below.

A CIDR is accepted when it is a string of an address and a prefix length:
- IPv4: a dotted quad, each part 0-255 in decimal without leading zeros;
- IPv6: any RFC 4291 text form (full, compressed, with an embedded dotted quad),
  without a zone and not an IPv4-mapped address (write those as IPv4);
- the prefix: decimal, no sign, no leading zero, 0-32 or 0-128;
- no host bits set, no whitespace anywhere.

Every refusal carries a suggestion when one exists, so a user can copy it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence

from webhook.policy.fielderrors import FieldError, Problem, join, type_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_IPV4_LOOSE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")
_PREFIX = re.compile(r"0|[1-9][0-9]{0,2}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")

IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


CidrProblem = Problem  # what is wrong with a CIDR, with the canonical form to copy


# Parsed CIDRs are immutable, and a policy names the same few again and again
# (in cidrs, in except, in every sandbox's NetworkPolicy): parse each once. The
# bound keeps a flood of distinct strings from growing memory.
PARSE_CACHE_ENTRIES = 4096


def parse_cidr(value: object) -> Network | CidrProblem:
    """The network a canonical CIDR names, or what is wrong with it."""
    if not isinstance(value, str):
        return CidrProblem(f"must be a string, not {type_name(value)}")
    return _parse_cidr_text(value)


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _parse_cidr_text(value: str) -> Network | CidrProblem:
    if value == "":
        return CidrProblem("must be a CIDR such as 10.0.0.0/8, not empty")
    stripped = "".join(value.split())
    if stripped != value:
        return CidrProblem("must not contain whitespace", _suggest(stripped))
    address_text, slash, prefix_text = value.partition("/")
    if not slash:
        guess = _suggest(f"{value}/32" if "." in value and ":" not in value else f"{value}/128")
        return CidrProblem("must have a prefix length, as in 10.0.0.0/8", guess)
    if "%" in address_text:
        return CidrProblem(
            "must not carry an IPv6 zone",
            _suggest(f"{address_text.partition('%')[0]}/{prefix_text}"),
        )
    if "/" in prefix_text or not prefix_text.isascii() or not prefix_text.isdigit():
        return CidrProblem("prefix length must be a decimal number")
    if not _PREFIX.fullmatch(prefix_text):
        return CidrProblem(
            "prefix length must not have a leading zero",
            _suggest(f"{address_text}/{int(prefix_text)}"),
        )
    prefix = int(prefix_text)
    if ":" in address_text:
        return _parse_ipv6(address_text, prefix)
    return _parse_ipv4(address_text, prefix)


def _parse_ipv4(address_text: str, prefix: int) -> Network | CidrProblem:
    if not _IPV4.fullmatch(address_text):
        loose = _IPV4_LOOSE.fullmatch(address_text)
        if loose and all(int(part) <= 255 for part in loose.groups()):
            fixed = ".".join(str(int(part)) for part in loose.groups())
            return CidrProblem(
                "IPv4 address parts must not have leading zeros", _suggest(f"{fixed}/{prefix}")
            )
        return CidrProblem("must be an IPv4 dotted quad or an IPv6 address with a prefix length")
    try:
        address = ipaddress.IPv4Address(address_text)
    except ipaddress.AddressValueError:
        return CidrProblem("IPv4 address parts must be 0-255")
    if prefix > 32:
        return CidrProblem("IPv4 prefix length must be 0-32")
    return _network(address, prefix)


def _parse_ipv6(address_text: str, prefix: int) -> Network | CidrProblem:
    if not _IPV6_CHARS.fullmatch(address_text):
        return CidrProblem("must be an IPv4 dotted quad or an IPv6 address with a prefix length")
    try:
        address = ipaddress.IPv6Address(address_text)
    except ipaddress.AddressValueError:
        return CidrProblem("must be a valid IPv6 address with a prefix length")
    if prefix > 128:
        return CidrProblem("IPv6 prefix length must be 0-128")
    if address in IPV4_MAPPED and prefix >= 96:
        mapped = address.ipv4_mapped
        suggestion = _suggest(f"{mapped}/{prefix - 96}") if mapped is not None else None
        return CidrProblem("must not be an IPv4-mapped IPv6 address; write it as IPv4", suggestion)
    return _network(address, prefix)


def _network(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> Network | CidrProblem:
    network = ipaddress.ip_network((address, prefix), strict=False)
    if network.network_address != address:
        return CidrProblem("must be a canonical CIDR with no host bits set", str(network))
    return network


def _suggest(candidate: str) -> str | None:
    """``candidate`` if it, or the network it names, is canonical; else nothing."""
    parsed = parse_cidr(candidate)
    if isinstance(parsed, CidrProblem):
        return parsed.suggestion
    return str(parsed)


def cidr_errors(value: object, path: str) -> list[FieldError]:
    """The field errors of one CIDR field (none when it is canonical)."""
    parsed = parse_cidr(value)
    if isinstance(parsed, CidrProblem):
        return [FieldError(path, parsed.message(), value)]
    return []


def except_errors(cidrs: str | Sequence[object], excepts: object, path: str) -> list[FieldError]:
    """Errors of an ``except`` list: each entry canonical and strictly inside one parent.

    ``cidrs`` is the ipBlock's ``cidr`` or a simple rule's ``cidrs``; parents that
    are themselves invalid are skipped (their own errors are reported elsewhere).
    """
    if excepts is None:
        return []
    if not isinstance(excepts, list):
        return [FieldError(path, f"must be a list of CIDRs, not {type_name(excepts)}", excepts)]
    parents = [
        parsed
        for parsed in (parse_cidr(c) for c in ([cidrs] if isinstance(cidrs, str) else cidrs))
        if not isinstance(parsed, CidrProblem)
    ]
    errors: list[FieldError] = []
    for index, entry in enumerate(excepts):
        parsed = parse_cidr(entry)
        if isinstance(parsed, CidrProblem):
            errors.append(FieldError(join(path, index), parsed.message(), entry))
            continue
        containing = [p for p in parents if strictly_inside(parsed, p)]
        if not containing and parents:
            detail = (
                "must be strictly inside the cidr"
                if isinstance(cidrs, str)
                else "must be strictly inside one of the rule's cidrs"
            )
            if any(p.version == parsed.version and p.subnet_of(parsed) for p in parents):  # type: ignore[arg-type]
                detail += " (it covers a whole cidr: remove that cidr instead)"
            elif all(p.version != parsed.version for p in parents):
                detail += " (it is of the other IP family)"
            errors.append(FieldError(join(path, index), detail, entry))
        elif len(containing) > 1:
            errors.append(
                FieldError(
                    join(path, index),
                    "lies inside more than one of the rule's cidrs "
                    f"({', '.join(str(p) for p in containing)}); the cidrs must not overlap",
                    entry,
                )
            )
    return errors


def strictly_inside(inner: Network, outer: Network) -> bool:
    """``inner`` is a proper subnet of ``outer`` (integer arithmetic: ``subnet_of`` is slow)."""
    return (
        inner.version == outer.version
        and inner.prefixlen > outer.prefixlen
        and int(inner.network_address) & int(outer.netmask) == int(outer.network_address)
    )


def reaches(cidr: Network, excepts: Sequence[Network], address: str) -> bool:
    """Whether an ipBlock (``cidr`` minus ``excepts``) contains ``address``."""
    ip = _address(address)
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(ip in e for e in excepts if e.version == ip.version)


@functools.lru_cache(maxsize=16)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def is_everything(cidr: Network) -> bool:
    """0.0.0.0/0 or ::/0."""
    return cidr.prefixlen == 0
