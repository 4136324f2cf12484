"""The reconciler as one runnable: caches on every replica, workers on the Lease holder.

Order matters: the caches must have listed everything before the first plan,
or a managed NetworkPolicy whose sandbox is not listed yet would look orphaned
and be deleted. So the replica only stands for election once every informer
has synced, and ``ready`` (for ``/readyz``) is false until then.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid

from prometheus_client import CollectorRegistry

from webhook.api.settings import Settings
from webhook.kube.leader import LeaderElector
from webhook.kube.rest import Rest
from webhook.reconciler.caches import Caches
from webhook.reconciler.controller import WORKERS, Reconciler
from webhook.reconciler.metrics import ReconcilerMetrics

logger = logging.getLogger(__name__)

LEASE_NAME = "agentcube-netpol"
SYNC_TIMEOUT_SECONDS = 300.0


def default_identity() -> str:
    """Unique per process, readable in the Lease: ``<hostname>_<random>`` as client-go does."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class ReconcilerRuntime:
    def __init__(
        self,
        *,
        rest: Rest,
        settings: Settings,
        registry: CollectorRegistry,
        lease_namespace: str,
        lease_name: str = LEASE_NAME,
        identity: str = "",
        workers: int = WORKERS,
        lease_seconds: float = 15.0,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.identity = identity or default_identity()
        self.caches = Caches(rest, settings)
        self.reconciler = Reconciler(
            rest=rest,
            caches=self.caches,
            settings=settings,
            metrics=ReconcilerMetrics(registry),
            workers=workers,
            identity=self.identity,
        )
        self.elector = LeaderElector(
            rest.unlimited(),
            namespace=lease_namespace,
            name=lease_name,
            identity=self.identity,
            lease_seconds=lease_seconds,
            renew_deadline_seconds=renew_deadline_seconds,
            retry_seconds=retry_seconds,
        )
        self.reconciler.lease_held = lambda: self.elector.is_leader
        self._stopping = threading.Event()
        self._starter: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.caches.synced

    def not_ready(self) -> list[str]:
        """Names of the caches that have not listed yet (for ``/readyz``)."""
        return self.caches.not_synced()

    def start(self) -> None:
        self.caches.start()
        self._starter = threading.Thread(target=self._elect_once_synced, name="elect", daemon=True)
        self._starter.start()

    def _elect_once_synced(self) -> None:
        while not self._stopping.is_set():
            if self.caches.wait_synced(1.0):
                break
        if self._stopping.is_set():
            return
        logger.info("caches synced; %s stands for the lease", self.identity)
        self.elector.start(
            on_started_leading=self.reconciler.start_leading,
            on_stopped_leading=self.reconciler.stop_leading,
        )

    def release(self) -> None:
        """Stop writing and release the Lease (a successor takes over at once), and stand no
        more; the caches keep serving readers (the webhook while it drains)."""
        self._stopping.set()
        self.reconciler.stop_leading()
        self.elector.stop()

    def stop(self) -> None:
        """Release the lease (a successor takes over at once), stop writing, stop watching."""
        self._stopping.set()
        self.reconciler.stop_leading()
        self.elector.stop()
        self.reconciler.shutdown()
        self.caches.stop()
