"""The plan for a shared domain NetworkPolicy, and what a sandbox's plan needs of it.

Sandboxes of a namespace whose policies hold the same ``domains`` entries share one
NetworkPolicy, ``netpol-domains.<key>`` (``domains.domain_set_key``). It selects them by
``runtime.agentcube.io/sandbox-name In [...]`` and allows egress to what their names
resolve to, nothing else (``policyTypes: [Egress]``): NetworkPolicies add up, so a sandbox
pod gets its own policy plus exactly the domain part of it. When a name's addresses
rotate, one write updates every sandbox that shares it.

Who is selected follows the sandboxes' own NetworkPolicies, not the sandboxes: each carries
the ``netpol.agentcube.io/domain-set`` label, and lives as long as a pod of its sandbox
does, so the shared policy keeps selecting a pod exactly as long as its own policy does.
A sandbox's pods are released from their scheduling gate only once the shared policy
selects the sandbox and holds an answer (or a failure) for every name: never run before
the whole policy exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from webhook.api import kinds
from webhook.api.networking import NAMESPACE_NAME_LABEL
from webhook.api.settings import Settings
from webhook.policy.cidr import CidrProblem, Network, parse_cidr
from webhook.policy.domains import (
    BACKEND_CLUSTER_NETWORK_POLICY,
    DomainEntry,
    answer_problem,
    build_domain_rules,
    domain_entries,
    domain_set_key,
    names_of,
)
from webhook.reconciler.domaincache import NameState
from webhook.reconciler.plan import (
    LABEL_ROLE,
    ROLE_SANDBOX,
    Plan,
    ReconcileRequest,
    Report,
    choose_write,
    is_managed,
    sandbox_policy,
    with_kind,
)
from webhook.reconciler.sandboxes import (
    BY_DOMAIN_SET,
    annotations_of,
    find_sandbox,
    labels_of,
    ns_key,
)

ROLE_DOMAINS = "domains"
DOMAIN_UNRESOLVED = "DomainUnresolved"
DOMAIN_ANSWER_DROPPED = "DomainAnswerDropped"

NameStates = Callable[[str], NameState | None]


def domains_request(namespace: str, key: str) -> ReconcileRequest:
    return ReconcileRequest(namespace, kinds.DOMAIN_POLICY_PREFIX + key)


def status_of(network_policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The per-name status a shared policy carries ({} when absent or unreadable)."""
    if network_policy is None:
        return {}
    text = annotations_of(network_policy).get(kinds.ANNOTATION_DOMAIN_STATUS)
    try:
        status = orjson.loads(text) if isinstance(text, str) else {}
    except orjson.JSONDecodeError:
        return {}
    return status if isinstance(status, dict) else {}


def entries_of(network_policy: Mapping[str, Any] | None) -> tuple[DomainEntry, ...] | None:
    """The entries a shared policy was written for (its annotation); None if unreadable."""
    if network_policy is None:
        return None
    text = annotations_of(network_policy).get(kinds.ANNOTATION_DOMAINS)
    try:
        rules = orjson.loads(text) if isinstance(text, str) else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rules, list):
        return None
    try:
        return domain_entries({"mode": "Restricted", "egress": rules})
    except (KeyError, TypeError, ValueError):
        return None


def selected_names(network_policy: Mapping[str, Any]) -> list[str]:
    """The sandboxes a shared policy selects (a NetworkPolicy's podSelector, or a
    ClusterNetworkPolicy's subject)."""
    spec = network_policy.get("spec") or {}
    selector = (
        spec.get("podSelector")
        or ((spec.get("subject") or {}).get("pods") or {}).get("podSelector")
        or {}
    )
    for term in selector.get("matchExpressions") or ():
        if term.get("key") == kinds.LABEL_SANDBOX_NAME and term.get("operator") == "In":
            return [str(v) for v in term.get("values") or ()]
    return []


