"""Run inside a pod's netns: wait until the pod has egress and names again.

    python3 heal_probe.py UPSTREAM DNS_ADDRESS NAME EXPECTED_IP DEADLINE_SECONDS

Each round sends one ICMP echo to UPSTREAM (a namespace beyond the node that
has no route back to the pods: only a masqueraded packet gets its reply)
and one DNS A query for NAME, 0.25 s timeout each. Prints one JSON line:
{"healed": monotonic time when both first worked (or null), "first_ok":
whether the very first round already worked, "rounds": n}. CLOCK_MONOTONIC
is system-wide, so the test compares it with its own fault time.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(address: str, seq: int, timeout: float = 0.25) -> bool:
    ident = os.getpid() & 0xFFFF
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"smarter-cni-heal"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data, source = sock.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                if source[0] == address and icmp[0] == 0 and \
                        struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    return True
        except OSError:
            return False
    return False


def resolve(server: str, name: str, expected: str, timeout: float = 0.25) -> bool:
    qid = os.getpid() & 0xFFFF
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (server, 53))
            data = sock.recv(4096)
        except OSError:
            return False
    return data[:2] == query[:2] and data[3] & 0x0F == 0 and socket.inet_aton(expected) in data[12:]


def main() -> int:
    upstream, dns, name, expected, limit = sys.argv[1:6]
    deadline = time.monotonic() + float(limit)
    rounds = 0
    first_ok = None
    while time.monotonic() < deadline:
        rounds += 1
        started = time.monotonic()
        ok = ping(upstream, rounds) and resolve(dns, name, expected)
        if first_ok is None:
            first_ok = ok
        if ok:
            print(json.dumps({"healed": time.monotonic(), "first_ok": first_ok, "rounds": rounds}))
            return 0
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    print(json.dumps({"healed": None, "first_ok": first_ok, "rounds": rounds}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
