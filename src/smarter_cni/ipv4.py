"""IPv4 arithmetic on plain ints (the `ipaddress` module costs start-up time)."""

from __future__ import annotations


class AddressError(ValueError):
    pass


def to_int(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4:
        raise AddressError(f"{text!r} is not an IPv4 address")
    value = 0
    for part in parts:
        # isascii: str.isdigit() also accepts digits such as '١' or '²'
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            raise AddressError(f"{text!r} is not an IPv4 address")
        octet = int(part)
        if octet > 255:
            raise AddressError(f"{text!r} is not an IPv4 address")
        value = (value << 8) | octet
    return value


def to_text(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def parse_cidr(text: str, strict: bool = True) -> tuple[int, int]:
    """'10.42.0.0/16' -> (network int, prefix length). strict: host bits must be zero.

    (dns/acl.network_and_mask is the DNS --allow reading: (network, mask), lenient.)
    """
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not a CIDR such as 10.42.0.0/16")
    address, sep, prefix_text = text.partition("/")
    if not sep or not (prefix_text.isascii() and prefix_text.isdigit()) or int(prefix_text) > 32:
        raise AddressError(f"{text!r} is not a CIDR such as 10.42.0.0/16")
    prefix = int(prefix_text)
    value = to_int(address)
    if strict and value & ~mask(prefix) & 0xFFFFFFFF:
        raise AddressError(f"{text!r} has host bits set; did you mean "
                           f"{to_text(value & mask(prefix))}/{prefix}?")
    return value, prefix


def mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def contains(network: int, prefix: int, address: int) -> bool:
    return address & mask(prefix) == network


def broadcast(network: int, prefix: int) -> int:
    return network | (~mask(prefix) & 0xFFFFFFFF)


def host_in_subnet(key: str, text: str, network: int, prefix: int) -> int:
    """The address `text` (config field `key`) as an int: a host address of network/prefix.

    Raises AddressError with a message that names the field, for the caller's CNI error.
    """
    try:
        value = to_int(text)
    except AddressError as err:
        raise AddressError(f"{key}: {err}") from None
    cidr = f"{to_text(network)}/{prefix}"
    if not contains(network, prefix, value):
        raise AddressError(f"{key} {text} is outside subnet {cidr}")
    if value in (network, broadcast(network, prefix)):
        raise AddressError(f"{key} {text} is the network or broadcast address of {cidr}")
    return value
