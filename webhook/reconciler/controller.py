"""The reconciler's I/O: caches in, ``plan`` in the middle, writes and Events out.

Every replica keeps the caches (the pod mutation reads claims from them) and
queues the NetworkPolicies each change bears on; only the replica holding the
Lease runs workers, and a worker checks that it still leads before each write.
A key is never reconciled by two workers at once (the work queue's promise);
a failed reconcile is retried with per-key exponential backoff.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from webhook.api import kinds
from webhook.api.kinds import Kind
from webhook.api.settings import Settings
from webhook.kube.errors import AlreadyExists, ApiError, Conflict, NotFound, Unreachable
from webhook.kube.rest import PatchType, Rest
from webhook.kube.workqueue import WorkQueue
from webhook.reconciler.caches import Caches
from webhook.reconciler.domainplan import status_of
from webhook.reconciler.domains import DomainRefresher
from webhook.reconciler.metrics import ReconcilerMetrics
from webhook.reconciler.plan import (
    BASELINE_PREFIX,
    Plan,
    PodPatch,
    ReconcileRequest,
    Report,
    all_requests,
    claim_label_reports,
    is_managed,
    plan,
    requests_for_change,
    update_reason,
)
from webhook.reconciler.sandboxes import name_of, namespace_of, uid_of

logger = logging.getLogger(__name__)

WORKERS = 4
RESYNC_SECONDS = 600.0  # a full pass now and then, as controller-runtime's SyncPeriod
REPORTED_EVENTS_KEPT = 4096  # (object uid, reason, message) seen lately: no Event twice
EVENT_QUEUE_SIZE = 4096  # Events waiting to be sent; past that they are dropped (logged)
# JSON Pointer to the isolation canary annotation ("/" in a key is "~1", RFC 6901).
CANARY_POINTER = "/metadata/annotations/" + kinds.ANNOTATION_ISOLATION_CANARY.replace("/", "~1")
COMPONENT = "agentcube-netpol"


RETRY_QPS = 10.0
# An API server that answers 429 or 503 with Retry-After asks every client to wait: all
# workers hold their writes that long (at most this), not only the key that was refused.
MAX_RETRY_AFTER_SECONDS = 60.0
# An API server failing (5xx) or away without saying when to come back: all workers hold, from
# half a second, doubling with each failure in a row, to at most 30 s; a success resets it.
# (The per-key backoff alone would let every queued key try, 10 a second after a burst of
# 100, against a server that is down.)
SERVER_ERROR_HOLD_SECONDS = 0.5
MAX_SERVER_ERROR_HOLD_SECONDS = 30.0


def server_failing(exc: ApiError) -> bool:
    return exc.status >= 500 or isinstance(exc, Unreachable)


def hold_seconds(exc: ApiError, failures_in_a_row: int) -> float | None:
    """How long every worker holds after ``exc``: its Retry-After (at most 60 s); for a
    failing or unreachable API server without one, 0.5 s doubling with each failure in a
    row up to 30 s; None (no hold, the key's own backoff) for anything else."""
    if exc.retry_after_seconds and exc.retry_after_seconds > 0:
        return min(exc.retry_after_seconds, MAX_RETRY_AFTER_SECONDS)
    if server_failing(exc):
        doublings = min(max(failures_in_a_row - 1, 0), 16)  # the cap is reached by then
        hold: float = SERVER_ERROR_HOLD_SECONDS * 2**doublings
        return min(hold, MAX_SERVER_ERROR_HOLD_SECONDS)
    return None


class Reconciler:
    def __init__(
        self,
        *,
        rest: Rest,
        caches: Caches,
        settings: Settings,
        metrics: ReconcilerMetrics,
        workers: int = WORKERS,
        identity: str = "",
        domains: DomainRefresher | None = None,
    ) -> None:
        self._rest = rest
        # Egress by domain name: the names' addresses (None: shared domain policies are
        # planned from what they hold, resolving nothing).
        self._domains = domains
        self._caches = caches
        self._settings = settings
        self.metrics = metrics
        self._workers = workers
        self.identity = identity or f"{COMPONENT}-{uuid.uuid4().hex[:8]}"
        # Retries: per key exponential backoff, and 10 a second overall with bursts of 100
        # (client-go's DefaultControllerRateLimiter), so a failing API cannot be spun on.
        self.queue: WorkQueue[ReconcileRequest] = WorkQueue(bucket_qps=RETRY_QPS)
        self._leading = threading.Event()
        self._hold_until = 0.0  # monotonic: no reconcile starts before (Retry-After, 5xx)
        self._server_errors = 0  # in a row
        self._hold_lock = threading.Lock()
        # Set by the runtime to the elector's own check (renewed within the renew deadline),
        # so a worker stops writing the moment the lease may have passed to another replica.
        self.lease_held: Callable[[], bool] = lambda: True
        self._threads: list[threading.Thread] = []
        self._reported: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._reported_lock = threading.Lock()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._event_sender = threading.Thread(target=self._send_events, name="events", daemon=True)
        self._event_sender.start()
        metrics.track_queue(lambda: len(self.queue))
        metrics.track_gated(lambda: caches.items(kinds.POD), lambda: datetime.now(UTC))
        caches.add_handler(self._on_change)

    # --- what a change bears on -------------------------------------------------------------

    def _on_change(
        self, kind: Kind, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        for request in requests_for_change(kind, old, new, self._caches):
            self.queue.add(request)
        if kind == kinds.POD:
            for report in claim_label_reports(old, new, self._caches, self._settings):
                self._record(report)

    @property
    def settings(self) -> Settings:
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Plan with ``settings`` from now on (claim label injection flipped by the allow-list)."""
        self._settings = settings

    # --- leading ----------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._leading.is_set() and self.lease_held()

    def start_leading(self) -> None:
        """Called when the Lease is ours: a full pass, then workers until we lose it."""
        logger.info("%s leads: reconciling", self.identity)
        self._leading.set()
        self.metrics.leader.set(1)
        for request in all_requests(self._caches):
            self.queue.add(request)
        self._threads = [
            threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            for i in range(self._workers)
        ]
        self._threads.append(threading.Thread(target=self._resync, name="resync", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop_leading(self) -> None:
        if self._leading.is_set():
            logger.info("%s no longer leads: writes stop", self.identity)
        self._leading.clear()
        self.metrics.leader.set(0)

    def shutdown(self) -> None:
        self.stop_leading()
        self.queue.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(None)  # after the Events queued so far
        self._event_sender.join(timeout=2)

    def _resync(self) -> None:
        while self.leading and not self.queue.shutting_down:
            time.sleep(1.0)
            deadline = time.monotonic() + RESYNC_SECONDS
            while self.leading and time.monotonic() < deadline and not self.queue.shutting_down:
                time.sleep(1.0)
            if self.leading and not self.queue.shutting_down:
                for request in all_requests(self._caches):
                    self.queue.add(request)

    def _work(self) -> None:
        while self.leading:
            request = self.queue.get(timeout=0.5)
            if request is None:
                if self.queue.shutting_down:
                    return
                continue
            self._wait_out_hold()
            started = time.perf_counter()
            try:
                done = self.reconcile(request)
            except ApiError as exc:
                self.metrics.api_errors.labels(str(exc.status)).inc()
                self._hold(exc)
                logger.warning("reconcile %s/%s: %s; retrying", *request, exc)
                self.metrics.reconciles.labels("error").inc()
                self.queue.add_rate_limited(request)
            except Exception:
                logger.exception("reconcile %s/%s failed; retrying", *request)
                self.metrics.reconciles.labels("error").inc()
                self.queue.add_rate_limited(request)
            else:
                self._server_errors = 0
                if done:
                    self.metrics.reconciles.labels("success").inc()
                    self.queue.forget(request)
                else:
                    self.metrics.reconciles.labels("requeue").inc()
                    self.queue.add_rate_limited(request)
            finally:
                self.metrics.duration.observe(time.perf_counter() - started)
                self.queue.done(request)

    def _hold(self, exc: ApiError) -> None:
        """The API server said when to come back (Retry-After on a 429 or 503), or is
        failing (5xx, or away): every worker waits, not only the one whose key was refused;
        that key is retried after its own backoff, and not before the hold ends."""
        now = time.monotonic()
        with self._hold_lock:
            if not exc.retry_after_seconds and server_failing(exc):
                self._server_errors += 1
            seconds = hold_seconds(exc, self._server_errors)
            if seconds is None or now + seconds <= self._hold_until:
                return
            if self._hold_until <= now:
                logger.warning(
                    "the API server %s %gs (%s %s): reconciles held",
                    "asks to wait" if exc.retry_after_seconds else "fails; waiting",
                    seconds, exc.status, exc.reason,
                )  # fmt: skip
            self._hold_until = now + seconds

    def _wait_out_hold(self) -> None:
        while self.leading:
            with self._hold_lock:
                remaining = self._hold_until - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.5))

    # --- one reconcile ----------------------------------------------------------------------

    def reconcile(self, request: ReconcileRequest) -> bool:
        """Bring one NetworkPolicy (and its sandbox's pods) to the desired state.

        True when done; False to retry after backoff (the cache was behind the API
        server: a create found it existing, an update found a newer version).
        """
        decided = self._plan(request)
        for report in decided.reports:
            self._record(report)
        if not self.leading:
            return True  # the new leader does it
        try:
            self._write(decided)
        except (AlreadyExists, Conflict) as exc:
            logger.info("reconcile %s/%s: %s; cache behind, retrying", *request, exc.reason)
            return False
        if decided.write == "blocked":
            return True
        for patch in decided.label_pods:
            self._patch_pod(patch)
        for patch in decided.ungate_pods:
            self._patch_pod(patch)
        for patch in decided.canary_pods:
            self._patch_pod(patch)
        return True

    def _plan(self, request: ReconcileRequest) -> Plan:
        if self._domains is None:
            return plan(request, self._caches, self._settings)
        tracker = self._domains.tracker
        decided = plan(request, self._caches, self._settings, tracker.state)
        if decided.domain_names is None and not request.is_domains:
            return decided
        # A shared domain policy: the tracker keeps its names resolved from now on (and
        # forgets them when no sandbox needs them). Names new to it start from what the
        # policy holds (a new leader drops no address), and are asked at once.
        now = time.time()
        added = tracker.want(request, decided.domain_names or (), now)
        if not added:
            return decided
        status = status_of(decided.current)
        for name in added:
            if isinstance(status.get(name), Mapping):
                tracker.seed(name, status[name], now)
        self._domains.wake()
        return plan(request, self._caches, self._settings, tracker.state)

    def _write(self, decided: Plan) -> None:
        request = decided.request
        kind, namespace, name = decided.target
        what = (
            "baseline"
            if request.name.startswith(BASELINE_PREFIX)
            else f"domain {kind.kind}"
            if request.is_domains
            else "NetworkPolicy"
        )
        shown = f"{namespace}/{name}" if namespace else name
        if decided.write == "create":
            assert decided.desired is not None
            self._rest.create(kind, namespace, decided.desired)
            self.metrics.writes.labels("create").inc()
            logger.info("created %s %s", what, shown)
            self._report_write(decided, "NetworkPolicyCreated", f"created {what} {name}")
            return
        if decided.write == "update":
            self._rest.patch(kind, namespace, name, decided.merge_patch, patch_type="merge")
            self.metrics.writes.labels("update").inc()
            logger.info("updated %s %s to the desired state", what, shown)
            why = update_reason(decided)
            self._report_write(decided, "NetworkPolicyUpdated", f"{what} {name} {why}")
            return
        if decided.write == "delete":
            assert decided.current is not None and is_managed(decided.current)
            try:
                self._rest.delete(kind, namespace, name, uid=uid_of(decided.current))
            except NotFound:
                return
            self.metrics.writes.labels("delete").inc()
            logger.info("deleted %s %s: no longer needed", what, shown)
            self._report_write(decided, "NetworkPolicyDeleted", f"deleted {what} {name}")
            return

    def _patch_pod(self, patch: PodPatch) -> None:
        patch_type: PatchType
        if patch.gates is not None:
            body: Any = [
                {"op": "test", "path": "/metadata/uid", "value": patch.uid},
                {"op": "replace", "path": "/spec/schedulingGates", "value": list(patch.gates)},
            ]
            if patch.canary is not None:  # before the gate goes: in the same write
                body.insert(1, {"op": "replace", "path": CANARY_POINTER, "value": patch.canary})
            patch_type = "json"
            write = "ungate"
        elif patch.canary is not None:
            body = [
                {"op": "test", "path": "/metadata/uid", "value": patch.uid},
                {"op": "replace", "path": CANARY_POINTER, "value": patch.canary},
            ]
            patch_type = "json"
            write = "canary"
        else:
            body = {"metadata": {"labels": dict(patch.labels)}}
            patch_type = "merge"
            write = "label"
        try:
            self._rest.patch(kinds.POD, patch.namespace, patch.name, body, patch_type=patch_type)
        except NotFound:
            return
        except ApiError as exc:
            if exc.status == 422 and patch_type == "json":  # the pod was replaced (uid test)
                return
            raise
        self.metrics.writes.labels(write).inc()
        done = {"ungate": "ungated", "canary": "wrote the isolation canary of", "label": "labelled"}
        logger.info("%s pod %s/%s", done[write], patch.namespace, patch.name)

    # --- Events -----------------------------------------------------------------------------

    def _send_events(self) -> None:
        while True:
            body = self._events.get()
            if body is None:
                return
            try:
                self._rest.create(kinds.EVENT, body["metadata"]["namespace"], body)
                self.metrics.writes.labels("event").inc()
            except ApiError as exc:  # an Event is best effort; the log line stays
                logger.warning("could not record Event %s: %s", body.get("reason"), exc)

    def _report_write(self, decided: Plan, reason: str, message: str) -> None:
        if decided.regarding is not None:
            self._record(Report(decided.regarding, reason, message), once=False)

    def _record(self, report: Report, *, once: bool = True) -> None:
        if not self.leading:
            return
        key = (uid_of(report.regarding), report.reason, report.message)
        if once:
            with self._reported_lock:
                if key in self._reported:
                    return
                self._reported[key] = None
                while len(self._reported) > REPORTED_EVENTS_KEPT:
                    self._reported.popitem(last=False)
        # Sent by a thread of its own, as client-go's recorder does: a worker never waits
        # on an Event, and a burst of them cannot slow the writes that matter.
        try:
            self._events.put_nowait(event_body(report, self.identity))
        except queue.Full:
            logger.warning("Event queue full; dropped Event %s", report.reason)
        log = logger.warning if report.warning else logger.info
        log("%s %s/%s: %s: %s", report.regarding.get("kind"), namespace_of(report.regarding),
            name_of(report.regarding), report.reason, report.message)  # fmt: skip


def event_body(report: Report, instance: str, *, now: datetime | None = None) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about ``report.regarding`` (``kubectl describe`` shows it)."""
    regarding = report.regarding
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": kinds.EVENT.api_version,
        "kind": kinds.EVENT.kind,
        "metadata": {
            # As client-go names Events: the object's name and the time in hex nanoseconds.
            "name": f"{name_of(regarding)[:200]}.{time.time_ns():x}",
            "namespace": namespace_of(regarding),
        },
        "regarding": {
            "apiVersion": regarding.get("apiVersion"),
            "kind": regarding.get("kind"),
            "name": name_of(regarding),
            "namespace": namespace_of(regarding),
            "uid": uid_of(regarding),
        },
        "reason": report.reason,
        "note": report.message[:1024],
        "type": "Warning" if report.warning else "Normal",
        "action": "Reconcile",
        "eventTime": at,
        "reportingController": f"netpol.agentcube.io/{COMPONENT}",
        "reportingInstance": instance[:128],
    }
