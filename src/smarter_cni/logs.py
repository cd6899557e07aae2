"""A small append-only log in the state directory (never the plugin's stdout)."""

from __future__ import annotations

import os
import time

from .paths import PLUGIN_LOG, state_dir

MAX_LOG_BYTES = 1 << 20


def log(level: str, message: str) -> None:
    """Append one line; rotate once past 1 MiB. Logging never raises."""
    try:
        path = os.path.join(state_dir(), PLUGIN_LOG)
        try:
            if os.stat(path).st_size > MAX_LOG_BYTES:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp} {os.getpid()} {level} {message}\n".encode("utf-8", "replace")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass
