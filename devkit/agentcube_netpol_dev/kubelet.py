"""A fake kubelet (and scheduler) for the test control plane: pods get a node, an IP, and Ready.

No kubelet runs on the test control plane, so a pod would stay Pending forever, and the
agent-sandbox controller only reports a Sandbox Ready (and its warm pool only counts it) once
its pod is Running and Ready with a pod IP. ``FakeKubelet`` plays both parts a node would:

- it registers a Node (``agentcube-netpol-node`` by default, ``InternalIP`` given, Ready);
- the scheduler's part: a pod with no ``spec.nodeName`` and no ``spec.schedulingGates`` is
  bound to that node through the ``pods/binding`` subresource. A pod with scheduling gates
  stays Pending and unbound, as it does with a real scheduler, until its gates are lifted;
- the kubelet's part: a bound pod gets a pod IP from ``PodNetwork``, ``hostIP`` = the node's
  IP, ``startTime``; then status Running, conditions PodScheduled, Initialized,
  PodReadyToStartContainers, ContainersReady and Ready True, and a ready, running status
  for each container;
- a pod with ``spec.initContainers`` first gets status Pending with its IP (as a real
  kubelet reports it while init containers run: a NetworkPolicy implementation programs
  the pod's rules from then on; with ``status_lag_s``, that long after its first init
  container started, as a real kubelet's next sync does), Initialized False,
  ``initContainerStatuses`` and containers waiting ``PodInitializing``; its init containers run one after another, in a
  thread of the pod's own (the watch goes on). The fake kubelet runs no images: only this
  project's own program, a container whose ``command[0]`` is ``agentcube-netpol``, runs,
  as ``python -I -m webhook <command[1:]> <args>`` (``$(VAR)`` expanded as Kubernetes
  does), inside the pod's network (``PodNetwork.command_prefix``), with the container's
  ``env`` resolved from the pod as the API server has it when the container starts
  (``value``; ``valueFrom.fieldRef`` of ``metadata.name``, ``namespace``, ``uid``,
  ``annotations['k']``, ``labels['k']``, ``spec.nodeName``, ``spec.serviceAccountName``,
  ``status.podIP``, ``status.hostIP``; anything else: ``CreateContainerConfigError``). Names
  that change how a program is loaded (``PATH``, ``LD_*``, ``PYTHON*``, glibc's unsecure
  ones) are not passed. Any other init container, and every one on a network that cannot
  run processes (``command_prefix`` None), completes at once with exit code 0. Exit 0:
  the next one. Another exit code: ``CrashLoopBackOff`` with ``lastState`` terminated
  (``Error``, the output's last lines as message), ``restartCount`` + 1, run again after
  a back-off (1 s, doubling, at most 10 s); with ``restartPolicy: Never`` the pod is
  Failed (and its network released). Once all completed, the app containers "start"
  (``PodNetwork.containers_started``) and the pod is reported Running as above, its
  ``initContainerStatuses`` terminated ``Completed``;
- a pod without init containers "starts" its containers (``containers_started``) right
  after its network is attached, before it is reported Running;
- a pod being deleted (``deletionTimestamp`` set) has its init process stopped (by PID),
  its network released, and is deleted with grace period 0, which is what a kubelet does
  once the containers have stopped.

Why only our own program: whoever may create a pod on the test cluster would otherwise run
any command as this process's user (root in the dataplane tier); ``python -I`` ignores
``PYTHON*`` variables and the working directory, so ``-m webhook`` is this checkout's.

Pod IPs come from a ``PodNetwork``: here ``CidrPodNetwork`` hands out unique addresses of a
CIDR; a network that makes real network namespaces can take its place. A new ``FakeKubelet``
starts from a fresh network: a running pod it finds with an IP its network did not give is
reported again with one that it did, so IPs stay unique among the pods it runs.

It follows pods with a list, then a watch resumed from the last resourceVersion (relisting on
410 Gone), in one daemon thread that ``stop()`` ends at once, with every init process (by
PID) and thread. Each pod is handled from what the watch delivered, so every write is
idempotent: a pod already as it should be is not written again, a pod whose init
containers run is not started twice.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Literal, Protocol, Self

import orjson
from kubernetes.client import (
    ApiException,
    V1Binding,
    V1DeleteOptions,
    V1Node,
    V1NodeAddress,
    V1NodeStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Preconditions,
)

from agentcube_netpol_dev.controlplane import stop_process_group

logger = logging.getLogger(__name__)

DEFAULT_NODE_NAME = "agentcube-netpol-node"
# Addresses only written into objects, never routed or reached: nothing sends traffic there.
DEFAULT_NODE_IP = "10.89.0.1"
DEFAULT_POD_CIDR = "10.88.0.0/16"
FIELD_MANAGER = "agentcube-netpol-fake-kubelet"
MERGE_PATCH = "application/merge-patch+json"
WATCH_TIMEOUT_S = 300
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
READ_CHUNK_BYTES = 64 * 1024
STOP_JOIN_TIMEOUT_S = 5.0
START_TIMEOUT_S = 30.0
PROBLEMS_KEPT = 20
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
HTTP_GONE = 410
# Init containers: only this project's own program runs (see the module docstring).
OWN_PROGRAM = "agentcube-netpol"
INIT_BACKOFF_INITIAL_S = 1.0
INIT_BACKOFF_MAX_S = 10.0
INIT_POLL_S = 0.05
INIT_STOP_GRACE_S = 5.0
LOG_TAIL_BYTES = 8 * 1024
LOG_TAIL_LINES = 20
START_ERROR_EXIT_CODE = 128  # what a kubelet reports for a container that could not start
# A container's PATH (the host's is not a pod's to choose: it decides which `ip` runs).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables that change how a program is loaded or where it reads code from: never passed
# from a pod's spec (glibc's unsecure list, and Python's).
REFUSED_ENV_PREFIXES = ("LD_", "PYTHON")
REFUSED_ENV_NAMES = frozenset(
    {
        "PATH",
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    }
)
SUBSCRIPTED_FIELD = re.compile(r"^metadata\.(annotations|labels)\['(.*)'\]$")
READY_CONDITIONS = (
    "PodScheduled",
    "Initialized",
    "PodReadyToStartContainers",
    "ContainersReady",
    "Ready",
)

PodKey = tuple[str, str, str]  # (namespace, name, uid)


class PodNetwork(Protocol):
    """Gives a pod its IP address, and takes it back when the pod goes."""

    def attach(self, pod: Mapping[str, Any]) -> str:
        """The pod's IP; the same one again for the same pod (namespace, name, uid)."""
        ...

    def detach(self, pod: Mapping[str, Any]) -> None:
        """Releases what ``attach`` gave the pod; a pod never attached is ignored."""
        ...

    def command_prefix(self, pod: Mapping[str, Any]) -> list[str] | None:
        """What runs a command inside the attached pod's network (``[]``: this process's
        own); None: this network runs no processes (init containers complete at once)."""
        ...

    def containers_started(self, pod: Mapping[str, Any]) -> None:
        """The attached pod's app containers start: after its init containers, before it is
        reported Running. Called once per pod."""
        ...


