"""dns/probe (the queries status, install and selftest make) and node/inpod (the
checks the self-test runs inside a pod's netns), over real sockets on loopback."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from smarter_cni.dns import probe, wire
from smarter_cni.node import inpod


def test_dns_probe_query_is_a_standard_a_query():
    query = probe.a_query("probe.cluster.local", 0x1234)
    assert query[:12] == bytes.fromhex("123401000001000000000000")
    assert query[12:] == b"\x05probe\x07cluster\x05local\x00\x00\x01\x00\x01"
    parsed = wire.parse_query(query)  # the service's own parser takes it
    assert (parsed.id, parsed.qtype, wire.decode_name(parsed.qname)) == \
        (0x1234, wire.A, "probe.cluster.local")


def test_dns_probe_never_sends_to_an_address_the_node_lacks():
    # 192.0.2.53 (TEST-NET-1) is on no interface: no packet may leave for it
    answered, why = probe.dns_answers("192.0.2.53", "cluster.local", 0.2)
    assert not answered and "not an address of this node" in why


def _one_answer_server(addresses: list[str], rcode: int = wire.NOERROR, bad_first: bool = False):
    """A tiny UDP responder on 127.0.0.1 that answers one query with `addresses`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        try:
            data, peer = sock.recvfrom(4096)
            query = wire.parse_query(data)
            if bad_first:
                sock.sendto(b"\x00\x01garbage", peer)
            answers = [wire.record(b"\xc0\x0c", wire.A, 5, socket.inet_aton(a))
                       for a in addresses]
            sock.sendto(wire.build_response(query, rcode, answers), peer)
        finally:
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread


def test_ask_a_reads_every_address_and_skips_junk():
    port, thread = _one_answer_server(["10.42.0.7", "10.42.0.9"], bad_first=True)
    rcode, addresses, error = probe.ask_a("127.0.0.1", "web.default", timeout=2, port=port)
    thread.join(5)
    assert (rcode, addresses, error) == (wire.NOERROR, ["10.42.0.7", "10.42.0.9"], "")


def test_ask_a_reports_nxdomain_and_silence():
    port, thread = _one_answer_server([], rcode=wire.NXDOMAIN)
    rcode, addresses, _ = probe.ask_a("127.0.0.1", "nobody.cluster.local", 2, port)
    thread.join(5)
    assert (probe.rcode_text(rcode), addresses) == ("NXDOMAIN", [])
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        rcode, _, error = probe.ask_a("127.0.0.1", "x", 0.2, silent.getsockname()[1])
    finally:
        silent.close()
    assert rcode is None and "no answer within 0.2 s" in error


def test_icmp_checksum_matches_a_known_echo_request():
    # echo request id=1 seq=1 with no payload: checksum is ~(0x0800 + 1 + 1)
    packet = inpod.echo_request(1, 1, b"")
    assert packet == bytes.fromhex("0800f7fd00010001")
    assert inpod.checksum(packet) == 0  # a packet with its checksum sums to zero


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root (CAP_NET_RAW)")
def test_inpod_ping_gets_an_echo_reply_from_loopback():
    ok, detail = inpod.ping("127.0.0.1")
    assert ok and detail.endswith(" ms")


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root (CAP_NET_RAW)")
def test_inpod_ping_says_when_nothing_answers():
    # 127.0.0.1 answers; an address on no route fails fast without leaving the host
    ok, detail = inpod.ping("0.0.0.1", attempts=1, timeout=0.3)
    assert not ok and detail
