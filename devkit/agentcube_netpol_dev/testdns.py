"""A small DNS server whose answers a test sets: names, CNAMEs, TTLs, and failures.

It answers UDP and TCP on loopback (and on sockets made inside a test's network namespace,
``add_listeners``) from a zone held in memory, as a recursive resolver would: a CNAME chain
with the records at its end in one answer. A test changes the zone while it runs
(``set``/``cname``/``fail``).

Zone: ``{"name": {"a": [...], "aaaa": [...], "cname": "target", "ttl": 30,
"fail": "servfail" | "refused" | "drop" | "garbage"}}``; a name not in it is NXDOMAIN.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[str, dict[str, Any]]


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def answer(query: bytes, zone: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """The response to ``query`` from ``zone``; None to send nothing (a timeout)."""
    try:
        request = dns.message.from_wire(query)
    except Exception:
        return None
    response = dns.message.make_response(request)
    response.flags |= dns.flags.RA | dns.flags.AA
    if not request.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = request.question[0]
    name = question.name
    for _hop in range(8):
        record = zone.get(_key(name))
        if record is None:
            if not response.answer:
                response.set_rcode(dns.rcode.NXDOMAIN)
            break
        fail = record.get("fail")
        if fail == "drop":
            return None
        if fail == "garbage":
            return b"\x00" * 5
        if fail in ("servfail", "refused"):
            response.answer = []
            response.set_rcode(dns.rcode.SERVFAIL if fail == "servfail" else dns.rcode.REFUSED)
            break
        ttl = int(record.get("ttl", 30))
        target = record.get("cname")
        if target:
            target_name = dns.name.from_text(target)
            response.answer.append(
                dns.rrset.from_text(name, ttl, "IN", "CNAME", target_name.to_text())
            )
            name = target_name
            continue
        field = {dns.rdatatype.A: "a", dns.rdatatype.AAAA: "aaaa"}.get(question.rdtype)
        addresses = record.get(field, []) if field else []
        if field and addresses:
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", field.upper(), *addresses))
        break
    return response.to_wire()


BIND_ATTEMPTS = 20


def _bind_pair(
    host: str,
    port: int,
    udp_handler: type[socketserver.BaseRequestHandler],
    tcp_handler: type[socketserver.BaseRequestHandler],
) -> tuple[socketserver.ThreadingUDPServer, socketserver.ThreadingTCPServer]:
    """A UDP and a TCP server on one port (``port``, or a free one when 0): a port free for
    UDP may be taken for TCP, so a free one is tried again until both bind."""
    last: OSError | None = None
    for _ in range(BIND_ATTEMPTS if port == 0 else 1):
        udp = socketserver.ThreadingUDPServer((host, port), udp_handler)
        try:
            tcp = socketserver.ThreadingTCPServer((host, udp.server_address[1]), tcp_handler)
        except OSError as exc:
            udp.server_close()
            last = exc
            continue
        return udp, tcp
    assert last is not None
    raise last


class DnsServer:
    """In-process: ``with DnsServer() as server: server.set("pypi.test", a=["203.0.113.7"])``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.zone: Zone = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        zone_of = self._zone_copy
        record = self._record

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                record(data)
                reply = answer(data, zone_of())
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                header = self.rfile.read(2)
                if len(header) < 2:
                    return
                data = self.rfile.read(struct.unpack("!H", header)[0])
                record(data)
                reply = answer(data, zone_of())
                if reply is not None:
                    self.wfile.write(struct.pack("!H", len(reply)) + reply)

        self._handlers = (Udp, Tcp)
        self._udp, self._tcp = _bind_pair(host, port, Udp, Tcp)
        self.host, self.port = str(self._udp.server_address[0]), int(self._udp.server_address[1])
        self._servers: list[socketserver.BaseServer] = [self._udp, self._tcp]
        self._threads: list[threading.Thread] = []
        self._started = False

    def add_listeners(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer on two more sockets, bound elsewhere (a UDP one, and a TCP one listening):
        made inside a network namespace, they serve the same zone there."""
        for sock, server_class, handler in (
            (udp, socketserver.ThreadingUDPServer, self._handlers[0]),
            (tcp, socketserver.ThreadingTCPServer, self._handlers[1]),
        ):
            server = server_class(sock.getsockname()[:2], handler, bind_and_activate=False)
            server.socket.close()
            server.socket = sock
            self._servers.append(server)
            if self._started:
                self._serve(server)

    def _serve(self, server: socketserver.BaseServer) -> None:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def address(self) -> str:
        return f"{self.host!s}:{self.port}"

    def _zone_copy(self) -> Zone:
        with self._lock:
            copied: Zone = json.loads(json.dumps(self.zone))
            return copied

    def _record(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            question = dns.message.from_wire(data).question[0]
            with self._lock:
                self.queries.append((_key(question.name), dns.rdatatype.to_text(question.rdtype)))

    def set(
        self, name: str, *, a: Sequence[str] = (), aaaa: Sequence[str] = (), ttl: int = 30
    ) -> None:
        with self._lock:
            self.zone[name] = {"a": list(a), "aaaa": list(aaaa), "ttl": ttl}

    def cname(self, name: str, target: str, *, ttl: int = 30) -> None:
        with self._lock:
            self.zone[name] = {"cname": target, "ttl": ttl}

    def fail(self, name: str, how: str) -> None:
        with self._lock:
            self.zone.setdefault(name, {})["fail"] = how

    def remove(self, name: str) -> None:
        with self._lock:
            self.zone.pop(name, None)

    def asked(self, name: str) -> int:
        with self._lock:
            return sum(1 for n, _ in self.queries if n == name)

    def __enter__(self) -> DnsServer:
        self._started = True
        for server in self._servers:
            self._serve(server)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
