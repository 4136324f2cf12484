"""A kubelet that runs pods from OCI images, for the tier that runs the product as shipped.

Each pod gets a network namespace of its own, its IP on that namespace's loopback
interface, and its containers run from their image by podman with runc, honouring
what the pod spec says: command and args, env (values and the downward API), the
security context (user and group, fsGroup, read-only root, capabilities, no privilege
escalation), emptyDir and Secret volumes, the service-account token with the API
server's CA (as the projected volume a real cluster adds), probes (Ready only once
the readiness probe passes; a container failing its liveness probe is restarted),
restarts with backoff, the preStop sleep and the grace period on deletion.

Nothing in the host's network namespace changes. Traffic crosses namespaces through
relays in this process:

- **to a pod**: kube-apiserver sends its calls to the cluster network (webhooks among
  them) through an HTTP CONNECT proxy, as it does through Konnectivity in a real
  cluster (``--egress-selector-config-file``, written by ``egress_selector_config``);
  the proxy opens the connection inside the pod's namespace. The kubelet's probes use
  the same door. With ``--enable-aggregator-routing=true`` the API server resolves a
  webhook Service to a ready endpoint itself (kube-controller-manager fills the
  endpoints from the pods' Ready condition), so no kube-proxy is needed: the proxy
  plays the node's network, the API server plays kube-proxy's choice of endpoint;
- **from a pod to the API server**: a listener on the pod's loopback relays to the API
  server on the host's (``KUBERNETES_SERVICE_HOST``/``PORT`` point the in-cluster
  config at it, as kube-proxy's Service address would).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentcube_netpol_dev.dataplane import (
    NETNS_DIR,
    Relay,
    listener_in,
    pump,
    run,
    socket_in,
)
from agentcube_netpol_dev.image import RUNTIME, ULIMITS, Storage

logger = logging.getLogger(__name__)

POD_CIDR = ipaddress.ip_network("10.89.0.0/16")
NODE_NAME = "oci-node"
NODE_IP = "10.89.255.254"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3607
TICK_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0
FIELD_MANAGER = "agentcube-netpol-oci-kubelet"
MERGE_PATCH = "application/merge-patch+json"


def _rfc3339(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def connect_in(namespace: str, address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``address``:``port`` made from inside network namespace
    ``namespace``."""
    try:
        return socket_in(namespace, lambda: socket.create_connection((address, port), timeout))
    except OSError:
        raise
    except Exception as exc:  # setns failed: as unreachable as a refused connection
        raise OSError(str(exc)) from exc


