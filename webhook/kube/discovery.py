"""Which versions of agent-sandbox's kinds the API server serves: asked at start, and again
every half minute.

The answer is the API server's discovery (``/apis/<group>/<version>``), which every
authenticated user may read (no RBAC on CustomResourceDefinitions needed). The choice itself
is ``webhook.api.kinds.served_kinds``: v1beta1 where served (agent-sandbox v0.5 and v1.0),
else v1alpha1 (v0.4). A kind served in neither keeps its v1alpha1 constant, and a warning
says so: its informer reports the 404 until the CRD is installed.

``Rediscovery`` asks again (agent-sandbox installed or upgraded after us): a change of the
versions is handed to the caller, which restarts (``run`` and ``reconcile`` exit with
``EXIT_RESTART``); a change of agent-sandbox's allow-list flips claim label injection "auto"
in place.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace

from webhook.api import kinds
from webhook.api.kinds import Kind
from webhook.api.settings import ClaimLabelInjection, Settings
from webhook.kube import errors
from webhook.kube.rest import Rest

logger = logging.getLogger(__name__)


def served_resources(rest: Rest) -> dict[str, set[str]]:
    """Group version -> the plurals served in it, for agent-sandbox's groups and versions."""
    group_versions = sorted(
        {
            f"{kind.group}/{version}"
            for kind in kinds.AGENT_SANDBOX_KINDS
            for version in kinds.AGENT_SANDBOX_VERSIONS
        }
    )
    served: dict[str, set[str]] = {}
    for group_version in group_versions:
        try:
            document = rest.api_resources(group_version)
        except errors.NotFound:
            continue
        served[group_version] = {
            str(resource.get("name", ""))
            for resource in document.get("resources") or []
            if isinstance(resource, dict) and "/" not in str(resource.get("name", ""))
        }
    return served


def discover_kinds(rest: Rest) -> dict[Kind, Kind]:
    """Each of agent-sandbox's kinds in the version this cluster serves (the constant where
    none is served), with one log line naming them."""
    chosen = kinds.served_kinds(served_resources(rest))
    resolved = {kind: chosen.get(kind, kind) for kind in kinds.AGENT_SANDBOX_KINDS}
    missing = [kind.plural for kind in kinds.AGENT_SANDBOX_KINDS if kind not in chosen]
    if missing:
        logger.warning(
            "agent-sandbox serves no %s in %s: watching them in v1alpha1 until it does",
            ", ".join(missing),
            " or ".join(kinds.AGENT_SANDBOX_VERSIONS),
        )
    logger.info(
        "agent-sandbox kinds in use: %s",
        ", ".join(f"{kind.kind} {kind.api_version}" for kind in resolved.values()),
    )
    return resolved


def claim_label_accepted(rest: Rest, served: dict[Kind, Kind]) -> tuple[bool, str]:
    """Whether agent-sandbox will accept ``runtime.agentcube.io/sandbox-name`` in a claim's
    ``spec.additionalPodMetadata.labels``, and why. v0.4 (SandboxClaims served in v1alpha1
    only) has no allow-list; v0.5+ (v1beta1) accepts the domains of its ConfigMap."""
    if served[kinds.SANDBOX_CLAIM].version != "v1beta1":
        return True, f"SandboxClaims are served in {served[kinds.SANDBOX_CLAIM].version} only"
    where = f"{kinds.AGENT_SANDBOX_NAMESPACE}/{kinds.AGENT_SANDBOX_CONFIG_MAP}"
    try:
        config_map = rest.get(
            kinds.CONFIG_MAP, kinds.AGENT_SANDBOX_NAMESPACE, kinds.AGENT_SANDBOX_CONFIG_MAP
        )
        text = (config_map.get("data") or {}).get(kinds.ALLOWED_LABEL_DOMAINS_KEY)
    except errors.NotFound:
        text = None
    domains = kinds.allowed_label_domains(text)
    accepted = kinds.label_domain_allowed(kinds.LABEL_SANDBOX_NAME, domains)
    return accepted, (
        f"agent-sandbox serves v1beta1 and its allow-list ({where} "
        f"{kinds.ALLOWED_LABEL_DOMAINS_KEY}: {', '.join(domains)}) "
        f"{'covers' if accepted else 'does not cover'} runtime.agentcube.io"
    )


def decide_claim_label_injection(
    setting: ClaimLabelInjection, rest: Rest, served: Mapping[Kind, Kind]
) -> tuple[ClaimLabelInjection, str]:
    """``setting`` with "auto" decided against the cluster ("on" or "off"), and why."""
    if setting != "auto":
        return setting, f"--claim-label-injection={setting}"
    try:
        accepted, why = claim_label_accepted(rest, dict(served))
    except errors.ApiError as exc:
        accepted, why = False, f"agent-sandbox's allow-list could not be read ({exc})"
    return ("on" if accepted else "off"), why


