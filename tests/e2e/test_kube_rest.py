"""``Rest`` against the real kube-apiserver: raw JSON in and out for core and grouped kinds,
the optimistic concurrency and preconditions writers rely on, each refusal as its typed
error, and a watch that another thread closes at once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest

CONFIG_MAP = kinds.Kind("", "v1", "ConfigMap", "configmaps")
WATCH_WAIT_S = 20.0


@pytest.fixture(scope="module")
def rest(control_plane: ControlPlane) -> Iterator[Rest]:
    rest = Rest.from_config(control_plane.admin_kubeconfig)
    yield rest
    rest.close()


def config_map(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def network_policy(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "demo"}},
        "spec": {"podSelector": {"matchLabels": {"app": "demo"}}, "policyTypes": ["Ingress"]},
    }


def test_create_get_replace_patch_delete_round_trip(rest: Rest, namespace: str) -> None:
    created = rest.create(kinds.NETWORK_POLICY, namespace, network_policy("np", namespace))
    assert created["metadata"]["uid"]
    got = rest.get(kinds.NETWORK_POLICY, namespace, "np")
    assert got["spec"]["podSelector"] == {"matchLabels": {"app": "demo"}}
    # Who wrote it is recorded under our field manager.
    assert {m["manager"] for m in got["metadata"]["managedFields"]} == {"agentcube-netpol"}

    got["spec"]["policyTypes"] = ["Ingress", "Egress"]
    replaced = rest.replace(kinds.NETWORK_POLICY, namespace, "np", got)
    assert replaced["spec"]["policyTypes"] == ["Ingress", "Egress"]

    merged = rest.patch(
        kinds.NETWORK_POLICY,
        namespace,
        "np",
        {"metadata": {"labels": {"tier": "a"}}},
        patch_type="merge",
    )
    assert merged["metadata"]["labels"] == {"app": "demo", "tier": "a"}
    json_patched = rest.patch(
        kinds.NETWORK_POLICY,
        namespace,
        "np",
        [{"op": "remove", "path": "/metadata/labels/tier"}],
        patch_type="json",
    )
    assert json_patched["metadata"]["labels"] == {"app": "demo"}
    strategic = rest.patch(
        kinds.NETWORK_POLICY,
        namespace,
        "np",
        {"spec": {"ingress": [{"ports": [{"port": 8080}]}]}},
        patch_type="strategic",
    )
    assert strategic["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]

    rest.delete(kinds.NETWORK_POLICY, namespace, "np", uid=created["metadata"]["uid"])
    with pytest.raises(errors.NotFound):
        rest.get(kinds.NETWORK_POLICY, namespace, "np")


def test_server_side_apply_owns_its_fields_and_force_takes_them_over(
    rest: Rest, namespace: str
) -> None:
    applied = rest.patch(
        CONFIG_MAP,
        namespace,
        "cm",
        config_map("cm", namespace, mode="restricted"),
        patch_type="apply",
    )
    assert applied["data"] == {"mode": "restricted"}
    # Unchanged: applying the same again writes nothing (same resourceVersion).
    again = rest.patch(
        CONFIG_MAP,
        namespace,
        "cm",
        config_map("cm", namespace, mode="restricted"),
        patch_type="apply",
    )
    assert again["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]
    with pytest.raises(errors.Conflict, match="conflict"):
        rest.patch(
            CONFIG_MAP,
            namespace,
            "cm",
            config_map("cm", namespace, mode="none"),
            patch_type="apply",
            field_manager="someone-else",
        )
    forced = rest.patch(
        CONFIG_MAP,
        namespace,
        "cm",
        config_map("cm", namespace, mode="none"),
        patch_type="apply",
        field_manager="someone-else",
        force=True,
    )
    assert forced["data"] == {"mode": "none"}


def test_stale_writes_and_preconditions_fail_as_conflict(rest: Rest, namespace: str) -> None:
    first = rest.create(CONFIG_MAP, namespace, config_map("cm", namespace, v="1"))
    second = dict(first, data={"v": "2"})
    rest.replace(CONFIG_MAP, namespace, "cm", second)
    stale = dict(first, data={"v": "3"})  # still carries the first resourceVersion
    with pytest.raises(errors.Conflict):
        rest.replace(CONFIG_MAP, namespace, "cm", stale)
    assert rest.get(CONFIG_MAP, namespace, "cm")["data"] == {"v": "2"}

    with pytest.raises(errors.Conflict):
        rest.delete(
            CONFIG_MAP, namespace, "cm", resource_version=first["metadata"]["resourceVersion"]
        )
    with pytest.raises(errors.Conflict):
        rest.delete(CONFIG_MAP, namespace, "cm", uid="not-its-uid")
    rest.get(CONFIG_MAP, namespace, "cm")  # still there


def test_refusals_are_typed(rest: Rest, namespace: str, control_plane: ControlPlane) -> None:
    rest.create(CONFIG_MAP, namespace, config_map("cm", namespace))
    with pytest.raises(errors.AlreadyExists):
        rest.create(CONFIG_MAP, namespace, config_map("cm", namespace))
    with pytest.raises(errors.NotFound):
        rest.delete(CONFIG_MAP, namespace, "nothing-here")
    with pytest.raises(errors.Invalid, match="Invalid value"):
        rest.create(CONFIG_MAP, namespace, config_map("Not_A_Name", namespace))
    nobody = Rest.from_config(control_plane.mint_user("nobody"))
    try:
        with pytest.raises(errors.Forbidden, match="nobody"):
            nobody.get(CONFIG_MAP, namespace, "cm")
    finally:
        nobody.close()


def test_any_user_may_ask_who_it_is(control_plane: ControlPlane) -> None:
    """``run`` learns its identity this way (webhook.kube.identity); a user RBAC grants
    nothing may still ask (system:basic-user), as deploy/'s service account does."""
    nobody = Rest.from_config(control_plane.mint_user("nobody", groups=["tenants"]))
    try:
        user = nobody.self_subject_review()["status"]["userInfo"]
    finally:
        nobody.close()
    assert user["username"] == "nobody"
    assert "tenants" in user["groups"]


