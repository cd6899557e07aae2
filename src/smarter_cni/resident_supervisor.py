"""The DNS service's side of the resident plugin server (resident.py): whether to run
it, and one supervisor thread that keeps a server process running and restarts it.

A separate process rather than a thread of the service: it forks per request in fork
mode, which a process with threads and DNS sockets should not do, and a crash stays there.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENABLE_ENV = "SMARTER_CNI_RESIDENT"  # the DNS service's setting: "1" on, "0" off
DEFAULT_ENABLED = True  # warm mode: ~4-6 ms faster per ADD than the exec (docs/internals.md)
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # after a server exits: quick, then backing off


def enabled(environ: Any = None, network_mode: str = "bridge") -> bool:
    """SMARTER_CNI_RESIDENT "1"/"0"; unset: on for bridge mode. Docker mode stays off
    unless asked for: no docker test has run through the server yet."""
    value = (os.environ if environ is None else environ).get(ENABLE_ENV, "")
    if value in ("0", "1"):
        return value == "1"
    return DEFAULT_ENABLED and network_mode != "docker"


class Supervisor:
    """The DNS service's side: keep one server process running; stop it with the service.

    A separate process rather than a thread of the service: it forks per request, which
    a process with threads and DNS sockets should not do, and a crash stays there.
    """

    def __init__(self, state_dir: str, log: Any = None, verbose: bool = False) -> None:
        import threading

        self.state_dir = state_dir
        self.log = log
        self.verbose = verbose  # one stderr line per request (the service's --verbose)
        self.pid = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="resident", daemon=True)
        self.thread.start()

    def _spawn(self) -> int:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = [package_parent] + [p for p in sys.path if p and p != package_parent]
        boot = (f"import sys; sys.path[:] = {path!r}; "
                "from smarter_cni.resident import main; sys.exit(main(sys.argv[1:]))")
        env = dict(os.environ, SMARTER_CNI_STATE_DIR=self.state_dir)
        return os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", boot,
                                               "--state-dir", self.state_dir,
                                               *(["--verbose"] if self.verbose else [])], env)

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.pid = self._spawn()
                _, status = os.waitpid(self.pid, 0)
            except OSError as err:
                status = -1
                if self.log:
                    self.log.error("resident plugin server: cannot start: %s", err)
            self.pid = 0
            if self.stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            if self.log:
                self.log.warning("resident plugin server exited (status %s); restarting in %.1f s "
                                 "(plugins do the work themselves meanwhile)", status, delay)
            self.stopping.wait(delay)

    def stop(self) -> None:
        self.stopping.set()
        pid = self.pid
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)  # our own child, by its PID
            except ProcessLookupError:
                pass
        self.thread.join(timeout=10)


def start_supervisor(state_dir: str, log: Any = None, verbose: bool = False,
                     network_mode: str = "bridge") -> Supervisor | None:
    """Started by `smarter-cni dns` unless SMARTER_CNI_RESIDENT=0 (on by default in bridge
    mode, see enabled())."""
    return Supervisor(state_dir, log, verbose) if enabled(network_mode=network_mode) else None
