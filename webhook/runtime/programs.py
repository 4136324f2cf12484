"""The parts a program gives its manager; ``run``, ``reconcile``, ``serve`` and ``dev`` are
each a few of these calls (see ``webhook.cli``).

In the order a program adds them, which is the order they start (and the reverse of the
order they stop):

- ``add_reconciler``: the shared caches (every replica; ready once listed), the
  reconciler (its workers only on the Lease holder) with the refresher that keeps egress
  domain names resolved (on the Lease holder too), and the elector, which stands once
  the caches have listed everything;
- ``add_crd_schema_keeper`` (``--patch-crds``): keeps our networkPolicy property in
  AgentCube's CRDs, on the Lease holder;
- ``add_rediscovery``: asks which versions agent-sandbox serves, and restarts the
  process through the manager when they change;
- ``add_metrics_server``: ``/metrics`` alone (``reconcile``; ``run`` serves it on the
  webhook's port);
- ``add_webhook_server``: the shared CA and caBundle keeper (``--ca-secret``), then the
  HTTPS admission server, which reads the shared caches and the manager's readiness.
"""

from __future__ import annotations

import logging
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from webhook.api import kinds
from webhook.api.exitcodes import EXIT_RESTART
from webhook.api.settings import Settings
from webhook.kube.cabundle import SYNC_INTERVAL_SECONDS, ClusterTrust
from webhook.kube.discovery import Rediscovery
from webhook.kube.leader import LeaderElector
from webhook.kube.rest import Rest
from webhook.reconciler.caches import Caches
from webhook.reconciler.controller import WORKERS, Reconciler
from webhook.reconciler.crdschema import CrdSchemaKeeper
from webhook.reconciler.domaincache import DomainTracker, Timing
from webhook.reconciler.domains import DomainRefresher
from webhook.reconciler.metrics import ReconcilerMetrics
from webhook.reconciler.resolver import DnsResolver
from webhook.runtime.manager import Manager, Periodic, Task
from webhook.server.serve import Admission, Listen, Tls, WebhookServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

LEASE_NAME = "agentcube-netpol"
# After the served versions change, /readyz fails this long before the server stops, so
# the readiness probe (deploy/: every 5 s, 3 failures) takes the replica out of the
# Service while it still answers the API server's calls.
RESTART_DRAIN_SECONDS = 15.0


def default_identity() -> str:
    """Unique per process, readable in the Lease: ``<hostname>_<random>`` as client-go does."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Lease:
    """The leader-election Lease; renewal deadline and retry period follow ``seconds`` in
    client-go's proportions (15 / 10 / 2)."""

    namespace: str
    name: str = LEASE_NAME
    seconds: float = 15.0
    identity: str = ""

    def elector(self, rest: Rest, identity: str) -> LeaderElector:
        return LeaderElector(
            rest.unlimited(),  # renewals never wait behind a resync's writes
            namespace=self.namespace,
            name=self.name,
            identity=identity,
            lease_seconds=self.seconds,
            renew_deadline_seconds=self.seconds * 2 / 3,
            retry_seconds=max(self.seconds / 7.5, 0.2),
        )


@dataclass(frozen=True)
class Shared:
    """What ``add_reconciler`` made: the server and rediscovery read them."""

    caches: Caches
    reconciler: Reconciler
    identity: str


@dataclass(frozen=True)
class DomainOptions:
    """Egress by domain name: the resolver (None: /etc/resolv.conf's) and its timing."""

    server: str | None = None
    ttl_floor: float = 30.0
    ttl_ceiling: float = 300.0
    grace: float = 300.0


def add_reconciler(
    manager: Manager,
    *,
    rest: Rest,
    settings: Settings,
    registry: CollectorRegistry,
    lease: Lease,
    workers: int = WORKERS,
    domains: DomainOptions | None = None,
) -> Shared:
    identity = lease.identity or default_identity()
    caches = Caches(rest, settings)
    metrics = ReconcilerMetrics(registry)
    domains = domains or DomainOptions()
    # Names are resolved while this replica leads; the addresses it has seen are kept
    # across a lost and won Lease (the tracker outlives the refresher's thread).
    refresher = DomainRefresher(
        DomainTracker(
            Timing(
                ttl_floor=domains.ttl_floor,
                ttl_ceiling=domains.ttl_ceiling,
                grace=domains.grace,
            ),
            random=random.random,
        ),
        DnsResolver(domains.server),
        metrics=metrics,
    )
    reconciler = Reconciler(
        rest=rest,
        caches=caches,
        settings=settings,
        metrics=metrics,
        workers=workers,
        identity=identity,
        domains=refresher,
    )
    refresher.enqueue = reconciler.queue.add
    manager.add(refresher, needs_lease=True)
    elector = lease.elector(rest, identity)
    # A worker stops writing the moment the Lease may have passed to another replica.
    reconciler.lease_held = lambda: elector.is_leader
    manager.add(Task("caches", on_start=caches.start, on_stop=caches.stop))
    manager.add_ready_check("caches", lambda: _not_listed(caches))
    manager.add(Task("reconciler", on_stop=reconciler.shutdown))
    manager.add(
        Task(
            "reconcile workers", on_start=reconciler.start_leading, on_stop=reconciler.stop_leading
        ),
        needs_lease=True,
    )

    # Until every informer has listed, a managed NetworkPolicy whose sandbox is not listed
    # yet would look orphaned: the replica stands for the Lease only after that.
    def synced(timeout: float) -> bool:
        if not caches.wait_synced(timeout):
            return False
        logger.info("caches synced; %s stands for the lease", identity)
        return True

    manager.elect(elector, when=synced)
    return Shared(caches=caches, reconciler=reconciler, identity=identity)


