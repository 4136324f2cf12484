"""A replica of ``run`` stopped as the kubelet stops it: SIGTERM, then a grace period.

What an admin relies on: ``/readyz`` fails first while the server keeps answering (so the
endpoint leaves the Service before the port closes), no admission request sent to it
before that fails, the Lease is released at once so the standby writes within a retry
period instead of a lease duration, and the process exits 0 well inside deploy/'s
``terminationGracePeriodSeconds`` (30 s).
"""

from __future__ import annotations

import json
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane, tls_context

from tests import builders
from tests.e2e.deployed import NAMESPACE, deploy_manifests, install_rbac
from tests.e2e.harness import WebhookServer
from tests.e2e.test_reconciler import eventually
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

LEASE = "shutdown-test"
DRAIN_S = 3.0
LEASE_S = 15.0
TERMINATION_GRACE_S = 30.0  # deploy/base/deployment.yaml
REQUEST_INTERVAL_S = 0.02


def start_replica(control_plane: ControlPlane, service_account: Path, work: Path) -> WebhookServer:
    work.mkdir(parents=True, exist_ok=True)
    server = WebhookServer(
        command="run",
        cert_dir=work / "certs",
        log_path=work / "run.log",
        extra_args=(
            f"--kubeconfig={service_account}",
            f"--lease-namespace={NAMESPACE}",
            f"--lease-name={LEASE}",
            f"--lease-seconds={LEASE_S}",
            f"--shutdown-drain={DRAIN_S}",
        ),
    )
    server.start()
    return server


def holder(rest: Rest) -> str:
    try:
        lease = rest.get(kinds.LEASE, NAMESPACE, LEASE)
    except errors.NotFound:
        return ""
    return str(lease["spec"].get("holderIdentity") or "")


class Reviews:
    """Valid template reviews sent to one replica every 20 ms, each answer kept with the
    time it was sent."""

    def __init__(self, server: WebhookServer) -> None:
        self.url = f"{server.url}/validate"
        self.context: ssl.SSLContext = tls_context(ca_file=server.ca_file, client=None)
        body = builders.review_of(builders.code_interpreter(), kind=kinds.CODE_INTERPRETER)
        self.body = json.dumps(body).encode()
        self.results: list[tuple[float, str]] = []  # (sent at, "allowed" or the failure)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            request = urllib.request.Request(
                self.url, data=self.body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, context=self.context, timeout=5) as answer:
                    allowed = json.loads(answer.read())["response"]["allowed"]
                    self.results.append((sent, "allowed" if allowed else "denied"))
            except (urllib.error.URLError, OSError) as exc:
                self.results.append((sent, f"failed: {exc}"))
            self._stop.wait(REQUEST_INTERVAL_S)

    def __enter__(self) -> Reviews:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def replicas(
    control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> Iterator[tuple[WebhookServer, WebhookServer, Rest]]:
    service_account = install_rbac(control_plane, deploy_manifests(control_plane))
    rest = Rest.from_config(control_plane.admin_kubeconfig)
    first = start_replica(control_plane, service_account, tmp_path / "a")
    try:
        eventually(lambda: holder(rest), "the first replica to take the Lease")
        second = start_replica(control_plane, service_account, tmp_path / "b")
        try:
            yield first, second, rest
        finally:
            second.stop()
    finally:
        first.stop()
        rest.close()


def test_sigterm_drains_releases_the_lease_and_exits_0(
    replicas: tuple[WebhookServer, WebhookServer, Rest],
) -> None:
    leader, standby, rest = replicas
    led_by = holder(rest)
    with Reviews(leader) as reviews:
        eventually(lambda: len(reviews.results) >= 10, "reviews to flow")
        signalled = time.monotonic()
        leader.send_signal(signal.SIGTERM)

        # Not ready at once, still answering: the endpoint leaves first.
        eventually(lambda: not leader.answers_200("/readyz"), "/readyz to fail", 2 * DRAIN_S)
        unready_after = time.monotonic() - signalled
        assert leader.answers_200("/healthz"), leader.log()[-2000:]

        taken = eventually(
            lambda: (h := holder(rest)) not in ("", led_by) and h, "the standby to take the Lease"
        )
        handover_s = time.monotonic() - signalled
        code = leader.wait_exit(TERMINATION_GRACE_S)
        exited_s = time.monotonic() - signalled
    print(
        f"\nSIGTERM -> /readyz failing {unready_after:.2f}s, Lease held by the standby "
        f"{handover_s:.2f}s, exit {exited_s:.2f}s (drain {DRAIN_S}s, lease {LEASE_S}s)"
    )
    assert code == 0, leader.log()[-3000:]
    assert exited_s < TERMINATION_GRACE_S
    # Handed over, not left to expire: well before a lease duration has passed.
    assert handover_s < LEASE_S, f"{taken} took the Lease only after {handover_s:.1f}s"
    assert standby.answers_200("/readyz")
    # Nothing sent during the drain failed: the port closed only after it.
    during = [outcome for sent, outcome in reviews.results if sent < signalled + DRAIN_S * 0.8]
    assert during and all(outcome == "allowed" for outcome in during), [
        outcome for outcome in during if outcome != "allowed"
    ][:3]
