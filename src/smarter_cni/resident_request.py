"""One request in a resident worker (resident.py): the handshake, the guard, the run, the reply.

The protocol is client.py's (see its docstring). A worker runs requests one after another
in its own, already-imported process, so each request gets what an exec would give it:
its own environment (and the worker's back afterwards), an error reply instead of the
worker's end when it fails, and an end where a killed plugin's would end: when the
client goes away mid-request (the runtime killed the exec and may be running DEL) or
the request runs past the watchdog, the worker leaves at once (`os._exit`) and the
pool forks a fresh one.

The guard costs two fcntl calls and a timer per request, not a thread: the client's
socket is put in O_ASYNC mode, so its closing raises SIGIO in the worker, and an
interval timer raises SIGALRM at the watchdog. Both handlers run in the worker's only
thread between two bytecodes, interrupting any blocking call (flock, netlink, a child
process) as a signal does.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys
import time

from . import dataplane, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# client.py's own copy (it imports built-ins only); tests/unit/test_resident_warm.py checks
# that the two agree, as it does for the socket and mark names in paths.py.
MAGIC = b"SCNI1"
MAX_ENV = 1 << 20
MAX_STDIN = 16 << 20
HANDSHAKE_TIMEOUT = 0.5  # a client that connected but never says "go" must not hold a worker
LEFT_CODE = 70  # a worker's exit status when the guard ended it mid-request


def peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, bytes] | None:
    """(environment, stdin, bytes after the request) of one request, or None for anything
    that is not one. The client sends its request in one write, so one or two recv calls
    read it whole."""
    data = bytearray()
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 64:
            return None
        data += chunk
    end = data.index(b"\n")
    parts = bytes(data[:end]).split()
    if len(parts) != 3 or parts[0] != MAGIC or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    env_size, stdin_size = int(parts[1]), int(parts[2])
    if env_size > MAX_ENV or stdin_size > MAX_STDIN:
        return None
    need = end + 1 + env_size + stdin_size
    while len(data) < need:
        chunk = conn.recv(min(need - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    env_raw = bytes(data[end + 1:end + 1 + env_size])
    stdin = bytes(data[end + 1 + env_size:need])
    environ = {}
    for item in env_raw.split(b"\0") if env_raw else ():
        key, sep, value = item.partition(b"=")
        if sep:
            environ[os.fsdecode(key)] = os.fsdecode(value)
    return environ, stdin, bytes(data[need:])


def client_gone(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def leave(reason: str) -> None:
    """End this worker now, as a killed plugin's process ends; the pool replaces it.

    Unlike that process, the worker may have gone on for a moment after its client died
    while the runtime's DEL ran: an ADD's `dataplane.abandon` gives back what it made since."""
    try:
        os.write(2, f"resident: worker {os.getpid()}: {reason}: ending this worker\n".encode())
        if dataplane.abandon is not None:
            dataplane.abandon()
    finally:
        os._exit(LEFT_CODE)


class Guard:
    """While a request runs: the client gone or the watchdog passed -> leave()."""

    def __init__(self, conn: socket.socket, watchdog: float) -> None:
        self.conn = conn
        self.watchdog = watchdog
        self.saved: list[Any] = []

    def check(self) -> None:
        """store.before_save: under the state lock, no write for a client that is gone (a
        DEL that starts after it died either finds the record or never sees it written)."""
        if client_gone(self.conn):
            leave("client gone before the state write")

    def _on_io(self, signum: int, frame: Any) -> None:
        if client_gone(self.conn):
            leave("client gone mid-request")

    def _on_alarm(self, signum: int, frame: Any) -> None:
        leave(f"a request ran longer than {self.watchdog:g} s")

    def __enter__(self) -> Guard:
        fd = self.conn.fileno()
        self.saved = [signal.signal(signal.SIGIO, self._on_io),
                      signal.signal(signal.SIGALRM, self._on_alarm)]
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        signal.setitimer(signal.ITIMER_REAL, self.watchdog)
        store.before_save = self.check
        self.check()  # gone before the signal was armed
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        fd = self.conn.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_ASYNC)
        store.before_save = None
        signal.signal(signal.SIGIO, self.saved[0])
        signal.signal(signal.SIGALRM, self.saved[1])


def swap_environment(new: dict[str, str]) -> dict[str, str | None]:
    """Make os.environ `new`, changing only what differs; returns what undoes it."""
    env = os.environ
    undo: dict[str, str | None] = {}
    for key in [key for key in env if key not in new]:
        undo[key] = env[key]
        del env[key]
    for key, value in new.items():
        old = env.get(key)
        if old != value:
            undo[key] = old
            env[key] = value
    return undo


def restore_environment(undo: dict[str, str | None], base: dict[str, str]) -> None:
    env = os.environ
    for key, value in undo.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if env != base:  # the request changed the environment itself
        env.clear()
        env.update(base)


def handlers_for(environ: Any, default: Any = None) -> Any:
    """The handler table of the plugin the client names (client.PLUGIN_ENV): `default`
    (else smarter-cni's) when it names none or smarter-cni, loopback's for "loopback", and
    for any other name a table that answers with a CNI error (code 4)."""
    from . import client

    name = environ.get(client.PLUGIN_ENV.decode()) or client.DEFAULT_PLUGIN
    if name == client.DEFAULT_PLUGIN and default is not None:
        return default
    return client.plugin_handlers(name)


def serve_request(conn: socket.socket, dispatch: Any, handlers: Any, verbose: bool,
                  base_env: dict[str, str], watchdog: float) -> None:
    """One request on `conn`: handshake, then the plugin run with the client's env and stdin."""
    import io

    conn.settimeout(HANDSHAKE_TIMEOUT)
    try:
        if not peer_allowed(conn):
            return
        request = read_request(conn)
        if request is None:
            return
        environ, stdin, early = request
        conn.sendall(b"A")
        if (early or conn.recv(1))[:1] != b"G":
            return  # the client gave up and does the work itself
    except OSError:
        return
    conn.settimeout(None)  # blocking: MSG_DONTWAIT peeks must not wait for a timeout
    started = time.monotonic()
    out = io.StringIO()
    with Guard(conn, watchdog):
        undo = swap_environment(environ)  # as if exec'd by the runtime: the plugin's own env
        try:
            code = dispatch.run(handlers_for(environ, handlers), environ=os.environ,
                                stdin=stdin, out=out)
        finally:
            restore_environment(undo, base_env)
    data = out.getvalue().encode()
    if verbose:
        sys.stderr.write(f"resident: {environ.get('CNI_COMMAND', '?')} "
                         f"{environ.get('CNI_CONTAINERID', '')[:12]} -> {code} "
                         f"({(time.monotonic() - started) * 1000:.2f} ms)\n")
        sys.stderr.flush()
    if "logging" in sys.modules:  # the repair path logs through handlers that buffer
        for handler in sys.modules["logging"].getLogger().handlers:
            handler.flush()
    try:
        conn.sendall(b"R %d %d\n" % (code, len(data)) + data)
    except OSError:  # the client was killed after the work: it stands, as a killed plugin's
        pass
