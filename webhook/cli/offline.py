"""``check`` and ``render``: the admission code, run on files instead of requests.

``check FILE...`` validates every object of YAML/JSON files (multi-document
YAML, a JSON object, a ``List``, ``-`` for standard input) the way the webhook
would on CREATE. ``render FILE --sandbox NAME`` prints the NetworkPolicy a
sandbox of one AgentRuntime or CodeInterpreter would get.

Exit codes: 0 all valid, 1 some object invalid, 2 unreadable input or usage
error. Bad input gets a message naming the file (and line), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from webhook.admission.decide import Verdict, validate_object
from webhook.api.exitcodes import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from webhook.api.kinds import (
    AGENT_RUNTIME,
    CODE_INTERPRETER,
    LABEL_DOMAIN_SET,
    SANDBOX,
    SANDBOX_CLAIM,
    Kind,
)
from webhook.api.settings import Settings
from webhook.cli.options import add_policy_options
from webhook.policy.builder import (
    PolicyShapeError,
    build_network_policy,
    effective_policy,
    settings_errors,
    template_policy,
)
from webhook.policy.domains import (
    BACKEND_CLUSTER_NETWORK_POLICY,
    DomainEntry,
    domain_entries,
    domain_set_key,
    names_of,
)
from webhook.policy.k8srules import (
    dns1123_label_problems,
    dns1123_subdomain_problems,
    label_value_problems,
)

if TYPE_CHECKING:
    from webhook.cli.options import Commands
    from webhook.reconciler.domaincache import Resolution

logger = logging.getLogger(__name__)

STDIN_PATH = "-"
STDIN_NAME = "<stdin>"
DEFAULT_NAMESPACE = "default"

# The kinds admission validates on CREATE; any other object passes unchecked.
CHECKED_KINDS: tuple[Kind, ...] = (AGENT_RUNTIME, CODE_INTERPRETER, SANDBOX, SANDBOX_CLAIM)
TEMPLATE_KINDS: tuple[Kind, ...] = (AGENT_RUNTIME, CODE_INTERPRETER)


def register(commands: Commands) -> None:
    check_parser = commands.add_parser("check", help="validate objects in YAML/JSON files offline")
    check_parser.set_defaults(run=_run_check)
    check_parser.add_argument(
        "files", nargs="+", metavar="FILE", help="a file, a directory, or - for standard input"
    )
    add_policy_options(check_parser)

    render_parser = commands.add_parser(
        "render", help="print the NetworkPolicy a sandbox would get"
    )
    render_parser.set_defaults(run=_run_render)
    render_parser.add_argument("file", metavar="FILE", help="an AgentRuntime or CodeInterpreter")
    render_parser.add_argument("--sandbox", required=True, help="the sandbox name")
    render_parser.add_argument(
        "--namespace", default=None, help="namespace (default: the template's)"
    )
    render_parser.add_argument(
        "--dns-server",
        metavar="HOST[:PORT]",
        help="with egress domains: the resolver to ask (default: /etc/resolv.conf's)",
    )
    render_parser.add_argument(
        "--no-resolve",
        action="store_true",
        help="with egress domains: ask no resolver; the names show as pending",
    )
    add_policy_options(render_parser)


def _run_check(args: argparse.Namespace, settings: Settings) -> int:
    return check(args.files, settings=settings, stdout=sys.stdout, stderr=sys.stderr)


def _run_render(args: argparse.Namespace, settings: Settings) -> int:
    resolve: Callable[[str], Resolution] | None = None
    if not args.no_resolve:
        from webhook.reconciler.resolver import DnsResolver

        try:
            resolve = DnsResolver(args.dns_server).resolve
        except (ValueError, OSError) as exc:
            print(f"error: --dns-server: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return render(
        args.file,
        sandbox=args.sandbox,
        namespace=args.namespace,
        settings=settings,
        stdout=sys.stdout,
        stderr=sys.stderr,
        resolve=resolve,
    )


class InputError(Exception):
    """Input we cannot read as Kubernetes objects; the message names where."""


@dataclass(frozen=True)
class SourceObject:
    source: str  # the file name as the user wrote it, or <stdin>
    document: int  # 1-based, counting the documents of the file
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def label(self) -> str:
        """``Kind/name``, for messages."""
        metadata = self.obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or not name:
            name = f"(unnamed, document {self.document})"
        return f"{self.kind}/{name}"

    def is_one_of(self, kinds: Sequence[Kind]) -> bool:
        api_version = self.obj.get("apiVersion")
        group = api_version.rpartition("/")[0] if isinstance(api_version, str) else None
        return any(k.kind == self.kind and k.group == group for k in kinds)


def check(
    paths: Sequence[str],
    *,
    settings: Settings,
    stdout: TextIO,
    stderr: TextIO,
    stdin: TextIO | None = None,
) -> int:
    """Validate each object of each file; report errors and a summary.

    A directory stands for its ``.yaml``, ``.yml`` and ``.json`` files (not
    recursive), as with ``kubectl apply -f DIR``.
    """
    unreadable = failed = 0
    valid = invalid = skipped = 0
    for path in expand_directories(paths):
        try:
            objects = load_objects(path, stdin=stdin)
        except InputError as exc:
            print(f"error: {exc}", file=stderr)
            unreadable += 1
            continue
        for item in objects:
            if not item.is_one_of(CHECKED_KINDS):
                skipped += 1
                continue
            verdict = _validate(item, settings=settings, stderr=stderr)
            if verdict is None:
                failed += 1
                continue
            for warning in verdict.warnings:
                print(f"Warning: {item.source}: {item.label}: {warning}", file=stderr)
            for error in verdict.errors:
                print(f"{item.source}: {item.label}: {error}", file=stdout)
            if verdict.errors:
                invalid += 1
            else:
                valid += 1

    summary = f"{valid + invalid} {_plural(valid + invalid, 'object')} checked: "
    summary += f"{valid} valid, {invalid} invalid"
    if skipped:
        summary += f"; {skipped} of other kinds not checked"
    if unreadable:
        summary += f"; {unreadable} {_plural(unreadable, 'input')} could not be read"
    if failed:
        summary += f"; {failed} {_plural(failed, 'object')} could not be validated"
    print(summary, file=stdout)
    if unreadable or failed:
        return EXIT_USAGE
    return EXIT_INVALID if invalid else EXIT_OK


def render(
    path: str,
    *,
    sandbox: str,
    namespace: str | None,
    settings: Settings,
    stdout: TextIO,
    stderr: TextIO,
    stdin: TextIO | None = None,
    resolve: Callable[[str], Resolution] | None = None,
) -> int:
    """Print the NetworkPolicy YAML a sandbox of the template in ``path`` would get; with
    egress domains, the namespace's shared domain policy after it, holding what ``resolve``
    answers now (None: the names are pending)."""
    usage_problems = render_usage_problems(sandbox=sandbox, namespace=namespace, settings=settings)
    if usage_problems:
        for problem in usage_problems:
            print(f"error: {problem}", file=stderr)
        return EXIT_USAGE
    try:
        template = only_template(load_objects(path, stdin=stdin), path)
    except InputError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_USAGE

    verdict = _validate(template, settings=settings, stderr=stderr)
    if verdict is None:
        return EXIT_USAGE
    for warning in verdict.warnings:
        print(f"Warning: {template.source}: {template.label}: {warning}", file=stderr)
    if verdict.errors:
        for error in verdict.errors:
            print(f"{template.source}: {template.label}: {error}", file=stderr)
        return EXIT_INVALID

    # The reconciler's own path: effective policy (no override here), then the builder.
    policy, broken = effective_policy(template_policy(template.obj), None, limits=settings.limits)
    if broken is not None:  # validation above said valid: only a validator bug gets here
        print(f"error: {template.source}: {template.label}: {broken}", file=stderr)
        return EXIT_USAGE
    try:
        network_policy = build_network_policy(
            policy,
            sandbox=sandbox,
            namespace=namespace or template_namespace(template.obj),
            settings=settings,
        )
    except PolicyShapeError as exc:
        print(f"error: {template.source}: {template.label}: {exc}", file=stderr)
        return EXIT_USAGE
    if network_policy is None:
        print(
            f"{template.source}: {template.label}: networkPolicy mode is None: "
            "its sandboxes get no NetworkPolicy",
            file=stderr,
        )
        return EXIT_OK
    namespace = namespace or template_namespace(template.obj)
    entries = domain_entries(policy)
    if not entries:
        stdout.write(dump_yaml(network_policy))
        return EXIT_OK
    shared = render_domain_policy(
        entries, sandbox=sandbox, namespace=namespace, settings=settings, resolve=resolve
    )
    network_policy["metadata"]["labels"][LABEL_DOMAIN_SET] = domain_set_key(namespace, entries)
    stdout.write(dump_yaml(network_policy) + "---\n" + dump_yaml(shared))
    from webhook.reconciler.domainplan import domain_reports, status_of

    for report in domain_reports(shared, status_of(shared)):
        print(f"Warning: {report.message}", file=stderr)
    names = ", ".join(sorted(names_of(entries)))
    if settings.domain_backend == BACKEND_CLUSTER_NETWORK_POLICY:
        print(
            f"note: {shared['metadata']['name']} names {names}: the network plugin matches "
            "them; shared by every sandbox of the namespace with these entries",
            file=stderr,
        )
        return EXIT_OK
    print(
        f"note: {shared['metadata']['name']} holds what {names} "
        f"{'resolve to now' if resolve else 'resolve to (not asked: --no-resolve)'}; in a "
        "cluster the reconciler keeps it following DNS, shared by every sandbox of the "
        "namespace with these entries",
        file=stderr,
    )
    return EXIT_OK


def render_domain_policy(
    entries: Sequence[DomainEntry],
    *,
    sandbox: str,
    namespace: str,
    settings: Settings,
    resolve: Callable[[str], Resolution] | None,
) -> dict[str, Any]:
    """The shared domain policy as the reconciler would write it for one sandbox: with
    --domain-backend=cluster-network-policy, the ClusterNetworkPolicy (nothing resolved)."""
    from webhook.reconciler.domaincache import NameState
    from webhook.reconciler.domainplan import (
        build_cluster_network_policy,
        desired_domain_policy,
        domains_request,
    )

    if settings.domain_backend == BACKEND_CLUSTER_NETWORK_POLICY:
        request = domains_request(namespace, domain_set_key(namespace, entries))
        return build_cluster_network_policy(request, [sandbox], entries)

    states: dict[str, NameState] = {}
    if resolve is not None:
        for name in sorted(names_of(entries)):
            answer = resolve(name)
            states[name] = NameState(answer.addresses, {}, answer.error, answer.cnames)
    request = domains_request(namespace, domain_set_key(namespace, entries))
    return desired_domain_policy(request, [sandbox], entries, states.get, settings)


def render_usage_problems(*, sandbox: str, namespace: str | None, settings: Settings) -> list[str]:
    """What in ``render``'s options would make a NetworkPolicy kube-apiserver refuses."""
    problems = [f"--sandbox {p}" for p in sandbox_name_problems(sandbox)]
    if namespace is not None:
        problems += [f"--namespace {p}" for p in namespace_problems(namespace)]
    return problems + [str(e) for e in settings_errors(settings)]


