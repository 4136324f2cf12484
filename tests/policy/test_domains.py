"""Egress by domain name: the names a user may write, the answers that may be allowed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.api.settings import Limits
from webhook.policy.cidr import parse_cidr
from webhook.policy.domains import (
    DomainEntry,
    answer_problem,
    build_domain_rules,
    domain_entries,
    domain_problem,
    domain_set_key,
)
from webhook.policy.validation import validate_network_policy

PATH = "spec.template.networkPolicy"

# --- the names: a corpus of a few hundred ---------------------------------------------------

_LABELS = ["a", "api", "x1", "0x", "my-mirror", "a" * 63, "b2b", "github", "xn--bcher-kva"]
_TLDS = ["com", "io", "org", "test", "internal", "co", "xn--p1ai"]
GOOD = sorted(
    {f"{a}.{b}" for a, b in itertools.product(_LABELS, _TLDS)}
    | {f"{a}.{b}.{c}" for a, b, c in itertools.product(_LABELS[:5], _LABELS[:4], _TLDS[:3])}
    | {
        "api.github.com",
        "objects.githubusercontent.com",
        "pypi.org",
        "files.pythonhosted.org",
        "registry-1.docker.io",
        "api.github.com.",  # a trailing dot is allowed, not needed
        "1password.com",  # a label may start with a digit
        "a.b.c.d.e.f.g.h",
        ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253 characters
    }
)

# (name, what the message says, the suggestion or None)
BAD: list[tuple[Any, str, str | None]] = [
    ("https://api.github.com/repos", "not a URL", "api.github.com"),
    ("http://pypi.org", "not a URL", "pypi.org"),
    ("pypi.org/simple", "not a URL", "pypi.org"),
    ("user@host.example.com", "not a URL", "host.example.com"),
    ("api.github.com:443", "must not carry a port", "api.github.com"),
    ("API.GitHub.com", "must be lowercase", "api.github.com"),
    ("Pypi.org", "must be lowercase", "pypi.org"),
    ("1.2.3.4", "is an IP address", "1.2.3.4/32"),
    ("2001:db8::1", "is an IP address", "2001:db8::1/128"),
    ("[2001:db8::1]", "is an IP address", "2001:db8::1/128"),
    ("::ffff:1.2.3.4", "is an IP address", "1.2.3.4/32"),  # written as IPv4
    ("bücher.example", "must be ASCII", "xn--bcher-kva.example"),
    ("pypi", "must be fully qualified", None),
    ("localhost", "must be fully qualified", None),
    ("a..b", "empty label", None),
    (".pypi.org", "empty label", None),
    ("-a.example.com", "labels hold only", None),
    ("a-.example.com", "labels hold only", None),
    ("a_b.example.com", "labels hold only", None),
    ("a!.example.com", "labels hold only", None),
    ("x.123", "all-digit label", None),
    ("a" * 64 + ".com", "longer than 63", None),
    (".".join(["a" * 63] * 4), "at most 253", None),
    ("", "not empty", None),
    (" api.github.com", "whitespace", "api.github.com"),
    ("api.github.com ", "whitespace", "api.github.com"),
    ("api .github.com", "whitespace", None),
    ("*.github.com", "cannot be resolved in advance", None),
    ("a.*.github.com", "whole leftmost label", None),
    ("*api.github.com", "whole leftmost label", None),
    ("**.github.com", "whole leftmost label", None),
    (7, "a string", None),
    (None, "a string", None),
    (["a.com"], "a string", None),
]

# Each mistake made of real names: the suggestion is the name itself.
_BASES = ["api.github.com", "pypi.org", "files.pythonhosted.org", "my-mirror.internal", "x1.test",
          "registry-1.docker.io", "a.b.c.d.e.f.g.h", "objects.githubusercontent.com",
          "1password.com", "b2b.xn--p1ai", "github.co", "api.x1.io", "0x.0x.com",
          "my-mirror.github.org", "proxy.golang.org"]  # fmt: skip
BAD += [
    (mistake, detail, suggestion)
    for base in _BASES
    for mistake, detail, suggestion in (
        (f"https://{base}/x", "not a URL", base),
        (f"{base}/", "not a URL", base),
        (f"ftp://user:pw@{base}:21/path", "not a URL", base),
        (f"{base}:8443", "must not carry a port", base),
        (base.upper(), "must be lowercase", base),
        (f"_{base}", "labels hold only", None),
        (base.replace(".", "..", 1), "empty label", None),
        (f"{base}-", "labels hold only", None),
    )
]


@pytest.mark.parametrize("name", GOOD)
def test_a_good_name_is_accepted(name: str) -> None:
    assert domain_problem(name, wildcards=False) is None


def test_the_corpus_is_a_few_hundred_names() -> None:
    assert len(GOOD) + len(BAD) + len(WILDCARDS) > 200


@pytest.mark.parametrize(("name", "detail", "suggestion"), BAD)
def test_a_bad_name_is_refused_with_a_reason_and_a_suggestion_where_one_fits(
    name: Any, detail: str, suggestion: str | None
) -> None:
    problem = domain_problem(name, wildcards=False)
    assert problem is not None
    assert detail in problem.detail
    assert problem.suggestion == suggestion
    if suggestion is not None and "/" not in suggestion:
        assert domain_problem(suggestion, wildcards=False) is None  # it can be copied


WILDCARDS = [
    ("*.githubusercontent.com", None),
    ("*.a.b.c", None),
    ("*.com", "two labels or more"),
    ("*.*.example.com", "whole leftmost label"),
    ("*", "two labels or more"),
]


@pytest.mark.parametrize(("name", "detail"), WILDCARDS)
def test_a_wildcard_is_a_whole_leftmost_label_where_the_backend_enforces_names(
    name: str, detail: str | None
) -> None:
    problem = domain_problem(name, wildcards=True)
    if detail is None:
        assert problem is None
    else:
        assert problem is not None and detail in problem.detail


# --- in a policy ----------------------------------------------------------------------------


def errors(policy: dict[str, Any], **limits: Any) -> list[str]:
    found = validate_network_policy(policy, PATH, limits=Limits(**limits))
    return [str(e) for e in found.errors]


def warnings(policy: dict[str, Any]) -> list[str]:
    return validate_network_policy(policy, PATH, limits=Limits()).warnings


def restricted(*egress: dict[str, Any]) -> dict[str, Any]:
    return {"mode": "Restricted", "egress": list(egress)}


def test_an_entry_with_domains_and_ports_is_valid_without_warnings() -> None:
    policy = restricted({"domains": ["api.github.com"], "ports": [{"port": 443}]})
    assert errors(policy) == []
    assert warnings(policy) == []


def test_the_message_names_the_field_and_suggests_the_name() -> None:
    policy = restricted({"domains": ["pypi.org", "https://api.github.com/repos"]})
    assert errors(policy) == [
        f"{PATH}.egress[0].domains[1]: must be a domain name, not a URL "
        '(did you mean "api.github.com"?): "https://api.github.com/repos"'
    ]


def test_no_ports_means_all_ports_and_says_so() -> None:
    assert warnings(restricted({"domains": ["pypi.org"]})) == [
        f"{PATH}.egress[0]: no ports: every port of these names' addresses is allowed "
        "(add ports, such as TCP 443)"
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"domains": ["a.com"], "cidrs": ["1.0.0.0/8"]},
            [".egress[0].cidrs: not allowed with domains: an entry takes cidrs or domains, not both"],
        ),
        (
            {"domains": ["a.com"], "except": ["1.0.0.0/9"]},
            [".egress[0].except: not allowed with domains: an entry takes cidrs or domains, not both"],
        ),
        ({"domains": []}, [".egress[0].domains: must have at least one name: []"]),
        ({"domains": "a.com"}, ['.egress[0].domains: must be a list of domain names, not string: "a.com"']),
        (
            {"domains": ["a.com", "a.com."]},
            ['.egress[0].domains[1]: duplicate of domains[0]: "a.com."'],
        ),
        (
            {"domains": ["a.com"], "allowAnswersIn": ["10.0.0.1/8"]},
            ['.egress[0].allowAnswersIn[0]: must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'],
        ),
        (
            {"cidrs": ["1.0.0.0/8"], "allowAnswersIn": ["10.0.0.0/8"]},
            [".egress[0].allowAnswersIn: only allowed in an entry with domains"],
        ),
        (
            {"domains": ["a.com"], "portz": []},
            [".egress[0].portz: unknown field; allowed: domains, ports, allowAnswersIn (did you mean \"ports\"?)"],
        ),
        (
            {"domains": ["a.com"], "ports": [{"port": 0}]},
            [".egress[0].ports[0].port: must be 1-65535: 0"],
        ),
        ({}, [".egress[0].cidrs: required: cidrs or domains"]),
    ],
)  # fmt: skip
def test_entry_mistakes_name_their_field(entry: dict[str, Any], expected: list[str]) -> None:
    assert errors(restricted(entry)) == [PATH + e for e in expected]


def test_domains_are_for_egress_only() -> None:
    policy = {"mode": "Restricted", "ingress": [{"domains": ["a.com"]}]}
    assert errors(policy) == [
        f"{PATH}.ingress[0].domains: only allowed in egress entries (a source has no name)"
    ]


def test_bounds_on_names_per_entry_and_per_policy() -> None:
    names = [f"n{i}.example.com" for i in range(21)]
    assert errors(restricted({"domains": names, "ports": [{"port": 443}]})) == [
        f"{PATH}.egress[0].domains: must have at most 20 names, not 21"
    ]
    entries = [{"domains": names[i : i + 3], "ports": [{"port": 443}]} for i in range(0, 21, 3)]
    assert errors(restricted(*entries), max_domains=20) == [
        f"{PATH}.egress: must have at most 20 domain names, not 21"
    ]


def test_a_wildcard_is_refused_on_the_resolving_backend_and_names_the_one_that_takes_it() -> None:
    policy = restricted({"domains": ["*.githubusercontent.com"], "ports": [{"port": 443}]})
    assert errors(policy) == [
        f"{PATH}.egress[0].domains[0]: a wildcard cannot be resolved in advance: list the "
        "names, or use --domain-backend=cluster-network-policy (a cluster whose network plugin "
        'serves ClusterNetworkPolicy with domainNames): "*.githubusercontent.com"'
    ]
    assert errors(policy, domain_wildcards=True) == []


def test_allow_answers_in_holding_the_metadata_address_warns_that_it_stays_dropped() -> None:
    policy = restricted(
        {"domains": ["a.com"], "ports": [{"port": 443}], "allowAnswersIn": ["169.254.0.0/16"]}
    )
    assert errors(policy) == []
    assert warnings(policy) == [
        f"{PATH}.egress[0].allowAnswersIn[0]: holds a cloud metadata address; an answer "
        "with it is dropped all the same"
    ]


# --- entries and their key ------------------------------------------------------------------


def test_entries_are_read_in_canonical_form() -> None:
    policy = restricted(
        {"cidrs": ["1.0.0.0/8"]},
        {"domains": ["pypi.org.", "files.pythonhosted.org"], "ports": [{"port": 443}]},
        {"domains": ["mirror.corp.example"], "allowAnswersIn": ["10.40.0.0/16"]},
    )
    assert domain_entries(policy) == (
        DomainEntry(("files.pythonhosted.org", "pypi.org"), (("TCP", 443, None),), ()),
        DomainEntry(("mirror.corp.example",), (), ("10.40.0.0/16",)),
    )
    assert domain_entries({"mode": "Custom"}) == ()
    assert domain_entries(None) == ()


def test_the_set_key_is_stable_and_tells_namespaces_and_sets_apart() -> None:
    one = domain_entries(restricted({"domains": ["pypi.org"], "ports": [{"port": 443}]}))
    same = domain_entries(
        restricted({"domains": ["pypi.org."], "ports": [{"protocol": "TCP", "port": 443}]})
    )
    other = domain_entries(restricted({"domains": ["pypi.org"], "ports": [{"port": 80}]}))
    assert domain_set_key("a", one) == domain_set_key("a", same)
    assert len(domain_set_key("a", one)) == 10
    assert domain_set_key("a", one) != domain_set_key("b", one)
    assert domain_set_key("a", one) != domain_set_key("a", other)


# --- the answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("140.82.112.5", None),
        ("2606:50c0:8000::154", None),
        ("203.0.113.7", None),  # documentation ranges are the tests' hosts
        ("169.254.169.254", "the cloud metadata address"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("::ffff:169.254.169.254", "the cloud metadata address"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.96.0.1", "a private address (RFC 1918)"),
        ("172.20.0.1", "a private address (RFC 1918)"),
        ("192.168.1.1", "a private address (RFC 1918)"),
        ("::ffff:10.0.0.1", "a private address (RFC 1918)"),
        ("64:ff9b::a00:1", "a private address (RFC 1918)"),  # NAT64 of 10.0.0.1
        ("100.64.0.1", "a shared address (RFC 6598, carrier NAT)"),
        ("fd12::1", "a unique local address (private)"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "a reserved address"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_answers_that_reach_the_node_the_cluster_or_nothing_are_dropped(
    address: str, reason: str | None
) -> None:
    assert answer_problem(address) == reason


def network(text: str) -> Any:
    parsed = parse_cidr(text)
    assert not isinstance(parsed, str)
    return parsed


def test_an_entry_may_admit_a_private_range_but_never_the_metadata_address() -> None:
    allowed = [network("10.40.0.0/16"), network("169.254.0.0/16")]
    assert answer_problem("10.40.1.2", allowed=allowed) is None
    assert answer_problem("10.41.1.2", allowed=allowed) == "a private address (RFC 1918)"
    assert answer_problem("169.254.169.254", allowed=allowed) == "the cloud metadata address"


def test_the_cluster_s_own_ranges_are_dropped_even_when_public() -> None:
    denied = [network("198.18.0.0/15")]
    assert answer_problem("198.18.3.4", denied=denied) == (
        "inside 198.18.0.0/15, a range of the cluster (--deny-answers)"
    )
    assert answer_problem("198.20.0.1", denied=denied) is None


# --- the rules ------------------------------------------------------------------------------


def test_rules_hold_one_host_block_per_address_ipv4_first_with_the_entry_s_ports() -> None:
    entries = domain_entries(
        restricted(
            {"domains": ["pypi.org", "files.pythonhosted.org"], "ports": [{"port": 443}]},
            {"domains": ["gone.example.com"], "ports": [{"port": 80}]},
        )
    )
    rules = build_domain_rules(
        entries,
        {
            "pypi.org": ["2a04:4e42::223", "151.101.0.223"],
            "files.pythonhosted.org": ["151.101.0.223", "146.75.92.223"],
            "gone.example.com": [],
        },
    )
    assert rules == [
        {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [
                {"ipBlock": {"cidr": "146.75.92.223/32"}},
                {"ipBlock": {"cidr": "151.101.0.223/32"}},
                {"ipBlock": {"cidr": "2a04:4e42::223/128"}},
            ],
        }
    ]  # the entry with no address has no rule: a rule with no peers allows everything


@given(st.text(max_size=300) | st.from_regex(r"[a-zA-Z0-9.*:/@\[\] -]{0,80}", fullmatch=True))
def test_any_text_gets_an_answer_and_a_suggestion_is_itself_valid(text: str) -> None:
    for wildcards in (False, True):
        problem = domain_problem(text, wildcards=wildcards)
        if problem is not None and problem.suggestion and "/" not in problem.suggestion:
            assert domain_problem(problem.suggestion, wildcards=True) is None


def test_with_the_native_backend_its_bounds_apply() -> None:
    entries = [{"domains": [f"n{i}.example.com"], "ports": [{"port": 443}]} for i in range(26)]
    assert errors(restricted(*entries), domain_wildcards=True, max_domains=100) == [
        f"{PATH}.egress: must have at most 25 entries with domains (a ClusterNetworkPolicy's "
        "egress rules), not 26"
    ]
    ports = [{"port": 1000 + i} for i in range(26)]
    assert errors(
        restricted({"domains": ["a.example.com"], "ports": ports}), domain_wildcards=True
    ) == [
        f"{PATH}.egress[0].ports: must have at most 25 ports (a ClusterNetworkPolicy rule's "
        "protocols), not 26"
    ]
    assert errors(restricted(*entries), max_domains=100) == []  # resolving: NetworkPolicy's


def test_the_override_annotation_takes_domains_with_the_same_rules() -> None:
    import json

    from webhook.policy.override import parse_override

    good = json.dumps(restricted({"domains": ["pypi.org"], "ports": [{"port": 443}]}))
    policy, found = parse_override(good, limits=Limits())
    assert policy is not None and found.errors == []
    bad = json.dumps(restricted({"domains": ["https://pypi.org/simple"]}))
    policy, found = parse_override(bad, limits=Limits())
    assert policy is None
    assert [str(e) for e in found.errors] == [
        "metadata.annotations[runtime.agentcube.io/network-policy].egress[0].domains[0]: "
        'must be a domain name, not a URL (did you mean "pypi.org"?): "https://pypi.org/simple"'
    ]
