"""Forwarding to the node's upstream resolvers: health, fail-over, serve-stale.

Never blocks: queries go out on non-blocking UDP sockets the server loop
watches; `on_udp_event` and `on_timer` finish them. Each relayed query gets
a fresh random ID and its own socket (a fresh ephemeral port), connected to
the upstream, so the kernel drops packets from anyone else and reports an
upstream that is down (ICMP unreachable) at once; an answer is accepted only
with that ID and the same question.

Working offline: an upstream that times out or is unreachable is marked
down and gets no client queries; when its back-off (1 s, doubling up to
10 s) has run out, a probe (". NS", as CoreDNS' forward plugin sends) goes
to it in the background, and any answer brings it back. A client query gets
at most `QUERY_BUDGET` seconds of attempts; when no upstream is left to try
it gets the cached answer served stale (see cache.py) or SERVFAIL - at
once when every upstream is known to be down.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket

from . import wire
from .cache import DEFAULT_STALE_FOR, Cache, Entry, Key, cache_key, cache_ttl, relay
from .log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


DEFAULT_TIMEOUT = 1.5    # one attempt at one upstream
QUERY_BUDGET = 3.0       # all attempts for one client query (glibc waits 5 s)
MAX_PENDING = 512        # each holds a socket; the service raises RLIMIT_NOFILE to fit
MAX_WAITERS = 64
BACKOFF_MIN = 1.0
BACKOFF_MAX = 10.0
RETRY_RCODES = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}

# A client waiting for an answer:
# (transport handle, address, query, UDP limit or None, monotonic time it asked)
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


class Upstream:
    """Health of one upstream: down after a failure, probed in the background until it answers."""

    __slots__ = ("target", "label", "failures", "down_until", "trial")

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        host, port = target
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.failures = 0
        self.down_until = 0.0
        self.trial = False


class Stats:
    """Forwarding counters, read by the metrics endpoint."""

    __slots__ = ("requests", "responses", "failures", "cache_hits", "cache_misses", "stale",
                 "servfail", "fast_fail", "tcp_retries")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}                 # upstream -> queries sent
        self.responses: dict[tuple[str, str], int] = {}    # (upstream, rcode) -> answers
        self.failures: dict[tuple[str, str], int] = {}     # (upstream, timeout|unreachable|tcp)
        self.cache_hits = {"success": 0, "denial": 0}
        self.cache_misses = 0
        self.stale = 0        # answers served stale
        self.servfail = 0     # client queries no upstream answered (SERVFAIL sent)
        self.fast_fail = 0    # ... of which failed at once: every upstream known down
        self.tcp_retries = 0  # truncated UDP answers fetched again over TCP


class Pending:
    """One question in flight upstream, and the clients waiting for it."""

    __slots__ = ("qid", "key", "packet", "target", "tried", "started", "deadline", "clients",
                 "socket", "tcp", "probe")

    def __init__(self, qid: int, key: Key, packet: bytes, now: float) -> None:
        self.probe = False
        self.qid = qid
        self.key = key
        self.packet = packet
        self.target: Upstream | None = None
        self.tried: list[Upstream] = []
        self.started = now
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


class Forwarder:
    """Relays queries upstream; `send(client, response)` is called when done.

    Registers its own sockets with the server's selector: UDP ones with their
    `Pending`, TCP fallbacks with their `TcpFetch`.
    """

    def __init__(self, upstreams: list[tuple[str, int]], send: Callable[[Client, bytes], None],
                 selector: selectors.BaseSelector, timeout: float = DEFAULT_TIMEOUT,
                 resolv_conf: str | None = None,
                 exclude: set[tuple[str, int]] | None = None,
                 stale_for: float = DEFAULT_STALE_FOR, budget: float = QUERY_BUDGET) -> None:
        self.send = send
        self.selector = selector
        self.timeout = timeout
        self.budget = max(budget, timeout)
        self.cache = Cache(stale_for=stale_for)
        self.pending: dict[int, Pending] = {}
        self.by_key: dict[Key, Pending] = {}
        self.stats = Stats()
        self.resolv_conf = resolv_conf
        self.exclude = exclude or set()
        self.resolv_signature: Any = self._resolv_signature()
        self.upstreams: list[tuple[str, int]] = []
        self.health: list[Upstream] = []
        self.next_sweep = 0.0
        self.set_upstreams(upstreams)

    def set_upstreams(self, upstreams: list[tuple[str, int]]) -> None:
        known = {u.target: u for u in self.health}
        self.upstreams = list(upstreams)
        self.health = [known.get(t) or Upstream(t) for t in self.upstreams]

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
            # The cache stays: its answers are as good from one uplink as from another.
            self.set_upstreams(found)

    def housekeeping(self, now: float) -> None:
        """Once a second: resolv.conf changes; now and then, entries past their stale window."""
        self.check_resolv_conf()
        self._probe_down_upstreams(now)
        if now >= self.next_sweep:
            self.next_sweep = now + 30.0
            self.cache.sweep(now)

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
        """(relayed answer, seconds the bytes may be reused: 0 when they must not)
        from the cache, or (None, 0)."""
        entry = self.cache.fresh(cache_key(query), now)
        if entry is None:
            self.stats.cache_misses += 1
            return None, 0.0
        self.stats.cache_hits["denial" if entry.negative else "success"] += 1
        reuse = 0.0 if entry.run is not None else entry.expires - now  # rotating: never reused
        return relay(entry, query, limit, now), reuse

    def ask(self, query: wire.Query, client: Client, now: float) -> None:
        """Send the query upstream (or join one already in flight for the same question)."""
        key = cache_key(query)
        pending = self.by_key.get(key)
        if pending is not None and len(pending.clients) < MAX_WAITERS:
            pending.clients.append(client)
            return
        if len(self.pending) >= MAX_PENDING or not any(u.failures == 0 for u in self.health):
            self._give_up_clients(key, [client], now)  # offline: stale or SERVFAIL at once
            return
        qid = self._new_id()
        packet = wire.make_query(qid, query.qname, query.qtype, query.qclass,
                                 flags=wire.RD | (query.flags & wire.CD),
                                 do_bit=query.edns_do, options=key[5])
        pending = Pending(qid, key, packet, now)
        pending.clients.append(client)
        self.pending[qid] = pending
        self.by_key[key] = pending
        self._send_next(pending, now)

    def _new_id(self) -> int:
        # os.urandom: unpredictable IDs (spoofing), and no `random` module (and the
        # hashlib it imports) resident in the service
        qid = int.from_bytes(os.urandom(2), "big")
        while qid in self.pending:
            qid = int.from_bytes(os.urandom(2), "big")
        return qid

    def _choose(self, pending: Pending, now: float) -> Upstream | None:
        """The first upstream not yet tried for this query and not known to be down."""
        if pending.probe:
            return None if pending.tried else pending.target
        for upstream in self.health:
            if upstream.failures == 0 and upstream not in pending.tried:
                return upstream
        return None

    def _probe_down_upstreams(self, now: float) -> None:
        """A background query to each down upstream whose back-off has run out."""
        for upstream in self.health:
            if upstream.failures and not upstream.trial and upstream.down_until <= now \
                    and len(self.pending) < MAX_PENDING:
                upstream.trial = True
                qid = self._new_id()
                packet = wire.make_query(qid, b"\x00", wire.NS, wire.CLASS_IN, flags=0)
                pending = Pending(qid, (b"\x00", wire.NS, wire.CLASS_IN), packet, now)
                pending.probe = True
                pending.target = upstream
                self.pending[qid] = pending
                self._send_next(pending, now)

    def _send_next(self, pending: Pending, now: float) -> None:
        """Try the next upstream; when none is left, stale answers or SERVFAIL."""
        self._close_sockets(pending)
        end = pending.started + self.budget
        while now < end:
            upstream = self._choose(pending, now)
            if upstream is None:
                break
            pending.tried.append(upstream)
            target = upstream.target
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as err:  # out of descriptors: this query fails, the loop lives
                log.warning("cannot open an upstream socket: %s", err.strerror)
                upstream.trial = False
                break
            try:
                sock.setblocking(False)
                sock.connect(target)
                sock.send(pending.packet)
            except OSError:
                sock.close()
                self._failed(upstream, now, "unreachable")
                continue  # unreachable right now: the next upstream
            requests = self.stats.requests
            requests[upstream.label] = requests.get(upstream.label, 0) + 1
            self.selector.register(sock, selectors.EVENT_READ, pending)
            pending.socket = sock
            pending.target = upstream
            pending.deadline = min(now + self.timeout, end)
            return
        self._finish(pending)
        if not pending.probe:
            self._give_up_clients(pending.key, pending.clients, now, bool(pending.tried))

    def _give_up_clients(self, key: Key, clients: list[Client], now: float,
                         tried: bool = False) -> None:
        """No upstream answered: serve the stale answer if there is one, else SERVFAIL."""
        stats = self.stats
        entry = self.cache.stale(key, now)
        if entry is not None:
            stats.stale += len(clients)
            for client in clients:
                self.send(client, relay(entry, client[2], client[3], now, stale=True))
            return
        stats.servfail += len(clients)
        if not tried:
            stats.fast_fail += len(clients)
        if stats.servfail in (1, 10, 100) or stats.servfail % 1000 == 0:
            log.warning("no upstream answered %s (%d such failures so far)",
                        wire.decode_name(key[0]) or ".", stats.servfail)
        for client in clients:
            self._fail_client(client)

    def _failed(self, upstream: Upstream, now: float, reason: str) -> None:
        """An upstream timed out or is unreachable: skip it for a while."""
        key = (upstream.label, reason)
        self.stats.failures[key] = self.stats.failures.get(key, 0) + 1
        upstream.trial = False
        upstream.failures += 1
        backoff = min(BACKOFF_MIN * 2 ** (upstream.failures - 1), BACKOFF_MAX)
        upstream.down_until = now + backoff
        if upstream.failures == 1:
            log.warning("upstream %s %s: skipped, tried again in %.0f s and then backing off",
                        upstream.label, "does not answer" if reason == "timeout"
                        else "is unreachable", backoff)

    def _answered(self, upstream: Upstream, rcode: int) -> None:
        key = (upstream.label, RCODE_NAMES.get(rcode, str(rcode)))
        self.stats.responses[key] = self.stats.responses.get(key, 0) + 1
        upstream.trial = False
        if upstream.failures:
            log.info("upstream %s answers again", upstream.label)
            upstream.failures = 0
            upstream.down_until = 0.0

    def _finish(self, pending: Pending) -> None:
        self._close_sockets(pending)
        self.pending.pop(pending.qid, None)
        if self.by_key.get(pending.key) is pending:
            del self.by_key[pending.key]
        if pending.probe and pending.target is not None:
            pending.target.trial = False  # a probe that ended without a verdict

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
                if pending.target is not None:
                    self._failed(pending.target, now, "unreachable")
                self._send_next(pending, now)
                return
            parsed = self._check(pending, data)
            if parsed is None:
                continue  # not an answer to this question: keep waiting
            if parsed.flags & wire.TC and not pending.probe:
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
                (parsed.qname.lower(), parsed.qtype, parsed.qclass) != pending.key[:3]:
            return None
        return parsed

    def _complete(self, pending: Pending, data: bytes, parsed: wire.Parsed, now: float) -> None:
        if pending.target is not None:
            self._answered(pending.target, parsed.rcode)
        if pending.probe:
            self._finish(pending)
            return
        # Another upstream may do better; failing that, a stale answer beats SERVFAIL.
        if parsed.rcode in RETRY_RCODES and (
                any(u not in pending.tried and u.failures == 0 for u in self.health)
                or self.cache.stale(pending.key, now) is not None):
            self._send_next(pending, now)
            return
        self._finish(pending)
        ttl, negative = cache_ttl(parsed, data)
        entry = Entry(data, parsed, now, now + ttl, negative)
        if ttl > 0:
            self.cache.put(pending.key, entry)
        for client in pending.clients:
            self.send(client, relay(entry, client[2], client[3], now))

    # -- TCP, when the UDP answer was truncated

    def _start_tcp(self, pending: Pending, now: float) -> None:
        self._close_sockets(pending)
        self.stats.tcp_retries += 1
        target = pending.target
        assert target is not None
        family = socket.AF_INET6 if ":" in target.target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(target.target)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._tcp_failed(pending, now)
            return
        pending.tcp = TcpFetch(pending, sock)
        pending.deadline = min(now + self.timeout, pending.started + self.budget)
        self.selector.register(sock, selectors.EVENT_WRITE, pending.tcp)

    def _tcp_failed(self, pending: Pending, now: float) -> None:
        if pending.target is not None:
            key = (pending.target.label, "tcp")
            self.stats.failures[key] = self.stats.failures.get(key, 0) + 1
        self._send_next(pending, now)

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
            self._tcp_failed(pending, now)
            return
        if not chunk:
            self._tcp_failed(pending, now)
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
            self._tcp_failed(pending, now)
            return
        self._close_sockets(pending)
        self._complete(pending, data, parsed, now)

    def _close_tcp(self, pending: Pending) -> None:
        fetch, pending.tcp = pending.tcp, None
        if fetch is not None:
            self._unregister(fetch.sock)
            fetch.sock.close()

    # -- time

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(p.deadline for p in self.pending.values())

    def on_timer(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            if pending.tcp is not None:
                self._tcp_failed(pending, now)
                continue
            if pending.target is not None:
                self._failed(pending.target, now, "timeout")
            self._send_next(pending, now)