def test_dry_run_create_stores_nothing(rest: Rest, namespace: str) -> None:
    answer = rest.create(CONFIG_MAP, namespace, config_map("cm", namespace), dry_run=True)
    assert answer["metadata"]["name"] == "cm"
    with pytest.raises(errors.NotFound):
        rest.get(CONFIG_MAP, namespace, "cm")


def test_list_pages_with_limit_and_continue(rest: Rest, namespace: str) -> None:
    for i in range(5):
        paged = config_map(f"cm-{i}", namespace)
        paged["metadata"]["labels"] = {"paged": "yes"}
        rest.create(CONFIG_MAP, namespace, paged)
    names: list[str] = []
    continue_: str | None = None
    pages = 0
    while True:
        page = rest.list(
            CONFIG_MAP, namespace=namespace, label_selector="paged", limit=2, continue_=continue_
        )
        pages += 1
        names += [item["metadata"]["name"] for item in page["items"]]
        continue_ = page["metadata"].get("continue")
        if not continue_:
            break
    assert sorted(names) == [f"cm-{i}" for i in range(5)]
    assert pages == 3


def test_list_by_label_selector(rest: Rest, namespace: str) -> None:
    rest.create(kinds.NETWORK_POLICY, namespace, network_policy("a", namespace))
    other = network_policy("b", namespace)
    other["metadata"]["labels"] = {"app": "other"}
    rest.create(kinds.NETWORK_POLICY, namespace, other)
    page = rest.list(kinds.NETWORK_POLICY, namespace=namespace, label_selector="app=demo")
    assert [item["metadata"]["name"] for item in page["items"]] == ["a"]


def test_watch_delivers_changes_in_order_and_closes_from_another_thread(
    rest: Rest, namespace: str
) -> None:
    listed = rest.list(CONFIG_MAP, namespace=namespace)
    seen: list[tuple[str, str]] = []
    both_seen = threading.Event()
    ended = threading.Event()
    watch = rest.watch(
        CONFIG_MAP, namespace=namespace, resource_version=listed["metadata"]["resourceVersion"]
    )

    def read() -> None:
        with watch as events:
            for event in events:
                if event["type"] != "BOOKMARK":
                    seen.append((event["type"], event["object"]["metadata"]["name"]))
                if len(seen) >= 2:
                    both_seen.set()
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rest.create(CONFIG_MAP, namespace, config_map("w", namespace))
    rest.delete(CONFIG_MAP, namespace, "w")
    assert both_seen.wait(WATCH_WAIT_S)
    assert seen == [("ADDED", "w"), ("DELETED", "w")]

    wait_blocked_reading(reader)  # the case that matters: close() from outside a read
    watch.close()
    assert ended.wait(5), "closing the watch did not end the reader's iteration"
    reader.join(5)


def wait_blocked_reading(thread: threading.Thread) -> None:
    """Until ``thread`` waits in a socket read (its innermost Python frame is in the
    ``ssl`` or ``socket`` module, reading), so what comes next happens to a blocked
    reader."""
    deadline = time.monotonic() + WATCH_WAIT_S
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        if frame is not None and (
            Path(frame.f_code.co_filename).name in ("ssl.py", "socket.py")
            and frame.f_code.co_name in ("read", "recv_into", "readinto")
        ):
            return
        time.sleep(0.01)
    pytest.fail("the watch reader never blocked in a socket read")
