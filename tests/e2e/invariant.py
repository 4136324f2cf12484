"""Recording pods and NetworkPolicies as the API server orders them, and checking that no
sandbox pod is ever runnable without a NetworkPolicy that selects it and is no looser than
its sandbox's policy (DESIGN.md section 6, the invariant).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.kube.rest import Rest
from webhook.policy.builder import FAIL_CLOSED_POLICY, build_network_policy
from webhook.policy.selectors import selector_matches

Event = tuple[int, str, str, Mapping[str, Any]]  # (resourceVersion, kind, type, object)


@dataclass
class Recorder:
    """Pods and NetworkPolicies, each listed then watched from its list's version, until
    stopped; ``stop()`` returns the events in the API server's order."""

    rest: Rest
    recorded: list[Event] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _watches: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """What exists (as ADDED at the list's version), then every change after it."""
        for kind in (kinds.POD, kinds.NETWORK_POLICY):
            listed = self.rest.list(kind)
            version = listed["metadata"]["resourceVersion"]
            for obj in listed.get("items") or []:
                self.recorded.append((int(version), kind.kind, "ADDED", obj))
            watch = self.rest.watch(kind, resource_version=version, timeout_seconds=120)
            self._watches.append(watch)
            thread = threading.Thread(target=self._follow, args=(kind, watch), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _follow(self, kind: kinds.Kind, watch: Any) -> None:
        try:
            with watch as events:
                for event in events:
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and version:
                        with self._lock:
                            self.recorded.append((int(version), kind.kind, event["type"], obj))
        except Exception:  # closed by stop()
            return

    def stop(self) -> list[Event]:
        for watch in self._watches:
            watch.close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            return sorted(self.recorded, key=lambda e: (e[0], e[1]))


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
) -> list[Breach]:
    """Every moment a runnable sandbox pod is selected by no policy, or by a looser one.

    ``allowed_specs(pod)`` lists the NetworkPolicy specs that may select that pod (its
    sandbox's policy, and its warm pool's baseline, which allows a subset of it).
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
