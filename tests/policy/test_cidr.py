"""The canonical CIDR check: a table of what users write, and a property test
against an independent reference model of the rules in webhook/policy/cidr.py's docstring."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from webhook.policy.cidr import CidrProblem, cidr_errors, except_errors, parse_cidr


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.7/32", "192.168.1.7/32"),
        ("::/0", "::/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8::/32", "2001:db8::/32"),  # RFC 4291 allows upper case
        ("2001:0db8:0000:0000:0000:0000:0000:0000/32", "2001:db8::/32"),  # full form
        ("::10.1.2.0/120", "::a01:200/120"),  # embedded dotted quad
        ("fd00:ec2::254/128", "fd00:ec2::254/128"),
    ],
)
def test_accepts_canonical_cidrs(text: str, canonical: str) -> None:
    assert str(parse_cidr(text)) == canonical
    assert cidr_errors(text, "x") == []


@pytest.mark.parametrize(
    ("value", "problem", "suggestion"),
    [
        ("10.0.0.1/8", "no host bits", "10.0.0.0/8"),
        ("2001:db8::1/32", "no host bits", "2001:db8::/32"),
        ("010.0.0.0/8", "leading zeros", "10.0.0.0/8"),
        ("10.0.0.0/08", "leading zero", "10.0.0.0/8"),
        ("10.0.0.0", "prefix length", "10.0.0.0/32"),
        ("2001:db8::1", "prefix length", "2001:db8::1/128"),
        (" 10.0.0.0/8", "whitespace", "10.0.0.0/8"),
        ("10.0.0.0 /8", "whitespace", "10.0.0.0/8"),
        ("fe80::%eth0/64", "zone", "fe80::/64"),
        ("::ffff:10.0.0.0/104", "IPv4-mapped", "10.0.0.0/8"),
        ("10.0.0.0/33", "0-32", None),
        ("::/129", "0-128", None),
        ("10.0.0.0/+8", "decimal", None),
        ("10.0.0.0/-0", "decimal", None),
        ("256.0.0.0/8", "0-255", None),
        ("10.0/16", "dotted quad", None),
        ("10.0.0.0/8/8", "decimal", None),
        ("1:2:3:4:5:6:7:8:9/128", "IPv6", None),
        ("", "empty", None),
        ("ten/8", "dotted quad", None),
        (8, "string", None),
        (None, "string", None),
    ],
)
def test_refuses_with_a_reason_and_a_suggestion(
    value: object, problem: str, suggestion: str | None
) -> None:
    parsed = parse_cidr(value)
    assert isinstance(parsed, CidrProblem)
    assert problem in parsed.detail
    assert parsed.suggestion == suggestion
    [error] = cidr_errors(value, "spec.x.cidrs[1]")
    assert str(error).startswith("spec.x.cidrs[1]: ")


def test_error_message_names_path_problem_suggestion_and_value() -> None:
    [error] = cidr_errors("10.0.0.1/8", "spec.template.networkPolicy.egress[0].cidrs[1]")
    assert str(error) == (
        "spec.template.networkPolicy.egress[0].cidrs[1]: must be a canonical CIDR with no host "
        'bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
    )


@pytest.mark.parametrize(
    ("cidrs", "excepts", "expected"),
    [
        (["10.0.0.0/8"], ["10.1.0.0/16"], []),
        (["10.0.0.0/8", "fd00::/8"], ["10.1.0.0/16", "fd00:1::/32"], []),
        (["10.0.0.0/8"], ["10.0.0.0/8"], ["[0]: must be strictly inside"]),
        (["10.0.0.0/8"], ["11.0.0.0/16"], ["[0]: must be strictly inside"]),
        (["10.0.0.0/8"], ["fd00::/16"], ["other IP family"]),
        (["10.1.0.0/16"], ["10.0.0.0/8"], ["covers a whole cidr"]),
        (["10.0.0.0/8", "10.1.0.0/16"], ["10.1.2.0/24"], ["more than one"]),
        (["10.0.0.0/8"], ["10.1.0.1/16"], ['did you mean "10.1.0.0/16"']),
        (["10.0.0.0/8"], "10.1.0.0/16", ["must be a list"]),
    ],
)
def test_except_entries_lie_strictly_inside_one_cidr(
    cidrs: list[str], excepts: object, expected: list[str]
) -> None:
    errors = [str(e) for e in except_errors(cidrs, excepts, "r.except")]
    assert len(errors) == len(expected), errors
    for error, fragment in zip(errors, expected, strict=True):
        assert fragment in error


# --- property test against a reference model -----------------------------------

_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}")
_V4_PART = re.compile(r"0|[1-9][0-9]{0,2}")
_PREFIX = re.compile(r"0|[1-9][0-9]*")


def _ref_v4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(_V4_PART.fullmatch(p) and int(p) <= 255 for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def _ref_v6_groups(text: str) -> list[int] | None:
    if text == "":
        return []
    groups: list[int] = []
    pieces = text.split(":")
    for index, piece in enumerate(pieces):
        if index == len(pieces) - 1 and "." in piece:
            v4 = _ref_v4(piece)
            if v4 is None:
                return None
            groups += [v4 >> 16, v4 & 0xFFFF]
        elif _HEX_GROUP.fullmatch(piece):
            groups.append(int(piece, 16))
        else:
            return None
    return groups


def _ref_v6(text: str) -> int | None:
    if text.count("::") > 1:
        return None
    if "::" in text:
        head, tail = text.split("::")
        left, right = _ref_v6_groups(head), _ref_v6_groups(tail)
        if left is None or right is None or "." in head or len(left) + len(right) > 7:
            return None
        groups = left + [0] * (8 - len(left) - len(right)) + right
    else:
        parsed = _ref_v6_groups(text)
        if parsed is None or len(parsed) != 8:
            return None
        groups = parsed
    value = 0
    for group in groups:
        value = value << 16 | group
    return value


def reference_cidr(text: str) -> tuple[int, int, int] | None:
    """(version, address, prefix) if ``text`` is canonical by the written rules."""
    if any(ch.isspace() for ch in text) or text.count("/") != 1:
        return None
    address, prefix_text = text.split("/")
    if not (prefix_text.isascii() and _PREFIX.fullmatch(prefix_text)):
        return None
    prefix = int(prefix_text)
    if ":" in address:
        version, width, value = 6, 128, _ref_v6(address)
    else:
        version, width, value = 4, 32, _ref_v4(address)
    if value is None or prefix > width:
        return None
    if value & ((1 << (width - prefix)) - 1):
        return None  # host bits
    if version == 6 and prefix >= 96 and value >> 32 == 0xFFFF:
        return None  # IPv4-mapped
    return version, value, prefix


def _v4_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.integers(0, 300), min_size=4, max_size=4))
    padded = draw(st.lists(st.booleans(), min_size=4, max_size=4))
    return ".".join(("0" if pad else "") + str(p) for p, pad in zip(parts, padded, strict=True))


@st.composite
def cidr_like(draw: st.DrawFn) -> str:
    """Strings near the boundary of the rules: mostly valid-looking, often a bit off."""
    if draw(st.booleans()):
        address = _v4_text(draw) if draw(st.integers(0, 9)) else _v4_text(draw)[:-2]
        width = 32
    else:
        value = draw(
            st.one_of(
                st.integers(0, 2**128 - 1),
                st.integers(0, 2**32 - 1).map(lambda v: 0xFFFF << 32 | v),
                st.integers(0, 2**16 - 1).map(lambda v: v << 112),
            )
        )
        address = (
            ipaddress.IPv6Address(value).exploded
            if draw(st.booleans())
            else str(ipaddress.IPv6Address(value))
        )
        if draw(st.integers(0, 4)) == 0:
            address = address.upper()
        if draw(st.integers(0, 6)) == 0:
            address = address.replace(":", "::", 1)
        if draw(st.integers(0, 6)) == 0:
            address = address.rsplit(":", 2)[0] + ":" + _v4_text(draw)
        width = 128
    prefix: str = draw(
        st.one_of(
            st.integers(0, width).map(str),
            st.integers(0, width + 3).map(lambda p: f"0{p}"),
            st.sampled_from(["", "+8", "-1", "33", "129", "1e1", "٣"]),
        )
    )
    text = f"{address}/{prefix}" if draw(st.integers(0, 9)) else address
    if draw(st.integers(0, 12)) == 0:
        text = draw(st.sampled_from([" ", "\t", "%eth0"])) + text
    return text


@settings(max_examples=3000, deadline=None)
@given(st.one_of(cidr_like(), st.text(max_size=24)))
@example("::ffff:0:0/95")
@example("::ffff:0:0/96")
@example("1:2:3:4:5:6:7::/128")
@example("::1:2:3:4:5:6:7/128")
@example("1::2:3:4:5:6:7:8/128")
def test_agrees_with_reference_model(text: str) -> None:
    expected = reference_cidr(text)
    parsed = parse_cidr(text)
    if expected is None:
        assert isinstance(parsed, CidrProblem), f"accepted {text!r}"
    else:
        assert not isinstance(parsed, CidrProblem), f"refused {text!r}: {parsed}"
        assert (parsed.version, int(parsed.network_address), parsed.prefixlen) == expected


@settings(max_examples=500, deadline=None)
@given(cidr_like())
def test_every_suggestion_is_itself_accepted(text: str) -> None:
    parsed = parse_cidr(text)
    if isinstance(parsed, CidrProblem) and parsed.suggestion is not None:
        assert not isinstance(parse_cidr(parsed.suggestion), CidrProblem)
