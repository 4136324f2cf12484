"""The CLI edge: flags become one Settings, and options that would break every policy stop it."""

from __future__ import annotations

import pytest

from webhook.cli.main import build_parser, main, settings_from_args


def test_policy_flags_become_settings() -> None:
    args = build_parser().parse_args(
        [
            "render", "t.yaml", "--sandbox", "s",
            "--agentcube-namespace", "ac",
            "--router-label", "app=r", "--router-label", "tier=edge",
            "--dns-peer", '{"ipBlock": {"cidr": "169.254.20.10/32"}}',
            "--privileged-user", "admin",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert dict(settings.router_labels) == {"app": "r", "tier": "edge"}
    assert dict(settings.workload_manager_labels) == {"app": "workloadmanager"}
    assert settings.dns_peers == ({"ipBlock": {"cidr": "169.254.20.10/32"}},)
    # The default privileged group follows the AgentCube namespace.
    assert settings.privileged_groups == ("system:serviceaccounts:ac",)
    assert settings.privileged_users == ("admin",)


def test_gate_lifters_default_to_deploys_service_account_and_are_repeatable() -> None:
    def lifters(*flags: str) -> tuple[str, ...]:
        args = build_parser().parse_args(["run", *flags])
        return settings_from_args(args).gate_lifters

    assert lifters() == ("system:serviceaccount:agentcube-netpol-system:agentcube-netpol",)
    assert lifters("--gate-lifter", "a", "--gate-lifter", "system:serviceaccount:x:y") == (
        "a",
        "system:serviceaccount:x:y",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--router-label", "my app=x"], "error: --router-label: name part must consist"),
        (["--agentcube-namespace", "Agent_Cube"], "error: --agentcube-namespace: "),
        (
            ["--dns-peer", '{"ipBlock": {"cidr": "10.0.0.1/8"}}'],
            "error: --dns-peer[0].ipBlock.cidr: ",
        ),
    ],
)
def test_options_that_would_break_every_policy_stop_the_command(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["render", "examples/codeinterpreter-restricted.yaml", "--sandbox", "s", *flags])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--router-label", "novalue"], ["--dns-peer", "[1]"], []])
def test_usage_errors_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", *flags] if flags else ["nonsense"]) == 2
    assert "usage:" in capsys.readouterr().err
