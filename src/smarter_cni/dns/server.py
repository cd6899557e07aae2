"""The server loop: UDP and TCP on one address, one thread, non-blocking.

Each wake-up first reads everything that is waiting, then checks the
registry file (one `stat`: the plugin replaces it by rename, so any change
shows as a new inode/mtime/size), then answers. A query that arrived after
ADD returned is therefore always answered from a registry that has the pod.
Answers are cached as wire bytes keyed by the query minus its ID, so a
repeated question costs a dict lookup and a sendto.
"""

from __future__ import annotations

import errno
import gc
import os
import selectors
import socket
import time

from .. import store
from . import wire
from .answers import Names
from .cache import DEFAULT_STALE_FOR
from .forwarder import DEFAULT_TIMEOUT, Client, Forwarder, Pending, TcpFetch
from .log import log
from .metrics import Counts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .acl import Acl


UDP_BATCH = 64
FAST_CACHE_LIMIT = 4096      # complete answers kept per transport (~300 B each), then cleared
FORWARDED_FAST_TTL = 1.0     # how stale a byte-cached forwarded answer's TTLs may get
TCP_MAX_CONNECTIONS = 64
TCP_IDLE_TIMEOUT = 10.0
TCP_MAX_OUTPUT = 256 * 1024
TCP_BACKLOG = 64
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
FOREVER = float("inf")
IDLE_TICK = 0.2


class Conn:
    """One TCP client: 2-byte length framing, several queries per connection."""

    __slots__ = ("sock", "source", "inbuf", "outbuf", "active", "closed")

    def __init__(self, sock: socket.socket, source: str, now: float) -> None:
        self.sock = sock
        self.source = source
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.active = now
        self.closed = False


class Stats:
    __slots__ = ("queries", "cached", "misses", "forwarded", "refused", "malformed", "reloads",
                 "registry_errors", "errors")

    def __init__(self) -> None:
        self.queries = self.cached = self.misses = self.forwarded = 0
        self.refused = self.malformed = self.reloads = self.registry_errors = self.errors = 0

    def __str__(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)


