"""The pure parts of the REST edge: URL paths for any kind, and the watch stream's framing.

Requests themselves go to the real API server in tests/e2e/test_kube_rest.py.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import decode_events, lines, resource_path


@pytest.mark.parametrize(
    ("kind", "namespace", "name", "path"),
    [
        (kinds.POD, "team-a", "p", "/api/v1/namespaces/team-a/pods/p"),
        (kinds.POD, None, None, "/api/v1/pods"),
        (kinds.POD, "team-a", None, "/api/v1/namespaces/team-a/pods"),
        (kinds.NODE, "", "n1", "/api/v1/nodes/n1"),
        (
            kinds.NETWORK_POLICY,
            "team-a",
            "np",
            "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/np",
        ),
        (
            kinds.SANDBOX_CLAIM,
            None,
            None,
            "/apis/extensions.agents.x-k8s.io/v1alpha1/sandboxclaims",
        ),
        (
            kinds.LEASE,
            "kube-system",
            "agentcube-netpol",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/agentcube-netpol",
        ),
    ],
)
def test_resource_paths(
    kind: kinds.Kind, namespace: str | None, name: str | None, path: str
) -> None:
    assert resource_path(kind, namespace, name) == path


def test_lines_are_split_across_chunk_boundaries() -> None:
    chunks = [b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}']
    assert list(lines(iter(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_watch_events_decode_and_an_error_event_is_raised_typed() -> None:
    stream = [
        orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "a"}}}),
        orjson.dumps(
            {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "old"},
            }
        ),
        orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "never"}}}),
    ]
    events = decode_events(iter(stream))
    assert next(events)["object"]["metadata"]["name"] == "a"
    with pytest.raises(errors.Gone, match="old"):
        next(events)


def test_no_answer_is_unreachable_not_a_library_exception() -> None:
    from agentcube_netpol_dev.controlplane import free_loopback_ports

    from webhook.kube.kubeconfig import ClusterConfig
    from webhook.kube.rest import Rest

    nobody_listens = f"https://127.0.0.1:{free_loopback_ports(1)[0]}"
    rest = Rest(ClusterConfig(host=nobody_listens, source="test"), timeout_seconds=5)
    try:
        with pytest.raises(errors.Unreachable, match="GET /api/v1/namespaces/a/pods/p") as caught:
            rest.get(kinds.POD, "a", "p")
        assert caught.value.status == 0
        assert isinstance(caught.value, errors.ApiError)
        with pytest.raises(errors.Unreachable):
            rest.watch(kinds.POD, resource_version="1")
    finally:
        rest.close()


def test_urllib3_retries_nothing_and_warns_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection is one Unreachable at once: no "Retrying (Retry(...))" warning
    from urllib3 in a CLI's output, and no hidden second or third attempt."""
    from agentcube_netpol_dev.controlplane import free_loopback_ports

    from webhook.kube.kubeconfig import ClusterConfig
    from webhook.kube.rest import Rest

    nobody_listens = f"https://127.0.0.1:{free_loopback_ports(1)[0]}"
    rest = Rest(ClusterConfig(host=nobody_listens, source="test"), timeout_seconds=5)
    try:
        with caplog.at_level("DEBUG"), pytest.raises(errors.Unreachable):
            rest.list(kinds.POD)
    finally:
        rest.close()
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]


def test_the_rate_limiter_lets_a_burst_through_then_paces() -> None:
    from webhook.kube.rest import RateLimiter

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(10.0, 3, clock=lambda: now[0], sleep=sleep)
    waited = [limiter.wait() for _ in range(5)]
    assert waited[:3] == [0.0, 0.0, 0.0]  # the burst
    assert waited[3:] == pytest.approx([0.1, 0.1])  # then 10 a second
    assert sum(slept) == pytest.approx(0.2)


def test_reconciler_commands_limit_their_client_and_0_turns_it_off(tmp_path: Path) -> None:
    import yaml

    from webhook.cli.main import build_parser
    from webhook.cli.options import DEFAULT_KUBE_API_BURST, DEFAULT_KUBE_API_QPS, cluster_rest

    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    default = build_parser().parse_args(["reconcile", "--kubeconfig", str(config)])
    assert (default.kube_api_qps, default.kube_api_burst) == (
        DEFAULT_KUBE_API_QPS,
        DEFAULT_KUBE_API_BURST,
    )
    limited = cluster_rest(default)
    assert limited.limiter is not None
    assert limited.unlimited().limiter is None  # what leader election uses
    off = build_parser().parse_args(["run", "--kubeconfig", str(config), "--kube-api-qps", "0"])
    assert cluster_rest(off).limiter is None
    audit = build_parser().parse_args(["audit", "--kubeconfig", str(config)])
    assert cluster_rest(audit).limiter is None  # a one-off read is not a controller