def only_template(objects: Sequence[SourceObject], path: str) -> SourceObject:
    """The one AgentRuntime or CodeInterpreter among ``objects``; InputError otherwise."""
    templates = [item for item in objects if item.is_one_of(TEMPLATE_KINDS)]
    if len(templates) != 1:
        found = ", ".join(item.label for item in templates) or "none"
        raise InputError(
            f"{_name(path)}: expected exactly one AgentRuntime or CodeInterpreter "
            f"({AGENT_RUNTIME.group}), found {found}"
        )
    return templates[0]


def template_namespace(obj: Mapping[str, Any]) -> str:
    """The template's own namespace, else ``default`` (as kubectl would create it in)."""
    metadata = obj.get("metadata")
    own = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return own if isinstance(own, str) and own else DEFAULT_NAMESPACE


def dump_yaml(obj: Any) -> str:
    """Block-style YAML in the object's own key order: the same object, the same bytes."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def sandbox_name_problems(name: str) -> list[str]:
    """A sandbox name is a NetworkPolicy name and a label value: both rules apply."""
    problems = dns1123_subdomain_problems(name)
    problems += [p for p in label_value_problems(name) if p not in problems]
    return [f"{p}: {name!r}" for p in problems]


def namespace_problems(name: str) -> list[str]:
    return [f"{p}: {name!r}" for p in dns1123_label_problems(name)]


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def expand_directories(paths: Sequence[str]) -> list[str]:
    """Each path, a directory replaced by its manifest files in name order."""
    expanded: list[str] = []
    for path in paths:
        directory = Path(path)
        if path != STDIN_PATH and directory.is_dir():
            expanded += sorted(
                str(child)
                for child in directory.iterdir()
                if child.suffix in MANIFEST_SUFFIXES and child.is_file()
            )
        else:
            expanded.append(path)
    return expanded


def load_objects(path: str, *, stdin: TextIO | None = None) -> list[SourceObject]:
    """Every object in a file (or ``-``), Lists expanded; InputError when unreadable."""
    name = _name(path)
    text = _read(path, stdin=stdin)
    documents = _parse(text, name)
    objects: list[SourceObject] = []
    for number, document in enumerate(documents, start=1):
        if document is None:  # an empty document, e.g. after a trailing ---
            continue
        if not isinstance(document, dict):
            raise InputError(
                f"{name}: document {number} is not an object (a {type(document).__name__})"
            )
        if document.get("kind") == "List" and "items" in document:
            items = document["items"]
            if not isinstance(items, list):
                raise InputError(f"{name}: document {number}: List items must be a list")
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise InputError(f"{name}: document {number}: items[{index}] is not an object")
                objects.append(_object(name, number, item, where=f"items[{index}]"))
        else:
            objects.append(_object(name, number, document, where=""))
    return objects


def _object(name: str, number: int, obj: dict[str, Any], *, where: str) -> SourceObject:
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        at = f"document {number}" + (f" {where}" if where else "")
        raise InputError(f"{name}: {at}: object has no kind")
    return SourceObject(name, number, obj)


def _name(path: str) -> str:
    return STDIN_NAME if path == STDIN_PATH else path


def _read(path: str, *, stdin: TextIO | None) -> str:
    if path == STDIN_PATH:
        try:
            return (stdin or sys.stdin).read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{STDIN_NAME}: cannot read: {exc}") from None
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse(text: str, name: str) -> list[Any]:
    if text.lstrip()[:1] in ("{", "["):
        try:
            return [json.loads(text)]
        except ValueError:
            pass  # YAML flow style also starts with { or [: let YAML have a go
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{name}: {where}not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: not valid YAML: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys.

    With a duplicate, plain YAML keeps the last value silently: a second
    ``egress:`` would replace the first. kubectl (strict field validation)
    refuses it; so do we.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _validate(item: SourceObject, *, settings: Settings, stderr: TextIO) -> Verdict | None:
    """The admission verdict, or None (reported) if the validator itself failed."""
    try:
        return validate_object(item.obj, settings=settings)
    except Exception as exc:  # a validator bug must not become a traceback
        # The stack goes to the debug log (--log-level DEBUG), not in the user's face.
        logger.debug("validating %s from %s failed", item.label, item.source, exc_info=True)
        print(f"error: {item.source}: {item.label}: could not validate: {exc}", file=stderr)
        return None


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"
