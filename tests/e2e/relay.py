"""A relay between one client and kube-apiserver, to put faults between them: the client's
kubeconfig points here, and the relay speaks to the API server with the client's own
certificate, so the API server sees the client as itself (its RBAC, its field manager).

- ``open``: each request is passed on and its response streamed back (watches included).
- ``cut()``: every connection in flight is closed and new ones are refused until
  ``restore()``: to the client the API server is gone (its watches break, its requests
  fail), while it stays up for everyone else.
- ``refuse_writes(status, retry_after)``: writes (POST, PUT, PATCH, DELETE) are answered
  with that status and a Retry-After header without reaching the API server, as an
  overloaded API server (429) or a failing one (5xx) answers; reads and watches pass.

Requests are counted by method and by what was done with them, so a test can tell a
client that backs off from one that spins. One request per connection (``Connection:
close`` upstream): simple to relay, and to the client only a lost keep-alive.
Loopback only; its threads stop with ``close()``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from agentcube_netpol_dev.controlplane import LOOPBACK, ControlPlane

from webhook.tls import certs

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEAD_LIMIT = 64 * 1024


class Relay:
    def __init__(self, control_plane: ControlPlane, kubeconfig: Path, work: Path) -> None:
        """``kubeconfig``: the client's (client-certificate user); ``relayed_kubeconfig``
        is the same user pointed at the relay."""
        self.upstream = (LOOPBACK, control_plane.api_port)
        config = yaml.safe_load(kubeconfig.read_text())
        [user] = config["users"]
        work.mkdir(parents=True, exist_ok=True)
        self._client_cert = self._file(work / "client.crt", user["user"], "client-certificate")
        self._client_key = self._file(work / "client.key", user["user"], "client-key")
        self._upstream_tls = ssl.create_default_context(cafile=str(control_plane.ca_file))
        self._upstream_tls.load_cert_chain(str(self._client_cert), str(self._client_key))

        now = datetime.now(UTC)
        ca = certs.create_ca(
            common_name="relay CA", not_before=now, not_after=now + timedelta(days=1)
        )
        serving = certs.create_serving_cert(
            ca, dns_names=["localhost"], ip_addresses=[LOOPBACK],
            not_before=now, not_after=now + timedelta(days=1),
        )  # fmt: skip
        (work / "relay.crt").write_bytes(serving.cert_pem)
        (work / "relay.key").write_bytes(serving.key_pem)
        (work / "relay-ca.crt").write_bytes(ca.cert_pem)
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_tls.load_cert_chain(str(work / "relay.crt"), str(work / "relay.key"))

        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        config["clusters"][0]["cluster"] = {
            "server": f"https://{LOOPBACK}:{self.port}",
            "certificate-authority": str(work / "relay-ca.crt"),
        }
        self.relayed_kubeconfig = work / "relayed.kubeconfig"
        self.relayed_kubeconfig.write_text(yaml.safe_dump(config))

        # (method, resource, what was done): ("PATCH", "pods", "refused")
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.refusals: list[tuple[float, str]] = []  # (monotonic time, resource)
        self._lock = threading.Lock()
        self._cut = False
        self._refuse: tuple[int, float | None] | None = None
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()

    @staticmethod
    def _file(path: Path, user: dict[str, Any], key: str) -> Path:
        if key in user:
            return Path(user[key])
        path.write_bytes(base64.b64decode(user[f"{key}-data"]))
        return path

    # --- faults -----------------------------------------------------------------------

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            self._refuse = None

    def refuse_writes(self, status: int, retry_after_s: float | None) -> None:
        with self._lock:
            self._refuse = (status, retry_after_s)

    def count(self, what: str, resources: frozenset[str] | None = None) -> int:
        """Writes passed or refused, of ``resources`` (plurals) or all."""
        with self._lock:
            return sum(
                n
                for (method, resource, done), n in self.counts.items()
                if done == what
                and method in WRITES
                and (resources is None or resource in resources)
            )

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)

    # --- relaying -----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _track(self, sock: socket.socket, on: bool) -> None:
        with self._lock:
            (self._sockets.add if on else self._sockets.discard)(sock)

    def _serve(self, raw: socket.socket) -> None:
        with self._lock:
            cut = self._cut
        if cut:
            raw.close()
            return
        opened: list[socket.socket] = [raw]
        self._track(raw, True)
        try:
            client = self._server_tls.wrap_socket(raw, server_side=True)
            opened.append(client)
            self._track(client, True)
            head, body_start = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse_head(head)
            method, target = request_line.split(" ")[:2]
            resource = _resource(target)
            # The whole request before any answer: a socket closed with unread data is
            # reset, and the client would see a broken connection instead of our status.
            length = int(headers.get("content-length", "0"))
            body = body_start
            while len(body) < length:
                chunk = client.recv(min(65536, length - len(body)))
                if not chunk:
                    return
                body += chunk
            with self._lock:
                # Leader election has a priority level of its own in API Priority and
                # Fairness: an API server shedding load still takes Lease renewals.
                refuse = self._refuse if method in WRITES and resource != "leases" else None
            if refuse is not None:
                self._record(method, resource, "refused")
                with self._lock:
                    self.refusals.append((time.monotonic(), resource))
                _answer(client, *refuse)
                return
            self._record(method, resource, "passed")
            upstream_raw = socket.create_connection(self.upstream, timeout=10)
            opened.append(upstream_raw)
            upstream_raw.settimeout(None)
            upstream = self._upstream_tls.wrap_socket(upstream_raw, server_hostname=LOOPBACK)
            opened.append(upstream)
            self._track(upstream, True)
            upstream.sendall(_rewrite_head(request_line, headers) + body)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except (OSError, ValueError):
            pass  # the client, the API server or a cut ended it
        finally:
            for sock in reversed(opened):
                self._track(sock, False)
                with contextlib.suppress(OSError):
                    sock.close()

    def _record(self, method: str, resource: str, what: str) -> None:
        with self._lock:
            self.counts[(method, resource, what)] += 1


def _resource(target: str) -> str:
    """The plural a request is about: ``/api/v1/namespaces/ns/pods/name`` -> pods."""
    parts = target.split("?", 1)[0].strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # past the group and version
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
        parts = parts[2:]
    return parts[0] if parts else ""


def _read_head(sock: ssl.SSLSocket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > HEAD_LIMIT:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _rewrite_head(request_line: str, headers: dict[str, str]) -> bytes:
    kept = {k: v for k, v in headers.items() if k not in ("connection", "keep-alive")}
    kept["connection"] = "close"
    lines = [request_line, *(f"{k}: {v}" for k, v in kept.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _answer(sock: ssl.SSLSocket, status: int, retry_after_s: float | None) -> None:
    reason = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "injected by the test's relay",
            "reason": "TooManyRequests" if status == 429 else "InternalError",
            "details": {"retryAfterSeconds": int(retry_after_s)} if retry_after_s else {},
            "code": status,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + (f"Retry-After: {int(retry_after_s)}\r\n" if retry_after_s else "")
        + "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
