"""The pod's links, addresses and routes over rtnetlink, without exec'ing `ip`.

An `ip` exec costs 2-3 ms and a pod's ADD needed two; a netlink message
costs microseconds. A NETLINK_ROUTE socket belongs to the network namespace
it was created in, so `sockets_for` steps into the pod's netns with
setns(2) just long enough to open one there, then steps back. Python 3.11
has no os.setns, so setns is called through the small C module `_ctypes`
(~1 ms to import, against ~9 ms for the `ctypes` package).

Any failure to set this up raises NetlinkUnavailable, and callers fall back
to iproute2.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

AF_NETLINK = 16
NETLINK_ROUTE = 0
SOCK_RAW = 3
CLONE_NEWNET = 0x40000000

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD = 12, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RTM_F_CLONED = 0x200
IFF_UP = 1
AF_INET, AF_BRIDGE, AF_INET6 = 2, 7, 10
IFA_F_NODAD = 0x02  # an address usable at once: no duplicate address detection wait
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1


# Set (to anything) to do without rtnetlink: tests run both paths (links.py, loopback.py).
FORCE_IPROUTE2 = "SMARTER_CNI_USE_IPROUTE2"


class NetlinkUnavailable(Exception):
    """Raw netlink or setns cannot be used here; use iproute2 instead."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return (length.to_bytes(2, "little") + kind.to_bytes(2, "little") + payload
            + b"\0" * (-length % 4))


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    """Split a run of netlink attributes into (type, payload) pairs."""
    found = []
    offset = 0
    while offset + 4 <= len(data):
        length = int.from_bytes(data[offset:offset + 2], "little")
        if length < 4:
            break
        kind = int.from_bytes(data[offset + 2:offset + 4], "little") & 0x3FFF
        found.append((kind, data[offset + 4:offset + length]))
        offset += length + (-length % 4)
    return found


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _ipv4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def _ipv6(text: str) -> bytes:
    from ..ipv6 import to_int

    return to_int(text).to_bytes(16, "big")


def _ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return (bytes((family, 0)) + b"\0\0" + index.to_bytes(4, "little", signed=True)
            + _u32(flags) + _u32(change))


