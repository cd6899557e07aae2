"""The HTTP endpoint of the DNS service: /metrics, /healthz, /readyz.

One small non-blocking HTTP/1.0 server inside the DNS loop (no thread):
a request is one GET, the answer closes the connection. Who may connect is
decided by the same ACL as DNS queries (the node and its pods); anyone
else gets 403.

- `/healthz`: the loop is turning and the DNS address is still the node's
  (without it the service serves nobody; a restart puts it back).
- `/readyz`: the same, and a real query for a pod name (the cluster
  domain's SOA while there is no pod) sent to the DNS socket is answered
  within a second.
- `/metrics`: Prometheus text (metrics.py).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct

from . import metrics, wire
from .acl import host_has
from .log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


MAX_CONNECTIONS = 16
MAX_REQUEST = 4096
IDLE_TIMEOUT = 5.0
READY_TIMEOUT = 1.0
REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           400: "Bad Request", 503: "Service Unavailable"}


class Endpoint:
    """The listening socket; `server` is the DNS `Server` it reports on."""

    def __init__(self, server: Any, address: str, port: int) -> None:
        self.server = server
        self.address = address
        self.port = port
        self.conns: dict[int, HttpConn] = {}
        self.probes: list[ReadyProbe] = []
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((address, port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        server.selector.register(sock, selectors.EVENT_READ, self)

    def on_event(self, mask: int, now: float) -> None:
        for _ in range(8):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("out of file descriptors accepting HTTP connections")
                return
            sock.setblocking(False)
            if len(self.conns) >= MAX_CONNECTIONS:
                min(self.conns.values(), key=lambda c: c.started).close()
            conn = HttpConn(self, sock, now)
            # Refused after reading the request: closing with it unread would
            # reset the connection and lose the 403.
            conn.allowed = self.server.acl.allows(peer[0], now)
            self.conns[sock.fileno()] = conn
            self.server.selector.register(sock, selectors.EVENT_READ, conn)

    def tick(self, now: float) -> None:
        """Time out slow clients and unanswered readiness probes."""
        for conn in [c for c in self.conns.values() if now - c.started > IDLE_TIMEOUT]:
            conn.close()
        for probe in [p for p in self.probes if p.deadline <= now]:
            probe.finish(503, f"no answer from {self.server.listen}:{self.server.port} "
                              f"within {READY_TIMEOUT:g} s\n")

    def close(self) -> None:
        for probe in list(self.probes):
            probe.finish(503, "stopping\n")
        for conn in list(self.conns.values()):
            conn.close()
        try:
            self.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    # -- the checks

    def healthy(self) -> tuple[bool, str]:
        server = self.server
        if server.udp.fileno() < 0:
            return False, "the DNS socket is closed\n"
        if not host_has(server.listen):
            return False, f"the DNS address {server.listen} is not on this node\n"
        return True, "ok\n"


def response(status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
             ) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    head = (f"HTTP/1.0 {status} {REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode() + data


class HttpConn:
    """One client: read one request, write one response, close."""

    __slots__ = ("endpoint", "sock", "inbuf", "outbuf", "started", "closed", "head",
                 "allowed")

    def __init__(self, endpoint: Endpoint, sock: socket.socket, now: float) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.started = now
        self.closed = False
        self.head = False  # HEAD: headers only
        self.allowed = False

    def on_event(self, mask: int, now: float) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
            return
        try:
            chunk = self.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not chunk:
            self.close()
            return
        self.inbuf += chunk
        if b"\r\n\r\n" in self.inbuf or b"\n\n" in self.inbuf:
            self._handle(now)
        elif len(self.inbuf) > MAX_REQUEST:
            self.reply(400, "request too large\n")

    def _handle(self, now: float) -> None:
        server = self.endpoint.server
        if not self.allowed:
            self.reply(403, "only the node and its pods may ask\n")
            return
        line = self.inbuf.split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2:
            self.reply(400, "bad request\n")
            return
        method, path = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self.reply(405, "GET only\n")
            return
        self.head = method == "HEAD"
        if path == "/metrics":
            self.reply(200, metrics.render(server), "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/healthz", "/health"):
            ok, text = self.endpoint.healthy()
            self.reply(200 if ok else 503, text)
        elif path in ("/readyz", "/ready"):
            ok, text = self.endpoint.healthy()
            if not ok:
                self.reply(503, text)
                return
            ReadyProbe(self.endpoint, self, now)
        else:
            self.reply(404, "try /metrics, /healthz or /readyz\n")

    def reply(self, status: int, body: str | bytes,
              content_type: str = "text/plain; charset=utf-8") -> None:
        if self.closed:
            return
        data = response(status, body, content_type)
        if self.head:
            data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.outbuf = data
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
            self.outbuf = self.outbuf[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        if not self.outbuf:
            self.close()
            return
        try:
            self.endpoint.server.selector.modify(self.sock, selectors.EVENT_WRITE, self)
        except (KeyError, ValueError):
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.endpoint.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.endpoint.conns.pop(self.sock.fileno(), None)
        self.sock.close()


class ReadyProbe:
    """A real query to the service's own DNS socket, answered by the same loop."""

    __slots__ = ("endpoint", "conn", "sock", "qid", "deadline", "name", "expect_answer")

    def __init__(self, endpoint: Endpoint, conn: HttpConn, now: float) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.deadline = now + READY_TIMEOUT
        server = endpoint.server
        name = server.names.probe_name()
        self.expect_answer = name is not None
        qname = name if name is not None else server.names.domain
        qtype = wire.A if name is not None else wire.SOA
        self.name = wire.decode_name(qname) or "."
        self.qid = int.from_bytes(os.urandom(2), "big")
        self.sock = socket.socket(socket.AF_INET6 if ":" in server.listen else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        endpoint.probes.append(self)
        try:
            self.sock.setblocking(False)
            self.sock.connect((server.listen, server.port))
            self.sock.send(wire.HEADER.pack(self.qid, wire.RD, 1, 0, 0, 0) + qname
                           + struct.pack("!HH", qtype, wire.CLASS_IN))
        except OSError as err:
            self.finish(503, f"cannot send a query to {server.listen}:{server.port}: "
                             f"{err.strerror}\n")
            return
        server.selector.register(self.sock, selectors.EVENT_READ, self)

    def on_event(self, mask: int, now: float) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.finish(503, f"query for {self.name} failed: {err.strerror}\n")
            return
        if len(data) < 12 or struct.unpack_from("!H", data)[0] != self.qid:
            return
        rcode = data[3] & 0xF
        answers = struct.unpack_from("!H", data, 6)[0]
        if rcode == wire.NOERROR and (answers or not self.expect_answer):
            self.finish(200, f"ok: {self.name} answered\n")
        else:
            self.finish(503, f"{self.name}: rcode {rcode}, {answers} answers\n")

    def finish(self, status: int, text: str) -> None:
        if self in self.endpoint.probes:
            self.endpoint.probes.remove(self)
        try:
            self.endpoint.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.conn.reply(status, text)
