"""Real network namespaces for tests, always removed afterwards."""

from __future__ import annotations

import os
import subprocess
import uuid


def unique(prefix: str, length: int = 15) -> str:
    """A name no other test run uses (interface names must stay <= 15 bytes)."""
    return (prefix + uuid.uuid4().hex)[:length]


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
