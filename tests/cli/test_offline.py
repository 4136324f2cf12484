"""``check`` and ``render`` as a user runs them: through the CLI, reading files."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import EXAMPLES, FIXTURES, REPO_ROOT
from tests.readme import console_commands
from webhook.api.settings import Settings
from webhook.cli import offline
from webhook.cli.main import main
from webhook.policy.builder import build_network_policy, template_policy

VALID = sorted((FIXTURES / "valid").iterdir())
# check-only/: refused by check, and in a cluster by kube-apiserver before the webhook sees it.
INVALID = sorted([*(FIXTURES / "invalid").iterdir(), *(FIXTURES / "check-only").iterdir()])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def expectations(path: Path, tag: str) -> list[str]:
    return re.findall(rf"^# {tag}: (\S+)$", path.read_text(), flags=re.MULTILINE)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CODE_INTERPRETER = """\
apiVersion: runtime.agentcube.volcano.sh/v1alpha1
kind: CodeInterpreter
metadata:
  name: {name}
spec:
  template:
    image: picod
    networkPolicy:
      mode: Restricted
      egress:
        - cidrs: ["{cidr}"]
"""


# --- the corpus ----------------------------------------------------------------------------


def test_the_corpus_has_both_kinds_valid_and_invalid() -> None:
    for files in (VALID, INVALID):
        text = "".join(f.read_text() for f in files)
        assert "kind: CodeInterpreter" in text or '"kind": "CodeInterpreter"' in text
        assert "kind: AgentRuntime" in text
    assert all(expectations(f, "expect-error") for f in INVALID), "each names its error path"


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_fixtures_pass_check(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, err = run(capsys, "check", str(path))
    assert (code, out) == (0, "1 object checked: 1 valid, 0 invalid\n")
    for expected in expectations(path, "expect-warning"):
        assert f": {expected}: " in err


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_fixtures_fail_check_at_the_named_paths(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    error_lines = out.splitlines()[:-1]
    assert out.splitlines()[-1] == "1 object checked: 0 valid, 1 invalid"
    for line in error_lines:
        assert line.startswith(f"{path}: ")
    paths_reported = [line.split(": ")[2] for line in error_lines]
    for expected in expectations(path, "expect-error"):
        assert expected in paths_reported


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_render_prints_what_the_builder_builds(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    args = ("render", str(path), "--sandbox", "sb-1-abcd1234", "--no-resolve")
    code, out, err = run(capsys, *args)
    assert code == 0
    (obj,) = [o.obj for o in offline.load_objects(str(path))]
    namespace = (obj.get("metadata") or {}).get("namespace") or "default"
    expected = build_network_policy(
        template_policy(obj), sandbox="sb-1-abcd1234", namespace=namespace, settings=Settings()
    )
    if expected is None:
        assert out == ""
        assert "mode is None" in err
    else:
        own, *shared = yaml.safe_load_all(out)
        if shared:  # egress domains: the namespace's shared policy follows, named by label
            key = own["metadata"]["labels"].pop("netpol.agentcube.io/domain-set")
            assert [s["metadata"]["name"] for s in shared] == [f"netpol-domains.{key}"]
            assert "holds what" in err
        assert own == expected
        again = run(capsys, *args)
        assert again[1] == out  # byte-identical


# --- check ----------------------------------------------------------------------------------


def test_check_reports_every_error_of_every_file_then_a_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = write(tmp_path, "good.yaml", CODE_INTERPRETER.format(name="good", cidr="10.0.0.0/8"))
    bad = write(tmp_path, "bad.yaml", CODE_INTERPRETER.format(name="bad", cidr="10.0.0.1/8"))
    code, out, err = run(capsys, "check", good, bad)
    assert code == 1
    assert out == (
        f"{bad}: CodeInterpreter/bad: spec.template.networkPolicy.egress[0].cidrs[0]: "
        'must be a canonical CIDR with no host bits set (did you mean "10.0.0.0/8"?): '
        '"10.0.0.1/8"\n'
        "2 objects checked: 1 valid, 1 invalid\n"
    )
    assert err == ""


def test_check_multi_document_yaml_skips_other_kinds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = "---\n".join(
        [
            CODE_INTERPRETER.format(name="one", cidr="10.0.0.0/8"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
            CODE_INTERPRETER.format(name="two", cidr="300.0.0.0/8"),
            "",  # a trailing --- leaves an empty document
        ]
    )
    path = write(tmp_path, "many.yaml", text)
    code, out, _ = run(capsys, "check", path)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: CodeInterpreter/two: spec.template.networkPolicy.egress")
    assert lines[1] == "2 objects checked: 1 valid, 1 invalid; 1 of other kinds not checked"


def test_check_a_kind_of_the_same_name_in_another_group_is_not_ours(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = CODE_INTERPRETER.format(name="x", cidr="bad").replace(
        "runtime.agentcube.volcano.sh", "example.com"
    )
    code, out, _ = run(capsys, "check", write(tmp_path, "other.yaml", text))
    assert (code, out) == (
        0,
        "0 objects checked: 0 valid, 0 invalid; 1 of other kinds not checked\n",
    )


def test_check_reads_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(CODE_INTERPRETER.format(name="in", cidr="::/0")))
    code, out, err = run(capsys, "check", "-")
    assert (code, out) == (0, "1 object checked: 1 valid, 0 invalid\n")
    assert "Warning: <stdin>: CodeInterpreter/in:" in err  # egress to all addresses

    monkeypatch.setattr(sys, "stdin", io.StringIO(CODE_INTERPRETER.format(name="in", cidr="::1/0")))
    code, out, _ = run(capsys, "check", "-")
    assert code == 1
    assert out.startswith("<stdin>: CodeInterpreter/in: spec.template.networkPolicy.egress[0]")


def test_check_json_object_and_json_list(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    obj = yaml.safe_load(CODE_INTERPRETER.format(name="j", cidr="10.0.0.1/8"))
    single = write(tmp_path, "one.json", json.dumps(obj))
    listed = write(tmp_path, "list.json", json.dumps({"kind": "List", "items": [obj, obj]}))
    code, out, _ = run(capsys, "check", single, listed)
    assert code == 1
    assert out.count("CodeInterpreter/j: spec.template.networkPolicy.egress[0].cidrs[0]") == 3
    assert out.endswith("3 objects checked: 0 valid, 3 invalid\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: CodeInterpreter\nspec:\n  template: [unclosed\n",
            "line 4, column 1: not valid YAML",
        ),
        ("kind: CodeInterpreter\n\tspec: {}\n", "line 2, column 1: not valid YAML"),
        ("apiVersion: v1\nmetadata: {name: x}\n", "document 1: object has no kind"),
        ("- kind: CodeInterpreter\n", "document 1 is not an object (a list)"),
        ("kind: A\n---\njust text\n", "document 2 is not an object (a str)"),
        ('{"kind": "List", "items": [{"kind": "X"}, 3]}', "document 1: items[1] is not an object"),
        (
            "kind: CodeInterpreter\nspec:\n  egress: []\n  egress: [x]\n",
            "line 4, column 3: not valid YAML: duplicate key 'egress'",
        ),
    ],
    ids=["unclosed", "tab", "no kind", "a list", "a scalar", "list item", "duplicate key"],
)
def test_check_unreadable_input_exits_2_with_where_and_what(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "in.yaml", text)
    code, out, err = run(capsys, "check", path)
    assert code == 2
    assert err.startswith(f"error: {path}: {message}")
    assert "could not be read" in out


def test_check_missing_file_does_not_stop_the_others(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(tmp_path, "bad.yaml", CODE_INTERPRETER.format(name="bad", cidr="10.0.0.1/8"))
    missing = str(tmp_path / "nope.yaml")
    code, out, err = run(capsys, "check", missing, bad)
    assert code == 2  # unreadable input wins over invalid objects
    assert err == f"error: {missing}: no such file\n"
    assert "CodeInterpreter/bad: spec.template.networkPolicy.egress[0].cidrs[0]" in out
    assert out.endswith("1 object checked: 0 valid, 1 invalid; 1 input could not be read\n")


def test_check_a_directory_checks_its_manifest_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write(tmp_path, "a.yaml", CODE_INTERPRETER.format(name="a", cidr="10.0.0.0/8"))
    write(tmp_path, "b.yml", CODE_INTERPRETER.format(name="b", cidr="10.0.0.1/8"))
    write(tmp_path, "notes.txt", "not a manifest: {")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "c.yaml", "kind: [")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert (code, err) == (1, "")
    assert out.splitlines()[0].startswith(f"{tmp_path / 'b.yml'}: CodeInterpreter/b: ")
    assert out.splitlines()[1] == "2 objects checked: 1 valid, 1 invalid"


def test_render_of_a_directory_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "render", str(tmp_path), "--sandbox", "s1")
    assert (code, out, err) == (2, "", f"error: {tmp_path}: is a directory\n")


def test_check_binary_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "blob.yaml"
    path.write_bytes(b"kind: \xff\xfe\n")
    code, _, err = run(capsys, "check", str(path))
    assert code == 2
    assert err.startswith(f"error: {path}: not UTF-8 text")


def test_check_without_files_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check"])
    assert code == 2
    assert "FILE" in capsys.readouterr().err


def test_check_survives_a_validator_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(obj: dict[str, Any], *, settings: Settings) -> Any:
        raise KeyError("spec")

    monkeypatch.setattr(offline, "validate_object", broken)
    path = write(tmp_path, "x.yaml", CODE_INTERPRETER.format(name="x", cidr="10.0.0.0/8"))
    code, out, err = run(capsys, "check", path)
    assert code == 2
    assert err == f"error: {path}: CodeInterpreter/x: could not validate: 'spec'\n"
    assert out == "0 objects checked: 0 valid, 0 invalid; 1 object could not be validated\n"


def test_unnamed_objects_are_named_by_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = CODE_INTERPRETER.format(name="", cidr="10.0.0.1/8")
    code, out, _ = run(capsys, "check", write(tmp_path, "x.yaml", "kind: Other\n---\n" + text))
    assert code == 1
    assert "CodeInterpreter/(unnamed, document 2): spec.template" in out


# --- render ---------------------------------------------------------------------------------


def test_render_namespace_flag_template_namespace_or_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = write(tmp_path, "a.yaml", CODE_INTERPRETER.format(name="a", cidr="10.0.0.0/8"))
    placed = write(
        tmp_path,
        "b.yaml",
        CODE_INTERPRETER.format(name="b", cidr="10.0.0.0/8").replace(
            "name: b", "name: b\n  namespace: team-b"
        ),
    )

    def namespace_of(*argv: str) -> str:
        code, out, _ = run(capsys, "render", *argv, "--sandbox", "s1")
        assert code == 0
        return str(yaml.safe_load(out)["metadata"]["namespace"])

    assert namespace_of(plain) == "default"
    assert namespace_of(placed) == "team-b"
    assert namespace_of(placed, "--namespace", "other") == "other"


def test_render_output_is_block_style_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "a.yaml", CODE_INTERPRETER.format(name="a", cidr="10.0.0.0/8"))
    code, out, err = run(capsys, "render", path, "--sandbox", "ci-a-12345678")
    assert (code, err) == (0, "")
    assert out.startswith("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n")
    assert "{" not in out and "[" not in out
    assert "    - ipBlock:\n        cidr: 10.0.0.0/8\n" in out


def test_render_policy_options_reach_the_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "a.yaml", CODE_INTERPRETER.format(name="a", cidr="10.0.0.0/8"))
    code, out, _ = run(
        capsys,
        "render",
        path,
        "--sandbox",
        "s1",
        "--agentcube-namespace",
        "acube",
        "--router-label",
        "role=router",
        "--dns-to-anywhere",
    )
    assert code == 0
    spec = yaml.safe_load(out)["spec"]
    router, manager = spec["ingress"][0]["from"]
    assert router == {
        "podSelector": {"matchLabels": {"role": "router"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "acube"}},
    }
    assert manager["podSelector"] == {"matchLabels": {"app": "workloadmanager"}}
    assert spec["egress"][0] == {
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    }


def test_render_refuses_an_invalid_template(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "invalid" / "codeinterpreter-cidr-host-bits.yaml"
    code, out, err = run(capsys, "render", str(path), "--sandbox", "s1")
    assert (code, out) == (1, "")
    assert (
        f"{path}: CodeInterpreter/bad-cidr: spec.template.networkPolicy.egress[0].cidrs[1]" in err
    )


def test_render_mode_none_prints_nothing_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "valid" / "codeinterpreter-mode-none.yaml"
    code, out, err = run(capsys, "render", str(path), "--sandbox", "s1")
    assert (code, out) == (0, "")
    assert err == (
        f"{path}: CodeInterpreter/python-open: networkPolicy mode is None: "
        "its sandboxes get no NetworkPolicy\n"
    )


def test_render_reads_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(CODE_INTERPRETER.format(name="a", cidr="::/0")))
    code, out, _ = run(capsys, "render", "-", "--sandbox", "s1")
    assert code == 0
    assert yaml.safe_load(out)["spec"]["egress"][1] == {"to": [{"ipBlock": {"cidr": "::/0"}}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", "found none"),
        (
            CODE_INTERPRETER.format(name="a", cidr="10.0.0.0/8")
            + "---\n"
            + CODE_INTERPRETER.format(name="b", cidr="10.0.0.0/8"),
            "found CodeInterpreter/a, CodeInterpreter/b",
        ),
        ("kind: [\n", "not valid YAML"),
    ],
    ids=["no template", "two templates", "bad YAML"],
)
def test_render_needs_exactly_one_template(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    code, out, err = run(capsys, "render", write(tmp_path, "x.yaml", text), "--sandbox", "s1")
    assert (code, out) == (2, "")
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sandbox", "Bad_Name"], "--sandbox must be a lowercase RFC 1123 subdomain"),
        (["--sandbox", "a" * 64], "--sandbox must be no more than 63 characters"),
        (
            ["--sandbox", "ok", "--namespace", "a.b"],
            "--namespace must be a lowercase RFC 1123 label",
        ),
    ],
)
def test_render_refuses_names_kubernetes_would_refuse(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = FIXTURES / "valid" / "codeinterpreter-restricted-nothing.yaml"
    code, out, err = run(capsys, "render", str(path), *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}")


def test_render_without_sandbox_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "x.yaml"]) == 2
    assert "--sandbox" in capsys.readouterr().err


# --- the documented examples ----------------------------------------------------------------


OFFLINE_COMMANDS = [
    (readme, argv, shown)
    for readme, prefix in (
        (REPO_ROOT / "README.md", "agentcube-netpol"),
        (EXAMPLES / "README.md", "python -m webhook"),
    )
    for argv, shown in console_commands(readme.read_text(), prefix)
    if argv.split()[0] in ("check", "render")
]


def test_the_readmes_show_check_and_render() -> None:
    """The test below runs what it finds: this keeps it from finding nothing."""
    assert {(str(r.relative_to(REPO_ROOT)), a.split()[0]) for r, a, _ in OFFLINE_COMMANDS} == {
        ("README.md", "check"),
        ("README.md", "render"),
        ("examples/README.md", "check"),
        ("examples/README.md", "render"),
    }


@pytest.mark.parametrize(
    ("readme", "command", "shown"),
    OFFLINE_COMMANDS,
    ids=[f"{r.parent.name}/{r.name}: {a}" for r, a, _ in OFFLINE_COMMANDS],
)
def test_readme_offline_commands_print_what_is_shown(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    readme: Path,
    command: str,
    shown: list[str],
) -> None:
    """Run from the checkout's root, as the READMEs say; exit 0 and stdout as shown (when
    the README shows output: the render output is shown in full)."""
    monkeypatch.chdir(REPO_ROOT)
    code, out, _ = run(capsys, *command.split())
    assert code == 0
    if shown:
        assert out.splitlines() == shown


def test_render_refuses_options_that_make_an_invalid_network_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "valid" / "codeinterpreter-restricted-nothing.yaml"
    code, out, err = run(
        capsys, "render", str(path), "--sandbox", "s1", "--router-label", "my app=x",
        "--dns-peer", '{"ipBlock": {"cidr": "169.254.20.10/24"}}',
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "error: --router-label: name part must consist of alphanumeric characters, '-', '_' or "
        "'.', and must start and end with an alphanumeric character: \"my app=x\"",
        "error: --dns-peer[0].ipBlock.cidr: must be a canonical CIDR with no host bits set "
        '(did you mean "169.254.20.0/24"?): "169.254.20.10/24"',
    ]


# --- egress domains -------------------------------------------------------------------------

DOMAINS_TEMPLATE = """\
apiVersion: runtime.agentcube.volcano.sh/v1alpha1
kind: CodeInterpreter
metadata: {name: py, namespace: team-a}
spec:
  template:
    networkPolicy:
      mode: Restricted
      egress:
      - domains: [pypi.test, "*.pypi-cdn.test"]
        ports: [{port: 443}]
