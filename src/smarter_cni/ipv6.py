"""IPv6 arithmetic on plain ints, like ipv4.py (the `ipaddress` module costs start-up time)."""

from __future__ import annotations

from .ipv4 import AddressError

_HEX = frozenset("0123456789abcdefABCDEF")
ALL = (1 << 128) - 1


def to_int(text: str) -> int:
    """'fd00::1' -> int. Plain hex groups with at most one '::' (no embedded IPv4, no zone)."""
    if not isinstance(text, str) or not text or len(text) > 39 or not text.isascii():
        raise AddressError(f"{str(text)[:60]!r} is not an IPv6 address")
    head, sep, tail = text.partition("::")
    if sep and "::" in tail:
        raise AddressError(f"{text!r} is not an IPv6 address (two '::')")
    groups_head = head.split(":") if head else []
    groups_tail = tail.split(":") if tail else []
    if sep:
        missing = 8 - len(groups_head) - len(groups_tail)
        if missing < 1:
            raise AddressError(f"{text!r} is not an IPv6 address")
        groups = groups_head + ["0"] * missing + groups_tail
    else:
        groups = groups_head
    if len(groups) != 8:
        raise AddressError(f"{text!r} is not an IPv6 address")
    value = 0
    for group in groups:
        if not 1 <= len(group) <= 4 or not set(group) <= _HEX:
            raise AddressError(f"{text!r} is not an IPv6 address")
        value = (value << 16) | int(group, 16)
    return value


def to_text(value: int) -> str:
    """RFC 5952 text: lower case, the longest run (2+ groups) of zeros as '::'."""
    groups = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best_start, best_len, start = -1, 1, -1
    for i in range(9):
        if i < 8 and groups[i] == 0:
            if start < 0:
                start = i
        elif start >= 0:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = -1
    parts = [f"{g:x}" for g in groups]
    if best_start < 0:
        return ":".join(parts)
    return ":".join(parts[:best_start]) + "::" + ":".join(parts[best_start + best_len:])


def mask(prefix: int) -> int:
    return (ALL << (128 - prefix)) & ALL


def parse_cidr(text: str, strict: bool = True) -> tuple[int, int]:
    """'fd42::/64' -> (network int, prefix). strict: host bits must be zero."""
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not an IPv6 prefix such as fd42::/64")
    address, sep, prefix_text = text.partition("/")
    if not sep or not (prefix_text.isascii() and prefix_text.isdigit()) or len(prefix_text) > 3 \
            or int(prefix_text) > 128:
        raise AddressError(f"{text[:60]!r} is not an IPv6 prefix such as fd42::/64")
    prefix = int(prefix_text)
    value = to_int(address)
    if strict and value & ~mask(prefix) & ALL:
        raise AddressError(f"{text!r} has host bits set; did you mean "
                           f"{to_text(value & mask(prefix))}/{prefix}?")
    return value, prefix


def contains(network: int, prefix: int, address: int) -> bool:
    return address & mask(prefix) == network


def last(network: int, prefix: int) -> int:
    return network | (~mask(prefix) & ALL)


def overlaps(a: int, a_prefix: int, b: int, b_prefix: int) -> bool:
    shorter = min(a_prefix, b_prefix)
    return a & mask(shorter) == b & mask(shorter)


# Prefixes a pod network must not come from, with why (the message names them).
RESERVED = (
    (0, 8, "the reserved ::/8 block (loopback, unspecified, IPv4-mapped)"),
    (0xFE80 << 112, 10, "link-local fe80::/10"),
    (0xFF << 120, 8, "multicast ff00::/8"),
    (0xFEC0 << 112, 10, "deprecated site-local fec0::/10"),
)
