"""Deterministic names and MACs, so DEL finds what ADD made even with no state."""

from __future__ import annotations

import os
import zlib

from .. import ipv4


def host_ifname(container_id: str, ifname: str) -> str:
    """'sm' + 13 hex digits from the (container, ifname) pair: 15 bytes, the kernel's limit."""
    key = f"{container_id}/{ifname}".encode()
    return f"sm{zlib.crc32(key):08x}{zlib.adler32(key) & 0xFFFFF:05x}"


def pod_mac(address: int) -> str:
    """0a:58 + the IPv4 address: stable per address, locally administered, unicast."""
    return "0a:58:" + ":".join(f"{(address >> shift) & 255:02x}" for shift in (24, 16, 8, 0))


def random_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in raw)


def chain_name(network: str) -> str:
    """An iptables chain name per network (iptables allows 28 characters)."""
    return f"SMARTER-CNI-{zlib.crc32(network.encode()):08X}"


def address_text(address: int, prefix: int) -> str:
    return f"{ipv4.to_text(address)}/{prefix}"