class PodNetworks:
    """Pod namespaces, their addresses, and the CONNECT proxy into them."""

    def __init__(self, *, prefix: str, api_port: int, socket_path: Path) -> None:
        """``socket_path``: where the proxy listens (a Unix socket: kube-apiserver's TCP
        transport to an egress proxy needs mutual TLS, its Unix socket transport none)."""
        self.prefix = prefix
        self.api_port = api_port
        self.socket_path = socket_path
        self._by_ip: dict[str, str] = {}
        self._relays: dict[str, Relay] = {}
        self._next = 2
        self._lock = threading.Lock()
        self._proxy = socket.socket(socket.AF_UNIX)
        self._proxy.bind(str(socket_path))
        self._proxy.listen(64)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cluster-proxy", daemon=True)
        self._thread.start()

    def egress_selector_config(self, path: Path) -> Path:
        """kube-apiserver's --egress-selector-config-file: the cluster network through us."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.socket_path)}},
                            },
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        return path

    def add(self) -> tuple[str, str, int]:
        """A new pod namespace: (its name, its IP, the port of its API server relay)."""
        with self._lock:
            ip = str(POD_CIDR[self._next])
            self._next += 1
        namespace = f"{self.prefix}{ip.replace('.', '-')}"
        run("ip", "netns", "add", namespace)
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "-n", namespace, "addr", "add", f"{ip}/32", "dev", "lo")
        relay = Relay(listener_in(namespace), self.api_port)
        relay.start()
        with self._lock:
            self._by_ip[ip] = namespace
            self._relays[namespace] = relay
        return namespace, ip, relay.listen_port

    def remove(self, namespace: str) -> None:
        with self._lock:
            relay = self._relays.pop(namespace, None)
            for ip in [ip for ip, ns in self._by_ip.items() if ns == namespace]:
                del self._by_ip[ip]
        if relay is not None:
            relay.stop()
        if (NETNS_DIR / namespace).exists():
            with contextlib.suppress(Exception):
                run("ip", "netns", "delete", namespace)

    def connect(self, ip: str, port: int, timeout: float) -> socket.socket:
        with self._lock:
            namespace = self._by_ip.get(ip)
        if namespace is None:
            raise OSError(f"no pod has {ip}")
        return connect_in(namespace, ip, port, timeout)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._proxy.shutdown(socket.SHUT_RDWR)
        self._proxy.close()
        for namespace in list(self._relays):
            self.remove(namespace)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._proxy.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        """One CONNECT: read the request head, dial the pod, answer 200, pump both ways."""
        try:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    raise OSError("closed before the request ended")
                head += chunk
                if len(head) > 16384:
                    raise OSError("request head too long")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = request_line.split(" ", 2)
            if method != "CONNECT":
                raise OSError(f"not a CONNECT: {request_line}")
            host, _, port = target.rpartition(":")
            upstream = self.connect(host.strip("[]"), int(port), timeout=5)
        except (OSError, ValueError) as exc:
            logger.debug("cluster proxy: %s", exc)
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        upstream.close()
        client.close()


def probe_https_get(
    networks: PodNetworks, ip: str, port: int, path: str, timeout: float, *, https: bool
) -> bool:
    """The kubelet's httpGet probe: success on a 2xx or 3xx answer. Like the kubelet, an
    HTTPS probe checks no certificate."""
    try:
        sock = networks.connect(ip, port, timeout)
    except OSError:
        return False
    plain = sock
    try:
        sock.settimeout(timeout)
        if https:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=ip)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        status_line = sock.recv(1024).split(b"\r\n", 1)[0].split()
        return len(status_line) >= 2 and 200 <= int(status_line[1]) < 400
    except (OSError, ValueError):
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        plain.close()


class _Prober:
    """One probe of one container: its period, threshold and last result."""

    def __init__(
        self, spec: Mapping[str, Any], ports: Mapping[str, int], *, started: float
    ) -> None:
        get = spec.get("httpGet") or {}
        port = get.get("port")
        self.port = ports[port] if isinstance(port, str) else int(port or 0)
        self.path = str(get.get("path", "/"))
        self.https = str(get.get("scheme", "HTTP")).upper() == "HTTPS"
        self.period = float(spec.get("periodSeconds", 10))
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.failure_threshold = int(spec.get("failureThreshold", 3))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.next_at = started + float(spec.get("initialDelaySeconds", 0))
        self.failures = 0
        self.successes = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.failures, self.successes = self.failures + 1, 0


class _PodRun:
    """One pod's life on this node, on a thread of its own."""

    def __init__(self, kubelet: OciKubelet, pod: Mapping[str, Any]) -> None:
        self.kubelet = kubelet
        self.pod = pod
        metadata = pod["metadata"]
        self.namespace, self.name, self.uid = (
            metadata["namespace"],
            metadata["name"],
            metadata["uid"],
        )
        self.deleting = threading.Event()
        self.stopping = threading.Event()  # the kubelet stops: remove without deleting
        self.container_id = ""
        self.restarts = 0
        self.ready = False
        self.started_at = ""
        self.last_state: dict[str, Any] = {}
        self.final_logs = ""
        self.netns = ""
        self.ip = ""
        self.api_relay_port = 0
        self.work = kubelet.work_dir / f"{self.namespace}_{self.name}"
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- the spec

    @property
    def spec(self) -> Mapping[str, Any]:
        return dict(self.pod["spec"])

    @property
    def container(self) -> Mapping[str, Any]:
        [container] = self.spec["containers"]  # deploy/'s pods have one
        return dict(container)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.netns, self.ip, self.api_relay_port = self.kubelet.networks.add()
            self._prepare_volumes()
            self._loop()
        except Exception:
            logger.exception("oci kubelet: pod %s/%s failed", self.namespace, self.name)
        finally:
            self._remove_container()
            if self.netns:
                self.kubelet.networks.remove(self.netns)
            shutil.rmtree(self.work, ignore_errors=True)
            if self.deleting.is_set() and not self.stopping.is_set():
                self.kubelet.delete_pod(self.namespace, self.name, self.uid)

    # -- volumes

    def _prepare_volumes(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        security = self.spec.get("securityContext") or {}
        fs_group = security.get("fsGroup")
        self.mounts: list[tuple[Path, str, bool]] = []
        by_name: dict[str, Path] = {}
        for volume in self.spec.get("volumes") or []:
            directory = self.work / "volumes" / volume["name"]
            directory.mkdir(parents=True)
            if "emptyDir" in volume:
                # As the kubelet makes one for a pod with an fsGroup: group-owned, setgid.
                if fs_group is not None:
                    os.chown(directory, 0, int(fs_group))
                os.chmod(directory, 0o2777 if fs_group is None else 0o2775)
            elif "secret" in volume:
                self._write_secret(directory, volume["secret"], fs_group)
            else:
                raise RuntimeError(f"volume {volume['name']}: only emptyDir and secret here")
            by_name[volume["name"]] = directory
        for mount in self.container.get("volumeMounts") or []:
            self.mounts.append(
                (by_name[mount["name"]], mount["mountPath"], bool(mount.get("readOnly")))
            )
        if self.spec.get("automountServiceAccountToken", True) is not False:
            self.mounts.append((self._service_account_files(fs_group), SERVICE_ACCOUNT_DIR, True))

    def _write_secret(self, directory: Path, source: Mapping[str, Any], fs_group: Any) -> None:
        secret = self.kubelet.core_v1.read_namespaced_secret(source["secretName"], self.namespace)
        mode = int(source.get("defaultMode", 0o644))
        for key, value in (secret.data or {}).items():
            path = directory / key
            path.write_bytes(base64.b64decode(value))
            if fs_group is not None:
                os.chown(path, 0, int(fs_group))
            os.chmod(path, mode)

    def _service_account_files(self, fs_group: Any) -> Path:
        """The projected volume a cluster's ServiceAccount admission adds: a bound token,
        the API server's CA and the namespace."""
        directory = self.work / "serviceaccount"
        directory.mkdir()
        account = self.spec.get("serviceAccountName") or "default"
        from kubernetes.client import (
            AuthenticationV1TokenRequest,
            V1BoundObjectReference,
            V1TokenRequestSpec,
        )

        request = AuthenticationV1TokenRequest(
            spec=V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=TOKEN_SECONDS,
                bound_object_ref=V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=self.name, uid=self.uid
                ),
            )
        )
        token = self.kubelet.core_v1.create_namespaced_service_account_token(
            account, self.namespace, request
        ).status.token
        (directory / "token").write_text(token)
        (directory / "ca.crt").write_bytes(self.kubelet.ca_pem)
        (directory / "namespace").write_text(self.namespace)
        for path in directory.iterdir():
            if fs_group is not None:
                os.chown(path, 0, int(fs_group))
            os.chmod(path, 0o644)
        os.chmod(directory, 0o755)
        return directory

    # -- the container

    def _env(self) -> list[str]:
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.kubelet.node_name,
            "spec.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
            "status.podIP": self.ip,
            "status.hostIP": NODE_IP,
        }
        env = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_relay_port),
        }
        for item in self.container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "fieldRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise RuntimeError(f"env {item['name']}: only values and fieldRefs here")
        return [f"{key}={value}" for key, value in env.items()]

    def _podman_run(self) -> str:
        container = self.container
        pod_security = self.spec.get("securityContext") or {}
        security = {**pod_security, **(container.get("securityContext") or {})}
        args = [
            "run", "--detach", "--runtime", RUNTIME, "--pull", "never",
            *(f"--ulimit={limit}" for limit in ULIMITS),
            "--network", f"ns:{NETNS_DIR / self.netns}",
            "--name", f"{self.namespace}_{self.name}_{self.restarts}",
            "--hostname", self.name,
        ]  # fmt: skip
        if "runAsUser" in security:
            user = str(security["runAsUser"])
            if "runAsGroup" in security:
                user += f":{security['runAsGroup']}"
            args += ["--user", user]
        if pod_security.get("fsGroup") is not None:
            args += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        capabilities = security.get("capabilities") or {}
        args += [f"--cap-drop={cap}" for cap in capabilities.get("drop") or []]
        args += [f"--cap-add={cap}" for cap in capabilities.get("add") or []]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for host, inside, read_only in self.mounts:
            args.append(f"--volume={host}:{inside}{':ro' if read_only else ''}")
        args += [f"--env={item}" for item in self._env()]
        if container.get("command"):
            args += ["--entrypoint", json.dumps(container["command"])]
        image = self.kubelet.images.get(container["image"], container["image"])
        args += [image, *[str(a) for a in container.get("args") or []]]
        return self.kubelet.store.run("podman", *args).stdout.strip()

    def _running(self) -> bool:
        if not self.container_id:
            return False
        result = self.kubelet.store.run(
            "podman", "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}",
            self.container_id, check=False,
        )  # fmt: skip
        running, _, code = result.stdout.strip().partition(" ")
        if running == "true":
            return True
        self.last_state = {
            "terminated": {"exitCode": int(code or 0), "reason": "Error" if code != "0" else "Completed",
                           "finishedAt": _rfc3339()}
        }  # fmt: skip
        return False

    def _remove_container(self) -> None:
        if self.container_id:
            self.kubelet.store.run(
                "podman", "rm", "--force", "--time", "0", self.container_id, check=False
            )
            self.container_id = ""

    def logs(self) -> str:
        if not self.container_id:
            return self.final_logs
        result = self.kubelet.store.run("podman", "logs", self.container_id, check=False)
        return result.stdout + result.stderr

    def kill(self) -> None:
        """The container dies (SIGKILL), as when its process crashes."""
        if self.container_id:
            self.kubelet.store.run(
                "podman", "kill", "--signal", "KILL", self.container_id, check=False
            )

    # -- the loop

    def _loop(self) -> None:
        ports = {
            p["name"]: int(p["containerPort"])
            for p in self.container.get("ports") or []
            if "name" in p
        }
        backoff = 1.0
        readiness: _Prober | None = None
        liveness: _Prober | None = None
        restart_at = 0.0
        while not self.deleting.is_set() and not self.stopping.is_set():
            now = time.monotonic()
            if not self._running():
                if self.container_id and self.spec.get("restartPolicy") == "Never":
                    self._finish()  # a test or a job: it ran once
                    return
                if self.container_id:  # it ran and stopped: restart with backoff
                    self._remove_container()
                    self.ready = False
                    self.restarts += 1
                    restart_at = now + backoff
                    backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                    self._report()
                if now >= restart_at:
                    self.container_id = self._podman_run()
                    self.started_at = _rfc3339()
                    started = time.monotonic()
                    spec = self.container
                    readiness = (
                        _Prober(spec["readinessProbe"], ports, started=started)
                        if "readinessProbe" in spec
                        else None
                    )
                    liveness = (
                        _Prober(spec["livenessProbe"], ports, started=started)
                        if "livenessProbe" in spec
                        else None
                    )
                    self.ready = readiness is None
                    self._report()
            else:
                changed = False
                if readiness is not None and readiness.due(now):
                    ok = self._probe(readiness)
                    readiness.record(ok, now)
                    # As the kubelet: Ready after successThreshold successes in a row, not
                    # Ready after failureThreshold failures in a row, else unchanged.
                    ready = self.ready
                    if readiness.successes >= readiness.success_threshold:
                        ready = True
                    if readiness.failures >= readiness.failure_threshold:
                        ready = False
                    changed, self.ready = ready != self.ready, ready
                if liveness is not None and liveness.due(now):
                    ok = self._probe(liveness)
                    liveness.record(ok, now)
                    if liveness.failures >= liveness.failure_threshold:
                        logger.info(
                            "oci kubelet: %s/%s failed its liveness probe: restarting",
                            self.namespace,
                            self.name,
                        )
                        self.kill()
                if changed:
                    self._report()
                if self.ready:
                    backoff = 1.0
            (self.deleting if not self.stopping.is_set() else self.stopping).wait(TICK_S)
        if self.deleting.is_set() and not self.stopping.is_set():
            self._terminate()

    def _finish(self) -> None:
        """A restartPolicy Never pod whose container exited: Succeeded or Failed, and its
        log kept (``logs``), as the kubelet keeps an exited container's."""
        code = int(self.last_state.get("terminated", {}).get("exitCode", 1))
        self.final_logs = self.logs()
        self.ready = False
        terminated = {**self.last_state["terminated"], "startedAt": self.started_at}
        self.last_state = {}
        self._report(phase="Succeeded" if code == 0 else "Failed", state={"terminated": terminated})

    def _probe(self, prober: _Prober) -> bool:
        return probe_https_get(
            self.kubelet.networks,
            self.ip,
            prober.port,
            prober.path,
            prober.timeout,
            https=prober.https,
        )

    def _terminate(self) -> None:
        """preStop, then SIGTERM and the rest of the grace period, then SIGKILL."""
        grace = float(
            self.pod["metadata"].get("deletionGracePeriodSeconds")
            or self.spec.get("terminationGracePeriodSeconds", 30)
        )
        started = time.monotonic()
        pre_stop = ((self.container.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
        if pre_stop:
            time.sleep(min(float(pre_stop["seconds"]), grace))
        left = max(0, int(grace - (time.monotonic() - started)))
        if self.container_id:
            self.kubelet.store.run(
                "podman",
                "stop",
                "--time",
                str(left),
                self.container_id,
                check=False,
                timeout=left + 30,
            )

    def _report(self, *, phase: str = "Running", state: dict[str, Any] | None = None) -> None:
        if state is None:
            state = (
                {"running": {"startedAt": self.started_at}}
                if self.container_id
                else {"waiting": {"reason": "CrashLoopBackOff"}}
            )
        ready = "True" if self.ready else "False"
        now = _rfc3339()
        status = {
            "phase": phase,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.kubelet.start_times.setdefault(self.uid, now),
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": self.container["name"],
                    "image": self.container["image"],
                    "imageID": "",
                    "containerID": f"podman://{self.container_id}" if self.container_id else "",
                    "ready": self.ready,
                    "started": bool(self.container_id),
                    "restartCount": self.restarts,
                    "state": state,
                    "lastState": self.last_state,
                }
            ],
        }
        with contextlib.suppress(Exception):  # the pod may be gone; the next report says
            self.kubelet.core_v1.patch_namespaced_pod_status(
                self.name,
                self.namespace,
                {"metadata": {"uid": self.uid}, "status": status},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )


