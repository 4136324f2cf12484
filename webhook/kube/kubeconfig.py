"""Finding the cluster as kubectl does: the one config loader every command uses.

The order is kubectl's (client-go's ``clientcmd``):

1. ``--kubeconfig PATH``: that file, and only it;
2. ``$KUBECONFIG``: a colon-separated list of files, merged as kubectl merges them (for
   each cluster, user and context, the first file that names it wins; the current context
   is the first one set); files in the list that do not exist are skipped;
3. ``~/.kube/config``;
4. the in-cluster service account (``KUBERNETES_SERVICE_HOST`` and the mounted token,
   re-read as the kubelet rotates it).

``--context`` picks a context instead of the current one. Parsing and credentials (client
certificates, bearer tokens, exec plugins) are the ``kubernetes`` package's config module;
what comes out is a ``ClusterConfig``, from which ``webhook.kube.rest`` builds its own
connection pool. The environment is read by the caller (the CLI) and passed in, so this
module reads no global state.

Every way of not finding a usable configuration is a ``ConfigError`` with one sentence
that says which source was tried and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IN_CLUSTER_HOST_ENV = "KUBERNETES_SERVICE_HOST"
IN_CLUSTER_PORT_ENV = "KUBERNETES_SERVICE_PORT"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path(".kube/config")  # under the home directory
HINT = "pass --kubeconfig, set $KUBECONFIG, or run in a pod with a service account"


class ConfigError(Exception):
    """No usable cluster configuration; the message says where it looked and why."""


@dataclass(frozen=True)
class ClusterConfig:
    """What a client needs to talk to one API server."""

    host: str
    # Where it came from, for messages: "kubeconfig /path (context ctx)" or "in-cluster".
    source: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    # The Authorization header's value, asked for before each request: bearer tokens from
    # exec plugins and the in-cluster token file are refreshed behind it.
    authorization: Callable[[], str | None] = field(default=lambda: None, compare=False)


@dataclass(frozen=True)
class Lookup:
    """What the CLI read: the flags and the environment variables the lookup depends on."""

    kubeconfig: Path | None = None
    context: str | None = None
    kubeconfig_env: str | None = None  # $KUBECONFIG
    home: Path | None = None  # $HOME
    in_cluster_host: str | None = None  # $KUBERNETES_SERVICE_HOST
    in_cluster_port: str | None = None  # $KUBERNETES_SERVICE_PORT
    service_account_dir: Path = SERVICE_ACCOUNT_DIR

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, kubeconfig: Path | None, context: str | None
    ) -> Lookup:
        home = environ.get("HOME")
        return cls(
            kubeconfig=kubeconfig,
            context=context,
            kubeconfig_env=environ.get("KUBECONFIG"),
            home=Path(home) if home else None,
            in_cluster_host=environ.get(IN_CLUSTER_HOST_ENV),
            in_cluster_port=environ.get(IN_CLUSTER_PORT_ENV),
        )


def kubeconfig_files(lookup: Lookup) -> tuple[list[Path], str]:
    """The kubeconfig files to merge, in order, and where the list came from; no files
    means the in-cluster service account."""
    if lookup.kubeconfig is not None:
        if not lookup.kubeconfig.is_file():
            raise ConfigError(f"--kubeconfig {lookup.kubeconfig}: no such file")
        return [lookup.kubeconfig], f"--kubeconfig {lookup.kubeconfig}"
    if lookup.kubeconfig_env:
        listed = [Path(p).expanduser() for p in lookup.kubeconfig_env.split(os.pathsep) if p]
        present = [path for path in listed if path.is_file()]
        if not present:
            raise ConfigError(f"$KUBECONFIG={lookup.kubeconfig_env}: none of its files exists")
        return present, f"$KUBECONFIG={lookup.kubeconfig_env}"
    if lookup.home is not None:
        default = lookup.home / DEFAULT_KUBECONFIG
        if default.is_file():
            return [default], str(default)
    return [], "in-cluster"


def merge_kubeconfigs(documents: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """kubectl's merge of several kubeconfig files: for clusters, users and contexts, the
    first file that names one wins; so does the first ``current-context`` set.

    Relative paths in a file (certificate-authority, client-key, ...) are made absolute
    against that file's directory before merging, as kubectl resolves them."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    seen: dict[str, set[str]] = {key: set() for key in merged}
    for path, document in documents:
        for key, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in document.get(key) or ():
                if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                    raise ConfigError(f"{path}: an entry of {key} has no name")
                if entry["name"] in seen[key]:
                    continue
                seen[key].add(entry["name"])
                merged[key].append(
                    {"name": entry["name"], inner: _absolute(entry.get(inner), path.parent)}
                )
        if "current-context" not in merged and document.get("current-context"):
            merged["current-context"] = document["current-context"]
    return merged


PATH_FIELDS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


def _absolute(section: Any, base: Path) -> Any:
    if not isinstance(section, Mapping):
        return section
    resolved = dict(section)
    for key in PATH_FIELDS:
        value = resolved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str(base / value)
    return resolved


def load(lookup: Lookup) -> ClusterConfig:
    """The cluster ``lookup`` finds, or ``ConfigError``."""
    files, source = kubeconfig_files(lookup)
    if not files:
        return _in_cluster(lookup)
    documents = []
    for path in files:
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not YAML: {_first_line(exc)}") from None
        if document is None:
            document = {}
        if not isinstance(document, Mapping):
            raise ConfigError(f"{path}: not a kubeconfig (expected a mapping)")
        documents.append((path, document))
    return _from_kubeconfig(merge_kubeconfigs(documents), lookup.context, source)


def _from_kubeconfig(merged: dict[str, Any], context: str | None, source: str) -> ClusterConfig:
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import KubeConfigLoader

    chosen = context or merged.get("current-context")
    if not chosen:
        raise ConfigError(f"{source}: no current context; pass --context")
    names = [entry["name"] for entry in merged["contexts"]]
    if chosen not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(f"{source}: no context {chosen!r} (contexts: {known})")
    configuration = Configuration()
    try:
        KubeConfigLoader(config_dict=merged, active_context=chosen).load_and_set(configuration)
    except (ConfigException, ValueError, TypeError, KeyError, OSError) as exc:
        raise ConfigError(f"{source} (context {chosen}): {_first_line(exc)}") from None
    return _from_configuration(configuration, f"{source} (context {chosen})")


def _in_cluster(lookup: Lookup) -> ClusterConfig:
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    if not lookup.in_cluster_host or not lookup.in_cluster_port:
        raise ConfigError(f"no kubeconfig found and not running in a cluster; {HINT}")
    configuration = Configuration()
    directory = lookup.service_account_dir
    try:
        InClusterConfigLoader(
            token_filename=str(directory / "token"),
            cert_filename=str(directory / "ca.crt"),
            environ={
                IN_CLUSTER_HOST_ENV: lookup.in_cluster_host,
                IN_CLUSTER_PORT_ENV: lookup.in_cluster_port,
            },
        ).load_and_set(configuration)
    except (ConfigException, OSError) as exc:
        raise ConfigError(f"in-cluster service account: {_first_line(exc)}; {HINT}") from None
    return _from_configuration(configuration, "in-cluster service account")


def _from_configuration(configuration: Any, source: str) -> ClusterConfig:
    def authorization() -> str | None:
        # Runs the refresh hook (exec plugins, the rotated in-cluster token) first.
        value = configuration.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    return ClusterConfig(
        host=str(configuration.host).rstrip("/"),
        source=source,
        ca_file=configuration.ssl_ca_cert or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        verify=bool(configuration.verify_ssl),
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        authorization=authorization,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
