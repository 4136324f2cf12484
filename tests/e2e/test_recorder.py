"""The invariant checker's recorder watches throughout, or fails loudly.

Scripted API answers show each path (a watch the server ends, a broken one, 410 Gone with
and without missed changes); the real API server shows it keeps recording across watches
the server ends every second.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane

from tests.e2e.harness import Kubectl, as_json
from tests.e2e.invariant import Recorder, RecordingGapError
from tests.e2e.test_reconciler import eventually
from tests.kube.scripted import ScriptedRest, ScriptedWatch, gone_event, page
from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

SCRIPT_WAIT_S = 10.0


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "t", "resourceVersion": rv}}


def event(kind_of_event: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind_of_event, "object": obj}


def recorded_names(events: list[Any]) -> list[tuple[int, str, str]]:
    return [(at, kind_of_event, obj["metadata"]["name"]) for at, _, kind_of_event, obj in events]


def run_script(script: list[Any]) -> Recorder:
    rest = ScriptedRest(script)
    recorder = Recorder(rest, watched=(kinds.POD,))  # type: ignore[arg-type]
    recorder.start()
    assert rest.done.wait(SCRIPT_WAIT_S), "the recorder stopped before its script ended"
    return recorder


def test_a_watch_the_server_ends_is_resumed_from_the_last_version() -> None:
    rest_script = [
        page("1", pod("a", "1")),
        ScriptedWatch([event("MODIFIED", pod("a", "2"))]),  # the server's timeout ends it
        ScriptedWatch([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}]),
        ScriptedWatch([event("ADDED", pod("b", "6"))]),
    ]
    rest = ScriptedRest(rest_script)
    recorder = Recorder(rest, watched=(kinds.POD,))  # type: ignore[arg-type]
    recorder.start()
    assert rest.done.wait(SCRIPT_WAIT_S)
    assert recorded_names(recorder.stop()) == [
        (1, "ADDED", "a"),
        (2, "MODIFIED", "a"),
        (6, "ADDED", "b"),
    ]
    assert rest.watched_from == ["1", "2", "5", "6"]


def test_a_broken_watch_is_resumed_without_a_gap() -> None:
    recorder = run_script(
        [
            page("1"),
            errors.Unreachable("connection refused"),
            ScriptedWatch([event("ADDED", pod("a", "3"))]),
        ]
    )
    assert recorded_names(recorder.stop()) == [(3, "ADDED", "a")]


def test_410_gone_with_nothing_missed_is_no_gap() -> None:
    recorder = run_script(
        [
            page("1", pod("a", "1")),
            ScriptedWatch([gone_event()]),
            page("9", pod("a", "1")),  # the same object at the same version: nothing missed
            ScriptedWatch([event("ADDED", pod("b", "10"))]),
        ]
    )
    assert recorded_names(recorder.stop()) == [(1, "ADDED", "a"), (10, "ADDED", "b")]


def test_410_gone_with_changes_in_between_fails_loudly() -> None:
    recorder = run_script(
        [
            page("1", pod("a", "1"), pod("b", "1")),
            ScriptedWatch([gone_event()]),
            page("9", pod("a", "7")),  # a changed, b was deleted, and neither was seen
        ]
    )
    with pytest.raises(
        RecordingGapError, match=r"410 Gone after 1.*changed \['t/a'\], deleted \['t/b'\]"
    ):
        recorder.stop()


def test_an_unexpected_error_fails_loudly() -> None:
    recorder = Recorder(
        ScriptedRest([page("1"), ScriptedWatch([], then_fail=True)]),  # type: ignore[arg-type]
        watched=(kinds.POD,),
    )
    recorder.start()
    eventually(lambda: recorder.gaps, "the recorder to record its failure", SCRIPT_WAIT_S)
    with pytest.raises(RecordingGapError, match="recorder failed after 1"):
        recorder.stop()


@pytest.mark.timeout(120)
def test_keeps_recording_across_watches_the_server_ends(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    """The API server ends each watch after a second; pods created over several seconds are
    all recorded, in order, with no gap."""
    rest = Rest.from_config(control_plane.admin_kubeconfig)
    recorder = Recorder(rest, watch_timeout_seconds=1)
    recorder.start()
    names = [f"p-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    try:
        for name in names:
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "c", "image": "none"}]},
            }
            resumed = recorder.resumes
            kubectl.ok("create", "-f", "-", input=as_json(body))
            # The next create goes to a watch resumed after the server ended this one.
            eventually(
                lambda resumed=resumed: recorder.resumes > resumed, "the server to end the watch"
            )
    finally:
        events = recorder.stop()
        rest.close()
    added = [obj["metadata"]["name"] for _, kind, what, obj in events if what == "ADDED"]
    assert [name for name in added if name in names] == names
    assert recorder.resumes >= len(names)
