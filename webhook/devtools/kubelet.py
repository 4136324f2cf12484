"""A fake kubelet (and scheduler) for the test control plane: pods get a node, an IP, and Ready.

No kubelet runs on the test control plane, so a pod would stay Pending forever, and the
agent-sandbox controller only reports a Sandbox Ready (and its warm pool only counts it) once
its pod is Running and Ready with a pod IP. ``FakeKubelet`` plays both parts a node would:

- it registers a Node (``agentcube-netpol-node`` by default, ``InternalIP`` given, Ready);
- the scheduler's part: a pod with no ``spec.nodeName`` and no ``spec.schedulingGates`` is
  bound to that node through the ``pods/binding`` subresource. A pod with scheduling gates
  stays Pending and unbound, as it does with a real scheduler, until its gates are lifted;
- the kubelet's part: a bound pod gets status Running, conditions PodScheduled, Initialized,
  PodReadyToStartContainers, ContainersReady and Ready True, a pod IP from ``PodNetwork``,
  ``hostIP`` = the node's IP, ``startTime``, and a ready, running status for each container;
- a pod being deleted (``deletionTimestamp`` set) has its network released and is deleted
  with grace period 0, which is what a kubelet does once the containers have stopped.

Pod IPs come from a ``PodNetwork``: here ``CidrPodNetwork`` hands out unique addresses of a
CIDR; a network that makes real network namespaces can take its place. A new ``FakeKubelet``
starts from a fresh network: a running pod it finds with an IP its network did not give is
reported again with one that it did, so IPs stay unique among the pods it runs.

It follows pods with a list, then a watch resumed from the last resourceVersion (relisting on
410 Gone), in one daemon thread that ``stop()`` ends at once. Each pod is handled from what
the watch delivered, so every write is idempotent: a pod already as it should be is not
written again.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self

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


# --- what a pod needs (pure) ----------------------------------------------------------------


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_gated(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("schedulingGates"))


def is_deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_running_here(pod: Mapping[str, Any], *, node_name: str, pod_ip: str) -> bool:
    """Already as the kubelet leaves it: on this node, Running, Ready, with that IP."""
    status = pod.get("status") or {}
    if (pod.get("spec") or {}).get("nodeName") != node_name or status.get("phase") != "Running":
        return False
    if status.get("podIP") != pod_ip:
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return all(conditions.get(kind) == "True" for kind in READY_CONDITIONS)


def running_status(
    pod: Mapping[str, Any], *, pod_ip: str, host_ip: str, at: datetime
) -> dict[str, Any]:
    """The status a kubelet reports for a pod whose containers all run and pass readiness."""
    now = _rfc3339(at)
    spec = pod.get("spec") or {}
    old = pod.get("status") or {}
    start_time = old.get("startTime") or now
    container_statuses = [
        {
            "name": container.get("name", ""),
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"fake://{pod_key(pod)[2]}/{container.get('name', '')}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": start_time}},
        }
        for container in spec.get("containers") or []
    ]
    return {
        "phase": "Running",
        "conditions": [
            {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for kind in READY_CONDITIONS
        ],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": container_statuses,
    }


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
    ) -> None:
        """``core_v1``: a ``kubernetes.client.CoreV1Api`` allowed to create nodes and to get,
        list, watch, bind, delete pods and patch their status. ``label_selector`` limits which
        pods it runs (a real kubelet runs every pod bound to its node)."""
        self._api = core_v1
        self.node_name = node_name
        self.node_ip = node_ip
        self.network: PodNetwork = network or CidrPodNetwork(exclude=(node_ip,))
        self.label_selector = label_selector
        self._resource_version = ""
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
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
        namespace, name, uid = pod_key(pod)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if is_deleting(pod):
            if node_name in (None, "", self.node_name):
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
        pod_ip = self.network.attach(pod)
        if is_running_here(pod, node_name=self.node_name, pod_ip=pod_ip):
            return
        status = running_status(pod, pod_ip=pod_ip, host_ip=self.node_ip, at=datetime.now(UTC))
        self._api.patch_namespaced_pod_status(
            name,
            namespace,
            {"metadata": {"uid": uid}, "status": status},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )
        logger.debug("pod %s/%s running with IP %s", namespace, name, pod_ip)

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
        elif kind == "DELETED":
            self.network.detach(obj)