def states_from_status(network_policy: Mapping[str, Any] | None) -> NameStates:
    """Name states read back from a shared policy (for ``audit``, which resolves nothing)."""
    status = status_of(network_policy)

    def state(name: str) -> NameState | None:
        found = status.get(name)
        if not isinstance(found, Mapping) or found.get("pending"):
            return None
        addresses = found.get("addresses")
        leaving = found.get("leaving")
        error = found.get("error")
        return NameState(
            tuple(str(a) for a in addresses) if isinstance(addresses, list) else (),
            dict(leaving) if isinstance(leaving, Mapping) else {},
            error if isinstance(error, str) else None,
        )

    return state


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _denied(settings: Settings) -> list[Network]:
    return [n for n in map(parse_cidr, settings.deny_answers) if not isinstance(n, CidrProblem)]


def _members(request: ReconcileRequest, view: Any) -> list[str]:
    """The sandbox names whose own NetworkPolicy carries this domain set's key."""
    key = request.name.removeprefix(kinds.DOMAIN_POLICY_PREFIX)
    names = set()
    for policy in view.by_index(
        kinds.NETWORK_POLICY, BY_DOMAIN_SET, ns_key(request.namespace, key)
    ):
        labels = labels_of(policy)
        if is_managed(policy) and labels.get(LABEL_ROLE) == ROLE_SANDBOX:
            name = labels.get(kinds.LABEL_SANDBOX_NAME)
            if name:
                names.add(name)
    return sorted(names)


def _entries(
    request: ReconcileRequest,
    members: Sequence[str],
    view: Any,
    settings: Settings,
    written: Mapping[str, Any] | None = None,
) -> tuple[DomainEntry, ...] | None:
    """The set's entries: from a member sandbox's policy, else as last written (in
    ``written``, by default the shared NetworkPolicy)."""
    key = request.name.removeprefix(kinds.DOMAIN_POLICY_PREFIX)
    for name in members:
        ref = find_sandbox(view, request.namespace, name)
        if ref is None:
            continue
        policy, _reason = sandbox_policy(ref, view, settings)
        entries = domain_entries(policy)
        if entries and domain_set_key(request.namespace, entries) == key:
            return entries
    if written is None:
        written = view.get(kinds.NETWORK_POLICY, request.namespace, request.name)
    return entries_of(written)


def plan_domains(
    request: ReconcileRequest, view: Any, settings: Settings, states: NameStates | None
) -> Plan:
    if settings.domain_backend == BACKEND_CLUSTER_NETWORK_POLICY:
        return plan_cluster_domains(request, view, settings)
    current = view.get(kinds.NETWORK_POLICY, request.namespace, request.name)
    members = _members(request, view)
    entries = _entries(request, members, view, settings) if members else None
    if not members or entries is None:
        return Plan(request, choose_write(None, current), None, current)
    if states is None:
        states = states_from_status(current)

    desired = desired_domain_policy(request, members, entries, states, settings)
    status = status_of(desired)
    reports: list[Report] = []
    regarding = with_kind(current, kinds.NETWORK_POLICY) if current is not None else None
    if regarding is not None:
        reports = domain_reports(regarding, status)
    return Plan(
        request,
        choose_write(desired, current),
        desired,
        current,
        reports=tuple(reports),
        regarding=regarding,
        domain_names=frozenset(names_of(entries)),
    )


def desired_domain_policy(
    request: ReconcileRequest,
    members: Sequence[str],
    entries: Sequence[DomainEntry],
    states: NameStates,
    settings: Settings,
) -> dict[str, Any]:
    """The shared policy for ``members`` and ``entries`` with the names' ``states``: each
    answer judged by ``answer_problem`` for its entry, the status of every name."""
    denied = _denied(settings)
    status: dict[str, dict[str, object]] = {}
    allowed: dict[int, dict[str, list[str]]] = {}
    for index, entry in enumerate(entries):
        allowed[index] = {}
        for name in entry.names:
            state = states(name)
            if state is None:
                status.setdefault(name, {"pending": True})
                continue
            kept, dropped = [], {}
            for address in state.addresses:
                problem = answer_problem(address, allowed=entry.allowed, denied=denied)
                if problem is None:
                    kept.append(address)
                else:
                    dropped[address] = problem
            allowed[index][name] = kept
            record = status.setdefault(name, state.status())
            if dropped:
                record["dropped"] = {**_mapping(record.get("dropped")), **dropped}
    rules = []
    for index, entry in enumerate(entries):
        rules += build_domain_rules([entry], allowed[index])

    return build_domain_policy(request, members, entries, rules, status)


