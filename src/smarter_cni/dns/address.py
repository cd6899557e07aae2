"""Make sure the service's address exists on the node.

As NodeLocal DNSCache does: the address goes on a dummy interface (created
if absent) as a /32, unless it is loopback or already assigned. In docker
mode that address is the Docker network's reserved aux address; pods on the
Docker bridge reach it because the host answers ARP for its own addresses.
Kernels built without the dummy driver get the /32 on `lo` instead, which
the host delivers locally just the same.
"""

from __future__ import annotations

import logging
import os

from ..run import run
from .acl import host_has

log = logging.getLogger("smarter-cni.dns")

DEFAULT_INTERFACE = "smarter-dns"


class AddressSetupError(RuntimeError):
    pass


def is_local(address: str) -> bool:
    """True when the address is the node's (dns.acl.host_has: the one test of that)."""
    return host_has(address)


def _ip(*argv: str) -> None:
    try:
        done = run(["ip", *argv], timeout=10.0)
    except Exception as err:
        raise AddressSetupError(f"ip {' '.join(argv)}: {err}") from None
    if done.returncode != 0:
        raise AddressSetupError(f"ip {' '.join(argv)} failed: {done.error_text}")


def _host_cidr(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


def _nodad(address: str) -> tuple[str, ...]:
    """An IPv6 address to answer on at once, not after duplicate address detection."""
    return ("nodad",) if ":" in address else ()


def ensure_address(address: str, interface: str = DEFAULT_INTERFACE) -> str:
    """Returns what it did: 'present' or 'added to <interface>'."""
    if is_local(address):
        return "present"
    if not os.path.exists(f"/sys/class/net/{interface}"):
        try:
            _ip("link", "add", interface, "type", "dummy")
            log.info("created dummy interface %s", interface)
        except AddressSetupError as err:
            log.warning("no dummy interface (%s); putting %s on lo instead", err,
                        _host_cidr(address))
            interface = "lo"
    _ip("link", "set", interface, "up")
    _ip("addr", "replace", _host_cidr(address), "dev", interface, *_nodad(address))
    return f"added to {interface}"


def remove_address(address: str, interface: str, drop_empty_dummy: bool = False) -> None:
    """Take back an address `ensure_address` added; never raises.

    With `drop_empty_dummy` the interface goes too once it is a dummy that
    carries no address any more (uninstall; the service leaves it for reuse).
    """
    try:
        _ip("addr", "del", _host_cidr(address), "dev", interface)
    except AddressSetupError as err:
        log.warning("could not remove %s from %s: %s", address, interface, err)
    if drop_empty_dummy and interface != "lo":
        kind = run(["ip", "-o", "-d", "link", "show", "dev", interface], timeout=10.0)
        addresses = run(["ip", "-o", "addr", "show", "dev", interface], timeout=10.0)
        # the kernel's own IPv6 link-local address (an up dummy gets one) does not count
        ours = [line for line in addresses.stdout.splitlines()
                if line.strip() and b" inet6 fe80:" not in line]
        if kind.returncode == 0 and b" dummy " in kind.stdout and addresses.returncode == 0 \
                and not ours:
            run(["ip", "link", "del", interface], timeout=10.0)