def add_crd_schema_keeper(manager: Manager, *, rest: Rest, shared: Shared) -> CrdSchemaKeeper:
    """``--patch-crds``: while this replica holds the Lease, keep the networkPolicy property
    in AgentCube's CRDs (``webhook.reconciler.crdschema``), fenced like the reconciler's
    writes."""
    declared = shared.reconciler.metrics.crd_schema_declared
    keeper = CrdSchemaKeeper(
        rest,
        may_write=shared.reconciler.lease_held,
        on_state=lambda crd, ok: declared.labels(crd).set(1.0 if ok else 0.0),
    )
    manager.add(keeper, needs_lease=True)
    return keeper


def add_claim_cache(manager: Manager, *, rest: Rest, settings: Settings) -> Caches:
    """SandboxClaims alone, listed and watched (``serve --watch-claims``): the same cache
    ``run`` shares with its server, keeping that one kind."""
    claims = Caches(rest, settings, watched=(kinds.SANDBOX_CLAIM,))
    manager.add(Task("claim cache", on_start=claims.start, on_stop=claims.stop))
    manager.add_ready_check("claim cache", lambda: _not_listed(claims))
    return claims


def _not_listed(caches: Caches) -> str | None:
    missing = caches.not_synced()
    return f"not listed yet: {', '.join(missing)}" if missing else None


def restart_schedule(*, leading: bool, interval_seconds: float) -> tuple[float, float]:
    """How long a replica that saw agent-sandbox's versions change keeps serving as it is,
    then how long it fails /readyz before it stops: (hold, drain).

    The replicas notice at their own moments, at most about two check intervals apart. A
    follower restarts at once; the Lease holder holds two intervals first, so the followers
    are back (and ready) before it goes: with the webhooks failing closed, the Service keeps
    an endpoint throughout, unless the replicas noticed further apart than that.
    """
    return (2 * interval_seconds if leading else 0.0), RESTART_DRAIN_SECONDS


def add_rediscovery(
    manager: Manager,
    *,
    rest: Rest,
    shared: Shared,
    from_flags: Settings,
    interval_seconds: float,
    serving: bool,
) -> None:
    """Ask every ``interval_seconds`` which versions agent-sandbox serves (a change:
    restart, exit EXIT_RESTART; ``serving``: on ``restart_schedule``'s timing) and, for
    ``--claim-label-injection=auto``, its allow-list (a change: flipped in place)."""

    def on_versions_changed(changes: list[str]) -> None:
        hold, drain = (
            restart_schedule(leading=manager.leading, interval_seconds=interval_seconds)
            if serving
            else (0.0, 0.0)
        )
        manager.shut_down(
            "agent-sandbox's served versions changed",
            exit_code=EXIT_RESTART,
            hold_seconds=hold,
            drain_seconds=drain,
        )

    started: list[Rediscovery] = []

    def start() -> None:  # after the caches: they chose the versions in use
        rediscovery = Rediscovery(
            rest,
            in_use=shared.caches.in_use,
            settings=shared.reconciler.settings,
            configured=from_flags.claim_label_injection,
            on_versions_changed=on_versions_changed,
            on_settings_changed=shared.reconciler.use_settings,
            interval_seconds=interval_seconds,
        )
        rediscovery.start()
        started.append(rediscovery)

    def stop() -> None:
        for rediscovery in started:
            rediscovery.stop()

    manager.add(Task("rediscovery", on_start=start, on_stop=stop))


def add_metrics_server(
    manager: Manager, *, host: str, port: int, registry: CollectorRegistry
) -> None:
    from prometheus_client import start_http_server

    servers: list[Callable[[], None]] = []

    def start() -> None:
        server, _thread = start_http_server(port, host, registry=registry)
        servers.append(server.shutdown)

    def stop() -> None:
        for shutdown in servers:
            shutdown()

    manager.add(Task("metrics server", on_start=start, on_stop=stop))


def add_webhook_server(
    manager: Manager,
    admission: Admission,
    listen: Listen,
    tls: Tls,
    *,
    trust: ClusterTrust | None = None,
) -> WebhookServer:
    """The HTTPS admission server; ``/readyz`` answers the manager's checks. ``trust``
    (``--ca-secret``): the shared CA and the webhooks' caBundle are set up before the
    server starts, and repaired every few minutes."""
    if trust is not None:
        manager.add(
            Periodic(
                "shared CA and caBundle sync",
                lambda: trust.sync(at=datetime.now(UTC)),
                interval_seconds=SYNC_INTERVAL_SECONDS,
            )
        )
        tls = replace(tls, renew_ca=False)  # the CA is the cluster's: only trust replaces it
    server = WebhookServer(replace(admission, not_ready=manager.not_ready), listen, tls)
    manager.add_ready_check("certificates", server.certificates)
    manager.add(server)
    return server


def admission_server(
    admission: Admission, listen: Listen, tls: Tls, *, drain_seconds: float = 0.0
) -> Manager:
    """A manager running the admission server alone (tests, benchmarks)."""
    manager = Manager(drain_seconds=drain_seconds)
    add_webhook_server(manager, admission, listen, tls)
    return manager
