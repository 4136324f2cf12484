"""The informer against the real kube-apiserver: a paged first list, every later change
delivered to the handlers in order across the server ending its watches, only objects
matching its label selector, lookups by index, and a prompt stop mid-watch."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane

from tests.e2e.test_reconciler import eventually
from webhook.api import kinds
from webhook.kube.informer import Informer
from webhook.kube.rest import Rest

CONFIG_MAP = kinds.Kind("", "v1", "ConfigMap", "configmaps")
WAIT_S = 20.0


class CountingRest(Rest):
    """The real client, counting the lists and watches the informer makes."""

    lists = 0
    watches = 0

    def list(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.lists += 1
        return super().list(*args, **kwargs)

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        self.watches += 1
        return super().watch(*args, **kwargs)


@pytest.fixture
def rest(control_plane: ControlPlane) -> Iterator[CountingRest]:
    base = Rest.from_config(control_plane.admin_kubeconfig)
    rest = CountingRest(base.cluster)
    yield rest
    rest.close()


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    return {
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": dict(metadata.get("labels") or {}),
        },
        "data": dict(obj.get("data") or {}),
    }


def by_tier(obj: dict[str, Any]) -> Iterable[str]:
    tier = obj["metadata"]["labels"].get("tier")
    return (tier,) if tier else ()


def config_map(name: str, namespace: str, *, tier: str = "a", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"watched": "yes", "tier": tier},
        },
        "data": data,
    }


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def __call__(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            assert old is not None
            change = ("deleted", old["metadata"]["name"])
        elif old is None:
            change = ("added", new["metadata"]["name"])
        else:
            change = ("updated", f"{new['metadata']['name']}={new['data'].get('v')}")
        with self.changed:
            self.changes.append(change)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.changes) >= count, WAIT_S), (
                f"only {self.changes} arrived"
            )
            return list(self.changes)


def test_paged_list_then_changes_in_order_across_watch_timeouts(
    rest: CountingRest, namespace: str
) -> None:
    for i in range(5):
        rest.create(CONFIG_MAP, namespace, config_map(f"early-{i}", namespace))
    rest.create(  # not selected: never seen
        CONFIG_MAP,
        namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}},
    )
    informer = Informer(
        rest,
        CONFIG_MAP,
        slim=slim,
        namespace=namespace,
        label_selector="watched=yes",
        page_size=2,
        watch_timeout_seconds=1,  # the server ends the watch every second: resumed each time
    )
    recorder = Recorder()
    informer.add_handler(recorder)
    informer.start()
    try:
        assert informer.wait_synced(WAIT_S)
        assert rest.lists == 3  # 2 + 2 + 1
        assert sorted(recorder.wait_for(5)) == [("added", f"early-{i}") for i in range(5)]

        rest.create(CONFIG_MAP, namespace, config_map("late", namespace, v="1"))
        watches = rest.watches  # at least one watch ends and is resumed in between
        eventually(lambda: rest.watches > watches, "the server to end the watch")
        rest.patch(CONFIG_MAP, namespace, "late", {"data": {"v": "2"}}, patch_type="merge")
        watches = rest.watches
        eventually(lambda: rest.watches > watches, "the server to end the watch")
        rest.delete(CONFIG_MAP, namespace, "early-0")
        rest.delete(CONFIG_MAP, namespace, "other")

        changes = recorder.wait_for(8)
        assert changes[5:] == [("added", "late"), ("updated", "late=2"), ("deleted", "early-0")]
        assert rest.watches >= 3  # resumed, not relisted
        assert rest.lists == 3
        assert informer.get(namespace, "other") is None
        assert informer.get(namespace, "late") == slim(config_map("late", namespace, v="2"))
        assert len(informer) == 5
    finally:
        informer.stop()
    assert not informer.running


def test_index_lookups_follow_label_changes(rest: CountingRest, namespace: str) -> None:
    rest.create(CONFIG_MAP, namespace, config_map("x", namespace, tier="a"))
    informer = Informer(
        rest, CONFIG_MAP, slim=slim, namespace=namespace, label_selector="watched=yes"
    )
    informer.add_index("tier", by_tier)
    recorder = Recorder()
    informer.add_handler(recorder)
    informer.start()
    try:
        assert informer.wait_synced(WAIT_S)
        assert [o["metadata"]["name"] for o in informer.by_index("tier", "a")] == ["x"]
        rest.patch(
            CONFIG_MAP, namespace, "x", {"metadata": {"labels": {"tier": "b"}}}, patch_type="merge"
        )
        recorder.wait_for(2)
        assert informer.by_index("tier", "a") == []
        assert [o["metadata"]["name"] for o in informer.by_index("tier", "b")] == ["x"]
    finally:
        informer.stop()


def test_stop_returns_promptly_while_the_watch_is_open(rest: CountingRest, namespace: str) -> None:
    informer = Informer(rest, CONFIG_MAP, slim=slim, namespace=namespace)
    informer.start()
    assert informer.wait_synced(WAIT_S)
    eventually(lambda: informer.watching, "the watch to be open")
    informer.stop()
    assert not informer.running
