"""DNS wire format: queries in, responses out, and no malformed packet gets past."""

from __future__ import annotations

import random
import struct

import pytest

from smarter_cni.dns import wire


def make_query(name: str = "web.default.svc.cluster.local", qtype: int = wire.A,
               qid: int = 0x1234, flags: int = wire.RD, edns: int | None = None,
               do: bool = False, version: int = 0) -> bytes:
    arcount = 1 if edns is not None else 0
    packet = wire.HEADER.pack(qid, flags, 1, 0, 0, arcount) + wire.encode_name(name)
    packet += struct.pack("!HH", qtype, wire.CLASS_IN)
    if edns is not None:
        ttl = (version << 16) | (wire.EDNS_DO if do else 0)
        packet += b"\x00" + struct.pack("!HHIH", wire.OPT, edns, ttl, 0)
    return packet


def test_parse_plain_query():
    query = wire.parse_query(make_query("Web.Default", wire.AAAA))
    assert query.id == 0x1234
    assert query.qtype == wire.AAAA and query.qclass == wire.CLASS_IN
    assert query.qname == b"\x03Web\x07Default\x00"
    assert query.key == b"\x03web\x07default\x00"
    assert not query.edns and query.udp_limit() == 512
    assert query.question == query.qname + b"\x00\x1c\x00\x01"


def test_parse_edns_payload_version_and_do():
    query = wire.parse_query(make_query(edns=1232, do=True))
    assert query.edns and query.edns_payload == 1232 and query.edns_do
    assert query.udp_limit() == 1232
    assert wire.parse_query(make_query(edns=100)).udp_limit() == 512  # never below 512
    assert wire.parse_query(make_query(edns=65000)).udp_limit() == wire.MAX_UDP_LIMIT
    assert wire.parse_query(make_query(edns=1232, version=1)).edns_version == 1


def test_parse_query_with_cookie_option():
    base = make_query()
    cookie = struct.pack("!HH", 10, 8) + b"\x01" * 8
    packet = wire.HEADER.pack(7, wire.RD, 1, 0, 0, 1) + base[12:]
    packet += b"\x00" + struct.pack("!HHIH", wire.OPT, 4096, 0, len(cookie)) + cookie
    query = wire.parse_query(packet)
    assert query.edns and query.edns_payload == 4096