def build_domain_policy(
    request: ReconcileRequest,
    members: Sequence[str],
    entries: Sequence[DomainEntry],
    rules: list[dict[str, Any]],
    status: Mapping[str, object],
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": {
            "matchExpressions": [
                {"key": kinds.LABEL_SANDBOX_NAME, "operator": "In", "values": list(members)}
            ]
        },
    }
    if rules:
        spec["egress"] = rules
    spec["policyTypes"] = ["Egress"]
    return {
        "apiVersion": kinds.NETWORK_POLICY.api_version,
        "kind": kinds.NETWORK_POLICY.kind,
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY_VALUE, LABEL_ROLE: ROLE_DOMAINS},
            "annotations": {
                kinds.ANNOTATION_DOMAINS: orjson.dumps([e.as_json() for e in entries]).decode(),
                kinds.ANNOTATION_DOMAIN_STATUS: orjson.dumps(
                    dict(sorted(status.items())), option=orjson.OPT_SORT_KEYS
                ).decode(),
            },
        },
        "spec": spec,
    }


def domain_reports(regarding: Mapping[str, Any], status: Mapping[str, Any]) -> list[Report]:
    """Events for names that did not resolve and answers that were dropped."""
    reports = []
    for name, record in sorted(status.items()):
        if not isinstance(record, Mapping):
            continue
        error = record.get("error")
        if error and not record.get("addresses"):
            reports.append(
                Report(
                    regarding,
                    DOMAIN_UNRESOLVED,
                    f"{name} did not resolve ({error}): egress to it is closed; retried",
                    warning=True,
                )
            )
        for address, why in sorted((record.get("dropped") or {}).items()):
            reports.append(
                Report(
                    regarding,
                    DOMAIN_ANSWER_DROPPED,
                    f"{name} answered {address}, {why}: not allowed (allowAnswersIn on the "
                    "entry admits a private range; the metadata address never)",
                    warning=True,
                )
            )
    return reports


def sandbox_domains_ready(
    view: Any, namespace: str, sandbox: str, key: str, settings: Settings
) -> tuple[bool, Mapping[str, Any] | None]:
    """Whether the shared policy for ``key`` selects ``sandbox`` and holds every name's
    first answer; and that policy, if it exists. A ClusterNetworkPolicy holds the names
    themselves: selecting the sandbox is enough."""
    if settings.domain_backend == BACKEND_CLUSTER_NETWORK_POLICY:
        name = cluster_policy_name(domains_request(namespace, key))
        found = view.get(kinds.CLUSTER_NETWORK_POLICY, "", name)
        ready = found is not None and is_managed(found) and sandbox in selected_names(found)
        return ready, None
    shared = view.get(kinds.NETWORK_POLICY, namespace, kinds.DOMAIN_POLICY_PREFIX + key)
    if shared is None or not is_managed(shared):
        return False, None
    entries = entries_of(shared)
    status = status_of(shared)
    ready = (
        sandbox in selected_names(shared)
        and entries is not None
        and all(
            isinstance(status.get(n), Mapping) and not status[n].get("pending")
            for n in names_of(entries)
        )
    )
    return ready, shared


# --- the native backend: a ClusterNetworkPolicy with domainNames ----------------------------
#
# --domain-backend=cluster-network-policy, for a cluster whose network plugin implements
# sigs.k8s.io/network-policy-api's ClusterNetworkPolicy with domainNames (the experimental
# channel): the plugin matches names itself, wildcards included, and nothing is resolved
# here. In the Admin tier, whose Accept is final, at the lowest priority (1000) so an
# admin's own Deny at any other priority still wins; NetworkPolicies (the sandbox's own)
# are never consulted for what it accepts, so it holds exactly the domain part of the
# sandboxes' policies.