class OciKubelet:
    """Runs the pods ``label_selector`` picks (across namespaces) on a node of its own."""

    def __init__(
        self,
        core_v1: Any,
        rest: Any,
        *,
        networks: PodNetworks,
        store: Storage,
        ca_pem: bytes,
        label_selector: str,
        work_dir: Path,
        images: Mapping[str, str] | None = None,
        node_name: str = NODE_NAME,
    ) -> None:
        """``images``: the image a pod names -> the local tag to run (``kustomize edit set
        image`` done here: the built image has a test tag)."""
        self.core_v1 = core_v1
        self._rest = rest
        self.networks = networks
        self.store = store
        self.ca_pem = ca_pem
        self.label_selector = label_selector
        self.work_dir = work_dir
        self.images = dict(images or {})
        self.node_name = node_name
        self.start_times: dict[str, str] = {}
        self._runs: dict[str, _PodRun] = {}
        self._lock = threading.Lock()
        self._informer: Any = None

    def start(self) -> None:
        from kubernetes.client import V1Node, V1NodeAddress, V1NodeStatus, V1ObjectMeta

        from webhook.api import kinds
        from webhook.kube.informer import Informer

        with contextlib.suppress(Exception):  # there already
            self.core_v1.create_node(
                V1Node(
                    metadata=V1ObjectMeta(
                        name=self.node_name, labels={"kubernetes.io/hostname": self.node_name}
                    ),
                    status=V1NodeStatus(
                        addresses=[V1NodeAddress(type="InternalIP", address=NODE_IP)]
                    ),
                )
            )
        self.core_v1.patch_node_status(
            self.node_name,
            {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                         "lastHeartbeatTime": _rfc3339(), "lastTransitionTime": _rfc3339()}]}},
        )  # fmt: skip
        self._informer = Informer(
            self._rest, kinds.POD, slim=dict, label_selector=self.label_selector, name="oci-kubelet"
        )
        self._informer.add_handler(lambda old, new: self._handle(new) if new is not None else None)
        self._informer.start()

    def _handle(self, pod: Mapping[str, Any]) -> None:
        metadata = pod["metadata"]
        uid = metadata["uid"]
        node = (pod.get("spec") or {}).get("nodeName")
        with self._lock:
            existing = self._runs.get(uid)
        if metadata.get("deletionTimestamp"):
            if existing is not None and existing.alive:
                existing.pod = pod
                existing.deleting.set()
            elif existing is not None or node in (None, "", self.node_name):
                # It ran to its end (restartPolicy Never), or never ran here: just go.
                self.delete_pod(metadata["namespace"], metadata["name"], uid)
            return
        if not node:
            self._bind(metadata["namespace"], metadata["name"], uid)
            return
        if node != self.node_name or existing is not None:
            return
        run = _PodRun(self, pod)
        with self._lock:
            self._runs[uid] = run
        run.start()

    def _bind(self, namespace: str, name: str, uid: str) -> None:
        from kubernetes.client import V1Binding, V1ObjectMeta, V1ObjectReference

        with contextlib.suppress(Exception):  # bound already: the next event says
            self.core_v1.create_namespaced_pod_binding(
                name,
                namespace,
                V1Binding(
                    metadata=V1ObjectMeta(name=name, namespace=namespace, uid=uid),
                    target=V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
                ),
                _preload_content=False,
            ).release_conn()

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        from kubernetes.client import V1DeleteOptions, V1Preconditions

        with self._lock:
            self._runs.pop(uid, None)
        with contextlib.suppress(Exception):
            self.core_v1.delete_namespaced_pod(
                name, namespace,
                body=V1DeleteOptions(grace_period_seconds=0, preconditions=V1Preconditions(uid=uid)),
            )  # fmt: skip

    def run_of(self, namespace: str, name: str) -> _PodRun | None:
        with self._lock:
            for run in self._runs.values():
                if (run.namespace, run.name) == (namespace, name):
                    return run
        return None

    def stop(self) -> None:
        if self._informer is not None:
            self._informer.stop()
        with self._lock:
            runs = list(self._runs.values())
        for pod_run in runs:
            pod_run.stopping.set()
        for pod_run in runs:
            pod_run.join(30)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(what)
