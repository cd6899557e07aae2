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

from smarter_cni.dns.probe import ask_a
from smarter_cni.node.inpod import ECHO_REPLY, echo_request


def ping(address: str, seq: int, timeout: float = 0.25) -> bool:
    """One echo (raw socket, a sequence number per round: a late reply of an earlier round
    does not count)."""
    ident = os.getpid() & 0xFFFF
    packet = echo_request(ident, seq, b"smarter-cni-heal")
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data, source = sock.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                if source[0] == address and icmp[0] == ECHO_REPLY and \
                        struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    return True
        except OSError:
            return False
    return False


def resolve(server: str, name: str, expected: str, timeout: float = 0.25) -> bool:
    """One A query (dns/probe, the self-test's own): NOERROR with `expected` among the answers."""
    rcode, addresses, _ = ask_a(server, name, timeout=timeout)
    return rcode == 0 and expected in addresses


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
