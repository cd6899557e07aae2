"""Forwarding to the node's upstream resolvers, with a small TTL-respecting cache.

Never blocks: queries go out on non-blocking UDP sockets the server loop
watches; `on_readable` and `on_timer` finish them. Each relayed query gets
a fresh random ID and a random one of several source ports, and an answer
is accepted only from the upstream it was sent to, with that ID and the
same question. A query that gets no answer within `timeout` moves to the
next upstream; when all have failed the clients get SERVFAIL.
"""

from __future__ import annotations

import logging
import random
import socket
import struct

from . import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

log = logging.getLogger("smarter-cni.dns")

DEFAULT_TIMEOUT = 2.0
SOCKETS_PER_FAMILY = 4
MAX_PENDING = 1024
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
    __slots__ = ("qid", "key", "packet", "upstream", "deadline", "clients", "socket")

    def __init__(self, qid: int, key: tuple[bytes, int, int], packet: bytes) -> None:
        self.qid = qid
        self.key = key
        self.packet = packet
        self.upstream = -1
        self.deadline = 0.0
        self.clients: list[Client] = []
        self.socket: Any = None


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
    """Relays queries upstream; `send(client, response)` is called when done."""

    def __init__(self, upstreams: list[tuple[str, int]], send: Callable[[Client, bytes], None],
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.upstreams = list(upstreams)
        self.send = send
        self.timeout = timeout
        self.cache: dict[tuple[bytes, int, int], CacheEntry] = {}
        self.pending: dict[int, Pending] = {}
        self.by_key: dict[tuple[bytes, int, int], Pending] = {}
        self.sockets: dict[int, list[socket.socket]] = {}
        self.failures = 0

    def open_sockets(self) -> list[socket.socket]:
        """Non-blocking sockets for each upstream address family (for the selector)."""
        opened = []
        for family in {socket.AF_INET6 if ":" in host else socket.AF_INET
                       for host, _ in self.upstreams}:
            if family in self.sockets:
                continue
            pool = []
            for _ in range(SOCKETS_PER_FAMILY):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                pool.append(sock)
            self.sockets[family] = pool
            opened.extend(pool)
        return opened

    def close(self) -> None:
        for pool in self.sockets.values():
            for sock in pool:
                sock.close()
        self.sockets.clear()

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
            host, port = self.upstreams[pending.upstream]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            pool = self.sockets.get(family)
            if not pool:
                continue
            sock = random.choice(pool)
            try:
                sock.sendto(pending.packet, (host, port))
            except OSError:
                continue  # unreachable right now: the next upstream
            pending.socket = sock
            pending.deadline = now + self.timeout
            return

    def _finish(self, pending: Pending) -> None:
        self.pending.pop(pending.qid, None)
        if self.by_key.get(pending.key) is pending:
            del self.by_key[pending.key]

    def _fail_client(self, client: Client) -> None:
        self.send(client, wire.build_response(client[2], wire.SERVFAIL, authoritative=False))

    # -- answers and time

    def on_readable(self, sock: socket.socket, now: float) -> None:
        for _ in range(64):
            try:
                data, address = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP port unreachable reported on this socket
            self._on_answer(sock, data, address, now)

    def _on_answer(self, sock: socket.socket, data: bytes, address: Any, now: float) -> None:
        if len(data) < 12:
            return
        pending = self.pending.get(struct.unpack_from("!H", data)[0])
        if pending is None or pending.socket is not sock:
            return
        host, port = self.upstreams[pending.upstream]
        if address[0] != host or address[1] != port:
            return
        try:
            parsed = wire.parse_response(data)
        except wire.FormatError:
            return
        if (parsed.qname.lower(), parsed.qtype, parsed.qclass) != pending.key:
            return
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
