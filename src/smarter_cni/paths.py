"""Where smarter-cni keeps things on a node."""

from __future__ import annotations

import os

DEFAULT_STATE_DIR = "/run/smarter-cni"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
CONFLIST_NAME = "10-smarter-cni.conflist"


def state_dir() -> str:
    """The state directory: tmpfs, so a reboot starts every pod (and us) afresh.

    SMARTER_CNI_STATE_DIR exists so tests and side-by-side benchmarks can run
    without touching a node's real state.
    """
    return os.environ.get("SMARTER_CNI_STATE_DIR") or DEFAULT_STATE_DIR


def ensure_state_dir() -> str:
    path = state_dir()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return path
