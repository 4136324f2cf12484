"""The reconciler's watch caches: one informer per kind, holding only what decisions read.

Memory has to stay flat with tens of thousands of sandboxes, so each object is
cut down (``slim``) to the fields ``plan`` and the pod mutation read before it is
stored. Pods are watched through label selectors only: those carrying a
sandbox-name label (direct path, labelled claimed pods), those carrying a
claim-uid label (claimed warm-pool pods) and warm-pool pods (template-ref-hash);
never every pod of the cluster.
NetworkPolicies are watched by our managed-by label.

agent-sandbox's kinds are watched in the version the cluster serves (v1beta1 on v0.5+,
v1alpha1 on v0.4): ``start`` asks discovery (``webhook.kube.discovery``) before the first
list, and keeps the answer in ``in_use`` (what ``Rediscovery`` compares with later). Objects keep their ``apiVersion``, so an ownerReference made from one names the
version it was read in.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from webhook.api import kinds
from webhook.api.kinds import Kind
from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.discovery import discover_kinds
from webhook.kube.informer import Informer, interned
from webhook.kube.rest import Rest
from webhook.policy.domains import BACKEND_CLUSTER_NETWORK_POLICY
from webhook.reconciler.sandboxes import BY_NAMESPACE, INDEXES, labels_of, uid_of
from webhook.reconciler.snapshot import Snapshot

Handler = Callable[[Kind, Mapping[str, Any] | None, Mapping[str, Any] | None], None]

# The third: warm-pool pods by their template hash, claimed or not. agent-sandbox v0.5.x may
# leave claim-uid off a claimed pod, and on v0.5+ the claim may not carry our label (its
# allow-list), so such a pod is found only as the pod of the Sandbox its claim adopted.
POD_SELECTORS = (kinds.LABEL_SANDBOX_NAME, kinds.LABEL_CLAIM_UID, kinds.LABEL_TEMPLATE_REF_HASH)
MANAGED_SELECTOR = f"{kinds.MANAGED_BY_LABEL}={kinds.MANAGED_BY_VALUE}"

_intern = sys.intern
logger = logging.getLogger(__name__)


def _slim_metadata(obj: Mapping[str, Any], *, annotations: Iterable[str] = ()) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    slim: dict[str, Any] = {
        "name": metadata.get("name", ""),
        "namespace": _intern(str(metadata.get("namespace", ""))),
        "uid": metadata.get("uid", ""),
        "resourceVersion": metadata.get("resourceVersion", ""),
    }
    labels = metadata.get("labels")
    if isinstance(labels, Mapping) and labels:
        slim["labels"] = {_intern(str(k)): v for k, v in labels.items()}
    kept = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if key in annotations
    }
    if kept:
        slim["annotations"] = kept
    owners = metadata.get("ownerReferences")
    if isinstance(owners, list) and owners:
        slim["ownerReferences"] = owners  # small, and compared whole with the desired ones
    if metadata.get("deletionTimestamp"):
        slim["deletionTimestamp"] = metadata["deletionTimestamp"]
    return slim


def _pick(obj: Mapping[str, Any], *paths: tuple[str, ...]) -> dict[str, Any]:
    """A nested dict with only ``paths`` of ``obj`` (absent ones left out)."""
    out: dict[str, Any] = {}
    for path in paths:
        value = kinds.get_path(obj, path)
        if value is None:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def slim_agent_runtime(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _slim_metadata(obj),
        **_pick(obj, kinds.TEMPLATE_POLICY_PATH[kinds.AGENT_RUNTIME.kind]),
    }


def slim_code_interpreter(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _slim_metadata(obj),
        **_pick(
            obj, kinds.TEMPLATE_POLICY_PATH[kinds.CODE_INTERPRETER.kind], ("spec", "warmPoolSize")
        ),
    }


def _api_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The version the object was served in (custom resources carry it in lists too)."""
    api_version = obj.get("apiVersion")
    return {"apiVersion": _intern(api_version)} if isinstance(api_version, str) else {}


def slim_sandbox(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **_api_version(obj),
        "metadata": _slim_metadata(obj, annotations=(kinds.ANNOTATION_NETWORK_POLICY,)),
    }


def slim_claim(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **_api_version(obj),
        "metadata": _slim_metadata(obj, annotations=(kinds.ANNOTATION_NETWORK_POLICY,)),
        **_pick(
            obj,
            ("spec", "sandboxTemplateRef", "name"),  # v1alpha1
            ("spec", "warmPoolRef", "name"),  # v1beta1
            ("status", "sandbox", "name"),
        ),
    }


def slim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = _slim_metadata(obj, annotations=(kinds.ANNOTATION_ISOLATION_CANARY,))
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if created:  # how long a gated pod has been held (agentcube_netpol_gated_pod_oldest_seconds)
        metadata["creationTimestamp"] = created
    return {
        "metadata": metadata,
        **_pick(obj, ("spec", "schedulingGates"), ("spec", "nodeName"), ("status", "phase")),
    }