def pod_key(pod: Mapping[str, Any]) -> PodKey:
    metadata = pod.get("metadata") or {}
    return (
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
        str(metadata.get("uid", "")),
    )


class CidrPodNetwork:
    """Unique addresses from a CIDR, lowest free first; released addresses are reused last
    (a fresh pod does not get the IP of a pod that just went)."""

    def __init__(self, cidr: str = DEFAULT_POD_CIDR, *, exclude: tuple[str, ...] = ()) -> None:
        self.network = ipaddress.ip_network(cidr)
        self._excluded = {ipaddress.ip_address(address) for address in exclude}
        self._hosts = self.network.hosts()
        self._released: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        self._by_pod: dict[PodKey, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._lock = threading.Lock()

    def attach(self, pod: Mapping[str, Any]) -> str:
        key = pod_key(pod)
        with self._lock:
            address = self._by_pod.get(key)
            if address is None:
                address = self._next_free()
                self._by_pod[key] = address
            return str(address)

    def _next_free(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        for address in self._hosts:
            if address not in self._excluded:
                return address
        if self._released:
            return self._released.pop(0)
        raise RuntimeError(f"no free pod IP left in {self.network}")

    def detach(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            address = self._by_pod.pop(pod_key(pod), None)
            if address is not None:
                self._released.append(address)

    def addresses(self) -> dict[PodKey, str]:
        with self._lock:
            return {key: str(address) for key, address in self._by_pod.items()}

    def command_prefix(self, pod: Mapping[str, Any]) -> list[str] | None:
        return None  # addresses only: no network to run a process in

    def containers_started(self, pod: Mapping[str, Any]) -> None:
        pass


# --- what a pod needs (pure) ----------------------------------------------------------------


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_gated(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("schedulingGates"))


def is_deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def init_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get("initContainers") or [])


def restart_policy(pod: Mapping[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("restartPolicy") or "Always")


def _init_completed(pod: Mapping[str, Any]) -> bool:
    """Every init container of the spec reported terminated with exit code 0."""
    names = [str(c.get("name", "")) for c in init_containers(pod)]
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    if [s.get("name") for s in statuses] != names:
        return False
    return all(
        ((s.get("state") or {}).get("terminated") or {}).get("exitCode") == 0 for s in statuses
    )


def is_running_here(pod: Mapping[str, Any], *, node_name: str, pod_ip: str) -> bool:
    """Already as the kubelet leaves it: on this node, Running, Ready, with that IP, and its
    init containers (if any) reported completed."""
    status = pod.get("status") or {}
    if (pod.get("spec") or {}).get("nodeName") != node_name or status.get("phase") != "Running":
        return False
    if status.get("podIP") != pod_ip:
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if not all(conditions.get(kind) == "True" for kind in READY_CONDITIONS):
        return False
    return not init_containers(pod) or _init_completed(pod)


def container_id(pod: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    return f"fake://{pod_key(pod)[2]}/{container.get('name', '')}"


def _addresses(pod_ip: str, host_ip: str) -> dict[str, Any]:
    return {
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
    }


def running_status(
    pod: Mapping[str, Any],
    *,
    pod_ip: str,
    host_ip: str,
    at: datetime,
    start_time: str | None = None,
    init_statuses: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status a kubelet reports for a pod whose containers all run and pass readiness;
    its init containers (``init_statuses``, as they completed; by default as the pod reports
    them, or completed at its start) terminated ``Completed``."""
    now = _rfc3339(at)
    spec = pod.get("spec") or {}
    old = pod.get("status") or {}
    start_time = start_time or old.get("startTime") or now
    container_statuses = [
        {
            "name": container.get("name", ""),
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": container_id(pod, container),
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": start_time}},
        }
        for container in spec.get("containers") or []
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [
            {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for kind in READY_CONDITIONS
        ],
        **_addresses(pod_ip, host_ip),
        "startTime": start_time,
        "containerStatuses": container_statuses,
    }
    if init_containers(pod):
        if init_statuses is None:
            init_statuses = (
                old.get("initContainerStatuses")
                if _init_completed(pod)
                else [
                    init_container_status(
                        pod,
                        container,
                        InitRun(
                            state="terminated",
                            reason="Completed",
                            started_at=start_time,
                            finished_at=start_time,
                        ),
                    )
                    for container in init_containers(pod)
                ]
            )
        status["initContainerStatuses"] = list(init_statuses or [])
    return status


@dataclass(frozen=True)
class InitRun:
    """Where one init container is. ``waiting``: not started yet (``PodInitializing``), or
    backing off after a failure (``CrashLoopBackOff``) or a spec it cannot run
    (``CreateContainerConfigError``); ``running``; ``terminated``: ``Completed`` (exit 0),
    or ``Error`` / ``StartError`` when the pod's restartPolicy is Never. ``last``: the
    previous run's ``lastState.terminated``."""

    state: Literal["waiting", "running", "terminated"] = "waiting"
    reason: str = "PodInitializing"
    message: str = ""
    exit_code: int = 0
    started_at: str = ""
    finished_at: str = ""
    restart_count: int = 0
    last: Mapping[str, Any] | None = None


def init_started(run: InitRun, *, at: datetime) -> InitRun:
    return replace(run, state="running", reason="", message="", started_at=_rfc3339(at))


def init_completed(run: InitRun, *, at: datetime) -> InitRun:
    """Exit code 0 (or a container that runs nothing here: completed at once)."""
    now = _rfc3339(at)
    return replace(
        run,
        state="terminated",
        reason="Completed",
        message="",
        exit_code=0,
        started_at=run.started_at or now,
        finished_at=now,
    )


def init_failed(
    run: InitRun,
    *,
    exit_code: int,
    output: str,
    at: datetime,
    restart: bool,
    backoff_s: float,
    pod_name: str = "",
    reason: str = "Error",
) -> InitRun:
    """A non-zero exit (or a start that failed: ``StartError``). ``restart``: waiting
    ``CrashLoopBackOff`` until it runs again, restartCount + 1, this run in ``last``;
    otherwise terminated for good."""
    now = _rfc3339(at)
    terminated = {
        "exitCode": exit_code,
        "reason": reason,
        "message": output,
        "startedAt": run.started_at or now,
        "finishedAt": now,
    }
    if not restart:
        return replace(
            run,
            state="terminated",
            reason=reason,
            message=output,
            exit_code=exit_code,
            started_at=run.started_at or now,
            finished_at=now,
        )
    return InitRun(
        state="waiting",
        reason="CrashLoopBackOff",
        message=f"back-off {backoff_s:g}s restarting failed container of pod {pod_name}",
        restart_count=run.restart_count + 1,
        last=terminated,
    )


def init_config_error(run: InitRun, *, message: str) -> InitRun:
    """A container this kubelet cannot start as specified (it retries: no restart)."""
    return replace(run, state="waiting", reason="CreateContainerConfigError", message=message)


def init_container_status(
    pod: Mapping[str, Any], container: Mapping[str, Any], run: InitRun
) -> dict[str, Any]:
    """One entry of ``status.initContainerStatuses``."""
    if run.state == "running":
        state: dict[str, Any] = {"running": {"startedAt": run.started_at}}
    elif run.state == "terminated":
        state = {
            "terminated": {
                "exitCode": run.exit_code,
                "reason": run.reason,
                "startedAt": run.started_at,
                "finishedAt": run.finished_at,
                "containerID": container_id(pod, container),
                **({"message": run.message} if run.message else {}),
            }
        }
    else:
        state = {
            "waiting": {"reason": run.reason, **({"message": run.message} if run.message else {})}
        }
    status: dict[str, Any] = {
        "name": container.get("name", ""),
        "image": container.get("image", ""),
        "imageID": "",
        "ready": run.state == "terminated" and run.exit_code == 0,
        "started": run.state == "running",
        "restartCount": run.restart_count,
        "state": state,
    }
    if run.state != "waiting" or run.last is not None:
        status["containerID"] = container_id(pod, container)
    if run.last is not None:
        status["lastState"] = {
            "terminated": {**run.last, "containerID": container_id(pod, container)}
        }
    return status


def initializing_status(
    pod: Mapping[str, Any],
    *,
    pod_ip: str,
    host_ip: str,
    at: datetime,
    start_time: str,
    init_statuses: Sequence[Mapping[str, Any]],
    failed: bool = False,
) -> dict[str, Any]:
    """The status of a pod whose init containers run (phase Pending, its IP reported), or,
    ``failed``, of one whose init container failed under ``restartPolicy: Never``."""
    now = _rfc3339(at)
    incomplete = [
        str(s.get("name", ""))
        for s in init_statuses
        if ((s.get("state") or {}).get("terminated") or {}).get("exitCode") != 0
    ]
    containers = [str(c.get("name", "")) for c in (pod.get("spec") or {}).get("containers") or []]
    not_ready = f"containers with unready status: [{' '.join(containers)}]"

    def condition(kind: str, value: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if value else "False",
            "lastProbeTime": None,
            "lastTransitionTime": now,
            **({"reason": reason} if reason else {}),
            **({"message": message} if message else {}),
        }

    return {
        "phase": "Failed" if failed else "Pending",
        "conditions": [
            condition("PodScheduled", True),
            condition("PodReadyToStartContainers", not failed),
            condition(
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            condition("ContainersReady", False, "ContainersNotReady", not_ready),
            condition("Ready", False, "ContainersNotReady", not_ready),
        ],
        **_addresses(pod_ip, host_ip),
        "startTime": start_time,
        "initContainerStatuses": list(init_statuses),
        "containerStatuses": [
            {
                "name": container.get("name", ""),
                "image": container.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}},
            }
            for container in (pod.get("spec") or {}).get("containers") or []
        ],
    }


# --- what an init container runs (pure) ----------------------------------------------------


class UnsupportedEnvError(ValueError):
    """An env entry this kubelet cannot resolve (a Secret, a ConfigMap, a resource...)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable's value; an undefined reference
    stays as written; ``$$`` is one ``$``."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "$" and index + 1 < len(text):
            following = text[index + 1]
            if following == "$":
                out.append("$")
                index += 2
                continue
            if following == "(":
                end = text.find(")", index + 2)
                if end != -1:
                    name = text[index + 2 : end]
                    out.append(env[name] if name in env else text[index : end + 1])
                    index = end + 1
                    continue
        out.append(char)
        index += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    """A ``fieldRef.fieldPath`` of ``pod``; a missing annotation or label is ``""``."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    subscripted = SUBSCRIPTED_FIELD.match(path)
    if subscripted:
        kind, key = subscripted.groups()
        return str((metadata.get(kind) or {}).get(key, ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    if path not in simple:
        raise UnsupportedEnvError(f"fieldPath {path!r} is not one the fake kubelet resolves")
    return str(simple[path] or "")


def container_env(
    container: Mapping[str, Any], pod: Mapping[str, Any], *, pod_ip: str, host_ip: str
) -> dict[str, str]:
    """The container's environment as a kubelet gives it: ``value`` (``$(VAR)`` of an
    earlier entry expanded) and ``valueFrom.fieldRef`` of ``pod``."""
    if container.get("envFrom"):
        raise UnsupportedEnvError("envFrom is not something the fake kubelet resolves")
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = str(entry.get("name", ""))
        source = entry.get("valueFrom")
        if source:
            ref = source.get("fieldRef")
            if not ref:
                raise UnsupportedEnvError(
                    f"env {name}: valueFrom {', '.join(sorted(source))} is not something the "
                    "fake kubelet resolves (only fieldRef)"
                )
            env[name] = field_value(
                pod, str(ref.get("fieldPath", "")), pod_ip=pod_ip, host_ip=host_ip
            )
        else:
            env[name] = expand(str(entry.get("value", "")), env)
    return env


def runs_own_program(container: Mapping[str, Any]) -> bool:
    command = container.get("command") or []
    return bool(command) and command[0] == OWN_PROGRAM


def own_program_args(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """What follows ``agentcube-netpol``: the rest of ``command``, then ``args``, expanded."""
    command = list(container.get("command") or [])[1:]
    args = list(container.get("args") or [])
    return [expand(str(arg), env) for arg in [*command, *args]]


def process_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment a process gets (a container's PATH, the names it may set) and the
    names refused."""
    refused = sorted(
        name for name in env if name in REFUSED_ENV_NAMES or name.startswith(REFUSED_ENV_PREFIXES)
    )
    allowed = {name: value for name, value in env.items() if name not in refused}
    return {"PATH": CONTAINER_PATH, **allowed}, refused


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_tail(output: IO[bytes]) -> str:
    size = output.seek(0, 2)
    output.seek(max(0, size - LOG_TAIL_BYTES))
    return tail(output.read().decode("utf-8", errors="replace"))


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A streamed watch body, one JSON event a line."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class WatchExpiredError(Exception):
    """The resourceVersion the watch resumes from is gone: relist."""


# --- the kubelet ------------------------------------------------------------------------------

INITIALIZING = "initializing"
STARTED = "started"
FAILED = "failed"


@dataclass
class _PodRun:
    """What this kubelet does for one pod: its init containers, run by ``thread``, then its
    containers started. ``deleting``: the pod goes; the thread stops its process and
    finishes the deletion."""

    pod: Mapping[str, Any]
    phase: str
    cancel: threading.Event = field(default_factory=threading.Event)
    deleting: bool = False
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    start_time: str = ""
    init_statuses: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)


class FakeKubelet:
    """The node, the scheduler's binding and the kubelet's status, for every pod it may see."""

    def __init__(
        self,
        core_v1: Any,
        *,
        node_name: str = DEFAULT_NODE_NAME,
        node_ip: str = DEFAULT_NODE_IP,
        network: PodNetwork | None = None,
        label_selector: str | None = None,
        status_lag_s: float = 0.0,
    ) -> None:
        """``core_v1``: a ``kubernetes.client.CoreV1Api`` allowed to create nodes and to get,
        list, watch, bind, delete pods and patch their status. ``label_selector`` limits which
        pods it runs (a real kubelet runs every pod bound to its node).

        ``status_lag_s``: how long after a pod's first init container starts the kubelet
        reports its status (and with it the pod's IP). A real kubelet starts the containers
        in the sync that creates the pod's sandbox and reports the IP at its next sync (PLEG
        relists every second), so a NetworkPolicy implementation that finds pods by their
        reported IP programs them only after their first container started."""
        self._api = core_v1
        self.node_name = node_name
        self.node_ip = node_ip
        self.network: PodNetwork = network or CidrPodNetwork(exclude=(node_ip,))
        self.label_selector = label_selector
        self.status_lag_s = status_lag_s
        self._resource_version = ""
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self._lock = threading.Lock()
        self._runs: dict[PodKey, _PodRun] = {}
        # The latest failures (API errors are retried on the pod's next event), for messages.
        self.problems: deque[str] = deque(maxlen=PROBLEMS_KEPT)

    def __enter__(self) -> Self:
        self.start()
        if not self.wait_synced(START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"fake kubelet: no pod list after {START_TIMEOUT_S:.0f}s")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def start(self) -> None:
        self.register_node()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The watch, then every init container's process (by PID) and thread."""
        self._stopping.set()
        response = self._response
        if response is not None:
            shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3: unblocks a read
            if callable(shutdown):
                shutdown()
            else:
                response.close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_JOIN_TIMEOUT_S)
            self._thread = None
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel.set()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=INIT_STOP_GRACE_S + STOP_JOIN_TIMEOUT_S)

    def init_process(self, namespace: str, name: str) -> int | None:
        """The PID of the init container process running for that pod now, if any."""
        run = self._run_of(namespace, name)
        process = run.process if run is not None else None
        return process.pid if process is not None else None

    def init_log(self, namespace: str, name: str, container: str) -> str:
        """The last lines that init container printed, in its latest run that ended."""
        run = self._run_of(namespace, name)
        return run.logs.get(container, "") if run is not None else ""

    def _run_of(self, namespace: str, name: str) -> _PodRun | None:
        with self._lock:
            for (pod_namespace, pod_name, _), run in self._runs.items():
                if (pod_namespace, pod_name) == (namespace, name):
                    return run
        return None

    # -- the node

    def register_node(self) -> None:
        """Creates the Node if it is not there, and reports it Ready."""
        node = V1Node(
            metadata=V1ObjectMeta(
                name=self.node_name,
                labels={
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                },
            ),
            status=V1NodeStatus(addresses=[V1NodeAddress(type="InternalIP", address=self.node_ip)]),
        )
        try:
            self._api.create_node(node, field_manager=FIELD_MANAGER)
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                raise
        now = _rfc3339(datetime.now(UTC))
        self._api.patch_node_status(
            self.node_name,
            {
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": self.node_ip},
                        {"type": "Hostname", "address": self.node_name},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "fake kubelet is posting ready status",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
                }
            },
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    # -- one pod

    def handle(self, pod: Mapping[str, Any]) -> None:
        """Brings one pod one step on: deleted, bound, or reported running. Idempotent."""
        key = pod_key(pod)
        namespace, name, uid = key
        node_name = (pod.get("spec") or {}).get("nodeName")
        if is_deleting(pod):
            if node_name in (None, "", self.node_name) and not self._handed_to_init(key):
                self.network.detach(pod)
                self._delete(namespace, name, uid)
            return
        if node_name and node_name != self.node_name:
            return  # another node's pod
        if not node_name:
            if is_gated(pod):
                return  # the scheduler leaves gated pods alone
            self._bind(namespace, name, uid)
            return  # the binding's MODIFIED event brings it back, bound
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self._lock:
            run = self._runs.get(key)
        if run is not None and run.phase != STARTED:
            return  # its init containers' thread reports it (or it failed)
        pod_ip = self.network.attach(pod)
        if run is None:
            run = self._first_seen(pod, pod_ip)
            if run is None or run.phase != STARTED:
                return
            self.network.containers_started(pod)
        if is_running_here(pod, node_name=self.node_name, pod_ip=pod_ip):
            return
        self._report_running(pod, run, pod_ip)

    def _first_seen(self, pod: Mapping[str, Any], pod_ip: str) -> _PodRun | None:
        """A pod this kubelet has not run yet: its init containers' thread started, or (none,
        or already reported running here) its containers to start now."""
        key = pod_key(pod)
        initializing = bool(init_containers(pod)) and not is_running_here(
            pod, node_name=self.node_name, pod_ip=pod_ip
        )
        start_time = (pod.get("status") or {}).get("startTime") or _rfc3339(datetime.now(UTC))
        run = _PodRun(
            pod=pod, phase=INITIALIZING if initializing else STARTED, start_time=start_time
        )
        with self._lock:
            if self._stopping.is_set():
                return None
            self._runs[key] = run
            if initializing:
                run.thread = threading.Thread(
                    target=self._initialize,
                    args=(run, pod_ip),
                    name=f"fake-kubelet-init-{key[0]}/{key[1]}",
                    daemon=True,
                )
                run.thread.start()
        return run

    def _handed_to_init(self, key: PodKey) -> bool:
        """The pod goes: its init thread (if it runs) stops its process and finishes the
        deletion; True when it does."""
        with self._lock:
            run = self._runs.get(key)
            if run is not None and run.phase == INITIALIZING:
                run.deleting = True
                run.cancel.set()
                return True
            self._runs.pop(key, None)
            return False

    def _report_running(self, pod: Mapping[str, Any], run: _PodRun, pod_ip: str) -> None:
        namespace, name, _ = pod_key(pod)
        status = running_status(
            pod,
            pod_ip=pod_ip,
            host_ip=self.node_ip,
            at=datetime.now(UTC),
            start_time=run.start_time,
            init_statuses=run.init_statuses or None,
        )
        self._patch_status(pod, status)
        logger.debug("pod %s/%s running with IP %s", namespace, name, pod_ip)

    def _patch_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        namespace, name, uid = pod_key(pod)
        self._api.patch_namespaced_pod_status(
            name,
            namespace,
            {"metadata": {"uid": uid}, "status": status},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    # -- init containers (one thread a pod)

    def _initialize(self, run: _PodRun, pod_ip: str) -> None:
        pod = run.pod
        namespace, name, uid = pod_key(pod)
        try:
            outcome = self._run_init_containers(run, pod_ip)
        except Exception as exc:  # reported; the pod stays Pending until deleted
            self.problems.append(f"pod {namespace}/{name}: init containers: {exc!r}")
            logger.warning("fake kubelet: pod %s/%s init: %r", namespace, name, exc, exc_info=True)
            outcome = "error"
        if outcome == STARTED:
            try:
                self.network.containers_started(pod)
            except Exception as exc:
                self.problems.append(f"pod {namespace}/{name}: containers start: {exc!r}")
                logger.warning("fake kubelet: pod %s/%s start: %r", namespace, name, exc)
        with self._lock:
            deleting = run.deleting or outcome == "deleted"
            if deleting:
                self._runs.pop(pod_key(pod), None)
            elif outcome == STARTED:
                run.phase = STARTED
            elif outcome in (FAILED, "error"):
                run.phase = FAILED  # no more events handled for it but its deletion
        if deleting:
            self.network.detach(pod)
            self._quietly(pod, lambda: self._delete(namespace, name, uid))
        elif outcome == STARTED:
            self._quietly(pod, lambda: self._report_running(pod, run, pod_ip))
        elif outcome == FAILED:
            self.network.detach(pod)  # the pod's sandbox goes with it

    def _run_init_containers(self, run: _PodRun, pod_ip: str) -> str:
        """STARTED once all completed, FAILED (restartPolicy Never), "deleted" (the pod
        went) or "stopped" (the kubelet stops)."""
        return _InitContainers(self, run, pod_ip).run()

    def _run_process(
        self, run: _PodRun, argv: list[str], env: Mapping[str, str]
    ) -> tuple[int | None, str]:
        """Its exit code and last lines of output; None when stopped first (``run.cancel``).
        Its process group is ended, by PID, whatever happens."""
        environment, refused = process_env(env)
        if refused:
            logger.warning("fake kubelet: not passing %s to an init container", ", ".join(refused))
        executable = shutil.which(argv[0])
        if executable is None:
            raise OSError(f"{argv[0]}: not found")
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                [executable, *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd="/",
                start_new_session=True,
            )
            with self._lock:
                run.process = process
            try:
                exit_code: int | None = None
                while exit_code is None and not run.cancel.is_set():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        exit_code = process.wait(timeout=INIT_POLL_S)
            finally:
                stop_process_group(
                    process, name=f"init process {process.pid}", grace_s=INIT_STOP_GRACE_S
                )
                with self._lock:
                    run.process = None
            return exit_code, _read_tail(output)

    def _fresh(self, run: _PodRun) -> Mapping[str, Any] | None:
        """The pod as the API server has it now; None when it is gone (or another pod, or
        being deleted), or when ``run.cancel`` is set first."""
        namespace, name, uid = pod_key(run.pod)
        while not run.cancel.is_set():
            try:
                response = self._api.read_namespaced_pod(name, namespace, _preload_content=False)
                try:
                    fresh: Mapping[str, Any] = orjson.loads(response.data)
                finally:
                    response.release_conn()
            except ApiException as exc:
                if exc.status == HTTP_NOT_FOUND:
                    return None
                self.problems.append(f"pod {namespace}/{name}: {exc.status} {exc.reason}")
                run.cancel.wait(BACKOFF_MAX_S)
                continue
            if pod_key(fresh)[2] != uid or is_deleting(fresh):
                return None
            return fresh
        return None

    def _quietly(self, pod: Mapping[str, Any], call: Callable[[], object]) -> None:
        """An API call whose failure is reported, not raised (the next transition retries)."""
        try:
            call()
        except ApiException as exc:
            namespace, name, _ = pod_key(pod)
            self.problems.append(f"pod {namespace}/{name}: {exc.status} {exc.reason}")
            logger.info("fake kubelet: pod %s/%s: %s %s", namespace, name, exc.status, exc.reason)

    def _bind(self, namespace: str, name: str, uid: str) -> None:
        binding = V1Binding(
            metadata=V1ObjectMeta(name=name, namespace=namespace, uid=uid),
            target=V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
        )
        # The server answers with a Status, not a Binding: not deserialized.
        self._api.create_namespaced_pod_binding(
            name, namespace, binding, field_manager=FIELD_MANAGER, _preload_content=False
        ).release_conn()
        logger.debug("pod %s/%s bound to %s", namespace, name, self.node_name)

    def _delete(self, namespace: str, name: str, uid: str) -> None:
        try:
            self._api.delete_namespaced_pod(
                name,
                namespace,
                body=V1DeleteOptions(
                    grace_period_seconds=0, preconditions=V1Preconditions(uid=uid)
                ),
                _preload_content=False,
            ).release_conn()
        except ApiException as exc:
            if exc.status not in (HTTP_NOT_FOUND, HTTP_CONFLICT):  # gone, or another pod now
                raise

    def _handle_logged(self, pod: Mapping[str, Any]) -> None:
        try:
            self.handle(pod)
        except ApiException as exc:
            # A conflict or a pod gone meanwhile: the next event for it brings it back.
            namespace, name, _ = pod_key(pod)
            self.problems.append(f"pod {namespace}/{name}: {exc.status} {exc.reason}")
            logger.info("fake kubelet: pod %s/%s: %s %s", namespace, name, exc.status, exc.reason)

    # -- list and watch

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        relist = True
        while not self._stopping.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                self._watch()
                backoff = BACKOFF_INITIAL_S
            except WatchExpiredError:
                relist = True
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self.problems.append(f"watch: {exc!r}")
                logger.warning(
                    "fake kubelet watch failed: %r; retrying in %.1fs", exc, backoff, exc_info=True
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> None:
        response = self._api.list_pod_for_all_namespaces(
            label_selector=self.label_selector, _preload_content=False
        )
        try:
            pod_list = orjson.loads(response.data)
        finally:
            response.release_conn()
        self._resource_version = str(pod_list["metadata"]["resourceVersion"])
        for pod in pod_list.get("items") or []:
            self._handle_logged(pod)
        self._synced.set()

    def _watch(self) -> None:
        try:
            self._response = self._api.list_pod_for_all_namespaces(
                label_selector=self.label_selector,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=self._resource_version,
                timeout_seconds=WATCH_TIMEOUT_S,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == HTTP_GONE:
                raise WatchExpiredError(str(exc.reason)) from None
            raise
        try:
            for line in lines(self._response.stream(READ_CHUNK_BYTES)):
                if self._stopping.is_set():
                    return
                self._apply(orjson.loads(line))
        finally:
            self._response.release_conn()
            self._response = None

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise WatchExpiredError(str(obj.get("message", "resource version expired")))
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if kind in ("ADDED", "MODIFIED"):
            self._handle_logged(obj)
        elif kind == "DELETED" and not self._handed_to_init(pod_key(obj)):
            self.network.detach(obj)


class _InitContainers:
    """One pod's init containers, in order, as the kubelet runs them: each until it exits
    0, restarted with backoff (or, restartPolicy Never, the pod fails at the first error);
    the pod's status reported as they go."""

    def __init__(self, kubelet: FakeKubelet, run: _PodRun, pod_ip: str) -> None:
        self._kubelet = kubelet
        self._run = run
        self._pod_ip = pod_ip
        self._containers = init_containers(run.pod)
        self._runs = [InitRun() for _ in self._containers]
        self._restart = restart_policy(run.pod) != "Never"
        # The first report waits for the first process (and lags), as a kubelet's does.
        self._lag_s = kubelet.status_lag_s

    def run(self) -> str:
        if self._lag_s <= 0:
            self._report()
        for index, container in enumerate(self._containers):
            end = self._until_completed(index, container)
            if end is not None:
                return end
        self._run.init_statuses = self._statuses()
        return STARTED

    def _until_completed(self, index: int, container: Mapping[str, Any]) -> str | None:
        """None once the container completed; else how the pod's run ended."""
        backoff = INIT_BACKOFF_INITIAL_S
        while True:
            if (end := self._ended()) is not None:
                return end
            fresh = self._kubelet._fresh(self._run)
            if (end := self._ended()) is not None:
                return end
            if fresh is None:
                return "deleted"
            network = self._kubelet.network
            prefix = network.command_prefix(fresh) if runs_own_program(container) else None
            if prefix is None:  # an image, or a network that runs nothing: done at once
                self._runs[index] = init_completed(self._runs[index], at=datetime.now(UTC))
                return None
            try:
                env = container_env(
                    container, fresh, pod_ip=self._pod_ip, host_ip=self._kubelet.node_ip
                )
            except UnsupportedEnvError as exc:
                self._runs[index] = init_config_error(self._runs[index], message=str(exc))
                self._report()
                if not self._run.cancel.wait(backoff):
                    backoff = min(backoff * 2, INIT_BACKOFF_MAX_S)
                continue
            exit_code, output, reason = self._attempt(index, container, prefix, env)
            if exit_code is None:
                continue  # stopped: _ended() says why
            if exit_code == 0:
                self._runs[index] = init_completed(self._runs[index], at=datetime.now(UTC))
                return None
            namespace, name, _ = pod_key(self._run.pod)
            self._runs[index] = init_failed(
                self._runs[index],
                exit_code=exit_code,
                output=output,
                at=datetime.now(UTC),
                restart=self._restart,
                backoff_s=backoff,
                pod_name=f"{namespace}/{name}",
                reason=reason,
            )
            if not self._restart:
                self._report(failed=True)
                return FAILED
            self._report()
            if not self._run.cancel.wait(backoff):
                backoff = min(backoff * 2, INIT_BACKOFF_MAX_S)

    def _attempt(
        self,
        index: int,
        container: Mapping[str, Any],
        prefix: list[str],
        env: Mapping[str, str],
    ) -> tuple[int | None, str, str]:
        """One process of this project's program: (exit code, None when stopped first;
        its last output lines; the reason a failure is reported with)."""
        argv = [*prefix, sys.executable, "-I", "-m", "webhook", *own_program_args(container, env)]
        self._runs[index] = init_started(self._runs[index], at=datetime.now(UTC))
        lagging: threading.Timer | None = None
        if self._lag_s > 0:
            lagging = threading.Timer(self._lag_s, self._report)
            lagging.daemon = True
            lagging.start()
            self._lag_s = 0.0
        else:
            self._report()
        reason = "Error"
        try:
            exit_code, output = self._kubelet._run_process(self._run, argv, env)
        except OSError as exc:
            exit_code, output, reason = START_ERROR_EXIT_CODE, str(exc), "StartError"
        finally:
            if lagging is not None:  # exited within the lag: the next report says
                lagging.cancel()
                lagging.join()
        self._run.logs[str(container.get("name", ""))] = output
        if exit_code is not None:
            namespace, name, _ = pod_key(self._run.pod)
            logger.info(
                "fake kubelet: pod %s/%s init container %s exited %d",
                namespace, name, container.get("name", ""), exit_code,
            )  # fmt: skip
        return exit_code, output, reason

    def _statuses(self) -> list[dict[str, Any]]:
        return [
            init_container_status(self._run.pod, container, run)
            for container, run in zip(self._containers, self._runs, strict=True)
        ]

    def _report(self, *, failed: bool = False) -> None:
        pod = self._run.pod
        self._run.init_statuses = self._statuses()
        status = initializing_status(
            pod,
            pod_ip=self._pod_ip,
            host_ip=self._kubelet.node_ip,
            at=datetime.now(UTC),
            start_time=self._run.start_time,
            init_statuses=self._run.init_statuses,
            failed=failed,
        )
        self._kubelet._quietly(pod, lambda: self._kubelet._patch_status(pod, status))

    def _ended(self) -> str | None:
        if not self._run.cancel.is_set():
            return None
        return "deleted" if self._run.deleting else "stopped"