CLUSTER_TIER = "Admin"
CLUSTER_PRIORITY = 1000
MAX_CLUSTER_NAMES_PER_PEER = 25  # the CRD's bound on a domainNames list


def cluster_policy_name(request: ReconcileRequest) -> str:
    """``netpol-domains.<namespace>.<key>``: cluster-scoped, so the namespace is in it."""
    key = request.name.removeprefix(kinds.DOMAIN_POLICY_PREFIX)
    return f"{kinds.DOMAIN_POLICY_PREFIX}{request.namespace}.{key}"


def cluster_protocols(entry: DomainEntry) -> list[dict[str, Any]]:
    protocols = []
    for protocol, port, end in entry.ports:
        destination: dict[str, Any] = (
            {"number": port}
            if end is None or end == port
            else {"range": {"start": port, "end": end}}
        )
        protocols.append({protocol.lower(): {"destinationPort": destination}})
    return protocols


def build_cluster_network_policy(
    request: ReconcileRequest, members: Sequence[str], entries: Sequence[DomainEntry]
) -> dict[str, Any]:
    egress = []
    for index, entry in enumerate(entries):
        names = list(entry.names)
        chunks = [
            names[i : i + MAX_CLUSTER_NAMES_PER_PEER]
            for i in range(0, len(names), MAX_CLUSTER_NAMES_PER_PEER)
        ]
        rule: dict[str, Any] = {
            "name": f"domains-{index}",
            "action": "Accept",
            "to": [{"domainNames": chunk} for chunk in chunks],
        }
        protocols = cluster_protocols(entry)
        if protocols:
            rule["protocols"] = protocols
        egress.append(rule)
    key = request.name.removeprefix(kinds.DOMAIN_POLICY_PREFIX)
    return {
        "apiVersion": kinds.CLUSTER_NETWORK_POLICY.api_version,
        "kind": kinds.CLUSTER_NETWORK_POLICY.kind,
        "metadata": {
            "name": cluster_policy_name(request),
            "labels": {
                kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY_VALUE,
                LABEL_ROLE: ROLE_DOMAINS,
                kinds.LABEL_DOMAIN_NAMESPACE: request.namespace,
                kinds.LABEL_DOMAIN_SET: key,
            },
            "annotations": {
                kinds.ANNOTATION_DOMAINS: orjson.dumps([e.as_json() for e in entries]).decode(),
            },
        },
        "spec": {
            "tier": CLUSTER_TIER,
            "priority": CLUSTER_PRIORITY,
            "subject": {
                "pods": {
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: request.namespace}},
                    "podSelector": {
                        "matchExpressions": [
                            {
                                "key": kinds.LABEL_SANDBOX_NAME,
                                "operator": "In",
                                "values": list(members),
                            }
                        ]
                    },
                }
            },
            "egress": egress,
        },
    }


def plan_cluster_domains(request: ReconcileRequest, view: Any, settings: Settings) -> Plan:
    """The shared domain policy as a ClusterNetworkPolicy. A shared NetworkPolicy left by
    the resolving backend goes first (its addresses are no longer kept up to date)."""
    stale = view.get(kinds.NETWORK_POLICY, request.namespace, request.name)
    if stale is not None and is_managed(stale):
        return Plan(request, "delete", None, stale)
    name = cluster_policy_name(request)
    current = view.get(kinds.CLUSTER_NETWORK_POLICY, "", name)
    members = _members(request, view)
    entries = _entries(request, members, view, settings, current) if members else None
    if not members or entries is None:
        return Plan(
            request,
            choose_write(None, current),
            None,
            current,
            kind=kinds.CLUSTER_NETWORK_POLICY,
            object_name=name,
        )
    desired = build_cluster_network_policy(request, members, entries)
    return Plan(
        request,
        choose_write(desired, current),
        desired,
        current,
        domain_names=frozenset(),  # nothing to resolve: the network plugin matches names
        kind=kinds.CLUSTER_NETWORK_POLICY,
        object_name=name,
    )
