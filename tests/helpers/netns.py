"""Real network namespaces for tests, always removed afterwards."""

from __future__ import annotations

import os
import subprocess
import uuid

from helpers import session_watch

# This test process's own token. Host veth names derive from the container ID alone
# (dataplane/names.py host_ifname), so two test runs on one host (a developer's beside
# CI, helpers side by side) that both ADD "ctr-1" would take each other's veths.
SESSION = uuid.uuid4().hex[:8]
_ISSUED: set[str] = {SESSION}  # random parts handed out by unique(), and adopted runtime IDs
_MIN_TOKEN = 6  # a shorter random part could repeat across runs
session_watch.note("token", SESSION)  # what the session watchdog removes if pytest is killed


def unique(prefix: str, length: int = 15) -> str:
    """A name no other test run uses (interface names must stay <= 15 bytes)."""
    name = (prefix + uuid.uuid4().hex)[:length]
    if len(name) - len(prefix) >= _MIN_TOKEN:
        _ISSUED.add(name[len(prefix):])
        session_watch.note("token", name[len(prefix):])
    return name


def run_id(name: str) -> str:
    """A container ID of this test run: `name` with the session's token appended."""
    return f"{name}-{SESSION}"


def adopt(container_id: str) -> str:
    """Accept an ID a real runtime made for this run (dockerd, containerd: random, 64 hex)."""
    if len(container_id) >= 32:
        _ISSUED.add(container_id)
        session_watch.note("token", container_id)
    return container_id


def owned_by_this_run(container_id: str) -> bool:
    """Whether `container_id` carries this run's token, a unique() part or an adopted ID."""
    return any(token in container_id for token in _ISSUED)


def require_own_id(container_id: str) -> None:
    """Refuse a container ID another test run could use too (see SESSION)."""
    if container_id and not owned_by_this_run(container_id):
        raise ValueError(f"container ID {container_id!r} is not unique to this test run: "
                         "host veth names derive from it, so a concurrent run could take "
                         "this test's veth. Use helpers.netns.run_id(name) (or unique()).")


def sh(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, input=input, timeout=60)


class NetnsFactory:
    """Creates named netns under /var/run/netns; `cleanup` deletes every one."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self, prefix: str = "scni") -> tuple[str, str]:
        name = unique(prefix + "-", 24)
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name, f"/var/run/netns/{name}"

    def exec(self, name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", name, *argv, check=check)

    def cleanup(self) -> None:
        for name in self.names:
            sh("ip", "netns", "del", name, check=False)
        self.names.clear()


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def delete_link(name: str) -> None:
    sh("ip", "link", "del", name, check=False)
