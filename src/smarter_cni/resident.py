"""The resident plugin server: does a thin client's CNI work without an exec.

One process (started and restarted by the DNS service, or run alone:
`python -m smarter_cni.resident --state-dir DIR [--mode warm|fork]`) with the
plugin's modules already imported. Two modes (SMARTER_CNI_RESIDENT_MODE):

warm (default): each request runs in this process, one at a time; the others
wait in the listen backlog, and a client not acknowledged within
client.ACK_TIMEOUT does the work itself. Per request the environment is the
request's and then the server's again; an exception is the client's CNI
error, never the server's end; a thread watches the client and the clock: the
client gone (killed) or a request longer than the watchdog re-executes the
server (same PID, fresh image), which stops the work where a killed plugin's
would stop. netlink.pod_socket always steps back to the host netns (or ends
the process). Measured ~6 ms faster per ADD than the exec (docs/internals.md).

fork: per connection a pre-forked worker reads the request, acknowledges it,
waits for the client's "go", runs it and leaves; a crash, hang or leak ends
with that child, and a SIGKILLed server does not take running requests with it.

The socket is `<state dir>/plugin.sock`, mode 0600, and the peer must be
root or this process's user (SO_PEERCRED). Both this path and the client's
in-process fallback take the store's flock, which serialises them.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time

from .paths import PLUGIN_SOCKET as SOCKET_NAME
from .paths import PLUGIN_UNRESPONSIVE as UNRESPONSIVE_NAME

# client.py's own copy (it imports built-ins only); tests/unit/test_resident_warm.py checks
# that the two agree, as it does for the socket and mark names in paths.py.
MAGIC = b"SCNI1"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_ENV = 1 << 20
MAX_STDIN = 16 << 20
SPARE = 2  # idle workers waiting in accept()
HANDSHAKE_TIMEOUT = 5.0  # a client that connected but never says "go" is dropped
MODE_ENV = "SMARTER_CNI_RESIDENT_MODE"  # "warm" (default) or "fork"
MODES = ("warm", "fork")
UNMARK_AFTER = 0.25  # seconds without a connection before the server clears the mark: in a
# storm of concurrent pods the clients stay in-process, instead of each waiting ACK_TIMEOUT
WARM_HANDSHAKE_TIMEOUT = 0.5  # one request at a time: a silent client must not hold the rest
WATCHDOG = 60.0  # seconds: a warm request running longer gets the server replaced (re-exec)
WATCHDOG_ENV = "SMARTER_CNI_RESIDENT_WATCHDOG"  # seconds, overrides WATCHDOG (tests)


def watchdog_seconds() -> float:
    try:
        value = float(os.environ.get(WATCHDOG_ENV, ""))
    except ValueError:
        return WATCHDOG
    return value if value > 0 else WATCHDOG


def handlers_for(environ: Any, default: Any = None) -> Any:
    """The handler table of the plugin the client names (client.PLUGIN_ENV): `default`
    (else smarter-cni's) when it names none or smarter-cni, loopback's for "loopback", and
    for any other name a table that answers with a CNI error (code 4)."""
    from . import client

    name = environ.get(client.PLUGIN_ENV.decode()) or client.DEFAULT_PLUGIN
    if name == client.DEFAULT_PLUGIN and default is not None:
        return default
    return client.plugin_handlers(name)


class PerPlugin:
    """`dispatch` as the serving loops call it, running each request with the handlers
    its client names (handlers_for); the loops' own table is smarter-cni's."""

    def __init__(self, dispatch: Any) -> None:
        self.dispatch = dispatch

    def run(self, handlers: Any, environ: Any = None, stdin: bytes | None = None,
            out: Any = None) -> int:
        chosen = handlers_for(os.environ if environ is None else environ, handlers)
        return self.dispatch.run(chosen, environ=environ, stdin=stdin, out=out)


def preload() -> Any:
    """Import everything an ADD or DEL runs, once, so no child imports anything."""
    import select  # noqa: F401  (tie_to_client, in every worker)
    import threading  # noqa: F401

    from . import loopback, registry, store  # noqa: F401
    from .cni import dispatch
    from .dataplane import bridge, bridge_network, firewall, links, netlink  # noqa: F401
    from .plugin import HANDLERS

    return PerPlugin(dispatch), HANDLERS


class Server:
    def __init__(self, state_dir: str, verbose: bool = False) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, SOCKET_NAME)
        self.mark = os.path.join(state_dir, UNRESPONSIVE_NAME)
        self.verbose = verbose
        self.stop = False
        self.served = 0
        self.sock = self._bind()
        self.inode = os.stat(self.path).st_ino

    def _bind(self) -> socket.socket:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        temp = os.path.join(self.state_dir, f".{SOCKET_NAME}.{os.getpid()}.tmp")
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: never a moment with a wider mode
        try:
            sock.bind(temp)
        finally:
            os.umask(old)
        os.chmod(temp, 0o600)
        sock.listen(128)
        os.rename(temp, self.path)  # a stale socket of a killed server is replaced at once
        return sock

    def still_mine(self) -> bool:
        """A newer server renamed its socket over ours: leave it the path."""
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def serve_forever(self, dispatch: Any, handlers: Any) -> None:
        """Keep SPARE workers forked and waiting in accept(): no fork on a request's path.

        A worker that takes a connection writes its PID to a pipe; the server forks a
        replacement at once. Only idle workers are stopped with the server.
        """
        import select

        taken_r, taken_w = os.pipe()
        idle: set[int] = set()
        buffered = b""
        try:
            while not self.stop:
                while len(idle) < SPARE and not self.stop:
                    pid = self._fork_worker(taken_r, taken_w, dispatch, handlers)
                    if not pid:
                        break
                    idle.add(pid)
                try:
                    ready, _, _ = select.select([taken_r], [], [], 1.0)
                except InterruptedError:
                    continue
                if ready:
                    buffered += os.read(taken_r, 4096)
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        idle.discard(int(line))
                reap()
                if not self.still_mine():
                    break
        finally:
            for pid in idle:
                try:
                    os.kill(pid, signal.SIGTERM)  # our own idle worker, by its PID
                except ProcessLookupError:
                    pass
            os.close(taken_r)
            os.close(taken_w)

    def serve_warm(self, dispatch: Any, handlers: Any) -> None:
        """Run each request here, one at a time, in this already-imported process.

        Requests queue in the listen backlog; a client that gets no acknowledgement
        within client.ACK_TIMEOUT does the work itself (and marks the server
        unresponsive for a while). Once no connection came for UNMARK_AFTER the mark
        is removed, so a server that was only busy is used again soon.
        """

        base_env = dict(os.environ)
        watchdog = watchdog_seconds()
        wake_r, wake_w = os.pipe()  # a stop signal wakes select at once (no 1 s poll)
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        try:
            self._serve_warm_loop(dispatch, handlers, base_env, watchdog, wake_r)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)

    def _serve_warm_loop(self, dispatch: Any, handlers: Any, base_env: dict[str, str],
                         watchdog: float, wake_r: int) -> None:
        import select

        while not self.stop:
            try:
                ready, _, _ = select.select([self.sock, wake_r], [], [],
                                            UNMARK_AFTER if self._marked() else 1.0)
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                continue
            if not ready:
                self._unmark()
                if not self.still_mine():
                    break
                continue
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                time.sleep(0.01)  # e.g. EMFILE: let the backlog's clients time out and fall back
                continue
            try:
                serve_warm_one(conn, dispatch, handlers, self.verbose, base_env, watchdog)
            except (Exception, SystemExit) as err:  # never the server: the client falls back
                sys.stderr.write(f"resident: request failed: {type(err).__name__}: {err}\n")
                sys.stderr.flush()
            finally:
                conn.close()
                if os.environ != base_env:
                    os.environ.clear()
                    os.environ.update(base_env)
            self.served += 1

    def _marked(self) -> bool:
        return os.path.lexists(self.mark)

    def _unmark(self) -> None:
        try:
            os.unlink(self.mark)
        except OSError:
            pass

    def _fork_worker(self, taken_r: int, taken_w: int, dispatch: Any, handlers: Any) -> int:
        try:
            pid = os.fork()
        except OSError:
            time.sleep(0.1)
            return 0
        if pid:
            return pid
        code = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            os.close(taken_r)
            conn = self._accept_one()
            if conn is not None:
                os.write(taken_w, b"%d\n" % os.getpid())
                os.close(taken_w)
                self.sock.close()
                code = serve_one(conn, dispatch, handlers, self.verbose)
        finally:
            os._exit(code)

    def _accept_one(self) -> socket.socket | None:
        """In an idle worker: one connection, or None once the server is gone."""
        parent = os.getppid()
        self.sock.settimeout(1.0)
        while True:
            try:
                conn, _ = self.sock.accept()
                conn.setblocking(True)
                return conn
            except socket.timeout:
                if os.getppid() != parent:  # the server died: leave the path to the next one
                    return None
            except InterruptedError:
                continue
            except OSError:
                return None

    def close(self) -> None:
        self.sock.close()
        if self.still_mine():
            try:
                os.unlink(self.path)
            except OSError:
                pass


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def read_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
    head = bytearray()
    while not head.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte or len(head) > 64:
            return None
        head += byte
    parts = bytes(head).split()
    if len(parts) != 3 or parts[0] != MAGIC or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    env_size, stdin_size = int(parts[1]), int(parts[2])
    if env_size > MAX_ENV or stdin_size > MAX_STDIN:
        return None
    env_raw = read_exact(conn, env_size)
    stdin = read_exact(conn, stdin_size)
    environ = {}
    for item in env_raw.split(b"\0") if env_raw else ():
        key, sep, value = item.partition(b"=")
        if sep:
            environ[os.fsdecode(key)] = os.fsdecode(value)
    return environ, stdin


def client_gone(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def tie_to_client(conn: socket.socket) -> None:
    """The worker lives no longer than its client, as the plugin's own process would not.

    A runtime that killed the plugin and then runs DEL must not meet an ADD still going
    on: a thread ends the worker the moment the client's end closes, and every state
    write first checks, under the lock, that the client is still there (so a DEL that
    starts after the client died either finds the record or never sees it written).
    """
    import select
    import threading

    from . import store

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def check() -> None:
        if client_gone(conn):
            die()

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            poller.poll()
            if client_gone(conn):
                die()
            time.sleep(0.001)  # unexpected bytes from the client: keep watching

    store.before_save = check
    check()
    threading.Thread(target=watch, daemon=True).start()


def serve_one(conn: socket.socket, dispatch: Any, handlers: Any, verbose: bool) -> int:
    """In the forked child: handshake, then one plugin run with the client's env and stdin."""
    import io

    conn.settimeout(HANDSHAKE_TIMEOUT)
    try:
        if not peer_allowed(conn):
            return 1
        request = read_request(conn)
        if request is None:
            return 1
        conn.sendall(b"A")
        if conn.recv(1) != b"G":
            return 0  # the client gave up and does the work itself
    except (OSError, EOFError):
        return 1
    environ, stdin = request
    conn.settimeout(None)  # blocking: MSG_DONTWAIT peeks must not wait for a timeout
    tie_to_client(conn)
    os.environ.clear()
    os.environ.update(environ)  # as if exec'd by the runtime: the same env the plugin sees
    out = io.StringIO()
    code = dispatch.run(handlers, environ=os.environ, stdin=stdin, out=out)
    data = out.getvalue().encode()
    if verbose:
        sys.stderr.write(f"resident: {environ.get('CNI_COMMAND', '?')} "
                         f"{environ.get('CNI_CONTAINERID', '')[:12]} -> {code}\n")
        sys.stderr.flush()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    try:
        conn.sendall(b"R %d %d\n" % (code, len(data)) + data)
    except OSError:  # the client was killed: the work stands, as after a killed plugin's
        pass
    return 0


def replace_self(reason: str) -> None:
    """End the running request at once, as a killed plugin's ends, and start afresh.

    Re-exec keeps this PID (the DNS service's supervisor and tests keep their handle);
    the new image binds a new socket. Until then clients find the socket refusing
    and do the work themselves. If exec fails, exit: the supervisor restarts us.
    """
    try:
        os.write(2, f"resident: {reason}: replacing this server\n".encode())
        os.execv(sys.executable, sys.orig_argv)
    finally:
        os._exit(70)


def guard_request(conn: socket.socket, watchdog: float) -> Any:
    """Watch one warm request: the client gone -> replace the server; too slow -> replace.

    A runtime that killed the plugin and then runs DEL must not meet this ADD still
    going on. So, as in the forked worker: a thread ends the work the moment the
    client's end closes, and every state write first checks, under the lock, that the
    client is still there. Returns a callable that ends the watch.
    """
    import select
    import threading

    from . import store

    stop_r, stop_w = os.pipe()
    deadline = time.monotonic() + watchdog

    def check() -> None:
        if client_gone(conn):
            replace_self("client gone before the state write")

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(stop_r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                replace_self(f"a request ran longer than {watchdog:g} s")
            events = poller.poll(left * 1000)
            if any(fd == stop_r for fd, _ in events):
                return
            if events and client_gone(conn):
                replace_self("client gone mid-request")
            if events:
                time.sleep(0.001)  # unexpected bytes from the client: keep watching

    store.before_save = check
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def done() -> None:
        store.before_save = None
        os.write(stop_w, b"x")
        thread.join()
        os.close(stop_r)
        os.close(stop_w)

    return done


def serve_warm_one(conn: socket.socket, dispatch: Any, handlers: Any, verbose: bool,
                   base_env: dict[str, str], watchdog: float = WATCHDOG) -> None:
    """One request in the server's own process; the environment is the request's, then ours."""
    import io

    conn.settimeout(WARM_HANDSHAKE_TIMEOUT)
    try:
        if not peer_allowed(conn):
            return
        request = read_request(conn)
        if request is None:
            return
        conn.sendall(b"A")
        if conn.recv(1) != b"G":
            return  # the client gave up and does the work itself
    except (OSError, EOFError):
        return
    environ, stdin = request
    conn.settimeout(None)
    if client_gone(conn):
        return
    done = guard_request(conn, watchdog)
    out = io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(environ)  # as if exec'd by the runtime: the same env the plugin sees
        code = dispatch.run(handlers, environ=os.environ, stdin=stdin, out=out)
    finally:
        os.environ.clear()
        os.environ.update(base_env)
        done()
    data = out.getvalue().encode()
    if verbose:
        sys.stderr.write(f"resident: {environ.get('CNI_COMMAND', '?')} "
                         f"{environ.get('CNI_CONTAINERID', '')[:12]} -> {code}\n")
        sys.stderr.flush()
    try:
        conn.sendall(b"R %d %d\n" % (code, len(data)) + data)
    except OSError:  # the client was killed after the work: it stands, as a killed plugin's
        pass


def mode(environ: Any = None) -> str:
    value = (os.environ if environ is None else environ).get(MODE_ENV, "")
    return value if value in MODES else MODES[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    state_dir = ""
    if "--state-dir" in argv and argv.index("--state-dir") + 1 < len(argv):
        state_dir = argv[argv.index("--state-dir") + 1]
    from .paths import state_dir as default_state_dir

    state_dir = state_dir or default_state_dir()
    serve_mode = mode()
    if "--mode" in argv and argv.index("--mode") + 1 < len(argv):
        serve_mode = argv[argv.index("--mode") + 1]
    if serve_mode not in MODES:
        sys.stderr.write(f"resident: --mode must be one of {', '.join(MODES)}\n")
        return 2
    dispatch, handlers = preload()
    server = Server(state_dir, verbose)

    def on_signal(signum: int, frame: Any) -> None:
        server.stop = True  # select() wakes with EINTR

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if verbose:
        sys.stderr.write(f"resident: serving {server.path} ({serve_mode})\n")
        sys.stderr.flush()
    try:
        if serve_mode == "warm":
            server.serve_warm(dispatch, handlers)
        else:
            server.serve_forever(dispatch, handlers)
    finally:
        server.close()
        reap()
    return 0


if __name__ == "__main__":
    sys.exit(main())