class SharedValues:
    """One stored copy of each distinct value (by its canonical JSON).

    The rules of every sandbox's NetworkPolicy of one template are equal; only the
    podSelector names the sandbox. Stored objects are never changed (the informer's
    contract), so equal rules can be one object: a Restricted policy's spec took
    about 7.8 KB a policy, 2.3 KB with its rules shared (tracemalloc, 2,000 policies).
    At most ``kept`` values are remembered; past that the table starts over, and
    sharing is best effort (still correct: a value is equal to its original).
    """

    def __init__(self, kept: int) -> None:
        self._values: dict[bytes, Any] = {}
        self._kept = kept
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> Any:
        key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        with self._lock:
            found = self._values.get(key)
            if found is None:
                if len(self._values) >= self._kept:
                    self._values.clear()
                found = self._values[key] = interned(value)
            return found

    def __len__(self) -> int:
        return len(self._values)


SHARED_RULES_KEPT = 1024  # distinct rule lists (ingress, egress, policyTypes) across templates
_shared_rules = SharedValues(SHARED_RULES_KEPT)


def slim_network_policy(obj: Mapping[str, Any]) -> dict[str, Any]:
    slim = {
        "metadata": _slim_metadata(
            obj, annotations=(kinds.ANNOTATION_DOMAINS, kinds.ANNOTATION_DOMAIN_STATUS)
        )
    }
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        slim["spec"] = {
            key: value if key == "podSelector" else _shared_rules(value)
            for key, value in spec.items()
        }
    elif spec is not None:
        slim["spec"] = spec
    return slim


SLIM: dict[Kind, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    kinds.AGENT_RUNTIME: slim_agent_runtime,
    kinds.CODE_INTERPRETER: slim_code_interpreter,
    kinds.SANDBOX: slim_sandbox,
    kinds.SANDBOX_CLAIM: slim_claim,
    kinds.POD: slim_pod,
    kinds.NETWORK_POLICY: slim_network_policy,
    kinds.CLUSTER_NETWORK_POLICY: slim_network_policy,
}


