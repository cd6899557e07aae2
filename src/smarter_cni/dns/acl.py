"""Who may ask: the node itself (loopback, any address on the host) and its pods.

Everyone else gets REFUSED, so the node never becomes an open resolver on a
network it happens to be attached to. "An address on the host" is decided
by the kernel: a socket can bind it (no `ip` exec, secondary addresses and
addresses added later included).
"""

from __future__ import annotations

import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

NEGATIVE_TTL = 2.0    # a refused source is re-checked after this long (address added?)
CACHE_LIMIT = 4096
LOOPBACK = (0x7F000000, 0xFF000000)


def network_and_mask(text: str) -> tuple[int, int]:
    """'10.42.0.0/16' -> (network int, mask int), the form `Acl` matches with.

    Lenient, for --allow: no prefix means /32 and host bits are dropped (unlike
    ipv4.parse_cidr, which gives (network, prefix length) and can refuse host bits).
    Raises ValueError.
    """
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


def host_has(address: str) -> bool:
    """True when the address is assigned on this host (the kernel lets us bind it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        sock.bind((address, 0))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Acl:
    """`allows(source_ip, now)`; verdicts are cached (refusals only briefly)."""

    def __init__(self, subnets: Iterable[tuple[int, int]],
                 is_local: Callable[[str], bool] = host_has,
                 subnets6: Iterable[tuple[int, int]] = ()) -> None:
        self.subnets = [LOOPBACK, *subnets]
        self.subnets6 = list(subnets6)  # (network, mask) ints: the pods' IPv6 prefix
        self.is_local = is_local
        self.allowed: set[str] = set()
        self.refused: dict[str, float] = {}

    def allows(self, source: str, now: float) -> bool:
        if source in self.allowed:
            return True
        until = self.refused.get(source)
        if until is not None and until > now:
            return False
        if self._check(source):
            if len(self.allowed) >= CACHE_LIMIT:
                self.allowed.clear()
            self.allowed.add(source)
            self.refused.pop(source, None)
            return True
        if len(self.refused) >= CACHE_LIMIT:
            self.refused.clear()
        self.refused[source] = now + NEGATIVE_TTL
        return False

    def _in_subnets6(self, source: str) -> bool:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, source.split("%")[0]), "big")
        except OSError:
            return False
        return any(value & mask == network for network, mask in self.subnets6)

    def _check(self, source: str) -> bool:
        plain = source[7:] if source.startswith("::ffff:") else source
        try:
            value = struct.unpack("!I", socket.inet_aton(plain))[0]
        except OSError:
            return source == "::1" or self._in_subnets6(source) or self.is_local(source)
        if any(value & mask == network for network, mask in self.subnets):
            return True
        return self.is_local(plain)
