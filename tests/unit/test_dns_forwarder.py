"""Forwarder pieces that need no network: upstream parsing, cache TTLs, relaying,
and the ACL's address matching."""

from __future__ import annotations

import struct

import pytest

from smarter_cni.dns import acl, wire
from smarter_cni.dns.cache import Entry as CacheEntry
from smarter_cni.dns.cache import cache_ttl, relay
from smarter_cni.dns.forwarder import parse_upstream, resolv_conf_upstreams


def upstream_answer(qname: str, ttls: list[int], rcode: int = wire.NOERROR,
                    with_opt: bool = True) -> bytes:
    name = wire.encode_name(qname)
    records = b"".join(wire.QUESTION_POINTER + struct.pack("!HHIH", wire.A, 1, ttl, 4)
                       + bytes([192, 0, 2, i]) for i, ttl in enumerate(ttls))
    opt = b"\x00" + struct.pack("!HHIH", wire.OPT, 1232, 0, 0) if with_opt else b""
    header = wire.HEADER.pack(77, wire.QR | wire.RD | wire.RA | rcode, 1, len(ttls), 0,
                              1 if with_opt else 0)
    return header + name + struct.pack("!HH", wire.A, 1) + records + opt


def client_query(qname: str, qid: int = 5, edns: int | None = None) -> wire.Query:
    packet = wire.HEADER.pack(qid, wire.RD, 1, 0, 0, 1 if edns else 0) + wire.encode_name(qname)
    packet += struct.pack("!HH", wire.A, 1)
    if edns:
        packet += b"\x00" + struct.pack("!HHIH", wire.OPT, edns, 0, 0)
    return wire.parse_query(packet)


def test_parse_upstream_forms():
    assert parse_upstream("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_upstream("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_upstream("[fd00::1]:54") == ("fd00::1", 54)
    assert parse_upstream("fd00:0::1") == ("fd00::1", 53)
    for bad in ("nonsense", "1.2.3.4:0", "1.2.3.4:99999", "300.1.1.1"):
        with pytest.raises((OSError, ValueError)):
            parse_upstream(bad)


def test_resolv_conf_skips_ourselves_and_junk(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example.com\nnameserver 169.254.0.2\n"
                    "nameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\n"
                    "nameserver 192.0.2.53\nnameserver fd00::53\n")
    found = resolv_conf_upstreams(str(path), {("169.254.0.2", 53)})
    assert found == [("192.0.2.53", 53), ("fd00::53", 53)]
    assert resolv_conf_upstreams(str(tmp_path / "missing"), set()) == []


def ttl_of(data: bytes) -> tuple[int, bool]:
    return cache_ttl(wire.parse_response(data), data)


def test_cache_ttl_rules():
    assert ttl_of(upstream_answer("a.test", [30, 10])) == (10, False)
    assert ttl_of(upstream_answer("a.test", [99999])) == (300, False)
    assert ttl_of(upstream_answer("a.test", [30], wire.SERVFAIL))[0] == 0
    assert ttl_of(upstream_answer("a.test", [])) == (0, True)  # negative without SOA


def test_relay_rewrites_id_case_ttl_and_edns():
    data = upstream_answer("fwd.test", [60])
    entry = CacheEntry(data, wire.parse_response(data), 100.0, 160.0)
    query = client_query("FWD.test", qid=4242)
    out = relay(entry, query, 512, 110.4)
    qid, flags, qd, an, ns, ar = wire.HEADER.unpack_from(out)
    assert qid == 4242 and an == 1 and ar == 0   # no OPT: the client sent none
    assert out[12:12 + len(query.question)] == query.question  # the client's case
    parsed = wire.parse_response(out)
    assert parsed.records[0][4] == 50  # 60 - 10 s in the cache
    with_edns = relay(entry, client_query("fwd.test", edns=1232), 1232, 100.0)
    assert wire.HEADER.unpack_from(with_edns)[5] == 1


def test_relay_truncates_to_the_client_limit():
    data = upstream_answer("big.test", [60] * 60)
    entry = CacheEntry(data, wire.parse_response(data), 0.0, 60.0)
    out = relay(entry, client_query("big.test"), 512, 1.0)
    assert wire.HEADER.unpack_from(out)[1] & wire.TC and len(out) <= 512
    full = relay(entry, client_query("big.test"), None, 1.0)
    assert wire.HEADER.unpack_from(full)[3] == 60


def test_acl_matches_loopback_subnets_and_host_addresses():
    rules = acl.Acl([acl.network_and_mask("10.42.0.0/16")], is_local=lambda ip: ip == "192.0.2.2")
    assert rules.allows("127.0.0.1", 0.0)
    assert rules.allows("127.9.9.9", 0.0)
    assert rules.allows("10.42.255.3", 0.0)
    assert rules.allows("192.0.2.2", 0.0)
    assert not rules.allows("10.43.0.1", 0.0)
    assert not rules.allows("192.0.2.3", 0.0)


def test_acl_rechecks_a_refused_source_after_a_while():
    current = {"192.0.2.2"}
    rules = acl.Acl([], is_local=lambda ip: ip in current)
    assert not rules.allows("198.51.100.9", 10.0)
    current.add("198.51.100.9")
    assert not rules.allows("198.51.100.9", 10.5)   # the refusal is cached briefly
    assert rules.allows("198.51.100.9", 13.0)


def test_acl_asks_the_kernel_about_host_addresses():
    assert acl.host_has("127.0.0.1")
    assert not acl.host_has("198.51.100.254")  # TEST-NET-2: never assigned here
