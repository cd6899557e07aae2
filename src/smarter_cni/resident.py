"""The resident plugin server: does a thin client's CNI work without an exec.

One process (started and restarted by the DNS service, or run alone:
`python -m smarter_cni.resident --state-dir DIR [--mode warm|fork]`) imports the
plugin's modules once and keeps a small pool of forked workers waiting in accept()
on `<state dir>/plugin.sock`. A worker runs one request at a time
(resident_request.py); the server itself never runs one, it only keeps the pool:

- at least SPARE workers idle, so a request never waits for a fork;
- more while all are busy (a storm of pods), up to SMARTER_CNI_RESIDENT_WORKERS
  (default MAX_WORKERS); the ones beyond SPARE that stay idle IDLE_EXIT seconds leave;
- a worker that ended (its client was killed mid-request, its request passed the
  watchdog, it crashed) is replaced by a fresh fork of the server, which never ran a
  request: the same clean start a re-exec would give, in ~1 ms.

Two modes (SMARTER_CNI_RESIDENT_MODE or --mode): warm (default), each worker serves
up to WORKER_REQUESTS requests with everything already imported and warm (~4-6 ms
faster per ADD than the exec, docs/internals.md); fork, each worker serves one request
and leaves (a crash, hang or leak ends with that child; no faster than the exec).

Workers tell the server "busy"/"idle" over a pipe. A SIGKILLed server does not take
running requests with it: busy workers finish theirs, idle ones notice within a second
that their parent is gone and leave the path to the next server. The socket has mode
0600 and the peer must be root or this process's user (SO_PEERCRED). Both this path
and the client's in-process fallback take the store's flock, which serialises them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from .paths import PLUGIN_POOL as POOL_NAME
from .paths import PLUGIN_SOCKET as SOCKET_NAME
from .paths import PLUGIN_UNRESPONSIVE as UNRESPONSIVE_NAME
from .resident_request import MAGIC, serve_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAGIC", "SOCKET_NAME", "UNRESPONSIVE_NAME", "main", "mode"]

MODE_ENV = "SMARTER_CNI_RESIDENT_MODE"  # "warm" (default) or "fork"
MODES = ("warm", "fork")
SPARE = {"warm": 1, "fork": 2}  # idle workers kept waiting in accept()
WORKER_REQUESTS = {"warm": 10000, "fork": 1}  # then the worker leaves and a fresh one comes
MAX_WORKERS = 8  # busy + idle; a storm beyond it waits in the listen backlog (measured: 4, 8, 16)
WORKERS_ENV = "SMARTER_CNI_RESIDENT_WORKERS"
IDLE_EXIT = 30.0  # seconds an idle worker beyond SPARE stays
IDLE_EXIT_ENV = "SMARTER_CNI_RESIDENT_IDLE_EXIT"  # seconds, overrides IDLE_EXIT (tests)
UNMARK_AFTER = 0.25  # seconds without a connection before an idle worker clears the mark
WATCHDOG = 60.0  # seconds: a request running longer ends its worker
WATCHDOG_ENV = "SMARTER_CNI_RESIDENT_WATCHDOG"  # seconds, overrides WATCHDOG (tests)


def _number_from_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def preload() -> Any:
    """Import everything an ADD or DEL runs, once, so no worker imports anything."""
    import fcntl  # noqa: F401  (the request guard)
    import io  # noqa: F401

    from . import loopback, registry, store  # noqa: F401
    from .cni import dispatch
    from .dataplane import bridge, bridge_network, firewall, links, netlink  # noqa: F401
    from .plugin import HANDLERS

    return dispatch, HANDLERS


class Server:
    def __init__(self, state_dir: str, serve_mode: str = "warm", verbose: bool = False) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, SOCKET_NAME)
        self.mark = os.path.join(state_dir, UNRESPONSIVE_NAME)
        self.mode = serve_mode
        self.verbose = verbose
        self.stop = False
        self.max_workers = max(int(_number_from_env(WORKERS_ENV, MAX_WORKERS)), SPARE[serve_mode])
        self.watchdog = _number_from_env(WATCHDOG_ENV, WATCHDOG)
        self.idle_exit = _number_from_env(IDLE_EXIT_ENV, IDLE_EXIT)
        self.workers: set[int] = set()
        self.idle: dict[int, float] = {}  # pid -> since when
        self.served = 0  # requests taken by workers
        self.ended = 0  # workers that ended mid-request (client gone, watchdog, crash)
        self.reported: tuple[int, ...] = ()
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

    def serve(self, dispatch: Any, handlers: Any) -> None:
        """Keep the pool (see the module docstring) until stopped or replaced."""
        import select

        status_r, status_w = os.pipe()
        wake_r, wake_w = os.pipe()  # SIGCHLD and stop signals wake select at once
        for fd in (status_r, wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        buffered = b""
        try:
            while not self.stop:
                while (len(self.idle) < SPARE[self.mode] and len(self.workers) < self.max_workers
                       and not self.stop):
                    pid = self._fork_worker(status_r, status_w, wake_r, wake_w, dispatch, handlers)
                    if not pid:
                        break
                    self.workers.add(pid)
                    self.idle[pid] = time.monotonic()
                try:
                    select.select([status_r, wake_r], [], [], 1.0)
                except InterruptedError:
                    pass
                _drain(wake_r)
                buffered += _drain(status_r)
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    self._note(line)
                self._reap()
                self._trim()
                self._report()
                if not self.still_mine():
                    break
        finally:
            signal.set_wakeup_fd(-1)
            for pid in self.workers:
                _signal(pid, signal.SIGTERM)  # idle ones leave now, busy ones after their request
            for fd in (status_r, status_w, wake_r, wake_w):
                os.close(fd)

    def _note(self, line: bytes) -> None:
        """A worker's b"B<pid>" (took a connection) or b"I<pid>" (waits in accept again)."""
        if len(line) < 2 or not line[1:].isdigit():
            return
        pid = int(line[1:])
        if pid not in self.workers:
            return
        if line[:1] == b"B":
            self.idle.pop(pid, None)
            self.served += 1
        elif line[:1] == b"I":
            self.idle[pid] = time.monotonic()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.workers.discard(pid)
            self.idle.pop(pid, None)
            if status:
                self.ended += 1

    def _report(self) -> None:
        """`<state dir>/plugin.pool` for `smarter-cni status`, rewritten when a count changed
        (at most once per loop turn: a storm of 16 pods is a few writes, to tmpfs)."""
        now = (len(self.workers), len(self.idle), self.served, self.ended)
        if now == self.reported:
            return
        self.reported = now
        from .files import write_atomic

        workers, idle, served, ended = now
        text = (f'{{"pid": {os.getpid()}, "mode": "{self.mode}", "workers": {workers}, '
                f'"idle": {idle}, "max_workers": {self.max_workers}, "served": {served}, '
                f'"ended": {ended}}}\n')
        try:
            write_atomic(os.path.join(self.state_dir, POOL_NAME), text)
        except OSError:
            pass

    def _trim(self) -> None:
        """Idle workers beyond SPARE that waited idle_exit seconds: told to leave (SIGTERM)."""
        surplus = len(self.idle) - SPARE[self.mode]
        now = time.monotonic()
        for pid, since in sorted(self.idle.items(), key=lambda item: item[1]):
            if surplus <= 0 or now - since < self.idle_exit:
                break
            _signal(pid, signal.SIGTERM)
            self.idle.pop(pid)
            surplus -= 1

    def _fork_worker(self, status_r: int, status_w: int, wake_r: int, wake_w: int,
                     dispatch: Any, handlers: Any) -> int:
        try:
            pid = os.fork()
        except OSError:
            time.sleep(0.1)
            return 0
        if pid:
            return pid
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in (status_r, wake_r, wake_w):
                os.close(fd)
            Worker(self, status_w).run(dispatch, handlers)
            code = 0
        except BaseException as err:  # noqa: BLE001  (never back into the server's loop)
            try:
                os.write(2, f"resident: worker {os.getpid()} failed: {err!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)

    def close(self) -> None:
        self.sock.close()
        if self.still_mine():
            for path in (self.path, os.path.join(self.state_dir, POOL_NAME)):
                try:
                    os.unlink(path)
                except OSError:
                    pass


class Worker:
    """A forked child: accept a connection, serve it, repeat (WORKER_REQUESTS times)."""

    def __init__(self, server: Server, status_w: int) -> None:
        self.server = server
        self.status_w = status_w
        self.parent = os.getppid()
        self.busy = False
        self.leaving = False

    def _on_term(self, signum: int, frame: Any) -> None:
        if not self.busy:
            os._exit(0)
        self.leaving = True  # after this request

    def _tell(self, what: bytes) -> None:
        try:
            os.write(self.status_w, what + b"%d\n" % os.getpid())
        except OSError:
            pass

    def run(self, dispatch: Any, handlers: Any) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's stop, not ours
        signal.signal(signal.SIGTERM, self._on_term)
        server = self.server
        base_env = dict(os.environ)
        for _ in range(WORKER_REQUESTS[server.mode]):
            conn = self._accept()
            if conn is None:
                return
            self.busy = True
            self._tell(b"B")
            try:
                serve_request(conn, dispatch, handlers, server.verbose, base_env,
                              server.watchdog)
            except Exception as err:  # the client falls back; this worker serves on
                sys.stderr.write(f"resident: request failed: {type(err).__name__}: {err}\n")
                sys.stderr.flush()
            finally:
                conn.close()
            self.busy = False
            if self.leaving:
                return
            self._tell(b"I")

    def _accept(self) -> socket.socket | None:
        """One connection, or None once the server is gone or wants this worker gone."""
        server = self.server
        while not self.leaving:
            marked = os.path.lexists(server.mark)
            server.sock.settimeout(UNMARK_AFTER if marked else 1.0)
            try:
                conn, _ = server.sock.accept()
                conn.setblocking(True)
                return conn
            except socket.timeout:
                if marked:  # nobody came for a while: not hung, only busy earlier
                    try:
                        os.unlink(server.mark)
                    except OSError:
                        pass
                if os.getppid() != self.parent:  # the server died: leave the path to the next
                    return None
            except InterruptedError:
                continue
            except OSError:
                time.sleep(0.01)  # e.g. EMFILE: the backlog's clients time out and fall back
        return None


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return data
        if not chunk:
            return data
        data += chunk


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)  # our own worker, by its PID
    except ProcessLookupError:
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
    server = Server(state_dir, serve_mode, verbose)

    def on_signal(signum: int, frame: Any) -> None:
        server.stop = True  # the wakeup fd wakes select at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if verbose:
        sys.stderr.write(f"resident: serving {server.path} ({serve_mode}, up to "
                         f"{server.max_workers} workers)\n")
        sys.stderr.flush()
    try:
        server.serve(dispatch, handlers)
    finally:
        server.close()
        server._reap()  # the workers that already left; the rest are init's
    return 0


if __name__ == "__main__":
    sys.exit(main())
