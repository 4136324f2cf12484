"""The pure parts of the fake kubelet's init containers: the environment a container gets
(resolved from the pod as it is when the container starts), what it runs, and the statuses
reported while and after they run. (The processes run in tests/e2e/test_fake_kubelet.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from agentcube_netpol_dev.kubelet import (
    CONTAINER_PATH,
    InitRun,
    UnsupportedEnvError,
    container_env,
    expand,
    init_completed,
    init_config_error,
    init_container_status,
    init_failed,
    init_started,
    initializing_status,
    is_running_here,
    own_program_args,
    process_env,
    running_status,
    runs_own_program,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2026, 1, 2, 3, 4, 9, tzinfo=UTC)
CANARY = "netpol.agentcube.io/isolation-canary"
WAIT = {
    "name": "netpol-wait-isolated",
    "image": "agentcube-netpol:dev",
    "command": ["agentcube-netpol", "wait-isolated"],
    "env": [
        {
            "name": "NETPOL_ISOLATION_CANARY",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{CANARY}']"}},
        }
    ],
}


def pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "tenant",
            "name": "py-1",
            "uid": "u-1",
            "labels": {"app": "py"},
            "annotations": annotations,
        },
        "spec": {
            "nodeName": "node",
            "serviceAccountName": "sandbox",
            "initContainers": [WAIT, {"name": "setup", "image": "busybox"}],
            "containers": [{"name": "main", "image": "python:3"}],
        },
    }


def env_of(container: dict[str, Any], of: dict[str, Any]) -> dict[str, str]:
    return container_env(container, of, pod_ip="10.88.0.5", host_ip="10.89.0.1")


# --- the environment


def test_an_annotation_added_after_creation_is_what_the_container_sees() -> None:
    created = pod()
    annotated = pod(**{CANARY: "10.88.0.9:9"})
    assert env_of(WAIT, created) == {"NETPOL_ISOLATION_CANARY": ""}  # missing: "", as Kubernetes
    assert env_of(WAIT, annotated) == {"NETPOL_ISOLATION_CANARY": "10.88.0.9:9"}


def test_every_field_ref_the_kubelet_resolves() -> None:
    paths = {
        "NAME": "metadata.name",
        "NS": "metadata.namespace",
        "UID": "metadata.uid",
        "APP": "metadata.labels['app']",
        "NOLABEL": "metadata.labels['absent']",
        "NODE": "spec.nodeName",
        "SA": "spec.serviceAccountName",
        "IP": "status.podIP",
        "HOST": "status.hostIP",
    }
    container = {
        "name": "c",
        "env": [
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
            for name, path in paths.items()
        ],
    }
    assert env_of(container, pod()) == {
        "NAME": "py-1",
        "NS": "tenant",
        "UID": "u-1",
        "APP": "py",
        "NOLABEL": "",
        "NODE": "node",
        "SA": "sandbox",
        "IP": "10.88.0.5",
        "HOST": "10.89.0.1",
    }


def test_a_value_expands_the_variables_defined_before_it() -> None:
    container = {
        "name": "c",
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-$(C)-$$(A)"},
            {"name": "C", "value": "late"},
        ],
    }
    assert env_of(container, pod()) == {"A": "x", "B": "x-$(C)-$(A)", "C": "late"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("a$(A)b$(B)", "a1b2"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$(A", "$(A"),
        ("$x", "$x"),
        ("trailing$", "trailing$"),
        ("", ""),
    ],
)
def test_expansion_is_kubernetes(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
        {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}},
    ],
)
def test_what_it_cannot_resolve_is_refused_not_guessed(entry: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEnvError):
        env_of({"name": "c", "env": [entry]}, pod())
    with pytest.raises(UnsupportedEnvError, match="envFrom"):
        env_of({"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}, pod())


# --- what runs


def test_only_our_own_program_runs() -> None:
    assert runs_own_program(WAIT)
    assert not runs_own_program({"name": "c", "image": "agentcube-netpol:dev"})  # image only
    assert not runs_own_program({"name": "c", "command": ["sh", "-c", "agentcube-netpol"]})
    assert not runs_own_program({"name": "c", "command": ["/bin/agentcube-netpol"]})
    assert not runs_own_program({"name": "c", "args": ["agentcube-netpol"]})


def test_its_arguments_are_the_rest_of_command_then_args_expanded() -> None:
    container = {
        "name": "c",
        "command": ["agentcube-netpol", "check"],
        "args": ["$(FILE)", "$$(FILE)"],
    }
    assert own_program_args(container, {"FILE": "/x.yaml"}) == ["check", "/x.yaml", "$(FILE)"]


def test_names_that_change_how_a_program_loads_are_not_passed() -> None:
    environment, refused = process_env(
        {
            "NETPOL_ISOLATION_CANARY": "1",
            "PATH": "/tmp/evil",
            "LD_PRELOAD": "/tmp/evil.so",
            "PYTHONPATH": "/tmp/evil",
            "GCONV_PATH": "/tmp",
        }
    )
    assert environment == {"PATH": CONTAINER_PATH, "NETPOL_ISOLATION_CANARY": "1"}
    assert refused == ["GCONV_PATH", "LD_PRELOAD", "PATH", "PYTHONPATH"]


# --- statuses


def states(statuses: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (name, (detail or {}).get("reason", name))
        for status in statuses
        for name, detail in status["state"].items()
    ]


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_while_the_first_init_container_runs_the_pod_is_pending_with_its_ip() -> None:
    the_pod = pod()
    runs = [init_started(InitRun(), at=AT), InitRun()]
    statuses = [
        init_container_status(the_pod, c, r)
        for c, r in zip(the_pod["spec"]["initContainers"], runs, strict=True)
    ]
    status = initializing_status(
        the_pod,
        pod_ip="10.88.0.5",
        host_ip="10.89.0.1",
        at=AT,
        start_time="2026-01-02T03:04:00Z",
        init_statuses=statuses,
    )
    assert status["phase"] == "Pending"
    assert (status["podIP"], status["podIPs"]) == ("10.88.0.5", [{"ip": "10.88.0.5"}])
    assert (status["hostIP"], status["hostIPs"]) == ("10.89.0.1", [{"ip": "10.89.0.1"}])
    assert status["startTime"] == "2026-01-02T03:04:00Z"
    assert conditions(status) == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "False",
        "ContainersReady": "False",
        "Ready": "False",
    }
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["reason"] == "ContainersNotInitialized"
    assert (
        initialized["message"] == "containers with incomplete status: [netpol-wait-isolated setup]"
    )
    assert states(status["initContainerStatuses"]) == [
        ("running", "running"),
        ("waiting", "PodInitializing"),
    ]
    assert status["initContainerStatuses"][0]["started"] is True
    assert states(status["containerStatuses"]) == [("waiting", "PodInitializing")]
    assert status["containerStatuses"][0]["ready"] is False


def test_a_failed_init_container_backs_off_and_counts_a_restart() -> None:
    the_pod = pod()
    first = init_failed(
        init_started(InitRun(), at=AT),
        exit_code=2,
        output="error: no such file",
        at=LATER,
        restart=True,
        backoff_s=1,
        pod_name="tenant/py-1",
    )
    second = init_failed(
        init_started(first, at=LATER),
        exit_code=1,
        output="",
        at=LATER,
        restart=True,
        backoff_s=2,
        pod_name="tenant/py-1",
    )
    status = init_container_status(the_pod, WAIT, first)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["restartCount"] == 1
    assert status["ready"] is False
    assert status["lastState"]["terminated"] == {
        "exitCode": 2,
        "reason": "Error",
        "message": "error: no such file",
        "startedAt": "2026-01-02T03:04:05Z",
        "finishedAt": "2026-01-02T03:04:09Z",
        "containerID": "fake://u-1/netpol-wait-isolated",
    }
    assert init_container_status(the_pod, WAIT, second)["restartCount"] == 2
    assert init_container_status(the_pod, WAIT, second)["lastState"]["terminated"]["exitCode"] == 1


def test_with_restart_policy_never_a_failed_init_container_fails_the_pod() -> None:
    the_pod = pod()
    failed = init_failed(
        init_started(InitRun(), at=AT),
        exit_code=2,
        output="usage",
        at=LATER,
        restart=False,
        backoff_s=1,
    )
    statuses = [init_container_status(the_pod, WAIT, failed)]
    status = initializing_status(
        the_pod,
        pod_ip="10.88.0.5",
        host_ip="10.89.0.1",
        at=LATER,
        start_time="2026-01-02T03:04:00Z",
        init_statuses=statuses,
        failed=True,
    )
    assert status["phase"] == "Failed"
    assert conditions(status)["Ready"] == "False"
    assert conditions(status)["PodReadyToStartContainers"] == "False"
    terminated = status["initContainerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")
    assert status["initContainerStatuses"][0]["restartCount"] == 0


def test_a_config_error_waits_without_a_restart() -> None:
    status = init_container_status(pod(), WAIT, init_config_error(InitRun(), message="no"))
    assert status["state"] == {"waiting": {"reason": "CreateContainerConfigError", "message": "no"}}
    assert status["restartCount"] == 0


def test_running_keeps_the_completed_init_containers_and_is_not_rewritten() -> None:
    the_pod = pod()
    completed = [
        init_container_status(the_pod, c, init_completed(init_started(InitRun(), at=AT), at=LATER))
        for c in the_pod["spec"]["initContainers"]
    ]
    status = running_status(
        the_pod,
        pod_ip="10.88.0.5",
        host_ip="10.89.0.1",
        at=LATER,
        start_time="2026-01-02T03:04:00Z",
        init_statuses=completed,
    )
    assert status["phase"] == "Running"
    assert set(conditions(status).values()) == {"True"}
    assert status["initContainerStatuses"] == completed
    assert states(completed) == [("terminated", "Completed"), ("terminated", "Completed")]
    assert all(s["ready"] for s in completed)
    running = {**the_pod, "status": status}
    assert is_running_here(running, node_name="node", pod_ip="10.88.0.5")
    # Running, but an init container not reported completed: reported again.
    unfinished = {**status, "initContainerStatuses": completed[:1]}
    assert not is_running_here(
        {**the_pod, "status": unfinished}, node_name="node", pod_ip="10.88.0.5"
    )


def test_running_without_init_statuses_reports_them_completed_at_the_start() -> None:
    status = running_status(pod(), pod_ip="10.88.0.5", host_ip="10.89.0.1", at=AT)
    assert states(status["initContainerStatuses"]) == [
        ("terminated", "Completed"),
        ("terminated", "Completed"),
    ]
    plain = {"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "main"}]}}
    assert "initContainerStatuses" not in running_status(
        plain, pod_ip="10.88.0.5", host_ip="10.89.0.1", at=AT
    )
