"""The fake kubelet's init containers against a real kube-apiserver: what a user of the
harness sees of a pod while its init containers run, fail, or are cut short.

The network here hands out IPs from a CIDR and runs an init container's process on this
host (``command_prefix`` ``[]``): harmless, since only ``python -I -m webhook ...`` can run.
The init containers use real behaviours of the CLI: ``check FILE`` reads FILE (a FIFO
blocks it until the test writes; a ConfigMap is valid: exit 0), a missing file exits 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from agentcube_netpol_dev.controlplane import ControlPlane
from agentcube_netpol_dev.kubelet import CidrPodNetwork, FakeKubelet, pod_key

from tests.e2e import test_reconciler as reconciler_tests
from tests.e2e.harness import Kubectl, as_json

pytestmark = pytest.mark.e2e

LABEL = "agentcube-netpol-test"
NODE_NAME = "fake-kubelet-e2e"
NODE_IP = "10.89.0.2"
WAIT_S = 30.0
VALID = "kind: ConfigMap\n"  # not a kind `check` validates: skipped, exit 0
CHECKED = "0 objects checked: 0 valid, 0 invalid; 1 of other kinds not checked"


class HereNetwork(CidrPodNetwork):
    """IPs from a CIDR; an init container's process runs on this host; records when each
    pod's app containers start."""

    def __init__(self) -> None:
        super().__init__("10.87.0.0/24")
        self.started: list[tuple[str, str]] = []

    def command_prefix(self, pod: Mapping[str, Any]) -> list[str] | None:
        return []

    def containers_started(self, pod: Mapping[str, Any]) -> None:
        namespace, name, _ = pod_key(pod)
        self.started.append((namespace, name))


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    return reconciler_tests.eventually(check, what, timeout_s)


@contextlib.contextmanager
def fake_kubelet(control_plane: ControlPlane, selector: str) -> Iterator[FakeKubelet]:
    from kubernetes.client import CoreV1Api
    from kubernetes.config import new_client_from_config

    api_client = new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    try:
        with FakeKubelet(
            CoreV1Api(api_client),
            node_name=NODE_NAME,
            node_ip=NODE_IP,
            network=HereNetwork(),
            label_selector=selector,
        ) as kubelet:
            yield kubelet
    finally:
        api_client.close()


@pytest.fixture(scope="module")
def kubelet(control_plane: ControlPlane) -> Iterator[FakeKubelet]:
    with fake_kubelet(control_plane, f"{LABEL}=module") as fake:
        yield fake


def network(kubelet: FakeKubelet) -> HereNetwork:
    assert isinstance(kubelet.network, HereNetwork)
    return kubelet.network


def a_pod(
    namespace: str,
    name: str,
    *init: dict[str, Any],
    label: str = "module",
    restart_policy: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "python:3"}]}
    if init:
        spec["initContainers"] = list(init)
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: label}},
        "spec": spec,
    }


def check_container(*args: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "check",
        "image": "agentcube-netpol:dev",
        "command": ["agentcube-netpol", "check"],
        "args": list(args),
        **extra,
    }


