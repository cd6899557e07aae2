"""Protocol details of forwarding, asked by real dig: EDNS0 options and the DO bit go
upstream and come back, several A records rotate between answers.

(A truncated upstream answer fetched again over TCP: test_dns_service.py.)
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from test_dns_helpers import (
    Dnsmasq,
    DnsService,
    Registry,
    dig,
    needs_tools,
    unique_loopback,
    write_conflist,
)

pytestmark = [pytest.mark.root, needs_tools]


class CaptureUpstream:
    """A UDP socket on loopback standing in for the upstream, to see the exact query
    the service sends (dnsmasq logs neither the DO bit nor EDNS options). It answers
    each query with one A record, an RRSIG over it when DO was set, and echoes the
    client-subnet option with a scope, as a resolver that honours ECS does."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[dict] = []
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.sock.sendto(self._answer(data), peer)

    def _answer(self, data: bytes) -> bytes:
        qid, flags, _, _, _, arcount = struct.unpack_from("!HHHHHH", data)
        offset = 12
        while data[offset]:
            offset += 1 + data[offset]
        question_end = offset + 5
        question = data[12:question_end]
        seen = {"do": False, "options": {}, "cd": bool(flags & 0x0010)}
        if arcount and data[question_end] == 0:  # the OPT record at the root
            _, _, ttl, rdlength = struct.unpack_from("!HHIH", data, question_end + 1)
            seen["do"] = bool(ttl & 0x8000)
            rdata = data[question_end + 11:question_end + 11 + rdlength]
            pos = 0
            while pos + 4 <= len(rdata):
                code, length = struct.unpack_from("!HH", rdata, pos)
                seen["options"][code] = rdata[pos + 4:pos + 4 + length]
                pos += 4 + length
        self.seen.append(seen)
        records = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 77])]
        if seen["do"]:
            signer = b"\x04test\x00"
            rrsig = (struct.pack("!HBBIIIH", 1, 13, 2, 300, 2000000000, 1700000000, 4242)
                     + signer + bytes(64))
            records.append(b"\xc0\x0c" + struct.pack("!HHIH", 46, 1, 300, len(rrsig)) + rrsig)
        options = b""
        if 8 in seen["options"]:
            ecs = bytearray(seen["options"][8])
            ecs[3] = 24  # scope prefix length
            options = struct.pack("!HH", 8, len(ecs)) + bytes(ecs)
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000 if seen["do"] else 0,
                                    len(options)) + options
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, len(records), 0, 1)
        return header + question + b"".join(records) + opt

    def stop(self) -> None:
        self.done = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def parts(tmp_path, state_dir):
    made: list = []
    try:
        yield made
    finally:
        for part in reversed(made):
            part.stop()


def start_service(tmp_path, state_dir, parts, upstreams):
    service = DnsService(tmp_path, unique_loopback(), state_dir, write_conflist(tmp_path),
                         upstreams, ["--no-address-setup"])
    parts.append(service)
    return service.start()


def test_the_do_bit_and_end_to_end_edns_options_are_forwarded(tmp_path, state_dir, parts):
    upstream = CaptureUpstream()
    parts.append(upstream)
    service = start_service(tmp_path, state_dir, parts, [upstream.address])
    answer = dig(service.listen, "signed.test", "+dnssec", "+subnet=192.0.2.0/24", "+cookie")
    assert answer.status == "NOERROR" and answer.values() == ["192.0.2.77"], answer
    assert answer.values("RRSIG"), answer  # the signature came through
    assert "flags: do;" in answer.stdout, answer  # DO echoed to the client
    assert "CLIENT-SUBNET: 192.0.2.0/24/24" in answer.stdout, answer  # the upstream's option
    seen = upstream.seen[-1]
    assert seen["do"], seen
    assert seen["options"].get(8, b"")[:4] == b"\x00\x01\x18\x00", seen  # ECS as dig sent it
    assert 10 not in seen["options"], seen  # the client's cookie is for us, not the upstream

    plain = dig(service.listen, "signed.test")  # no DO: a separate cache entry, no RRSIG
    assert plain.values() == ["192.0.2.77"] and not plain.values("RRSIG"), plain
    assert not upstream.seen[-1]["do"] and len(upstream.seen) == 2
    again = dig(service.listen, "signed.test", "+dnssec", "+subnet=192.0.2.0/24")
    assert again.values("RRSIG") and len(upstream.seen) == 2, again  # from the cache
    cd = dig(service.listen, "cd.test", "+cdflag")
    assert cd.status == "NOERROR" and upstream.seen[-1]["cd"], cd


def first_addresses(listen: str, name: str, times: int, *args: str) -> list[str]:
    firsts = []
    for _ in range(times):
        answer = dig(listen, name, *args)
        order = [value for _, rtype, value in answer.answers if rtype == "A"]
        assert len(order) == 3, answer
        firsts.append(order[0])
    return firsts


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_several_pod_addresses_rotate_between_answers(tmp_path, state_dir, parts, transport):
    registry = Registry(state_dir)
    for index in range(3):
        registry.add(f"c{index}", "web", f"10.99.0.{10 + index}", save=False)
    registry.save()
    service = start_service(tmp_path, state_dir, parts, [])
    firsts = first_addresses(service.listen, "web.default.svc.cluster.local", 6, transport)
    assert sorted(set(firsts)) == ["10.99.0.10", "10.99.0.11", "10.99.0.12"], firsts
    assert firsts[:3] != firsts[1:4]  # a new first address every time


def test_several_forwarded_addresses_rotate_between_answers(tmp_path, state_dir, parts):
    hosts = tmp_path / "three.hosts"
    hosts.write_text("".join(f"192.0.2.{i} three.test\n" for i in (1, 2, 3)))
    upstream = Dnsmasq(tmp_path, {}, [f"--addn-hosts={hosts}", "--local-ttl=60"])
    parts.append(upstream)
    upstream.start()
    service = start_service(tmp_path, state_dir, parts, [upstream.upstream])
    firsts = first_addresses(service.listen, "three.test", 6)
    assert sorted(set(firsts)) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"], firsts
