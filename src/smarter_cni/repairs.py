"""repairs.json: the last repairs of the node's network, for `smarter-cni status`.

Written by a pod's ADD (dataplane/bridge_network.py) and by the reconciler
(reconcile.py), read by reconcile.summary. It sits below both, so neither
data plane nor reconciler imports the other to reach it. Not on the hot
path: ADD imports it only when it has repaired something.
"""

from __future__ import annotations

import json
import os
import time

from .paths import REPAIRS_FILE
from .paths import state_dir as default_state_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_REPAIRS = 100


def repairs_path(directory: str | None = None) -> str:
    return os.path.join(directory or default_state_dir(), REPAIRS_FILE)


def recent_repairs(directory: str | None = None) -> list[dict[str, Any]]:
    """The last repairs, oldest first: [{"time", "network", "by", "what"}]; [] if none."""
    try:
        with open(repairs_path(directory), "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def note_repairs(network: str, problems: list[str], by: str,
                 directory: str | None = None) -> None:
    """Append repairs (bounded to MAX_REPAIRS) by temp file + rename. Never raises.

    Callers hold the state lock (ADD and the reconciler repair under it), so
    one fixed temp name is safe, as in store.save.
    """
    directory = directory or default_state_dir()
    now = round(time.time(), 3)
    entries = recent_repairs(directory)
    entries += [{"time": now, "network": network, "by": by, "what": p} for p in problems]
    entries = entries[-MAX_REPAIRS:]
    final = repairs_path(directory)
    temp = os.path.join(directory, f".{REPAIRS_FILE}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(temp, final)
    except OSError:
        pass
