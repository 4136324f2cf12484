"""The SandboxClaim cache: what each watch event does, and how the loop recovers.

The real API server path (list, watch, a claimed pod labelled through it) is in
tests/e2e/test_claim_cache.py; here a scripted API stands in at the I/O edge so
410 Gone, a broken connection and an API error happen on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kubernetes.client import ApiException

from tests import builders
from webhook.kube import claimcache
from webhook.kube.claimcache import ClaimCache, ClaimIndex, WatchExpiredError, lines


def claim(name: str, uid: str, rv: str, namespace: str = "team-a", **labels: str) -> dict[str, Any]:
    stored = builders.sandbox_claim(name, namespace, uid=uid, labels=labels)
    stored["metadata"]["resourceVersion"] = rv
    return stored


def claim_list(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(items)}


def test_list_then_events_keep_the_index_current() -> None:
    index = ClaimIndex.from_list(claim_list("10", claim("a", "u1", "9", session="s")))
    assert index.resource_version == "10"
    assert index.claims[("team-a", "u1")]["metadata"]["labels"] == {"session": "s"}
    index.apply({"type": "ADDED", "object": claim("b", "u2", "11")})
    index.apply({"type": "MODIFIED", "object": claim("a", "u1", "12", session="t")})
    index.apply({"type": "DELETED", "object": claim("b", "u2", "13")})
    index.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}})
    assert set(index.claims) == {("team-a", "u1")}
    assert index.claims[("team-a", "u1")]["metadata"]["labels"] == {"session": "t"}
    assert index.resource_version == "20"
    # Only what the pod mutation needs is kept.
    assert set(index.claims[("team-a", "u1")]) == {"metadata"}


def test_same_uid_in_another_namespace_is_another_claim() -> None:
    index = ClaimIndex.from_list(claim_list("1", claim("a", "u1", "1", namespace="x")))
    assert ("y", "u1") not in index.claims


def test_lookup_finds_a_claim_only_in_its_own_namespace() -> None:
    """A tenant in team-b must not borrow team-a's claim (and so its NetworkPolicy's label) by
    copying the claim's uid, or by naming its claim the same."""
    mine = claim("ci-1", "u1", "1", namespace="team-a", session="s-a")
    same_name = claim("ci-1", "u2", "2", namespace="team-b", session="s-b")
    cache = run_until_done(ScriptedApi([claim_list("5", mine, same_name)]))
    cache.stop()
    assert cache.claim_by_uid("team-a", "u1") == kept_of(mine)
    assert cache.claim_by_uid("team-b", "u1") is None
    assert cache.claim_by_uid("team-a", "u2") is None
    assert cache.claim_by_uid("team-b", "u2") == kept_of(same_name)


def kept_of(stored: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a claim: name, namespace, uid and labels."""
    metadata = stored["metadata"]
    return {"metadata": {k: metadata[k] for k in ("name", "namespace", "uid", "labels")}}


def test_gone_means_relist_and_other_errors_are_errors() -> None:
    index = ClaimIndex()
    with pytest.raises(WatchExpiredError):
        index.apply(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
        )
    with pytest.raises(RuntimeError, match="internal"):
        index.apply(
            {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "internal"}}
        )


def test_lines_are_split_across_chunk_boundaries() -> None:
    chunks = [b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}']
    assert list(lines(iter(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


class _Stream:
    def __init__(self, events: list[dict[str, Any]], *, then_fail: bool = False) -> None:
        self.body = b"".join(orjson.dumps(e) + b"\n" for e in events)
        self.then_fail = then_fail

    def stream(self, _amt: int) -> Iterator[bytes]:
        yield self.body
        if self.then_fail:
            raise ConnectionResetError("connection reset by peer")

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


class ScriptedApi:
    """Answers list and watch calls from a script; records the watch resourceVersions."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.watched_from: list[str] = []
        self.lists = 0
        self.done = threading.Event()

    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, **kwargs: Any
    ) -> Any:
        assert (group, version, plural) == (
            "extensions.agents.x-k8s.io",
            "v1alpha1",
            "sandboxclaims",
        )
        if kwargs.get("watch"):
            self.watched_from.append(kwargs["resource_version"])
        else:
            self.lists += 1
        if not self.script:
            self.done.set()
            threading.Event().wait(0.05)  # a watch with nothing to say
            raise ConnectionError("test over")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def run_until_done(api: ScriptedApi) -> ClaimCache:
    cache = ClaimCache(api)
    cache.start()
    assert api.done.wait(10), "the cache did not work through its script"
    return cache


def test_watch_resumes_from_the_last_version_and_relists_after_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claimcache, "BACKOFF_INITIAL_SECONDS", 0.01)
    api = ScriptedApi(
        [
            claim_list("10", claim("a", "u1", "9")),
            _Stream([{"type": "ADDED", "object": claim("b", "u2", "11")}]),  # the server ends it
            _Stream(
                [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]
            ),
            claim_list("50", claim("c", "u3", "49")),  # relisted: a and b are gone
            _Stream([{"type": "ADDED", "object": claim("d", "u4", "51")}]),
        ]
    )
    cache = run_until_done(api)
    assert api.watched_from[:3] == ["10", "11", "50"]
    assert api.lists == 2
    assert cache.synced
    assert cache.claim_by_uid("team-a", "u1") is None
    assert cache.claim_by_uid("team-a", "u3") is not None
    assert cache.claim_by_uid("team-a", "u4") is not None
    cache.stop()


def test_api_errors_back_off_and_relist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claimcache, "BACKOFF_INITIAL_SECONDS", 0.01)
    api = ScriptedApi(
        [
            ApiException(status=503, reason="Service Unavailable"),  # first list fails
            claim_list("5", claim("a", "u1", "4")),
            _Stream([{"type": "ADDED", "object": claim("b", "u2", "6")}], then_fail=True),
            ApiException(status=410, reason="Gone"),  # resumed watch refused: too old
            claim_list("9", claim("a", "u1", "4"), claim("b", "u2", "6")),
        ]
    )
    cache = run_until_done(api)
    assert api.lists == 3
    assert api.watched_from[:2] == ["5", "6"]  # the broken watch resumed where it was
    assert cache.claim_by_uid("team-a", "u2") is not None
    cache.stop()


def test_not_synced_until_the_first_list_lands() -> None:
    gate = threading.Event()

    class SlowApi(ScriptedApi):
        def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            gate.wait(5)
            return super().list_cluster_custom_object(*args, **kwargs)

    api = SlowApi([claim_list("1")])
    cache = ClaimCache(api)
    cache.start()
    assert not cache.synced
    gate.set()
    assert cache.wait_synced(5)
    cache.stop()
