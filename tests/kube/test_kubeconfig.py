"""The one config loader: kubectl's order, its merge, --context, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.kube.kubeconfig import ConfigError, Lookup, load, merge_kubeconfigs


def kubeconfig(
    path: Path, *, server: str, context: str, current: str | None = None, token: str = "t"
) -> Path:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
    }
    if current is not None:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    first = kubeconfig(tmp_path / "a", server="https://a.example:6443", context="a")
    second = kubeconfig(
        tmp_path / "b", server="https://b.example:6443", context="b", current="b", token="tb"
    )
    return first, second


def test_flag_wins_over_everything(tmp_path: Path, two_files: tuple[Path, Path]) -> None:
    first, second = two_files
    found = load(
        Lookup(kubeconfig=second, kubeconfig_env=str(first), home=tmp_path, in_cluster_host="x")
    )
    assert found.host == "https://b.example:6443"
    assert found.authorization() == "Bearer tb"
    assert "--kubeconfig" in found.source


def test_kubeconfig_env_is_a_merged_list(two_files: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = two_files
    missing = tmp_path / "nope"
    listed = f"{missing}:{first}:{second}"
    # No current-context in the first file: the first one set (the second's) is used, and
    # a file of the list that does not exist is skipped, as kubectl does.
    assert load(Lookup(kubeconfig_env=listed)).host == "https://b.example:6443"
    # Every context of every file can be picked.
    assert load(Lookup(kubeconfig_env=listed, context="a")).host == "https://a.example:6443"


def test_the_first_file_that_names_a_cluster_wins() -> None:
    cluster = {"name": "c", "cluster": {"server": "https://first"}}
    later = {"name": "c", "cluster": {"server": "https://second"}}
    merged = merge_kubeconfigs(
        [
            (Path("/x/one"), {"clusters": [cluster], "current-context": "one"}),
            (Path("/x/two"), {"clusters": [later], "current-context": "two"}),
        ]
    )
    assert merged["clusters"] == [{"name": "c", "cluster": {"server": "https://first"}}]
    assert merged["current-context"] == "one"


def test_relative_paths_are_resolved_against_their_file() -> None:
    merged = merge_kubeconfigs(
        [(Path("/etc/k/config"), {"users": [{"name": "u", "user": {"client-key": "u.key"}}]})]
    )
    assert merged["users"][0]["user"]["client-key"] == "/etc/k/u.key"


def test_home_kubeconfig_when_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    kubeconfig(
        tmp_path / ".kube" / "config", server="https://home.example", context="h", current="h"
    )
    found = load(Lookup(home=tmp_path, in_cluster_host="10.0.0.1", in_cluster_port="443"))
    assert found.host == "https://home.example"


def test_in_cluster_last(tmp_path: Path) -> None:
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("sa-token")
    (account / "ca.crt").write_text("not checked until a connection is made")
    found = load(
        Lookup(
            home=tmp_path,
            in_cluster_host="10.96.0.1",
            in_cluster_port="443",
            service_account_dir=account,
        )
    )
    assert found.host == "https://10.96.0.1:443"
    # The in-cluster loader writes the scheme in lower case; HTTP does not mind.
    assert (found.authorization() or "").lower() == "bearer sa-token"
    assert found.ca_file == str(account / "ca.crt")
    assert found.source == "in-cluster service account"


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "no kubeconfig found and not running in a cluster; pass --kubeconfig"),
        ("clusters: [", "not YAML"),
        ("- a list", "not a kubeconfig"),
        ("apiVersion: v1\nkind: Config\n", "no current context; pass --context"),
    ],
)
def test_what_cannot_be_used_is_one_line(tmp_path: Path, write: str | None, message: str) -> None:
    env = None
    if write is not None:
        (tmp_path / "config").write_text(write)
        env = str(tmp_path / "config")
    with pytest.raises(ConfigError, match=message) as caught:
        load(Lookup(kubeconfig_env=env, home=tmp_path))
    assert "\n" not in str(caught.value)


def test_an_unknown_context_names_the_known_ones(two_files: tuple[Path, Path]) -> None:
    first, second = two_files
    with pytest.raises(ConfigError, match=r"no context 'c' \(contexts: a, b\)"):
        load(Lookup(kubeconfig_env=f"{first}:{second}", context="c"))


def test_a_missing_flag_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--kubeconfig .*: no such file"):
        load(Lookup(kubeconfig=tmp_path / "absent"))


def test_an_env_list_of_missing_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="none of its files exists"):
        load(Lookup(kubeconfig_env=f"{tmp_path / 'x'}:{tmp_path / 'y'}"))