class Caches:
    """The informers, read as one ``View``; handlers hear every change of every kind."""

    def __init__(
        self, rest: Rest, settings: Settings, *, watched: Iterable[Kind] | None = None
    ) -> None:
        """``watched``: the kinds to keep (default: all the reconciler reads); ``serve
        --watch-claims`` keeps SandboxClaims only, the same informer ``run`` has."""
        self._rest = rest
        self._settings = settings
        # agent-sandbox's kinds in the versions watched (``start`` asks discovery).
        self.in_use: dict[Kind, Kind] = {kind: kind for kind in kinds.AGENT_SANDBOX_KINDS}
        self.informers: dict[Kind, list[Informer]] = {}
        keep = set(SLIM) if watched is None else set(watched)
        if settings.domain_backend != BACKEND_CLUSTER_NETWORK_POLICY:
            keep.discard(kinds.CLUSTER_NETWORK_POLICY)  # the CRD may not even exist
        for kind, slim in SLIM.items():
            if kind not in keep:
                continue
            if kind == kinds.POD:
                selectors: tuple[str, ...] = POD_SELECTORS
            elif kind in (kinds.NETWORK_POLICY, kinds.CLUSTER_NETWORK_POLICY):
                selectors = (MANAGED_SELECTOR,)
            else:
                selectors = ("",)
            self.informers[kind] = [
                Informer(rest, kind, slim=slim, label_selector=s, name=f"{kind.plural}{i or ''}")
                for i, s in enumerate(selectors)
            ]
            for informer in self.informers[kind]:
                for index, keys in INDEXES.get(kind, {}).items():
                    informer.add_index(index, keys)

    def add_handler(self, handler: Handler) -> None:
        for kind, informers in self.informers.items():
            for informer in informers:
                informer.add_handler(
                    lambda old, new, kind=kind: handler(kind, old, new)  # type: ignore[misc]
                )

    def use_versions(self, resolved: Mapping[Kind, Kind]) -> None:
        """Watch each kind of ``resolved`` in its version there (before ``start``)."""
        for kind, informers in self.informers.items():
            for informer in informers:
                informer.kind = resolved.get(kind, informer.kind)

    def start(self) -> None:
        try:
            self.in_use = discover_kinds(self._rest)
            self.use_versions(self.in_use)
        except errors.ApiError as exc:
            logger.warning("discovery failed (%s): watching agent-sandbox's kinds in v1alpha1", exc)
        for informer in self._all():
            informer.start()

    def stop(self) -> None:
        """Every informer at once: each waits for its watch to close, so in turn they add up."""
        stoppers = [threading.Thread(target=i.stop, name=f"stop-{i.name}") for i in self._all()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()

    @property
    def synced(self) -> bool:
        return all(informer.synced for informer in self._all())

    def not_synced(self) -> list[str]:
        return [informer.name for informer in self._all() if not informer.synced]

    def wait_synced(self, timeout_seconds: float) -> bool:
        return all(informer.wait_synced(timeout_seconds) for informer in self._all())

    def _all(self) -> list[Informer]:
        return [informer for informers in self.informers.values() for informer in informers]

    # View
    def get(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None:
        for informer in self.informers.get(kind, ()):
            found = informer.get(namespace, name)
            if found is not None:
                return found
        return None

    def by_index(self, kind: Kind, index: str, value: str) -> list[Mapping[str, Any]]:
        informers = self.informers.get(kind, ())
        if len(informers) == 1:
            return list(informers[0].by_index(index, value))
        found: dict[str, Mapping[str, Any]] = {}
        for informer in informers:
            for obj in informer.by_index(index, value):
                found.setdefault(uid_of(obj), obj)
        return list(found.values())

    def items(self, kind: Kind) -> list[Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        for informer in self.informers.get(kind, ()):
            for obj in informer.items():
                found.setdefault(uid_of(obj), obj)
        return list(found.values())

    # SandboxLookup for admission's widening check.
    def sandbox_pods(self, namespace: str) -> list[Mapping[str, Any]]:
        return self.by_index(kinds.POD, BY_NAMESPACE, namespace)

    def isolated_warm_pool(self, namespace: str, name: str) -> bool:
        from webhook.reconciler.plan import template_mode, warm_pool_size, with_kind

        found = self.get(kinds.CODE_INTERPRETER, namespace, name)
        if found is None:
            return False
        interpreter = with_kind(found, kinds.CODE_INTERPRETER)
        return (
            warm_pool_size(interpreter) > 0 and template_mode(interpreter, self._settings) != "None"
        )

    # ClaimLookup for the pod mutation: served from the claims informer.
    def claim_by_uid(self, namespace: str, uid: str) -> Mapping[str, Any] | None:
        from webhook.reconciler.sandboxes import BY_UID, ns_key

        claims = self.by_index(kinds.SANDBOX_CLAIM, BY_UID, ns_key(namespace, uid))
        return claims[0] if claims else None


LIST_PAGE_SIZE = 500


def list_all(
    rest: Rest, kind: Kind, *, label_selector: str = "", namespace: str | None = None
) -> list[dict[str, Any]]:
    """Every object of ``kind`` in the cluster (or in ``namespace``), page by page (one
    consistent snapshot)."""
    items: list[dict[str, Any]] = []
    continue_: str | None = None
    while True:
        page = rest.list(
            kind,
            namespace=namespace,
            label_selector=label_selector,
            limit=LIST_PAGE_SIZE,
            continue_=continue_,
        )
        items += page.get("items") or []
        continue_ = (page.get("metadata") or {}).get("continue") or None
        if not continue_:
            return items


def list_cluster(
    rest: Rest,
    served: Mapping[Kind, Kind],
    *,
    namespace: str | None = None,
    cluster_network_policies: bool = False,
) -> tuple[Snapshot, list[dict[str, Any]], list[dict[str, Any]]]:
    """For ``audit``: what the caches would hold, every NetworkPolicy, every SandboxTemplate,
    agent-sandbox's kinds read in the versions ``served`` (``discover_kinds``); with
    ``namespace``, only that namespace's (every kind read is namespaced, so namespace-scoped
    RBAC is enough)."""
    snapshot = Snapshot()
    for kind, slim in SLIM.items():
        if kind in (kinds.NETWORK_POLICY, kinds.CLUSTER_NETWORK_POLICY):
            continue
        selectors = POD_SELECTORS if kind == kinds.POD else ("",)
        for selector in selectors:
            listed = list_all(
                rest, served.get(kind, kind), label_selector=selector, namespace=namespace
            )
            for obj in listed:
                snapshot.add(kind, slim(obj))
    network_policies = list_all(rest, kinds.NETWORK_POLICY, namespace=namespace)
    for policy in network_policies:
        if labels_of(policy).get(kinds.MANAGED_BY_LABEL) == kinds.MANAGED_BY_VALUE:
            snapshot.add(kinds.NETWORK_POLICY, slim_network_policy(policy))
    if cluster_network_policies:  # --domain-backend=cluster-network-policy: ours, cluster-wide
        for policy in list_all(rest, kinds.CLUSTER_NETWORK_POLICY, label_selector=MANAGED_SELECTOR):
            if (
                namespace is None
                or labels_of(policy).get(kinds.LABEL_DOMAIN_NAMESPACE) == namespace
            ):
                snapshot.add(kinds.CLUSTER_NETWORK_POLICY, slim_network_policy(policy))
    templates = list_all(
        rest, served.get(kinds.SANDBOX_TEMPLATE, kinds.SANDBOX_TEMPLATE), namespace=namespace
    )
    return snapshot, network_policies, templates
