"""``check`` on agent-sandbox's objects as each release writes them: v1alpha1 (v0.4) and
v1beta1 (v0.5, v1.0), where a SandboxClaim names its warm pool instead of its template and a
Sandbox says ``operatingMode`` instead of ``replicas``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import builders
from tests.builders import AGENT_SANDBOX_VERSIONS, in_version
from tests.cli.test_offline import run
from webhook.api import kinds

GOOD = {"mode": "Restricted", "egress": [{"cidrs": ["203.0.113.0/24"], "ports": [{"port": 443}]}]}
BAD = {"mode": "Restricted", "egress": [{"cidrs": ["10.0.0.1/8"]}]}
BAD_AT = (
    "metadata.annotations[runtime.agentcube.io/network-policy].egress[0].cidrs[0]: "
    'must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): "10.0.0.1/8"'
)
OVERRIDDEN = (kinds.SANDBOX, kinds.SANDBOX_CLAIM)


def session(kind: kinds.Kind, version: str, policy: Any) -> dict[str, Any]:
    """A Sandbox or SandboxClaim in ``version`` carrying ``policy`` as its override."""
    annotations = {kinds.ANNOTATION_NETWORK_POLICY: json.dumps(policy)}
    if kind == kinds.SANDBOX_CLAIM:
        obj = builders.sandbox_claim("s-1", template="py", annotations=annotations)
    else:
        obj = builders.sandbox("s-1", annotations=annotations)
        obj["spec"]["replicas"] = 1
    return in_version(obj, version)


def write(tmp_path: Path, *objects: dict[str, Any]) -> str:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    return str(path)


@pytest.mark.parametrize("version", AGENT_SANDBOX_VERSIONS)
@pytest.mark.parametrize("kind", OVERRIDDEN, ids=lambda k: k.kind)
def test_the_override_is_checked_in_each_versions_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: kinds.Kind, version: str
) -> None:
    good = session(kind, version, GOOD)
    assert good["apiVersion"].endswith("/" + version)
    assert run(capsys, "check", write(tmp_path, good)) == (
        0,
        "1 object checked: 1 valid, 0 invalid\n",
        "",
    )
    path = write(tmp_path, session(kind, version, BAD))
    assert run(capsys, "check", path) == (
        1,
        f"{path}: {kind.kind}/s-1: {BAD_AT}\n1 object checked: 0 valid, 1 invalid\n",
        "",
    )


def test_v1beta1_shapes_are_the_ones_agent_sandbox_v0_5_writes() -> None:
    """What the other tests here feed ``check``: the fields v1beta1 renamed."""
    claim = session(kinds.SANDBOX_CLAIM, "v1beta1", GOOD)
    assert claim["spec"] == {"warmPoolRef": {"name": "py"}}
    assert session(kinds.SANDBOX, "v1beta1", GOOD)["spec"]["operatingMode"] == "Running"


@pytest.mark.parametrize(
    ("version", "spec", "errors"),
    [
        (
            "v1beta1",
            {"sandboxTemplateRef": {"name": "py"}},
            [
                "spec.sandboxTemplateRef: not a field of SandboxClaim v1beta1 (it is v1alpha1's): "
                "name the SandboxWarmPool in spec.warmPoolRef.name",
                "spec.warmPoolRef.name: required: the SandboxWarmPool the claim takes its "
                "sandbox from",
            ],
        ),
        (
            "v1alpha1",
            {"warmPoolRef": {"name": "py"}},
            [
                "spec.warmPoolRef: not a field of SandboxClaim v1alpha1 (it is v1beta1's): "
                "name the SandboxTemplate in spec.sandboxTemplateRef.name",
                "spec.sandboxTemplateRef.name: required: the SandboxTemplate the claim takes "
                "its sandbox from",
            ],
        ),
        (
            "v1beta1",
            {"warmPoolRef": {"name": 7}},
            [
                "spec.warmPoolRef.name: required: the SandboxWarmPool the claim takes its "
                "sandbox from: 7"
            ],
        ),
        (
            "v1alpha1",
            {},
            [
                "spec.sandboxTemplateRef.name: required: the SandboxTemplate the claim takes its "
                "sandbox from"
            ],
        ),
    ],
    ids=["v1alpha1-ref-in-v1beta1", "v1beta1-ref-in-v1alpha1", "not-a-name", "no-ref"],
)
def test_a_claim_must_name_what_it_claims_from_in_its_versions_field(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    version: str,
    spec: dict[str, Any],
    errors: list[str],
) -> None:
    """The API server refuses these before our webhook sees them (agent-sandbox's CRD
    schema); offline, ``check`` is all there is, so it says so, naming the field."""
    claim = in_version(builders.sandbox_claim("s-1"), version)
    claim["spec"] = spec
    path = write(tmp_path, claim)
    code, out, err = run(capsys, "check", path)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        *(f"{path}: SandboxClaim/s-1: {error}" for error in errors),
        "1 object checked: 0 valid, 1 invalid",
    ]


@pytest.mark.parametrize("version", AGENT_SANDBOX_VERSIONS)
def test_a_warm_pool_as_agentcube_makes_it_passes_in_each_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, version: str
) -> None:
    """The SandboxTemplate and SandboxWarmPool are not ours to check offline (whether a
    template loosens a session depends on the cluster's CodeInterpreters): counted, passed."""
    objects = [
        builders.code_interpreter("py", policy=GOOD, warm_pool_size=1),
        in_version(builders.sandbox_template("py"), version),
        in_version(builders.sandbox_warm_pool("py"), version),
        session(kinds.SANDBOX_CLAIM, version, GOOD),
    ]
    assert run(capsys, "check", write(tmp_path, *objects)) == (
        0,
        "2 objects checked: 2 valid, 0 invalid; 2 of other kinds not checked\n",
        "",
    )
