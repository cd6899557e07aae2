"""The DNS queries the operator commands make (status, install, selftest).

Built and read with `dns.wire`, the same code the service answers with. A
probe is only ever sent to an address the node (or the pod it runs in) owns:
one the node lacks would leave by the default route.
"""

from __future__ import annotations

import random
import socket
import time

from . import wire
from .acl import host_has

RCODE_NAMES = {wire.NOERROR: "NOERROR", wire.FORMERR: "FORMERR", wire.SERVFAIL: "SERVFAIL",
               wire.NXDOMAIN: "NXDOMAIN", wire.NOTIMP: "NOTIMP", wire.REFUSED: "REFUSED"}
STATUS_PROBE_LABEL = "smarter-cni-status-probe"


def a_query(name: str, qid: int, qtype: int = wire.A) -> bytes:
    """A plain recursion-desired A (or `qtype`) query for `name` (no EDNS: any server
    answers it)."""
    return (wire.HEADER.pack(qid, wire.RD, 1, 0, 0, 0) + wire.encode_name(name)
            + wire.TYPE_CLASS.pack(qtype, wire.CLASS_IN))


def rcode_text(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"rcode {rcode}")


def read_a(data: bytes, qtype: int = wire.A) -> tuple[int, int, list[str]]:
    """(id, rcode, A (or with qtype AAAA: AAAA) addresses in the answer section); raises
    wire.FormatError."""
    family, size = (socket.AF_INET6, 16) if qtype == wire.AAAA else (socket.AF_INET, 4)
    parsed = wire.parse_response(data)
    addresses = []
    for section, _start, _end, rtype, _ttl, _ttl_at, rdata in parsed.records:
        if section == 0 and rtype == qtype and data[rdata - 2:rdata] == size.to_bytes(2, "big"):
            addresses.append(socket.inet_ntop(family, data[rdata:rdata + size]))
    return parsed.id, parsed.rcode, addresses


def ask_a(server: str, name: str, timeout: float = 1.0, port: int = 53, qtype: int = wire.A
          ) -> tuple[int | None, list[str], str]:
    """(rcode or None, addresses, error) of one UDP A (or `qtype` AAAA) query to
    server:port."""
    qid = random.randrange(1, 0xFFFF)
    sock = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
    deadline = time.monotonic() + timeout
    try:
        sock.sendto(a_query(name, qid, qtype), (server, port))
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data, _ = sock.recvfrom(4096)
            try:
                answer_id, rcode, addresses = read_a(data, qtype)
            except wire.FormatError:
                continue
            if answer_id == qid:
                return rcode, addresses, ""
    except socket.timeout:
        return None, [], f"no answer within {timeout:g} s"
    except OSError as err:
        return None, [], err.strerror or str(err)
    finally:
        sock.close()


def dns_answers(address: str, domain: str, timeout: float = 1.0, port: int = 53
                ) -> tuple[bool, str]:
    """One real query for a name under the cluster domain (answered by the service itself,
    never forwarded); (answered, what it said)."""
    if not host_has(address):
        return False, f"{address} is not an address of this node"
    rcode, _, error = ask_a(address, f"{STATUS_PROBE_LABEL}.{domain}", timeout, port)
    if rcode is None:
        return False, error
    return True, rcode_text(rcode)


def wait_for_dns(address: str, domain: str, timeout: float) -> bool:
    """True once the service on `address` answers (any rcode), within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dns_answers(address, domain, 0.5)[0]:
            return True
        time.sleep(0.2)
    return False
