"""Who may ask: the node itself (loopback, any address on the host) and its pods.

Everyone else gets REFUSED, so the node never becomes an open resolver on a
network it happens to be attached to.
"""

from __future__ import annotations

import logging
import socket
import struct

from ..run import run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

log = logging.getLogger("smarter-cni.dns")

REFRESH_INTERVAL = 2.0   # at most this often, re-read host addresses on an unknown source
CACHE_LIMIT = 4096
LOOPBACK = (0x7F000000, 0xFF000000)


def parse_cidr(text: str) -> tuple[int, int]:
    """'10.42.0.0/16' -> (network int, mask int). Raises ValueError."""
    address, _, prefix_text = text.partition("/")
    prefix = int(prefix_text) if prefix_text else 32
    if not 0 <= prefix <= 32:
        raise ValueError(f"bad prefix in {text!r}")
    try:
        value = struct.unpack("!I", socket.inet_aton(address))[0]
    except OSError:
        raise ValueError(f"bad IPv4 address in {text!r}") from None
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return value & mask, mask


def host_addresses() -> set[str]:
    """Every address assigned on the host (IPv4 and IPv6), via `ip -o addr`."""
    found: set[str] = set()
    try:
        done = run(["ip", "-o", "addr", "show"], timeout=5.0)
    except Exception as err:  # a missing `ip` must not stop the service
        log.warning("cannot list host addresses: %s", err)
        return found
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split()
        for index, field in enumerate(fields[:-1]):
            if field in ("inet", "inet6"):
                found.add(fields[index + 1].split("/", 1)[0])
    return found


class Acl:
    """`allows(source_ip)`; positive answers are cached, host addresses refreshed lazily."""

    def __init__(self, subnets: Iterable[tuple[int, int]],
                 addresses: Callable[[], set[str]] = host_addresses) -> None:
        self.subnets = [LOOPBACK, *subnets]
        self.read_addresses = addresses
        self.local = addresses()
        self.allowed: set[str] = set()
        self.refreshed = 0.0

    def allows(self, source: str, now: float) -> bool:
        if source in self.allowed:
            return True
        verdict = self._check(source)
        if not verdict and now - self.refreshed >= REFRESH_INTERVAL:
            self.refreshed = now
            self.local = self.read_addresses()
            verdict = self._check(source)
        if verdict:
            if len(self.allowed) >= CACHE_LIMIT:
                self.allowed.clear()
            self.allowed.add(source)
        return verdict

    def _check(self, source: str) -> bool:
        if source in self.local:
            return True
        if source.startswith("::ffff:"):
            source = source[7:]
        try:
            value = struct.unpack("!I", socket.inet_aton(source))[0]
        except OSError:
            return source == "::1"
        return any(value & mask == network for network, mask in self.subnets)
