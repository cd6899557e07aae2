"""The forward cache: RFC 2308 negative TTLs, bounds, the stale window, rotation."""

from __future__ import annotations

import struct

from smarter_cni.dns import cache, wire


def answer(qname: str, records: list[tuple[int, int, bytes]], rcode: int = wire.NOERROR,
           authority: list[tuple[int, int, bytes]] = ()) -> bytes:
    """An upstream response; records are (type, ttl, rdata) owned by the question name."""
    rrs = b"".join(wire.QUESTION_POINTER + struct.pack("!HHIH", rtype, 1, ttl, len(rdata))
                   + rdata for rtype, ttl, rdata in [*records, *authority])
    header = wire.HEADER.pack(7, wire.QR | wire.RD | wire.RA | rcode, 1, len(records),
                              len(authority), 0)
    return header + wire.encode_name(qname) + struct.pack("!HH", wire.A, 1) + rrs


def soa(minimum: int) -> bytes:
    return wire.soa_rdata(wire.encode_name("ns.test"), wire.encode_name("host.test"), 1,
                          minimum)


def query(qname: str, qid: int = 9) -> wire.Query:
    return wire.parse_query(wire.HEADER.pack(qid, wire.RD, 1, 0, 0, 0) + wire.encode_name(qname)
                            + struct.pack("!HH", wire.A, 1))


def entry(data: bytes, stored: float = 0.0, ttl: float = 60.0) -> cache.Entry:
    return cache.Entry(data, wire.parse_response(data), stored, stored + ttl)


def ttl_of(data: bytes) -> tuple[int, bool]:
    return cache.cache_ttl(wire.parse_response(data), data)


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum_and_bounded():
    assert ttl_of(answer("n.test", [], wire.NXDOMAIN, [(wire.SOA, 900, soa(40))])) == (40, True)
    assert ttl_of(answer("n.test", [], wire.NXDOMAIN, [(wire.SOA, 20, soa(40))])) == (20, True)
    assert ttl_of(answer("n.test", [], wire.NXDOMAIN, [(wire.SOA, 9999, soa(9999))])) == \
        (cache.MAX_NEGATIVE_TTL, True)
    assert ttl_of(answer("n.test", [], wire.NOERROR, [(wire.SOA, 30, soa(10))])) == (10, True)
    assert ttl_of(answer("n.test", [], wire.NXDOMAIN)) == (0, True)  # no SOA: not cached


def test_the_cache_is_bounded_by_entries_and_bytes_least_recently_used_first():
    store = cache.Cache(max_entries=3, max_bytes=10**6)
    for index in range(3):
        store.put(("k", index), entry(answer(f"n{index}.test", [(wire.A, 60, bytes(4))])))
    assert store.fresh(("k", 0), 1.0) is not None  # used: now the most recent
    store.put(("k", 3), entry(answer("n3.test", [(wire.A, 60, bytes(4))])))
    assert len(store) == 3 and store.fresh(("k", 1), 1.0) is None  # the LRU one went
    assert store.fresh(("k", 0), 1.0) is not None and store.evictions == 1
    small = cache.Cache(max_entries=100, max_bytes=1000)
    for index in range(50):
        small.put(("k", index), entry(answer(f"n{index}.test", [(wire.A, 60, bytes(4))])))
    assert small.bytes <= 1000 and 0 < len(small) < 50
    big = answer("big.test", [(wire.TXT, 60, b"\xff" + bytes(255))] * 20)
    assert not small.put(("big",), entry(big))  # over MAX_CACHED_ANSWER: never kept


def test_expired_entries_are_stale_only_inside_the_window():
    store = cache.Cache(stale_for=100)
    store.put(("k",), entry(answer("s.test", [(wire.A, 60, bytes(4))]), 0.0, 60.0))
    assert store.fresh(("k",), 59.0) is not None and store.stale(("k",), 59.0) is None
    assert store.fresh(("k",), 61.0) is None and store.stale(("k",), 61.0) is not None
    assert store.stale(("k",), 161.0) is None and len(store) == 0  # past the window: gone
    store.put(("j",), entry(answer("s.test", [(wire.A, 60, bytes(4))]), 0.0, 60.0))
    assert store.sweep(500.0) == 1 and store.bytes == 0


def test_stale_answers_carry_a_short_ttl_and_the_ede_option():
    stale_entry = entry(answer("s.test", [(wire.A, 3600, bytes(4))]), 0.0, 300.0)
    edns = wire.parse_query(wire.HEADER.pack(1, wire.RD, 1, 0, 0, 1) + wire.encode_name("s.test")
                            + struct.pack("!HH", wire.A, 1) + wire.opt_record())
    out = cache.relay(stale_entry, edns, 1232, 5000.0, stale=True)
    parsed = wire.parse_response(out)
    assert parsed.records[0][4] == cache.STALE_TTL
    opt = parsed.records[-1]
    assert opt[3] == wire.OPT and out[opt[6]:opt[2]] == wire.ede_option(wire.EDE_STALE_ANSWER)


def test_a_records_of_one_name_rotate_between_answers():
    data = answer("r.test", [(wire.A, 60, bytes([192, 0, 2, i])) for i in (1, 2, 3)])
    rotating = entry(data)
    assert rotating.run == (0, 3)
    firsts = [cache.relay(rotating, query("r.test"), None, 1.0) for _ in range(4)]
    heads = [wire.parse_response(out) for out in firsts]
    got = [out[h.records[0][6]:h.records[0][2]][-1] for out, h in zip(firsts, heads)]
    assert got == [1, 2, 3, 1]
    single = entry(answer("one.test", [(wire.A, 60, bytes(4))]))
    assert single.run is None


def test_hop_by_hop_edns_options_are_dropped_end_to_end_ones_kept():
    ecs = struct.pack("!HH", 8, 4) + b"\x00\x01\x18\x00"
    cookie = struct.pack("!HH", 10, 8) + bytes(8)
    padding = struct.pack("!HH", 12, 3) + bytes(3)
    assert wire.end_to_end_options(cookie + ecs + padding) == ecs
    assert wire.end_to_end_options(ecs + b"\x00") == b""  # malformed: nothing relayed
