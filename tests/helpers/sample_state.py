"""A small attachments.json with two pods (one ready, one not), for the operator commands'
tests (`pods`, uninstall's state clean-up) that need no kernel."""

from __future__ import annotations

import json
import time
from pathlib import Path


def sample_state(tmp_path: Path) -> Path:
    """tmp_path/state holding the two pods' records."""
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    records = {
        "smarter/c1/eth0": {"network": "smarter", "mode": "bridge", "container_id": "a" * 64,
                            "ifname": "eth0", "ips": ["10.42.0.5/16"], "ready": True,
                            "created": now - 4000,
                            "pod": {"name": "web", "namespace": "shop", "uid": "u1",
                                    "hostname": "web-0"}},
        "smarter/c2/eth0": {"network": "smarter", "mode": "bridge", "container_id": "b" * 64,
                            "ifname": "eth0", "ips": ["10.42.0.6/16"], "ready": False,
                            "created": now - 3,
                            "pod": {"name": "db", "namespace": "shop", "uid": "u2",
                                    "hostname": ""}},
    }
    (state / "attachments.json").write_text(json.dumps(
        {"version": 1, "networks": {}, "attachments": records}))
    return state
