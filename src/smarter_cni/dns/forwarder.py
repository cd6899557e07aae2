"""Forwarding to the node's upstream resolvers, with a small TTL-respecting cache.

Never blocks: queries go out on non-blocking UDP sockets the server loop
watches; `on_udp_event` and `on_timer` finish them. Each relayed query gets
a fresh random ID and its own socket (a fresh ephemeral port), connected to
the upstream, so the kernel drops packets from anyone else and reports an
upstream that is down (ICMP unreachable) at once; an answer is accepted only
with that ID and the same question. A query that gets no answer within `timeout` moves to the
next upstream; when all have failed the clients get SERVFAIL.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import selectors
import socket
import struct

from . import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

log = logging.getLogger("smarter-cni.dns")

DEFAULT_TIMEOUT = 2.0
MAX_PENDING = 512   # each holds a socket; the service raises RLIMIT_NOFILE to fit
MAX_WAITERS = 64
CACHE_ENTRIES = 2048
MAX_TTL = 300
MAX_NEGATIVE_TTL = 60
RETRY_RCODES = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)

# A client waiting for an answer: (transport handle, address, query, UDP limit or None)
Client = tuple


def parse_upstream(text: str, default_port: int = 53) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:5353', '[fd00::1]:53' or 'fd00::1' -> (address, port)."""
    text = text.strip()
    port = default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    host = socket.inet_ntop(family, socket.inet_pton(family, host))  # normalised, or OSError
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def resolv_conf_upstreams(path: str, exclude: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """`nameserver` lines of a resolv.conf, minus our own address(es)."""
    found: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver" or "%" in fields[1]:
            continue
        try:
            upstream = parse_upstream(fields[1])
        except (OSError, ValueError):
            continue
        if upstream not in exclude and upstream not in found:
            found.append(upstream)
    return found


class CacheEntry:
    __slots__ = ("data", "parsed", "stored", "expires")

    def __init__(self, data: bytes, parsed: wire.Parsed, stored: float, expires: float) -> None:
        self.data = data
        self.parsed = parsed
        self.stored = stored
        self.expires = expires


class Pending:
    """One question in flight upstream, and the clients waiting for it."""

    __slots__ = ("qid", "key", "packet", "upstream", "target", "deadline", "clients",
                 "socket", "tcp")

    def __init__(self, qid: int, key: tuple[bytes, int, int], packet: bytes) -> None:
        self.qid = qid
        self.key = key
        self.packet = packet
        self.upstream = -1
        self.target: tuple[str, int] = ("", 0)
        self.deadline = 0.0
        self.clients: list[Client] = []
        self.socket: Any = None
        self.tcp: TcpFetch | None = None


class TcpFetch:
    """The same question again over TCP, after the upstream answered UDP with TC."""

    __slots__ = ("pending", "sock", "connected", "inbuf")

    def __init__(self, pending: Pending, sock: socket.socket) -> None:
        self.pending = pending
        self.sock = sock
        self.connected = False
        self.inbuf = bytearray()


def cache_ttl(parsed: wire.Parsed) -> int:
    """Seconds an upstream answer may be kept (0: do not cache)."""
    if parsed.flags & wire.TC or parsed.rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return 0
    ttls = [ttl for section, _, _, rtype, ttl, _, _ in parsed.records
            if section < 2 and rtype != wire.OPT]
    if not ttls:
        return 0
    negative = parsed.rcode == wire.NXDOMAIN or not any(r[0] == 0 for r in parsed.records)
    return min(min(ttls), MAX_NEGATIVE_TTL if negative else MAX_TTL)


def relay(entry: CacheEntry, query: wire.Query, limit: int | None, now: float) -> bytes:
    """The cached upstream answer re-addressed to `query`: its ID, its question's
    case, its EDNS; TTLs reduced by the time spent in the cache."""
    data, parsed = entry.data, entry.parsed
    elapsed = int(now - entry.stored)
    counts = [0, 0, 0]
    parts = []
    for section, start, end, rtype, ttl, ttl_at, _ in parsed.records:
        if rtype == wire.OPT:
            break  # OPT is ours to add; whatever follows it would shift offsets
        counts[section] += 1
        if elapsed:
            parts.append(data[start:ttl_at])
            parts.append(struct.pack("!I", max(0, ttl - elapsed)))
            parts.append(data[ttl_at + 4:end])
        else:
            parts.append(data[start:end])
    question = query.question if len(query.question) == parsed.qend - 12 else data[12:parsed.qend]
    # Not authoritative for what we relay: AA goes.
    flags = (parsed.flags & ~(wire.AA | wire.RD | wire.TC | wire.CD | 0xF)) \
        | (query.flags & (wire.RD | wire.CD))
    flags |= parsed.rcode & 0xF
    extra = wire.opt_record(query.edns_do, parsed.rcode >> 4) if query.edns else b""
    body = b"".join(parts)
    arcount = counts[2] + (1 if extra else 0)
    if limit is not None and 12 + len(question) + len(body) + len(extra) > limit:
        header = wire.HEADER.pack(query.id, flags | wire.TC, 1, 0, 0, 1 if extra else 0)
        return header + question + extra
    header = wire.HEADER.pack(query.id, flags | (parsed.flags & wire.TC), 1, counts[0],
                              counts[1], arcount)
    return header + question + body + extra


class Forwarder:
    """Relays queries upstream; `send(client, response)` is called when done.

    Registers its own sockets with the server's selector: UDP ones with their
    `Pending`, TCP fallbacks with their `TcpFetch`.
    """

    def __init__(self, upstreams: list[tuple[str, int]], send: Callable[[Client, bytes], None],
                 selector: selectors.BaseSelector, timeout: float = DEFAULT_TIMEOUT,
                 resolv_conf: str | None = None,
                 exclude: set[tuple[str, int]] | None = None) -> None:
        self.send = send
        self.selector = selector
        self.timeout = timeout
        self.cache: dict[tuple[bytes, int, int], CacheEntry] = {}
        self.pending: dict[int, Pending] = {}
        self.by_key: dict[tuple[bytes, int, int], Pending] = {}
        self.failures = 0
        self.resolv_conf = resolv_conf
        self.exclude = exclude or set()
        self.resolv_signature: Any = self._resolv_signature()
        self.upstreams: list[tuple[str, int]] = []
        self.set_upstreams(upstreams)

    def set_upstreams(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = list(upstreams)

    def _resolv_signature(self) -> Any:
        if not self.resolv_conf:
            return None
        try:
            st = os.stat(self.resolv_conf)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def check_resolv_conf(self) -> None:
        """Follow changes of the node's resolv.conf (DHCP, NetworkManager, ...)."""
        if not self.resolv_conf:
            return
        signature = self._resolv_signature()
        if signature == self.resolv_signature:
            return
        self.resolv_signature = signature
        found = resolv_conf_upstreams(self.resolv_conf, self.exclude)
        if found and found != self.upstreams:
            log.info("upstreams from %s: %s", self.resolv_conf,
                     ", ".join(f"{h}:{p}" for h, p in found))
            self.set_upstreams(found)
            self.cache.clear()

    def close(self) -> None:
        for pending in list(self.pending.values()):
            self._close_sockets(pending)
        self.pending.clear()
        self.by_key.clear()

    def _unregister(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    # -- asking

    def cached(self, query: wire.Query, limit: int | None, now: float
               ) -> tuple[bytes | None, float]:
        """(relayed answer, seconds it stays valid) from the cache, or (None, 0)."""
        key = (query.qname.lower(), query.qtype, query.qclass)
        entry = self.cache.get(key)
        if entry is None:
            return None, 0.0
        if entry.expires <= now:
            del self.cache[key]
            return None, 0.0
        return relay(entry, query, limit, now), entry.expires - now

    def ask(self, query: wire.Query, client: Client, now: float) -> None:
        """Send the query upstream (or join one already in flight for the same question)."""
        key = (query.qname.lower(), query.qtype, query.qclass)
        pending = self.by_key.get(key)
        if pending is not None and len(pending.clients) < MAX_WAITERS:
            pending.clients.append(client)
            return
        if not self.upstreams or len(self.pending) >= MAX_PENDING:
            self._fail_client(client)
            return
        qid = random.getrandbits(16)
        while qid in self.pending:
            qid = random.getrandbits(16)
        packet = wire.make_query(qid, query.qname, query.qtype, query.qclass,
                                 flags=wire.RD | (query.flags & wire.CD))
        pending = Pending(qid, key, packet)
        pending.clients.append(client)
        self.pending[qid] = pending
        self.by_key[key] = pending
        self._send_next(pending, now)

    def _send_next(self, pending: Pending, now: float) -> None:
        """Try the next upstream; when none is left, SERVFAIL every waiting client."""
        self._close_sockets(pending)
        while True:
            pending.upstream += 1
            if pending.upstream >= len(self.upstreams):
                self._finish(pending)
                self.failures += 1
                if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                    log.warning("no upstream answered %s (%d such failures so far)",
                                wire.decode_name(pending.key[0]) or ".", self.failures)
                for client in pending.clients:
                    self._fail_client(client)
                return
            pending.target = self.upstreams[pending.upstream]
            family = socket.AF_INET6 if ":" in pending.target[0] else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as err:  # out of descriptors: this query fails, the loop lives
                log.warning("cannot open an upstream socket: %s", err.strerror)
                continue
            try:
                sock.setblocking(False)
                sock.connect(pending.target)
                sock.send(pending.packet)
            except OSError:
                sock.close()
                continue  # unreachable right now: the next upstream
            self.selector.register(sock, selectors.EVENT_READ, pending)
            pending.socket = sock
            pending.deadline = now + self.timeout
            return

    def _finish(self, pending: Pending) -> None:
        self._close_sockets(pending)
        self.pending.pop(pending.qid, None)
        if self.by_key.get(pending.key) is pending:
            del self.by_key[pending.key]

    def _close_sockets(self, pending: Pending) -> None:
        sock, pending.socket = pending.socket, None
        if sock is not None:
            self._unregister(sock)
            sock.close()
        self._close_tcp(pending)

    def _fail_client(self, client: Client) -> None:
        self.send(client, wire.build_response(client[2], wire.SERVFAIL, authoritative=False))

    # -- answers and time

    def on_udp_event(self, pending: Pending, now: float) -> None:
        """The upstream socket of `pending` is readable: an answer, or an error."""
        sock = pending.socket
        if sock is None or self.pending.get(pending.qid) is not pending:
            return
        for _ in range(8):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP unreachable: this upstream is down, try the next now
                self._send_next(pending, now)
                return
            parsed = self._check(pending, data)
            if parsed is None:
                continue  # not an answer to this question: keep waiting
            if parsed.flags & wire.TC:
                self._start_tcp(pending, now)
            else:
                self._complete(pending, data, parsed, now)
            return

    def _check(self, pending: Pending, data: bytes) -> wire.Parsed | None:
        """The parsed answer if it answers exactly our question, else None."""
        try:
            parsed = wire.parse_response(data)
        except wire.FormatError:
            return None
        if parsed.id != pending.qid or \
                (parsed.qname.lower(), parsed.qtype, parsed.qclass) != pending.key:
            return None
        return parsed

    def _complete(self, pending: Pending, data: bytes, parsed: wire.Parsed, now: float) -> None:
        if parsed.rcode in RETRY_RCODES and pending.upstream + 1 < len(self.upstreams):
            self._send_next(pending, now)
            return
        self._finish(pending)
        entry = CacheEntry(data, parsed, now, now)
        ttl = cache_ttl(parsed)
        if ttl > 0:
            entry.expires = now + ttl
            if len(self.cache) >= CACHE_ENTRIES:
                self._evict(now)
            self.cache[pending.key] = entry
        for client in pending.clients:
            self.send(client, relay(entry, client[2], client[3], now))

    # -- TCP, when the UDP answer was truncated

    def _start_tcp(self, pending: Pending, now: float) -> None:
        self._close_sockets(pending)
        family = socket.AF_INET6 if ":" in pending.target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(pending.target)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._send_next(pending, now)
            return
        pending.tcp = TcpFetch(pending, sock)
        pending.deadline = now + self.timeout
        self.selector.register(sock, selectors.EVENT_WRITE, pending.tcp)

    def on_tcp_event(self, fetch: TcpFetch, mask: int, now: float) -> None:
        pending = fetch.pending
        if pending.tcp is not fetch:
            return
        sock = fetch.sock
        try:
            if not fetch.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                fetch.connected = True
                sock.send(len(pending.packet).to_bytes(2, "big") + pending.packet)
                self.selector.modify(sock, selectors.EVENT_READ, fetch)
                return
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._send_next(pending, now)
            return
        if not chunk:
            self._send_next(pending, now)
            return
        fetch.inbuf += chunk
        if len(fetch.inbuf) < 2:
            return
        size = (fetch.inbuf[0] << 8) | fetch.inbuf[1]
        if len(fetch.inbuf) < 2 + size:
            return
        data = bytes(fetch.inbuf[2:2 + size])
        parsed = self._check(pending, data)
        if parsed is None:
            self._send_next(pending, now)
            return
        self._close_sockets(pending)
        self._complete(pending, data, parsed, now)

    def _close_tcp(self, pending: Pending) -> None:
        fetch, pending.tcp = pending.tcp, None
        if fetch is not None:
            self._unregister(fetch.sock)
            fetch.sock.close()

    # -- housekeeping

    def _evict(self, now: float) -> None:
        for key in [k for k, e in self.cache.items() if e.expires <= now]:
            del self.cache[key]
        while len(self.cache) >= CACHE_ENTRIES:
            del self.cache[next(iter(self.cache))]  # the oldest insertion

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(p.deadline for p in self.pending.values())

    def on_timer(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            self._send_next(pending, now)
