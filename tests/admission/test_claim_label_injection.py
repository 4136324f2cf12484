"""The claim mutation adds our label only where agent-sandbox will accept it (v0.5+ refuses
a claim whose additionalPodMetadata labels are outside its allow-list)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import builders
from webhook.admission.decide import NoClaims, mutate
from webhook.api import kinds
from webhook.api.settings import Settings


def claim(api_version: str) -> dict[str, Any]:
    obj = builders.sandbox_claim("demo-ab12cd34", uid="c1a1m")
    obj["apiVersion"] = f"{kinds.SANDBOX_EXT_GROUP}/{api_version}"
    if api_version == "v1beta1":
        obj["spec"] = {"warmPoolRef": {"name": "demo"}}
    return obj


@pytest.mark.parametrize(
    ("setting", "api_version", "patched"),
    [
        ("on", "v1beta1", True),
        ("on", "v1alpha1", True),
        ("off", "v1alpha1", False),
        ("off", "v1beta1", False),
        # "auto" not resolved against a cluster: v1alpha1 is agent-sandbox v0.4 or a v0.5
        # converting; only the first has no allow-list, and "auto" is resolved wherever the
        # server watches claims.
        ("auto", "v1alpha1", True),
        ("auto", "v1beta1", False),
    ],
)
def test_the_label_is_added_only_where_it_is_wanted(
    adm_request: Callable[..., dict[str, Any]], setting: Any, api_version: str, patched: bool
) -> None:
    response = mutate(
        adm_request(claim(api_version), kind=kinds.SANDBOX_CLAIM),
        settings=Settings(claim_label_injection=setting),
        claims=NoClaims(),
    )
    assert response["allowed"] is True
    assert ("patch" in response) is patched


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        (None, False),  # agent-sandbox's default: sandbox.users.io only
        ("", False),
        ("sandbox.users.io", False),
        ("runtime.agentcube.io", True),
        ("sandbox.users.io, agentcube.io", True),  # suffix match
        ("sandbox.users.io\nRuntime.AgentCube.io\n", True),
        ("cube.io", False),  # a suffix of the domain, not of a label: no dot before it
    ],
)
def test_the_allow_list_is_read_as_agent_sandbox_reads_it(text: str | None, accepted: bool) -> None:
    domains = kinds.allowed_label_domains(text)
    assert kinds.label_domain_allowed(kinds.LABEL_SANDBOX_NAME, domains) is accepted
