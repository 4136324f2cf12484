"""The pod mutation's claim lookup: the reconciler's caches keeping SandboxClaims (what
``serve --watch-claims`` runs, and ``run`` shares with its server), looked up by
(namespace, uid) and kept current by an informer.

How the list + watch loop recovers (410 Gone, a broken connection, an API error) is tested
once, for every informer, in tests/kube/test_informer.py; the real API server path (list,
watch, a claimed pod labelled through it) is in tests/e2e/test_claim_cache.py.
"""

from __future__ import annotations

import threading
from typing import Any

from tests import builders
from tests.kube.scripted import ScriptedRest, ScriptedWatch, page
from webhook.api import kinds
from webhook.api.settings import Settings
from webhook.reconciler.caches import Caches, slim_claim

DONE_WAIT_S = 10.0


def claim(name: str, uid: str, rv: str, namespace: str = "team-a", **labels: str) -> dict[str, Any]:
    stored = builders.sandbox_claim(name, namespace, uid=uid, labels=labels)
    stored["metadata"]["resourceVersion"] = rv
    return stored


def cache_over(rest: ScriptedRest) -> Caches:
    caches = Caches(rest, Settings(), watched=(kinds.SANDBOX_CLAIM,))  # type: ignore[arg-type]
    for informer in caches.informers[kinds.SANDBOX_CLAIM]:
        informer._backoff_initial = 0.01
    return caches


def test_list_then_events_keep_the_lookup_by_uid_current() -> None:
    rest = ScriptedRest(
        [
            page("10", claim("a", "u1", "9", session="s"), claim("gone", "u9", "8")),
            ScriptedWatch(
                [
                    {"type": "ADDED", "object": claim("b", "u2", "11")},
                    {"type": "MODIFIED", "object": claim("a", "u1", "12", session="t")},
                    {"type": "DELETED", "object": claim("gone", "u9", "13")},
                ]
            ),
        ]
    )
    cache = cache_over(rest)
    cache.start()
    try:
        assert rest.done.wait(DONE_WAIT_S)
        assert cache.synced
        found = cache.claim_by_uid("team-a", "u1")
        assert found is not None
        assert found["metadata"]["name"] == "a"
        assert found["metadata"]["labels"] == {"session": "t"}
        assert cache.claim_by_uid("team-a", "u2") is not None
        assert cache.claim_by_uid("team-a", "u9") is None
        # Only what decisions read is kept: what the pod mutation reads among it.
        assert found == slim_claim(claim("a", "u1", "12", session="t"))
    finally:
        cache.stop()


def test_same_uid_in_another_namespace_is_another_claim() -> None:
    rest = ScriptedRest([page("1", claim("a", "u1", "1", namespace="x")), ScriptedWatch([])])
    cache = cache_over(rest)
    cache.start()
    try:
        assert cache.wait_synced(DONE_WAIT_S)
        assert cache.claim_by_uid("y", "u1") is None
        assert cache.claim_by_uid("x", "u1") is not None
    finally:
        cache.stop()


def test_lookup_finds_a_claim_only_in_its_own_namespace() -> None:
    """A tenant in team-b must not borrow team-a's claim (and so its NetworkPolicy's label) by
    copying the claim's uid, or by naming its claim the same."""
    mine = claim("ci-1", "u1", "1", namespace="team-a", session="s-a")
    same_name = claim("ci-1", "u2", "2", namespace="team-b", session="s-b")
    cache = cache_over(ScriptedRest([page("5", mine, same_name), ScriptedWatch([])]))
    cache.start()
    try:
        assert cache.wait_synced(DONE_WAIT_S)
        assert cache.claim_by_uid("team-a", "u1") == slim_claim(mine)
        assert cache.claim_by_uid("team-b", "u1") is None
        assert cache.claim_by_uid("team-a", "u2") is None
        assert cache.claim_by_uid("team-b", "u2") == slim_claim(same_name)
    finally:
        cache.stop()


def test_not_synced_until_the_first_list_lands() -> None:
    gate = threading.Event()

    class SlowRest(ScriptedRest):
        def list(self, kind: Any, **kwargs: Any) -> Any:
            gate.wait(DONE_WAIT_S)
            return super().list(kind, **kwargs)

    cache = cache_over(SlowRest([page("1")]))
    cache.start()
    assert not cache.synced
    gate.set()
    assert cache.wait_synced(DONE_WAIT_S)
    cache.stop()


def test_serve_keeps_no_other_kind() -> None:
    caches = cache_over(ScriptedRest([]))
    assert list(caches.informers) == [kinds.SANDBOX_CLAIM]
    assert caches.items(kinds.SANDBOX) == []