@pytest.mark.parametrize("packet", [
    b"",
    b"\x12\x34",
    b"\x00" * 11,
    wire.HEADER.pack(1, 0, 0, 0, 0, 0),                            # no question
    wire.HEADER.pack(1, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2,  # two questions
    wire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x03web",                # name runs off the end
    wire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x03web\x00\x00",        # truncated type/class
    wire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer in question
    wire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x43abc\x00\x00\x01\x00\x01",  # label type 01
    wire.HEADER.pack(1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
    wire.HEADER.pack(1, 0, 1, 0, 0, 1) + b"\x00\x00\x01\x00\x01",   # OPT promised, absent
    wire.HEADER.pack(1, 0, 1, 0, 0, 1) + b"\x00\x00\x01\x00\x01\x00\x00\x29\x04",
    wire.HEADER.pack(1, 0, 1, 0, 0, 2) + b"\x00\x00\x01\x00\x01"    # two OPT records
    + (b"\x00" + struct.pack("!HHIH", wire.OPT, 512, 0, 0)) * 2,
    wire.HEADER.pack(1, 0, 1, 0, 0, 1) + b"\x00\x00\x01\x00\x01"    # rdata past the end
    + b"\x00" + struct.pack("!HHIH", wire.OPT, 512, 0, 40),
])
def test_malformed_queries_raise_format_error(packet):
    with pytest.raises(wire.FormatError):
        wire.parse_query(packet)


def test_random_garbage_never_raises_anything_else():
    rng = random.Random(1234)
    good = make_query(edns=1232)
    for _ in range(20000):
        if rng.random() < 0.5:
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        else:
            packet = bytearray(good[:rng.randint(0, len(good))])
            for _ in range(rng.randint(0, 4)):
                if packet:
                    packet[rng.randrange(len(packet))] = rng.getrandbits(8)
            packet = bytes(packet)
        try:
            wire.parse_query(packet)
        except wire.FormatError:
            pass
        response = wire.error_response(packet, wire.FORMERR)
        assert response is None or len(response) >= 12


def test_pointer_loop_is_rejected():
    packet = b"\x00" * 12 + b"\xc0\x0c"
    with pytest.raises(wire.FormatError):
        wire.read_name(packet, 12)


def test_build_response_and_truncation():
    query = wire.parse_query(make_query("many", edns=None))
    records = [wire.QUESTION_POINTER + struct.pack("!HHIH", wire.A, 1, 5, 4) + bytes([10, 0, 0, i])
               for i in range(40)]
    full = wire.build_response(query, wire.NOERROR, records, [], True, None)
    qid, flags, qd, an, ns, ar = wire.HEADER.unpack_from(full)
    assert (qid, qd, an, ar) == (0x1234, 1, 40, 0)
    assert flags & wire.QR and flags & wire.AA and flags & wire.RD and not flags & wire.TC
    truncated = wire.build_response(query, wire.NOERROR, records, [], True, 512)
    qid, flags, qd, an, ns, ar = wire.HEADER.unpack_from(truncated)
    assert flags & wire.TC and an == 0 and len(truncated) <= 512


def test_response_carries_opt_when_query_did():
    query = wire.parse_query(make_query(edns=4096, do=True))
    response = wire.build_response(query, wire.NXDOMAIN)
    assert response.endswith(b"\x00" + struct.pack("!HHIH", wire.OPT, wire.OUR_EDNS_PAYLOAD,
                                                   wire.EDNS_DO, 0))
    assert wire.HEADER.unpack_from(response)[5] == 1
    assert wire.HEADER.unpack_from(response)[1] & 0xF == wire.NXDOMAIN


def test_badvers_goes_in_the_opt_record():
    query = wire.parse_query(make_query(edns=1232, version=1))
    response = wire.build_response(query, wire.BADVERS, authoritative=False)
    opt_ttl = struct.unpack("!I", response[-6:-2])[0]
    assert opt_ttl >> 24 == 1 and wire.HEADER.unpack_from(response)[1] & 0xF == 0


def test_error_response_echoes_question_and_id():
    packet = make_query("x.example")
    response = wire.error_response(packet, wire.REFUSED)
    qid, flags, qd, *_ = wire.HEADER.unpack_from(response)
    assert qid == 0x1234 and flags & 0xF == wire.REFUSED and qd == 1
    assert response[12:] == packet[12:]
    assert wire.error_response(packet[:5], wire.FORMERR) is None
    as_response = wire.HEADER.pack(1, wire.QR, 0, 0, 0, 0)
    assert wire.error_response(as_response, wire.FORMERR) is None  # never answer a response


def test_encode_and_decode_names():
    assert wire.encode_name("a.bc.") == b"\x01a\x02bc\x00"
    assert wire.encode_name("") == b"\x00"
    assert wire.decode_name(b"\x01a\x02bc\x00") == "a.bc"
    with pytest.raises(wire.FormatError):
        wire.encode_name("a" * 64)
    with pytest.raises(wire.FormatError):
        wire.encode_name("a..b")


def test_parse_response_offsets_and_compression():
    query = wire.make_query(99, wire.encode_name("fwd.test"), wire.A, wire.CLASS_IN)
    # a hand-made answer: one A with a pointer owner, one OPT
    answer = (wire.HEADER.pack(99, wire.QR | wire.RD | wire.RA, 1, 1, 0, 1)
              + query[12:12 + 10 + 4]
              + wire.QUESTION_POINTER + struct.pack("!HHIH", wire.A, 1, 300, 4) + b"\xc0\x00\x02\x07"
              + b"\x00" + struct.pack("!HHIH", wire.OPT, 1232, 0, 0))
    parsed = wire.parse_response(answer)
    assert parsed.qname == wire.encode_name("fwd.test")
    assert [r[3] for r in parsed.records] == [wire.A, wire.OPT]
    section, start, end, rtype, ttl, ttl_at, rdata = parsed.records[0]
    assert ttl == 300 and answer[rdata:rdata + 4] == b"\xc0\x00\x02\x07"
    assert struct.unpack_from("!I", answer, ttl_at)[0] == 300
    with pytest.raises(wire.FormatError):
        wire.parse_response(answer[:-3])
