"""Start and stop a resident plugin server (smarter_cni.resident) for one state dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from helpers import session_watch
from helpers.plugin import SRC

SOCKET = "plugin.sock"


def start_server(state_dir: Path, log: Path | None = None, mode: str | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    """The server as the DNS service starts it; returns once its socket is there.

    `mode` "warm" or "fork" (--mode); None: the server's default (SMARTER_CNI_RESIDENT_MODE)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    boot = (f"import sys; sys.path.insert(0, {str(SRC)!r}); "
            "from smarter_cni.resident import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot, "--state-dir", str(state_dir),
                             "--verbose", *(["--mode", mode] if mode else [])],
                            stdout=subprocess.DEVNULL, stderr=out,
                            env=dict(os.environ, SMARTER_CNI_STATE_DIR=str(state_dir), **(env or {})))
    if log:
        out.close()
    session_watch.track_process(proc.pid)  # ended by the watchdog if pytest is killed
    deadline = time.monotonic() + 20
    while not (state_dir / SOCKET).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"resident server did not start (rc={proc.returncode})")
        time.sleep(0.01)
    return proc


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)  # our own child, by its PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(state_dir: Path, log: Path | None = None, mode: str | None = None,
                   env: dict | None = None) -> Iterator[subprocess.Popen]:
    proc = start_server(state_dir, log, mode, env)
    try:
        yield proc
    finally:
        stop_server(proc)