def pod_of(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.get("pod", name, "-n", namespace)


def conditions(pod: Mapping[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}


def init_state(pod: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    statuses = pod["status"].get("initContainerStatuses") or []
    return dict(statuses[index]) if len(statuses) > index else {}


def running(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    pod = pod_of(kubectl, namespace, name)
    ready = pod["status"].get("phase") == "Running" and conditions(pod).get("Ready") == "True"
    return pod if ready else None


def release(fifo: Path, text: str) -> None:
    """Writes ``text`` to the FIFO an init container is blocked reading (once it reads)."""

    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    fd = eventually(opened, f"a reader of {fifo}")
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def processes_reading(path: Path) -> list[int]:
    """PIDs of processes on this host whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(path).encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def test_a_pod_is_pending_with_its_ip_while_its_init_container_runs_then_running(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    fifo = tmp_path / "gate.yaml"
    os.mkfifo(fifo)
    created = time.monotonic()
    kubectl.ok(
        "create", "-f", "-", input=as_json(a_pod(namespace, "held", check_container(str(fifo))))
    )

    def initializing() -> dict[str, Any] | None:
        pod = pod_of(kubectl, namespace, "held")
        return pod if "running" in init_state(pod).get("state", {}) else None

    pod = eventually(initializing, "the init container running")
    pid = kubelet.init_process(namespace, "held")
    print(f"init container running {time.monotonic() - created:.2f}s after the pod was created")
    status = pod["status"]
    assert status["phase"] == "Pending"
    assert status["podIP"].startswith("10.87.0.")
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == NODE_IP
    assert conditions(pod) == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "False",
        "ContainersReady": "False",
        "Ready": "False",
    }
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert (namespace, "held") not in network(kubelet).started
    assert pid is not None and processes_reading(fifo) == [pid]

    # More events for the pod while it initializes: still one process, the same one.
    for number in range(3):
        kubectl.ok(
            "annotate", "pod", "held", "-n", namespace, f"example.com/poke={number}", "--overwrite"
        )
    eventually(
        lambda: (
            pod_of(kubectl, namespace, "held")["metadata"]["annotations"].get("example.com/poke")
            == "2"
        ),
        "the last annotation",
    )
    assert processes_reading(fifo) == [pid]
    assert kubelet.init_process(namespace, "held") == pid
    assert pod_of(kubectl, namespace, "held")["status"]["phase"] == "Pending"

    released = time.monotonic()
    release(fifo, VALID)
    pod = eventually(lambda: running(kubectl, namespace, "held"), "the pod Running and Ready")
    print(f"pod Running {time.monotonic() - released:.2f}s after its init container was released")
    assert pod["status"]["podIP"] == status["podIP"]
    terminated = init_state(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert network(kubelet).started.count((namespace, "held")) == 1
    assert kubelet.init_log(namespace, "held", "check") == CHECKED
    assert processes_reading(fifo) == []


def test_a_failing_init_container_is_restarted_and_the_pod_never_ready(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    kubectl.ok(
        "create",
        "-f",
        "-",
        input=as_json(a_pod(namespace, "failing", check_container(str(missing)))),
    )

    def restarted_twice() -> dict[str, Any] | None:
        pod = pod_of(kubectl, namespace, "failing")
        return pod if init_state(pod).get("restartCount", 0) >= 2 else None

    pod = eventually(restarted_twice, "two restarts of the failing init container")
    status = init_state(pod)
    print(f"init container: restartCount {status['restartCount']}, state {status['state']}")
    assert status["ready"] is False
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (2, "Error")
    assert f"error: {missing}: no such file" in last["message"]
    assert pod["status"]["phase"] == "Pending"
    assert conditions(pod)["Ready"] == "False"
    assert (namespace, "failing") not in network(kubelet).started


def test_with_restart_policy_never_a_failing_init_container_fails_the_pod(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    kubectl.ok(
        "create",
        "-f",
        "-",
        input=as_json(
            a_pod(namespace, "once", check_container(str(missing)), restart_policy="Never")
        ),
    )
    pod = eventually(
        lambda: (p := pod_of(kubectl, namespace, "once"))["status"].get("phase") == "Failed" and p,
        "the pod Failed",
    )
    terminated = init_state(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")
    assert init_state(pod)["restartCount"] == 0
    assert conditions(pod)["Ready"] == "False"
    assert (namespace, "once") not in network(kubelet).started
    assert (namespace, "once") not in {key[:2] for key in network(kubelet).addresses()}


def test_the_env_an_init_container_sees_comes_from_the_pod_when_it_starts(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    """The file to check is named by an annotation the pod does not have when created:
    ``$(MANIFEST)`` is "", ``check DIR/.yaml`` finds no such file; once the annotation is
    added, the next start of the container reads DIR/manifest.yaml, and the pod runs."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(VALID, encoding="utf-8")
    env = [
        {
            "name": "MANIFEST",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['example.com/manifest']"}
            },
        }
    ]
    kubectl.ok(
        "create",
        "-f",
        "-",
        input=as_json(
            a_pod(namespace, "annotated", check_container(f"{tmp_path}/$(MANIFEST).yaml", env=env))
        ),
    )
    eventually(
        lambda: init_state(pod_of(kubectl, namespace, "annotated")).get("restartCount", 0) >= 1,
        "the init container failing without its annotation",
    )
    log = kubelet.init_log(namespace, "annotated", "check")
    assert f"error: {tmp_path}/.yaml: no such file" in log
    kubectl.ok("annotate", "pod", "annotated", "-n", namespace, "example.com/manifest=manifest")
    pod = eventually(lambda: running(kubectl, namespace, "annotated"), "the pod Running")
    assert init_state(pod)["state"]["terminated"]["exitCode"] == 0
    assert kubelet.init_log(namespace, "annotated", "check") == CHECKED


def test_a_pod_without_init_containers_runs_at_once(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet
) -> None:
    kubectl.ok("create", "-f", "-", input=as_json(a_pod(namespace, "plain")))
    pod = eventually(lambda: running(kubectl, namespace, "plain"), "the pod Running")
    assert "initContainerStatuses" not in pod["status"]
    assert set(conditions(pod).values()) == {"True"}
    assert network(kubelet).started.count((namespace, "plain")) == 1


def test_init_containers_of_other_images_complete_at_once_and_run_nothing(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    touched = tmp_path / "touched"
    image_only: list[dict[str, Any]] = [
        {"name": "setup", "image": "busybox", "command": ["touch", str(touched)]},
        {"name": "shell", "image": "busybox", "command": ["sh", "-c", f"touch {touched}"]},
        {"name": "plain", "image": "busybox"},
    ]
    kubectl.ok("create", "-f", "-", input=as_json(a_pod(namespace, "images", *image_only)))
    pod = eventually(lambda: running(kubectl, namespace, "images"), "the pod Running")
    assert [s["name"] for s in pod["status"]["initContainerStatuses"]] == [
        "setup",
        "shell",
        "plain",
    ]
    for status in pod["status"]["initContainerStatuses"]:
        terminated = status["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert not touched.exists()  # nothing of a pod's spec ran on this host


def test_a_pod_deleted_while_its_init_container_runs_leaves_no_process(
    kubectl: Kubectl, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    fifo = tmp_path / "never.yaml"
    os.mkfifo(fifo)
    kubectl.ok(
        "create", "-f", "-", input=as_json(a_pod(namespace, "doomed", check_container(str(fifo))))
    )
    pid = eventually(lambda: kubelet.init_process(namespace, "doomed"), "the init process")
    assert processes_reading(fifo) == [pid]
    deleted = time.monotonic()
    kubectl.ok("delete", "pod", "doomed", "-n", namespace, "--wait=false")
    eventually(
        lambda: kubectl("get", "pod", "doomed", "-n", namespace).returncode != 0, "the pod gone"
    )
    print(f"pod gone {time.monotonic() - deleted:.2f}s after its deletion")
    assert not Path(f"/proc/{pid}").exists()
    assert processes_reading(fifo) == []
    assert (namespace, "doomed") not in {key[:2] for key in network(kubelet).addresses()}
    assert (namespace, "doomed") not in network(kubelet).started


def test_stopping_the_kubelet_ends_its_init_processes(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    label = f"stop-{uuid.uuid4().hex[:6]}"
    fifo = tmp_path / "held.yaml"
    os.mkfifo(fifo)
    with fake_kubelet(control_plane, f"{LABEL}={label}") as kubelet:
        pod = a_pod(namespace, "held", check_container(str(fifo)), label=label)
        kubectl.ok("create", "-f", "-", input=as_json(pod))
        pid = eventually(lambda: kubelet.init_process(namespace, "held"), "the init process")
        assert processes_reading(fifo) == [pid]
        stopping = time.monotonic()
    print(f"kubelet stopped in {time.monotonic() - stopping:.2f}s")
    assert not Path(f"/proc/{pid}").exists()
    assert processes_reading(fifo) == []
