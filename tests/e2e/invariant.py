"""Recording pods and NetworkPolicies as the API server orders them, and checking that no
sandbox pod is ever runnable without a NetworkPolicy that selects it and is no looser than
its sandbox's policy (README, "Isolation without a gap").

A list then a watch for each of pods and NetworkPolicies; their events are merged by
resourceVersion (one etcd: versions are comparable across kinds) and replayed. A pod is
"runnable" once nothing holds it: no scheduling gate of ours (a gated pod is never
scheduled). A sandbox pod is one with the sandbox-name or claim-uid label.

A sandbox's fail-closed policy (Restricted with nothing added: what the reconciler writes
while the sandbox's template is not yet in its cache, or invalid) is always allowed: it
lets through a subset of what any Restricted policy does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.kube import errors
from webhook.kube.rest import Rest
from webhook.policy.builder import FAIL_CLOSED_POLICY, build_network_policy
from webhook.policy.selectors import selector_matches

Event = tuple[int, str, str, Mapping[str, Any]]  # (resourceVersion, kind, type, object)


class RecordingGapError(AssertionError):
    """The recorder could not observe every change: its "no breach" would be unfounded."""


RESUME_DEADLINE_S = 30.0
RESUME_BACKOFF_S = 0.2


@dataclass
class Recorder:
    """Pods and NetworkPolicies, each listed then watched from its list's version, until
    stopped; ``stop()`` returns the events in the API server's order.

    A watch the server ends (its timeout) or that breaks is resumed from the last
    resourceVersion seen (bookmarks included), so nothing is missed. On 410 Gone the kind is
    listed again: if every object then is one already seen at its version, and none seen has
    gone, nothing was missed; otherwise the gap is recorded. Any gap, or a watch that cannot
    be resumed for ``RESUME_DEADLINE_S``, makes ``stop()`` raise ``RecordingGapError``: a check
    that did not watch throughout must fail loudly, never pass unobserved.
    """

    rest: Rest
    watch_timeout_seconds: int = 120
    watched: tuple[kinds.Kind, ...] = (kinds.POD, kinds.NETWORK_POLICY)
    recorded: list[Event] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    resumes: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)
    _watches: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """What exists (as ADDED at each object's own version), then every change after it."""
        for kind in self.watched:
            version, seen = self._list(kind, record=True)
            thread = threading.Thread(target=self._follow, args=(kind, version, seen), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _list(self, kind: kinds.Kind, *, record: bool) -> tuple[str, dict[str, str]]:
        listed = self.rest.list(kind)
        version = listed["metadata"]["resourceVersion"]
        seen: dict[str, str] = {}
        for obj in listed.get("items") or []:
            seen[_key(obj)] = obj["metadata"]["resourceVersion"]
            if record:
                # At the object's own version (its last change), not the list's: each kind
                # is listed at its own moment, and a write anywhere in between (a Lease
                # renewal) would otherwise put every listed pod before every listed policy.
                with self._lock:
                    own = int(obj["metadata"]["resourceVersion"])
                    self.recorded.append((own, kind.kind, "ADDED", obj))
        return version, seen

    def _follow(self, kind: kinds.Kind, version: str, seen: dict[str, str]) -> None:
        failing_since: float | None = None
        while not self._stopping.is_set():
            try:
                version = self._watch(kind, version, seen)
                failing_since = None
            except errors.Gone:
                version = self._relist(kind, version, seen)
            except errors.ApiError as exc:  # broken, unreachable: resume from `version`
                if self._stopping.is_set():
                    return
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > RESUME_DEADLINE_S:
                    self._gap(f"{kind.kind}: watch not resumable since {version}: {exc}")
                    return
                self._stopping.wait(RESUME_BACKOFF_S)
            except Exception as exc:
                self._gap(f"{kind.kind}: recorder failed after {version}: {exc!r}")
                return

    def _watch(self, kind: kinds.Kind, version: str, seen: dict[str, str]) -> str:
        """Record one watch's events; the last version seen, when it ends."""
        watch = self.rest.watch(
            kind, resource_version=version, timeout_seconds=self.watch_timeout_seconds
        )
        with self._lock:
            self._watches[kind.kind] = watch
        if self._stopping.is_set():
            watch.close()
        with watch as events:
            for event in events:
                obj = event.get("object") or {}
                at = (obj.get("metadata") or {}).get("resourceVersion")
                if not at:
                    continue
                version = at
                kind_of_event = event.get("type")
                if kind_of_event not in ("ADDED", "MODIFIED", "DELETED"):
                    continue  # a BOOKMARK: only the version moves on
                if kind_of_event == "DELETED":
                    seen.pop(_key(obj), None)
                else:
                    seen[_key(obj)] = at
                with self._lock:
                    self.recorded.append((int(at), kind.kind, kind_of_event, obj))
        if not self._stopping.is_set():
            with self._lock:
                self.resumes += 1
        return version

    def _relist(self, kind: kinds.Kind, version: str, seen: dict[str, str]) -> str:
        relisted_at, now = self._list(kind, record=False)
        changed = sorted(key for key, at in now.items() if seen.get(key) != at)
        gone = sorted(set(seen) - set(now))
        if changed or gone:
            self._gap(
                f"{kind.kind}: 410 Gone after {version}; relisted at {relisted_at}, changes "
                f"not observed in order: changed {changed}, deleted {gone}"
            )
        seen.clear()
        seen.update(now)
        return relisted_at

    def _gap(self, why: str) -> None:
        with self._lock:
            self.gaps.append(why)

    def stop(self) -> list[Event]:
        self._stopping.set()
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.close()
        for thread in self._threads:
            thread.join(timeout=10)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        with self._lock:
            if alive:
                self.gaps.append(f"recorder threads did not stop: {alive}")
            if self.gaps:
                raise RecordingGapError("; ".join(self.gaps))
            return sorted(self.recorded, key=lambda e: (e[0], e[1]))


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def is_sandbox_pod(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return kinds.LABEL_SANDBOX_NAME in labels or kinds.LABEL_CLAIM_UID in labels


def is_runnable(pod: Mapping[str, Any]) -> bool:
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return not any(g.get("name") == kinds.SCHEDULING_GATE for g in gates)


@dataclass(frozen=True)
class Breach:
    resource_version: int
    pod: str
    problem: str


def breaches(
    events: Iterable[Event],
    *,
    allowed_specs: Callable[[Mapping[str, Any]], list[Mapping[str, Any]]],
    also_allowed: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
) -> list[Breach]:
    """Every moment a runnable sandbox pod is selected by no policy, or by a looser one.

    ``allowed_specs(pod)`` lists the NetworkPolicy specs that may select that pod (its
    sandbox's policy, and its warm pool's baseline, which allows a subset of it);
    ``also_allowed(pod, policy)`` judges a policy whose spec changes by itself (a shared
    domain policy, which follows DNS).
    """
    pods: dict[tuple[str, str], Mapping[str, Any]] = {}
    policies: dict[tuple[str, str], Mapping[str, Any]] = {}
    found: list[Breach] = []
    for version, kind, kind_of_event, obj in events:
        metadata = obj.get("metadata") or {}
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        store = pods if kind == "Pod" else policies
        if kind_of_event == "DELETED":
            store.pop(key, None)
        else:
            store[key] = obj
        for (namespace, name), pod in pods.items():
            if not is_sandbox_pod(pod) or not is_runnable(pod):
                continue
            labels = (pod.get("metadata") or {}).get("labels") or {}
            selecting = [
                p
                for (ns, _), p in policies.items()
                if ns == namespace
                and selector_matches((p.get("spec") or {}).get("podSelector"), labels)
            ]
            if not selecting:
                found.append(Breach(version, f"{namespace}/{name}", "selected by no NetworkPolicy"))
                continue
            allowed = [*allowed_specs(pod), *fail_closed_spec(namespace, labels)]
            for policy in selecting:
                if also_allowed is not None and also_allowed(pod, policy):
                    continue
                if policy.get("spec") not in allowed:
                    policy_name = (policy.get("metadata") or {}).get("name")
                    found.append(
                        Breach(version, f"{namespace}/{name}", f"selected by looser {policy_name}")
                    )
    return found


def fail_closed_spec(namespace: str, labels: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The fail-closed policy's spec for the sandbox a pod's labels name (none: [])."""
    sandbox = labels.get(kinds.LABEL_SANDBOX_NAME)
    if not isinstance(sandbox, str):
        return []
    built = build_network_policy(
        FAIL_CLOSED_POLICY, sandbox=sandbox, namespace=namespace, settings=Settings()
    )
    return [built["spec"]] if built is not None else []


def domain_policy_within(
    policy: Mapping[str, Any], addresses: set[str], ports: list[Mapping[str, Any]]
) -> bool:
    """Whether a shared domain policy (``netpol-domains.*``) adds no more than a sandbox's
    policy allows: egress only, each rule on ``ports``, to single addresses among
    ``addresses`` (what the test's DNS server answered for the names the policy lists).
    Its spec follows DNS, so it is judged by this, not compared whole."""
    import ipaddress

    if not str((policy.get("metadata") or {}).get("name", "")).startswith("netpol-domains."):
        return False
    spec = policy.get("spec") or {}
    if spec.get("policyTypes") != ["Egress"] or spec.get("ingress"):
        return False
    for rule in spec.get("egress") or []:
        if rule.get("ports") != ports or not rule.get("to"):
            return False
        for peer in rule["to"]:
            if set(peer) != {"ipBlock"} or set(peer["ipBlock"]) != {"cidr"}:
                return False
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            if network.num_addresses != 1 or str(network.network_address) not in addresses:
                return False
    return True