def say_claim_label_injection(value: ClaimLabelInjection, why: str, *, now: str = "") -> None:
    """The log line that says how claimed pods get their sandbox-name label."""
    if value == "on":
        logger.info("claim label injection %son: %s; claims get the sandbox-name label", now, why)
    else:
        logger.warning(
            "claim label injection %soff: %s; claimed pods are labelled by the pod webhook and "
            "the reconciler instead (to label them at adoption: %s)",
            now,
            why,
            kinds.ALLOW_LIST_FIX,
        )


def resolve_claim_label_injection(
    settings: Settings, rest: Rest, served: dict[Kind, Kind] | None = None
) -> Settings:
    """``settings`` with ``claim_label_injection`` "auto" decided against the cluster, and a
    log line saying how claimed pods get their sandbox-name label."""
    if settings.claim_label_injection != "auto":
        value, why = decide_claim_label_injection(settings.claim_label_injection, rest, {})
    else:
        try:
            value, why = decide_claim_label_injection("auto", rest, served or discover_kinds(rest))
        except errors.ApiError as exc:
            value, why = "off", f"agent-sandbox's versions could not be discovered ({exc})"
    settings = replace(settings, claim_label_injection=value)
    say_claim_label_injection(value, why)
    return settings


REDISCOVER_INTERVAL_SECONDS = 30.0
REDISCOVER_JITTER = 0.5  # up to 50% longer: replicas started together do not check together


class Rediscovery:
    """Asks again, every ``interval_seconds``, what start asked once.

    - The versions agent-sandbox's kinds are served in (``in_use``: what start chose). A
      change is acted on once two checks in a row agree (a CRD being replaced is briefly
      served in no version): ``on_versions_changed`` hears what changed, once, and the
      checks end. The caller restarts: the informers, the pod webhook's claim lookups and
      the ownerReferences written all follow the versions chosen at start.
    - With ``--claim-label-injection=auto`` (``configured``), agent-sandbox's allow-list:
      when it starts or stops covering our domain, ``on_settings_changed`` gets ``settings``
      with injection flipped (and a log line says so). A failed read keeps what is in use.

    A check that cannot reach the API server changes nothing; the next one asks again.
    """

    def __init__(
        self,
        rest: Rest,
        *,
        in_use: Mapping[Kind, Kind],
        settings: Settings,
        configured: ClaimLabelInjection,
        on_versions_changed: Callable[[list[str]], None],
        on_settings_changed: Callable[[Settings], None] = lambda settings: None,
        interval_seconds: float = REDISCOVER_INTERVAL_SECONDS,
    ) -> None:
        self._rest = rest
        self._in_use = kinds.versions_in_use(in_use)
        self._served = {kind: in_use.get(kind, kind) for kind in kinds.AGENT_SANDBOX_KINDS}
        self.settings = settings
        self._configured = configured
        self._on_versions_changed = on_versions_changed
        self._on_settings_changed = on_settings_changed
        self._interval = interval_seconds
        self._pending: dict[str, str] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One round; True once the versions changed (and the caller was told)."""
        chosen = kinds.served_kinds(served_resources(self._rest))
        now = kinds.versions_in_use(chosen)
        changes = kinds.version_changes(self._in_use, now)
        if changes:
            if now != self._pending:
                self._pending = now  # acted on when the next check agrees
                logger.info(
                    "agent-sandbox's served versions may be changing (%s): asking again",
                    "; ".join(changes),
                )
                return False
            logger.warning(
                "agent-sandbox's served versions changed (%s): restarting to watch them",
                "; ".join(changes),
            )
            self._on_versions_changed(changes)
            return True
        self._pending = None
        if self._configured == "auto":
            self._recheck_allow_list()
        return False

    def _recheck_allow_list(self) -> None:
        try:
            accepted, why = claim_label_accepted(self._rest, self._served)
        except errors.ApiError as exc:
            logger.debug("allow-list not read (%s); claim label injection unchanged", exc)
            return
        value: ClaimLabelInjection = "on" if accepted else "off"
        if value == self.settings.claim_label_injection:
            return
        self.settings = replace(self.settings, claim_label_injection=value)
        say_claim_label_injection(value, why, now="now ")
        self._on_settings_changed(self.settings)

    def start(self) -> None:
        if self._interval <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="rediscovery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval * (1 + REDISCOVER_JITTER * random.random())):
            try:
                if self.check():
                    return
            except Exception as exc:  # the API server away, a connection reset: ask again later
                logger.warning("rediscovery failed (%s); asking again later", exc)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
