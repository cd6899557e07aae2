"""Where smarter-cni keeps things on a node."""

from __future__ import annotations

import os

DEFAULT_STATE_DIR = "/run/smarter-cni"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
CONFLIST_NAME = "10-smarter-cni.conflist"

# Every file smarter-cni writes in the state dir (uninstall removes these and
# nothing else). store.py names the first two itself (FILE_NAME, LOCK_NAME).
ATTACHMENTS_FILE = "attachments.json"
LOCK_FILE = "lock"
PLUGIN_LOG = "smarter-cni.log"
DNS_LOG = "dns.log"
SERVICES_CACHE = "services.json"  # the DNS service's last known Services (dns/services.py)
ENDPOINTS_CACHE = "endpoints.json"  # ... and headless Services' endpoints (dns/endpoints.py)
SUPERVISOR_PIDFILE = "dns-supervisor.pid"
REPAIRS_FILE = "repairs.json"
PLUGIN_SOCKET = "plugin.sock"  # the resident plugin server's (resident.py; = client.SOCKET_NAME)
PLUGIN_UNRESPONSIVE = "plugin.unresponsive"  # = client.UNRESPONSIVE_NAME
PLUGIN_POOL = "plugin.pool"  # the resident server's pool counts, for `smarter-cni status`
STATE_FILES = (ATTACHMENTS_FILE, LOCK_FILE, PLUGIN_LOG, PLUGIN_LOG + ".1", DNS_LOG, SERVICES_CACHE,
               ENDPOINTS_CACHE, SUPERVISOR_PIDFILE, REPAIRS_FILE, PLUGIN_SOCKET, PLUGIN_UNRESPONSIVE, PLUGIN_POOL)


def is_state_file(name: str) -> bool:
    """One of STATE_FILES, or the temp file an atomic write of one leaves if killed."""
    if name in STATE_FILES:
        return True
    return name.startswith(".") and name.endswith(".tmp") and any(
        name[1:].startswith(own + ".") for own in STATE_FILES)


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