class Socket:
    """One NETLINK_ROUTE socket; each request waits for its acknowledgement."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _send(self, kind: int, body: bytes, flags: int) -> None:
        self.seq += 1
        header = ((16 + len(body)).to_bytes(4, "little") + kind.to_bytes(2, "little")
                  + (flags | NLM_F_REQUEST).to_bytes(2, "little")
                  + _u32(self.seq) + _u32(0))
        self.sock.send(header + body)

    def _replies(self) -> Iterator[tuple[int, bytes]]:
        """(type, payload) of every message answering the last one sent; others are skipped."""
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length = int.from_bytes(data[offset:offset + 4], "little")
                kind_in = int.from_bytes(data[offset + 4:offset + 6], "little")
                seq = int.from_bytes(data[offset + 8:offset + 12], "little")
                payload = data[offset + 16:offset + length]
                offset += max(length + (-length % 4), 16)
                if seq == self.seq:
                    yield kind_in, payload

    def request(self, kind: int, body: bytes, flags: int = 0) -> bytes:
        """Send one message; return the reply payload, or raise OSError with the errno."""
        self._send(kind, body, flags | NLM_F_ACK)
        reply = b""
        for kind_in, payload in self._replies():
            if kind_in == NLMSG_ERROR:
                errno = -int.from_bytes(payload[:4], "little", signed=True)
                if errno:
                    raise OSError(errno, os.strerror(errno))
                return reply
            reply = payload
        raise AssertionError("unreachable: _replies never ends")

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """Every payload of a dump request (NLM_F_DUMP), in the kernel's order."""
        self._send(kind, body, NLM_F_DUMP)
        payloads = []
        for kind_in, payload in self._replies():
            if kind_in == NLMSG_DONE:
                return payloads
            if kind_in == NLMSG_ERROR:
                errno = -int.from_bytes(payload[:4], "little", signed=True)
                raise OSError(errno, os.strerror(errno))
            payloads.append(payload)
        raise AssertionError("unreachable: _replies never ends")

    def ipv4_addresses(self, index: int, family: int = AF_INET) -> list[tuple[str, int]]:
        """(address, prefix) of every IPv4 (or `family`) address on link `index` (one dump)."""
        found = []
        for payload in self.dump(RTM_GETADDR, bytes((family, 0, 0, 0)) + _u32(0)):
            if payload[0] != family or int.from_bytes(payload[4:8], "little") != index:
                continue
            local = address = b""
            for kind, value in _attrs(payload[8:]):
                if kind == IFA_LOCAL:
                    local = value
                elif kind == IFA_ADDRESS:
                    address = value
            raw = local or address
            if len(raw) == 4:
                found.append((".".join(str(b) for b in raw), payload[1]))
            elif len(raw) == 16:
                from ..ipv6 import to_text

                found.append((to_text(int.from_bytes(raw, "big")), payload[1]))
        return found

    # -- links

    def set_master(self, index: int, master: int) -> None:
        """Enslave link `index` to bridge `master` and bring it up."""
        self.request(RTM_NEWLINK, _ifinfomsg(index, IFF_UP, IFF_UP)
                     + _attr(IFLA_MASTER, _u32(master)))

    def ifindex(self, name: str) -> int:
        return self.link(name)[0]

    def link(self, name: str) -> tuple[int, int]:
        """(ifindex, flags) of link `name`; OSError ENODEV when there is none."""
        reply = self.request(RTM_GETLINK, _ifinfomsg() + _attr(IFLA_IFNAME, _name(name)))
        return (int.from_bytes(reply[4:8], "little", signed=True),
                int.from_bytes(reply[8:12], "little"))

    def create_veth(self, host: str, host_mac: str, peer: str, peer_mac: str, peer_netns_fd: int,
                    mtu: int, master: int) -> None:
        """The pair, host end enslaved to `master` and up, peer born in the pod's netns."""
        peer_info = (_ifinfomsg() + _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_ADDRESS, _mac(peer_mac))
                     + _attr(IFLA_MTU, _u32(mtu)) + _attr(IFLA_NET_NS_FD, _u32(peer_netns_fd)))
        linkinfo = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        body = (_ifinfomsg(flags=IFF_UP, change=IFF_UP) + _attr(IFLA_IFNAME, _name(host))
                + _attr(IFLA_ADDRESS, _mac(host_mac)) + _attr(IFLA_MTU, _u32(mtu))
                + _attr(IFLA_MASTER, _u32(master)) + _attr(IFLA_LINKINFO, linkinfo))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def create_bridge(self, name: str, mac: str) -> None:
        """A bridge with a fixed MAC, left down (as `ip link add NAME address MAC type bridge`)."""
        linkinfo = _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge\0"))
        self.request(RTM_NEWLINK, _ifinfomsg() + _attr(IFLA_IFNAME, _name(name))
                     + _attr(IFLA_ADDRESS, _mac(mac)) + linkinfo, NLM_F_CREATE | NLM_F_EXCL)

    def set_hairpin(self, index: int) -> None:
        protinfo = _attr(IFLA_PROTINFO | NLA_F_NESTED, _attr(IFLA_BRPORT_MODE, b"\x01"))
        self.request(RTM_SETLINK, _ifinfomsg(index, family=AF_BRIDGE) + protinfo)

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, _ifinfomsg(index, IFF_UP, IFF_UP))

    def delete_link(self, name: str) -> bool:
        """True when deleted, False when there was no such link."""
        try:
            self.request(RTM_DELLINK, _ifinfomsg() + _attr(IFLA_IFNAME, _name(name)))
        except OSError as err:
            if err.errno == 19:  # ENODEV
                return False
            raise
        return True

    # -- addresses and routes

    def add_ipv4(self, index: int, address: str, prefix: int) -> None:
        message = bytes((AF_INET, prefix, 0, RT_SCOPE_UNIVERSE)) + _u32(index)
        packed = _ipv4(address)
        self.request(RTM_NEWADDR, message + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed),
                     NLM_F_CREATE | NLM_F_EXCL)

    def add_ipv6(self, index: int, address: str, prefix: int) -> None:
        """Without duplicate address detection: usable the moment ADD returns."""
        message = bytes((AF_INET6, prefix, IFA_F_NODAD, RT_SCOPE_UNIVERSE)) + _u32(index)
        self.request(RTM_NEWADDR, message + _attr(IFA_ADDRESS, _ipv6(address)),
                     NLM_F_CREATE | NLM_F_EXCL)

    def replace_address(self, index: int, address: str, prefix: int) -> None:
        """As `ip addr replace` (IPv6: with nodad): created, or its settings renewed."""
        if ":" in address:
            message = bytes((AF_INET6, prefix, IFA_F_NODAD, RT_SCOPE_UNIVERSE)) + _u32(index)
            attrs = _attr(IFA_ADDRESS, _ipv6(address))
        else:
            message = bytes((AF_INET, prefix, 0, RT_SCOPE_UNIVERSE)) + _u32(index)
            packed = _ipv4(address)
            attrs = _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, message + attrs, NLM_F_CREATE | NLM_F_REPLACE)

    def delete_address(self, index: int, address: str, prefix: int) -> None:
        """As `ip addr del`; an address already gone is fine."""
        if ":" in address:
            message = bytes((AF_INET6, prefix, 0, 0)) + _u32(index)
            attrs = _attr(IFA_ADDRESS, _ipv6(address))
        else:
            message = bytes((AF_INET, prefix, 0, 0)) + _u32(index)
            packed = _ipv4(address)
            attrs = _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        try:
            self.request(RTM_DELADDR, message + attrs)
        except OSError as err:
            if err.errno != 99:  # EADDRNOTAVAIL: gone already (a primary took it along)
                raise

    def routes6(self) -> list[tuple[str, int, int]]:
        """(destination, prefix length, output ifindex) of each IPv6 route in the main table,
        as `ip -6 route show` lists them (one dump; cached clones left out). The ifindex is
        0 for a route without one (a multipath route)."""
        from ..ipv6 import to_text

        found = []
        for payload in self.dump(RTM_GETROUTE, bytes((AF_INET6,)) + b"\0" * 11):
            if len(payload) < 12 or payload[0] != AF_INET6 \
                    or int.from_bytes(payload[8:12], "little") & RTM_F_CLONED:
                continue
            table, dst, oif = payload[4], 0, 0
            for kind, value in _attrs(payload[12:]):
                if kind == RTA_TABLE and len(value) == 4:
                    table = int.from_bytes(value, "little")
                elif kind == RTA_DST and len(value) == 16:
                    dst = int.from_bytes(value, "big")
                elif kind == RTA_OIF and len(value) == 4:
                    oif = int.from_bytes(value, "little")
            if table == RT_TABLE_MAIN:
                found.append((to_text(dst), payload[1], oif))
        return found

    def add_default_route6(self, index: int, gateway: str) -> None:
        message = bytes((AF_INET6, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                         RTN_UNICAST)) + _u32(0)
        self.request(RTM_NEWROUTE, message + _attr(RTA_GATEWAY, _ipv6(gateway))
                     + _attr(RTA_OIF, _u32(index)), NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, index: int, gateway: str) -> None:
        message = bytes((AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                         RTN_UNICAST)) + _u32(0)
        self.request(RTM_NEWROUTE, message + _attr(RTA_GATEWAY, _ipv4(gateway))
                     + _attr(RTA_OIF, _u32(index)), NLM_F_CREATE | NLM_F_EXCL)