"""


def test_render_with_domains_prints_the_shared_policy_as_the_names_resolve_now(
    tmp_path: Path,
) -> None:
    from webhook.reconciler.domaincache import Resolution

    path = tmp_path / "ci.yaml"
    path.write_text(DOMAINS_TEMPLATE.replace(', "*.pypi-cdn.test"', ", mirror.test"))
    answers = {
        "pypi.test": Resolution(("203.0.113.7",), 30),
        "mirror.test": Resolution(("10.1.2.3", "169.254.169.254"), 30),
    }
    out, err = io.StringIO(), io.StringIO()
    code = offline.render(
        str(path), sandbox="py-1", namespace=None, settings=Settings(),
        stdout=out, stderr=err, resolve=answers.__getitem__,
    )  # fmt: skip
    assert code == 0
    own, shared = yaml.safe_load_all(out.getvalue())
    assert own["metadata"]["labels"]["netpol.agentcube.io/domain-set"] == (
        shared["metadata"]["name"].removeprefix("netpol-domains.")
    )
    assert shared["spec"]["egress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}],
        }
    ]
    lines = err.getvalue().splitlines()
    assert lines[:2] == [
        "Warning: mirror.test answered 10.1.2.3, a private address (RFC 1918): not allowed "
        "(allowAnswersIn on the entry admits a private range; the metadata address never)",
        "Warning: mirror.test answered 169.254.169.254, the cloud metadata address: not allowed "
        "(allowAnswersIn on the entry admits a private range; the metadata address never)",
    ]
    assert "resolve to now" in lines[2]


def test_render_a_wildcard_needs_the_native_backend_which_prints_a_cluster_network_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "ci.yaml"
    path.write_text(DOMAINS_TEMPLATE)
    code, _, err = run(capsys, "render", str(path), "--sandbox", "py-1", "--no-resolve")
    assert code == 1
    assert "spec.template.networkPolicy.egress[0].domains[1]: a wildcard cannot be resolved" in err
    code, out, err = run(
        capsys, "render", str(path), "--sandbox", "py-1",
        "--domain-backend=cluster-network-policy",
    )  # fmt: skip
    assert code == 0
    _, shared = yaml.safe_load_all(out)
    assert shared["kind"] == "ClusterNetworkPolicy"
    assert shared["spec"]["egress"][0]["to"] == [{"domainNames": ["*.pypi-cdn.test", "pypi.test"]}]
    assert "the network plugin matches them" in err