class Server:
    def __init__(self, listen: str, port: int, state_dir: str, domain: str,
                 subnet: int, prefix: int, acl: Acl, upstreams: list[tuple[str, int]],
                 upstream_timeout: float = DEFAULT_TIMEOUT, resolv_conf: str | None = None,
                 stale_for: float = DEFAULT_STALE_FOR,
                 metrics_at: tuple[str, int] | None = None) -> None:
        self.listen = listen
        self.port = port
        self.state_dir = state_dir
        self.registry_path = store.records_path(state_dir)
        self.domain = domain
        self.subnet = subnet
        self.prefix = prefix
        self.acl = acl
        self.stats = Stats()
        self.counts = Counts()        # answers by (proto, qtype, rcode), for /metrics
        # time from reading a query to its answer, per query type
        self.latency = self.counts.latency
        self.server_label = f"dns://{listen}:{port}"
        self.stop = False
        self.log_stats = False  # set by SIGUSR1
        self.names = Names(domain, subnet, prefix)
        self.memo: dict[str, Any] = {}  # attachment key -> (record, encoded contribution)
        self.signature: Any = ()
        # query minus ID -> (response minus ID, valid until, Counts slot, Latency kind)
        self.udp_cache: dict[bytes, tuple[bytes, float, int, int]] = {}
        self.tcp_cache: dict[bytes, tuple[bytes, float, int, int]] = {}
        self.turns: dict[bytes, int] = {}  # name -> answers given, for rotating several A records
        self.conns: dict[int, Conn] = {}
        self.selector = selectors.DefaultSelector()
        self.forwarder = Forwarder(upstreams, self._deliver, self.selector, upstream_timeout,
                                   resolv_conf, {(listen, port), (listen, 53)}, stale_for)
        self.udp = self._bind(socket.SOCK_DGRAM)
        self.tcp = self._bind(socket.SOCK_STREAM)
        self.tcp.listen(TCP_BACKLOG)
        self.selector.register(self.udp, selectors.EVENT_READ, "udp")
        self.selector.register(self.tcp, selectors.EVENT_READ, "accept")
        self.wake_fd = -1
        self.http: Any = None
        if metrics_at is not None:
            self.start_http(*metrics_at)
        self.refresh_registry()

    def start_http(self, address: str, port: int) -> bool:
        """Serve /metrics, /healthz, /readyz; a port in use costs the metrics, not the DNS."""
        from .health import Endpoint

        try:
            self.http = Endpoint(self, address, port)
        except OSError as err:
            log.error("cannot serve metrics and health on %s:%d: %s (DNS is served "
                      "regardless; set --metrics ADDR:PORT or --metrics off)",
                      address, port, err.strerror)
            return False
        return True

    def _bind(self, kind: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.listen else socket.AF_INET  # dns/listen6.py
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.setblocking(False)
            sock.bind((self.listen, self.port))
        except OSError:
            sock.close()
            raise
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return sock

    def watch_fd(self, fd: int) -> None:
        """Wake the loop when `fd` is readable (the signal wake-up pipe)."""
        self.wake_fd = fd
        self.selector.register(fd, selectors.EVENT_READ, "wake")

    # -- the registry

    def refresh_registry(self) -> None:
        """Reload the pod names if the registry file was replaced since last time."""
        try:
            st = os.stat(self.registry_path)
            signature: Any = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        except OSError as err:
            signature = ("error", err.errno)
        if Names.services is not None:  # a changed Service clears the answer caches too
            signature = (signature, Names.services.generation)
        if signature == self.signature:
            return
        started = time.perf_counter()
        try:
            records = store.load(self.state_dir)["attachments"]
            names = Names.from_records(records, self.domain, self.subnet, self.prefix,
                                       int(time.time()), self.memo)
        except Exception as err:  # a bad file keeps the last good names
            log.warning("cannot read the registry %s: %s", self.registry_path, err)
            self.signature = signature
            self.stats.registry_errors += 1
            return
        self.signature = signature
        self.names = names
        self.udp_cache.clear()
        self.tcp_cache.clear()
        self.turns.clear()
        self.stats.reloads += 1
        # The tables are long-lived and acyclic: keep the cyclic collector from
        # rescanning them while it chases the loop's short-lived tuples.
        gc.freeze()
        log.debug("registry reloaded: %d names in %.1f ms", self.names.count,
                  (time.perf_counter() - started) * 1000)

    # -- the loop

    def serve_forever(self) -> None:
        select = self.selector.select
        udp = self.udp
        sendto = udp.sendto
        recvfrom = udp.recvfrom
        udp_cache = self.udp_cache
        allowed = self.acl.allowed
        stats = self.stats
        counts = self.counts.values
        timed = self.latency.pending  # answers of this batch, per query type
        flush = self.latency.flush
        monotonic = time.monotonic
        next_sweep = time.monotonic() + 1.0
        while not self.stop:
            # Waking now and then while idle reloads a changed registry before
            # the new pod's first query arrives (that query's own wake-up
            # checks again, so correctness never depends on this tick).
            timeout = min(next_sweep - time.monotonic(), IDLE_TICK)
            deadline = self.forwarder.next_deadline()
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            events = select(max(timeout, 0.0))
            now = time.monotonic()
            batch: list[tuple[bytes, Any]] = []
            frames: list[tuple[Conn, bytes]] = []
            upstream: list[Any] = []
            for key, mask in events:
                what = key.data
                if what == "udp":
                    for _ in range(UDP_BATCH):
                        try:
                            batch.append(recvfrom(4096))
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            continue
                elif isinstance(what, Pending):
                    upstream.append(what)
                elif what == "accept":
                    self._accept(now)
                elif what == "wake":
                    try:
                        os.read(self.wake_fd, 512)
                    except OSError:
                        pass
                elif isinstance(what, TcpFetch):
                    try:
                        self.forwarder.on_tcp_event(what, mask, now)
                    except Exception as err:
                        self._bug(err)
                elif isinstance(what, Conn):
                    try:
                        self._on_conn_event(what, mask, now, frames)
                    except Exception as err:
                        self._bug(err)
                else:  # the HTTP endpoint, its clients, readiness probes
                    try:
                        what.on_event(mask, now)
                    except Exception as err:
                        self._bug(err)
            # Read first, then check the registry: nothing read above predates this stat.
            self.refresh_registry()
            hits = 0
            for data, address in batch:
                if address[0] in allowed:
                    hit = udp_cache.get(data[2:])
                    if hit is not None and hit[1] > now:
                        hits += 1
                        counts[hit[2]] += 1
                        timed[hit[3]] += 1
                        try:
                            sendto(data[:2] + hit[0], address)
                        except OSError:
                            pass
                        continue
                try:
                    self._answer(data, (udp, address), now)
                except Exception as err:  # a bug must cost one query, not the node's DNS
                    self._bug(err)
            stats.queries += len(batch)
            stats.cached += hits
            for conn, frame in frames:
                if not conn.closed:
                    stats.queries += 1
                    try:
                        self._answer(frame, (conn, None), now)
                    except Exception as err:
                        self._bug(err)
            if batch or frames:
                # Each answer's time is at most the batch's: read at `now`, all sent by now.
                # (Forwarded queries are not in `pending`: _deliver times them.)
                flush(monotonic() - now)
            for pending in upstream:
                try:
                    self.forwarder.on_udp_event(pending, now)
                except Exception as err:
                    self._bug(err)
            if deadline is not None and deadline <= now:
                try:
                    self.forwarder.on_timer(now)
                except Exception as err:
                    self._bug(err)
            http = self.http
            if http is not None and http.probes:
                http.tick(now)
            if now >= next_sweep:
                next_sweep = now + 1.0
                self._sweep_idle(now)
                if http is not None:
                    http.tick(now)
                self.forwarder.housekeeping(now)
                if self.log_stats:
                    self.log_stats = False
                    log.info("stats: %s; %d names; %d TCP clients; %d cached upstream answers",
                             self.stats, self.names.count, len(self.conns),
                             len(self.forwarder.cache))

    def _bug(self, err: Exception) -> None:
        self.stats.errors += 1
        if self.stats.errors <= 10 or self.stats.errors % 1000 == 0:
            log.error("internal error (#%d), the query was dropped: %r", self.stats.errors, err)
            log.debug("details", exc_info=err)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        for conn in list(self.conns.values()):
            self._close_conn(conn)
        self.forwarder.close()
        self.selector.close()
        self.udp.close()
        self.tcp.close()

    # -- answering

    def _answer(self, data: bytes, where: tuple[Any, Any], now: float) -> None:
        """Slow path: parse, ACL, answer or forward; cache what can be cached."""
        transport, address = where
        is_udp = address is not None
        proto = "udp" if is_udp else "tcp"
        source = address[0] if is_udp else transport.source
        if not self.acl.allows(source, now):
            self.stats.refused += 1
            self._reply(where, proto, -1, wire.REFUSED, wire.error_response(data, wire.REFUSED))
            return
        cache = self.udp_cache if is_udp else self.tcp_cache
        if not is_udp:
            hit = cache.get(data[2:])
            if hit is not None and hit[1] > now:
                self.stats.cached += 1
                self.counts.values[hit[2]] += 1
                self.latency.pending[hit[3]] += 1
                self._send(where, data[:2] + hit[0])
                return
        self.stats.misses += 1
        try:
            query = wire.parse_query(data)
        except wire.FormatError:
            self.stats.malformed += 1
            self._reply(where, proto, -1, wire.FORMERR, wire.error_response(data, wire.FORMERR))
            return
        if query.flags & wire.QR:
            return  # never answer a response
        if query.opcode != 0:
            self._reply(where, proto, query.qtype, wire.NOTIMP,
                        wire.error_response(data, wire.NOTIMP))
            return
        limit = query.udp_limit() if is_udp else None
        if len(cache) >= FAST_CACHE_LIMIT:
            cache.clear()  # e.g. a stream of queries with random EDNS cookies
        if query.edns and query.edns_version > 0:
            self._reply(where, proto, query.qtype, wire.BADVERS,
                        wire.build_response(query, wire.BADVERS, authoritative=False))
            return
        answer = self.names.answer(query)
        if answer is not None:
            records = answer.answers
            if len(records) > 1:
                # Several pods with one name: rotate one step per answer, so
                # clients that take the first address spread over them.
                turn = self.turns.get(query.key, 0)
                self.turns[query.key] = turn + 1
                shift = turn % len(records)
                records = records[shift:] + records[:shift]
            response = wire.build_response(query, answer.rcode, records,
                                           answer.authority, True, limit)
            slot, kind = self._count(proto, query.qtype, answer.rcode)
            if len(records) <= 1:
                cache[data[2:]] = (response[2:], FOREVER, slot, kind)
            self._send(where, response)
            return
        self.stats.forwarded += 1
        response, valid = self.forwarder.cached(query, limit, now)
        if response is not None:
            slot, kind = self._count(proto, query.qtype, response[3] & 0xF)
            if valid > 0:
                cache[data[2:]] = (response[2:], now + min(valid, FORWARDED_FAST_TTL), slot,
                                   kind)
            self._send(where, response)
            return
        self.forwarder.ask(query, (transport, address, query, limit, now), now)

    def _reply(self, where: tuple[Any, Any], proto: str, qtype: int, rcode: int,
               response: bytes | None) -> None:
        """An error answer, counted (none is sent for packets too short to answer)."""
        if response is not None:
            self._count(proto, qtype, rcode)
        self._send(where, response)

    def _count(self, proto: str, qtype: int, rcode: int) -> tuple[int, int]:
        """An answer given in this turn of the loop (timed with its batch):
        its Counts slot and Latency kind."""
        counts = self.counts
        slot = counts.slot(proto, qtype, rcode)
        counts.values[slot] += 1
        kind = counts.kinds[slot]
        self.latency.pending[kind] += 1
        return slot, kind

    def _deliver(self, client: Client, response: bytes) -> None:
        """A forwarded query's answer (or SERVFAIL, or a stale answer) is ready."""
        counts = self.counts
        slot = counts.slot("udp" if client[1] is not None else "tcp", client[2].qtype,
                           response[3] & 0xF)
        counts.values[slot] += 1
        self.latency.observe(counts.kinds[slot], time.monotonic() - client[4])
        self._send((client[0], client[1]), response)

    def _send(self, where: tuple[Any, Any], response: bytes | None) -> None:
        if response is None:
            return
        transport, address = where
        if address is not None:
            try:
                transport.sendto(response, address)
            except OSError:
                pass
            return
        conn: Conn = transport
        if conn.closed:
            return
        conn.outbuf += len(response).to_bytes(2, "big") + response
        self._flush(conn)

    # -- TCP

    def _accept(self, now: float) -> None:
        for _ in range(16):
            try:
                sock, address = self.tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("out of file descriptors accepting TCP connections")
                return
            if len(self.conns) >= TCP_MAX_CONNECTIONS:
                # Make room by dropping the longest-idle client: slow or half-open
                # clients cannot lock out new ones.
                oldest = min(self.conns.values(), key=lambda c: c.active)
                self._close_conn(oldest)
            sock.setblocking(False)
            conn = Conn(sock, address[0], now)
            self.conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _on_conn_event(self, conn: Conn, mask: int, now: float,
                       frames: list[tuple[Conn, bytes]]) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if not mask & selectors.EVENT_READ or conn.closed:
            return
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_conn(conn)
            return
        if not chunk:
            self._close_conn(conn)
            return
        conn.active = now
        conn.inbuf += chunk
        while len(conn.inbuf) >= 2:
            size = (conn.inbuf[0] << 8) | conn.inbuf[1]
            if size < 12:
                self._close_conn(conn)  # cannot be a DNS message: drop the client
                return
            if len(conn.inbuf) < 2 + size:
                break
            frames.append((conn, bytes(conn.inbuf[2:2 + size])))
            del conn.inbuf[:2 + size]

    def _flush(self, conn: Conn) -> None:
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close_conn(conn)
                return
        if len(conn.outbuf) > TCP_MAX_OUTPUT:
            self._close_conn(conn)  # the client does not read its answers
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        try:
            if self.selector.get_key(conn.sock).events != events:
                self.selector.modify(conn.sock, events, conn)
        except (KeyError, ValueError):
            pass

    def _close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _sweep_idle(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if now - c.active > TCP_IDLE_TIMEOUT]:
            self._close_conn(conn)
