"""What a user sees when a command cannot do its job: one line that says what failed and
what to do, and an exit code that tells the cases apart; never a traceback.

The commands run as a user runs them (a subprocess with the environment it would have);
the cluster cases that need a real API server are in tests/e2e/test_cli_cluster.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from webhook.api.exitcodes import EXIT_CLUSTER, EXIT_CODES, EXIT_FAILED, EXIT_USAGE
from webhook.cli.main import explain
from webhook.kube import errors

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60


def agentcube_netpol(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no cluster in its environment but what ``env`` adds."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    }
    environ.update(HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False,
        cwd=REPO_ROOT, env=environ,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["audit", "reconcile", "run"])
def test_no_cluster_config_is_one_line_and_exit_4(tmp_path: Path, command: str) -> None:
    result = agentcube_netpol(command, home=tmp_path)
    assert result.returncode == EXIT_CLUSTER
    line = one_line(result)
    assert "no kubeconfig found and not running in a cluster" in line
    assert "pass --kubeconfig, set $KUBECONFIG" in line


def test_a_garbage_kubeconfig_is_one_line_and_exit_4(tmp_path: Path) -> None:
    garbage = tmp_path / "config"
    garbage.write_text("clusters: [\n  - {name: a\n")
    result = agentcube_netpol("audit", home=tmp_path, KUBECONFIG=str(garbage))
    assert result.returncode == EXIT_CLUSTER
    assert f"{garbage}: not YAML" in one_line(result)


def test_an_unreachable_api_server_is_one_line_and_exit_4(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = agentcube_netpol("audit", "--kubeconfig", str(config), home=tmp_path)
    assert result.returncode == EXIT_CLUSTER
    line = one_line(result)
    assert "cannot reach the API server" in line
    assert "Retrying" not in result.stderr  # urllib3 retries nothing behind our back


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "99999"], "must be 1-65535, got 99999"),
        (["serve", "--port", "http"], "not a port: 'http'"),
        (["run", "--workers", "0"], "must be 1 or more, got 0"),
        (["run", "--lease-seconds", "-1"], "must be more than 0 seconds, got -1"),
        (["run", "--lease-seconds", "nan"], "not a finite number"),
        (["reconcile", "--rediscover-interval", "-5"], "must be 0 seconds or more"),
        (["reconcile", "--metrics-port", "0"], "must be 1-65535, got 0"),
        (["serve", "--cert-check-interval", "0"], "must be more than 0 seconds"),
        (["wait-isolated", "--timeout", "0"], "must be more than 0 seconds"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error(tmp_path: Path, args: list[str], says: str) -> None:
    result = agentcube_netpol(*args, home=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert says in result.stderr


def test_help_lists_every_exit_code(tmp_path: Path) -> None:
    result = agentcube_netpol("--help", home=tmp_path)
    assert result.returncode == 0
    for code, meaning in EXIT_CODES:
        assert f"  {code}  {meaning}" in result.stdout


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (errors.Forbidden("pods is forbidden"), EXIT_CLUSTER, "forbidden: pods is forbidden; ask"),
        (errors.Unauthorized("Unauthorized"), EXIT_CLUSTER, "does not accept these credentials"),
        (errors.ServerError("etcd down"), EXIT_CLUSTER, "the API server refused a request"),
        (RuntimeError("boom\nsecond line"), EXIT_FAILED, "internal error: RuntimeError: boom"),
    ],
)
def test_every_error_becomes_one_line(error: Exception, code: int, says: str) -> None:
    line, exit_code = explain(error)
    assert exit_code == code
    assert says in line
    assert "\n" not in line


def test_serve_refuses_deny_widening_it_could_not_honour(tmp_path: Path) -> None:
    """serve has no cache of sandboxes and pods: the flag would deny nothing, silently."""
    result = agentcube_netpol(
        "serve", "--deny-widening", "--cert-dir", str(tmp_path), home=tmp_path
    )
    assert result.returncode == EXIT_USAGE
    assert "use `agentcube-netpol run --deny-widening`" in one_line(result)


def test_dev_writes_its_kubeconfig_where_write_kubeconfig_says() -> None:
    from webhook.cli.dev import write_kubeconfig_path
    from webhook.cli.main import build_parser

    args = build_parser().parse_args(["dev", "--write-kubeconfig", "/tmp/x.kubeconfig"])
    assert write_kubeconfig_path(args) == Path("/tmp/x.kubeconfig")
    default = build_parser().parse_args(["dev"])
    assert write_kubeconfig_path(default) == Path("certs/dev.kubeconfig")


def test_dev_kubeconfig_still_works_with_a_notice(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli.dev import write_kubeconfig_path
    from webhook.cli.main import build_parser

    args = build_parser().parse_args(["dev", "--kubeconfig", "/tmp/old.kubeconfig"])
    assert write_kubeconfig_path(args) == Path("/tmp/old.kubeconfig")
    assert "dev --kubeconfig is deprecated" in capsys.readouterr().err