def _open_socket() -> Any:
    import _socket

    sock = _socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


def host_socket() -> Socket:
    try:
        return Socket(_open_socket())
    except (ImportError, OSError) as err:
        raise NetlinkUnavailable(str(err)) from None


_setns: Any = None


def _load_setns() -> Any:
    global _setns
    if _setns is None:
        try:
            import _ctypes
        except ImportError as err:
            raise NetlinkUnavailable(f"no _ctypes: {err}") from None

        class CInt(_ctypes._SimpleCData):
            _type_ = "i"

        class CFunction(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = CInt

        try:
            function = CFunction(_ctypes.dlsym(_ctypes.dlopen(None, 2), "setns"))
        except (OSError, AttributeError) as err:
            raise NetlinkUnavailable(f"no setns in libc: {err}") from None
        function.argtypes = (CInt, CInt)
        _setns = function
    return _setns


def pod_socket(netns_fd: int) -> Socket:
    """A netlink socket inside the netns `netns_fd`; this process stays in its own."""
    setns = _load_setns()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if setns(netns_fd, CLONE_NEWNET) != 0:
            raise NetlinkUnavailable("setns into the pod's netns failed")
        try:
            sock = _open_socket()
        finally:
            if setns(home, CLONE_NEWNET) != 0:
                # Never carry on in the wrong namespace: everything after would act on the pod.
                os.write(1, b'{"code": 5, "msg": "cannot return to the host network namespace"}\n')
                os._exit(70)
        return Socket(sock)
    except OSError as err:
        raise NetlinkUnavailable(str(err)) from None
    finally:
        os.close(home)
