"""The informer: what each list and watch event does to the store, its indexes and its
handlers (``Store``, plain dicts), and how the loop recovers (a scripted API at the edge)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from tests.kube.scripted import ScriptedRest, ScriptedWatch, gone_event, obj, page
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.informer import Informer, Store, interned

DONE_WAIT_S = 10.0


def slim(o: Mapping[str, Any]) -> dict[str, Any]:
    metadata = o["metadata"]
    return {
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": dict(metadata.get("labels") or {}),
        }
    }


def by_app(o: dict[str, Any]) -> Iterable[str]:
    app = o["metadata"]["labels"].get("app")
    return (app,) if app else ()


def names(objects: Iterable[dict[str, Any] | None]) -> list[str | None]:
    return [None if o is None else o["metadata"]["name"] for o in objects]


def deltas_as_names(
    deltas: Iterable[tuple[dict[str, Any] | None, dict[str, Any] | None]],
) -> list[tuple[str | None, str | None]]:
    return [(names([old])[0], names([new])[0]) for old, new in deltas]


# --- Store -----------------------------------------------------------------------------------


def test_events_keep_the_store_current_and_say_what_changed() -> None:
    store = Store(slim)
    assert store.replace(page("10", obj("a", "9", app="x"))["items"], "10") == [
        (None, slim(obj("a", "9", app="x")))
    ]
    assert store.resource_version == "10"
    added = store.apply({"type": "ADDED", "object": obj("b", "11")})
    assert added == (None, slim(obj("b", "11")))
    updated = store.apply({"type": "MODIFIED", "object": obj("a", "12", app="y")})
    assert updated == (slim(obj("a", "9", app="x")), slim(obj("a", "12", app="y")))
    deleted = store.apply({"type": "DELETED", "object": obj("b", "13")})
    assert deleted == (slim(obj("b", "11")), None)
    assert (
        store.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}) is None
    )
    assert store.resource_version == "20"
    assert store.keys() == [("team-a", "a")]
    # Only what slim keeps is stored.
    assert store.get("team-a", "a") == slim(obj("a", "12", app="y"))


def test_an_update_that_changes_nothing_kept_is_not_passed_on() -> None:
    store = Store(slim)
    store.apply({"type": "ADDED", "object": obj("a", "1", app="x")})
    touched = obj("a", "2", app="x")
    touched["data"] = {"big": "changed"}  # not kept by slim
    assert store.apply({"type": "MODIFIED", "object": touched}) is None
    assert store.resource_version == "2"  # but the stream position moves on


def test_same_name_in_another_namespace_is_another_object() -> None:
    store = Store(slim)
    store.replace([obj("a", "1", namespace="x")], "1")
    assert store.get("y", "a") is None
    assert store.get("x", "a") is not None


def test_a_relist_tells_the_adds_updates_and_deletes_missed_meanwhile() -> None:
    store = Store(slim)
    store.replace([obj("kept", "1"), obj("changed", "2", app="x"), obj("deleted", "3")], "3")
    deltas = store.replace([obj("kept", "1"), obj("changed", "7", app="y"), obj("new", "8")], "9")
    assert deltas_as_names(deltas) == [("changed", "changed"), (None, "new"), ("deleted", None)]
    assert sorted(names(store.items())) == ["changed", "kept", "new"]
    assert store.resource_version == "9"


def test_a_delete_of_an_object_never_seen_is_still_a_delete() -> None:
    store = Store(slim)
    assert store.apply({"type": "DELETED", "object": obj("ghost", "5")}) == (
        slim(obj("ghost", "5")),
        None,
    )


def test_indexes_follow_adds_updates_deletes_and_relists() -> None:
    store = Store(slim)
    store.add_index("app", by_app)
    store.replace([obj("a", "1", app="x"), obj("b", "2", app="x")], "2")
    assert sorted(names(store.by_index("app", "x"))) == ["a", "b"]
    store.apply({"type": "MODIFIED", "object": obj("a", "3", app="y")})
    assert names(store.by_index("app", "x")) == ["b"]
    assert names(store.by_index("app", "y")) == ["a"]
    store.apply({"type": "DELETED", "object": obj("b", "4", app="x")})
    assert store.by_index("app", "x") == []
    store.replace([obj("c", "5", app="y")], "5")
    assert names(store.by_index("app", "y")) == ["c"]
    assert store.by_index("app", "nothing") == []


def test_an_index_added_late_covers_what_is_stored() -> None:
    store = Store(slim)
    store.replace([obj("a", "1", app="x")], "1")
    store.add_index("app", by_app)
    assert names(store.by_index("app", "x")) == ["a"]
    with pytest.raises(ValueError, match="exists"):
        store.add_index("app", by_app)


def test_interned_strings_are_shared() -> None:
    one = interned({"labels": {"app": "".join(["de", "mo"])}, "list": ["".join(["a", "b"])]})
    two = interned({"labels": {"app": "".join(["de", "mo"])}, "list": ["".join(["a", "b"])]})
    assert one == two
    assert one["labels"]["app"] is two["labels"]["app"]
    assert one["list"][0] is two["list"][0]


# --- Informer loop -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.deltas: list[tuple[str | None, str | None]] = []
        self.lock = threading.Lock()

    def __call__(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        with self.lock:
            self.deltas += deltas_as_names([(old, new)])


def run_until_done(rest: ScriptedRest, **kwargs: Any) -> tuple[Informer, Recorder]:
    informer = Informer(
        rest,  # type: ignore[arg-type]
        kinds.Kind("", "v1", "ConfigMap", "configmaps"),
        slim=slim,
        backoff_initial_seconds=0.01,
        **kwargs,
    )
    recorder = Recorder()
    informer.add_handler(recorder)
    informer.start()
    assert rest.done.wait(DONE_WAIT_S), "the informer did not work through its script"
    return informer, recorder


def test_watch_resumes_from_the_last_version_and_relists_after_gone() -> None:
    rest = ScriptedRest(
        [
            page("10", obj("a", "9")),
            ScriptedWatch([{"type": "ADDED", "object": obj("b", "11")}]),  # the server ends it
            ScriptedWatch(
                [
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                    gone_event(),
                ]
            ),
            page("50", obj("c", "49")),  # relisted: a and b are gone
            ScriptedWatch([{"type": "ADDED", "object": obj("d", "51")}]),
        ]
    )
    informer, recorder = run_until_done(rest)
    try:
        assert rest.watched_from[:4] == ["10", "11", "50", "51"]
        assert len(rest.lists) == 2
        assert informer.synced
        assert sorted(o["metadata"]["name"] for o in informer.items()) == ["c", "d"]
        # The relist is told as the changes it makes: c added, a and b deleted.
        assert recorder.deltas == [
            (None, "a"),
            (None, "b"),
            (None, "c"),
            ("a", None),
            ("b", None),
            (None, "d"),
        ]
        assert informer.resource_version == "51"
    finally:
        informer.stop()


def test_api_errors_back_off_and_a_gone_watch_request_relists() -> None:
    rest = ScriptedRest(
        [
            errors.ServerError("etcd is slow", status=503),  # first list fails
            page("5", obj("a", "4")),
            ScriptedWatch([{"type": "ADDED", "object": obj("b", "6")}], then_fail=True),
            errors.Gone("too old resource version"),  # the resumed watch is refused
            page("9", obj("a", "4"), obj("b", "6")),
            ScriptedWatch([]),
        ]
    )
    informer, recorder = run_until_done(rest)
    try:
        assert len(rest.lists) == 3
        assert rest.watched_from[:3] == ["5", "6", "9"]  # the broken watch resumed where it was
        assert informer.get("team-a", "b") is not None
        assert recorder.deltas == [(None, "a"), (None, "b")]  # the relist changed nothing
    finally:
        informer.stop()


def test_the_list_is_paged_and_an_expired_continue_lists_again_whole() -> None:
    rest = ScriptedRest(
        [
            page("7", obj("a", "1"), continue_="t1"),
            page("7", obj("b", "2"), continue_="t2"),
            errors.Gone("continue token expired"),
            page("9", obj("a", "1"), obj("b", "2"), obj("c", "8")),
            ScriptedWatch([]),
        ]
    )
    informer, recorder = run_until_done(rest, page_size=1, label_selector="app=demo")
    try:
        assert [(call["limit"], call["continue_"]) for call in rest.lists] == [
            (1, None),
            (1, "t1"),
            (1, "t2"),
            (None, None),
        ]
        assert all(call["label_selector"] == "app=demo" for call in rest.lists)
        assert sorted(recorder.deltas, key=str) == [(None, "a"), (None, "b"), (None, "c")]
        assert rest.watched_from[0] == "9"
    finally:
        informer.stop()


def test_a_failing_handler_does_not_stop_the_others_or_the_informer() -> None:
    def broken(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        raise RuntimeError("handler bug")

    rest = ScriptedRest(
        [page("1", obj("a", "1")), ScriptedWatch([{"type": "ADDED", "object": obj("b", "2")}])]
    )
    informer = Informer(
        rest,  # type: ignore[arg-type]
        kinds.Kind("", "v1", "ConfigMap", "configmaps"),
        slim=slim,
    )
    recorder = Recorder()
    informer.add_handler(broken)
    informer.add_handler(recorder)
    informer.start()
    assert rest.done.wait(DONE_WAIT_S)
    informer.stop()
    assert recorder.deltas == [(None, "a"), (None, "b")]
    assert len(informer) == 2


def test_not_synced_until_the_first_list_lands_and_stop_ends_a_quiet_watch() -> None:
    gate = threading.Event()

    class SlowRest(ScriptedRest):
        def list(self, kind: Any, **kwargs: Any) -> Any:
            gate.wait(DONE_WAIT_S)
            return super().list(kind, **kwargs)

    rest = SlowRest([page("1")])
    informer = Informer(
        rest,  # type: ignore[arg-type]
        kinds.Kind("", "v1", "ConfigMap", "configmaps"),
        slim=slim,
    )
    informer.start()
    assert not informer.synced
    assert not informer.wait_synced(0.05)
    gate.set()
    assert informer.wait_synced(DONE_WAIT_S)
    assert rest.done.wait(DONE_WAIT_S)  # now in a watch that has nothing to say
    informer.stop()
    assert not informer.running


def test_handlers_are_added_before_start() -> None:
    rest = ScriptedRest([page("1")])
    informer = Informer(
        rest,  # type: ignore[arg-type]
        kinds.Kind("", "v1", "ConfigMap", "configmaps"),
        slim=slim,
    )
    informer.start()
    try:
        with pytest.raises(RuntimeError, match="before start"):
            informer.add_handler(Recorder())
    finally:
        informer.stop()
