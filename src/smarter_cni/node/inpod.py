"""Checks run inside a pod's network namespace: `nsenter --net=NS python -m smarter_cni.node.inpod`.

The self-test needs nothing beyond install.sh's prerequisites: no `ping`, no
`dig`. ICMP echo goes through a raw socket (root has CAP_NET_RAW; the
unprivileged ping socket is the fallback), names through dns/probe.

    inpod ping ADDRESS               -> {"ok": bool, "detail": "3 ms" | why}  (IPv4 or IPv6)
    inpod resolve SERVER NAME [AAAA] -> {"ok": bool, "addresses": [...], "detail": ...}
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0
ECHO6_REQUEST, ECHO6_REPLY = 128, 129  # ICMPv6 (RFC 4443)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def echo6_request(ident: int, seq: int, payload: bytes) -> bytes:
    """ICMPv6 echo request; its checksum covers an IPv6 pseudo-header, which the kernel
    fills in for ICMPv6 sockets (RFC 3542), so it goes out as 0 here."""
    return struct.pack("!BBHHH", ECHO6_REQUEST, 0, 0, ident, seq) + payload


def _icmp_socket(family: int = socket.AF_INET) -> tuple[socket.socket, bool]:
    """(socket, raw): a raw ICMP (ICMPv6) socket, else the kernel's ping socket."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False


def ping(address: str, attempts: int = 2, timeout: float = 1.0) -> tuple[bool, str]:
    """One echo answered within `timeout` in up to `attempts` tries; (ok, detail)."""
    v6 = ":" in address
    request, reply = (echo6_request, ECHO6_REPLY) if v6 else (echo_request, ECHO_REPLY)
    try:
        sock, raw = _icmp_socket(socket.AF_INET6 if v6 else socket.AF_INET)
    except OSError as err:
        return False, f"no ICMP socket: {err.strerror}"
    ident = os.getpid() & 0xFFFF
    payload = b"smarter-cni-selftest"
    try:
        for seq in range(1, attempts + 1):
            started = time.monotonic()
            try:
                sock.sendto(request(ident, seq, payload), (address, 0))
            except OSError as err:
                return False, f"cannot send to {address}: {err.strerror}"
            deadline = started + timeout
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, source = sock.recvfrom(2048)
                except socket.timeout:
                    break
                if raw and not v6:
                    data = data[(data[0] & 0x0F) * 4:]  # the IPv4 header comes along
                if _normal(source[0]) != _normal(address) or len(data) < 8:
                    continue
                kind, _, _, reply_id, reply_seq = struct.unpack("!BBHHH", data[:8])
                # a ping socket rewrites the id to its port, so only a raw one checks it
                if kind == reply and reply_seq == seq and (not raw or reply_id == ident):
                    return True, f"{(time.monotonic() - started) * 1000:.0f} ms"
        return False, f"no echo reply from {address} ({attempts} x {timeout:g} s)"
    finally:
        sock.close()


def _normal(address: str) -> str:
    """One spelling per address (IPv6 has many), to match a reply's source."""
    if ":" not in address:
        return address
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6,
                                                                  address.split("%")[0]))
    except OSError:
        return address


def resolve(server: str, name: str, qtype: str = "A") -> dict:
    from ..dns import wire
    from ..dns.probe import ask_a, rcode_text

    kind = wire.AAAA if qtype.upper() == "AAAA" else wire.A
    rcode, addresses, error = ask_a(server, name, timeout=1.0, qtype=kind)
    if rcode is None:  # one retry, as dig's +tries=2
        rcode, addresses, error = ask_a(server, name, timeout=1.0, qtype=kind)
    detail = error if rcode is None else (" ".join(addresses) or rcode_text(rcode))
    return {"ok": bool(addresses), "addresses": addresses, "detail": detail}


def main(argv: list[str]) -> int:
    if argv[:1] == ["ping"] and len(argv) == 2:
        ok, detail = ping(argv[1])
        result = {"ok": ok, "detail": detail}
    elif argv[:1] == ["resolve"] and len(argv) in (3, 4) and argv[3:] in ([], ["A"], ["AAAA"]):
        result = resolve(*argv[1:])
    else:
        print("usage: inpod ping ADDRESS | inpod resolve SERVER NAME [A|AAAA]", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
