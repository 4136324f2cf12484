"""A ``Rest`` stand-in for the informer's loop: answers list and watch calls from a script, so
410 Gone, a broken connection and an API error happen on demand. The real API server path
is in tests/e2e/test_kube_informer.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from webhook.kube import errors


def obj(name: str, rv: str, namespace: str = "team-a", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": labels,
        },
        "data": {"big": "x" * 100},
    }


def page(rv: str, *items: dict[str, Any], continue_: str = "") -> dict[str, Any]:
    metadata = {"resourceVersion": rv}
    if continue_:
        metadata["continue"] = continue_
    return {"metadata": metadata, "items": list(items)}


def gone_event() -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }


class ScriptedWatch:
    """Yields its events (an ERROR event raised as its typed error, as ``Rest`` does), then
    ends, fails, or (``block``) waits until closed like a quiet watch."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        *,
        then_fail: bool = False,
        block: bool = False,
    ) -> None:
        self.events = events
        self.then_fail = then_fail
        self.block = block
        self.closed = threading.Event()

    def __enter__(self) -> Iterator[dict[str, Any]]:
        return self._events()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _events(self) -> Iterator[dict[str, Any]]:
        for event in self.events:
            if event["type"] == "ERROR":
                raise errors.from_status(event["object"])
            yield event
        if self.then_fail:
            raise ConnectionResetError("connection reset by peer")
        if self.block:
            self.closed.wait()

    def close(self) -> None:
        self.closed.set()


class ScriptedRest:
    """``list`` and ``watch`` answered in order from ``script``: a page dict, a
    ``ScriptedWatch``, or an exception to raise. When the script runs out, ``done`` is set
    and the informer is left in a quiet watch until it is stopped."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.lists: list[dict[str, Any]] = []
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def _next(self) -> Any:
        if not self.script:
            self.done.set()
            return ScriptedWatch([], block=True)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def api_resources(self, group_version: str) -> Any:
        raise errors.NotFound(f"{group_version} is not served here")  # discovery: the defaults

    def list(self, kind: Any, **kwargs: Any) -> Any:
        self.lists.append(kwargs)
        step = self._next()
        assert isinstance(step, dict), f"the informer listed where the script has {step!r}"
        return step

    def watch(self, kind: Any, **kwargs: Any) -> Any:
        self.watched_from.append(kwargs["resource_version"])
        step = self._next()
        assert isinstance(step, ScriptedWatch), (
            f"the informer watched where the script has {step!r}"
        )
        return step
