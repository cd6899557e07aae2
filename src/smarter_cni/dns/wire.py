"""DNS wire format: just what a node resolver needs, with `struct`.

Parses a query (header, one question, the EDNS0 OPT record) and builds
responses from pre-encoded record bytes. Every malformed input raises
`FormatError`; nothing here trusts a length it has not checked.
dnslib would cost ~20 ms of import and ~10x the time per packet; the
service answers from cached wire bytes, so hand-written code is enough.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
TYPE_CLASS = struct.Struct("!HH")

# types and classes
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 41, 255
CLASS_IN, CLASS_ANY = 1, 255

# header flag bits
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800

# response codes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

EDNS_DO = 0x8000
CLASSIC_UDP_LIMIT = 512
MAX_UDP_LIMIT = 4096
OUR_EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020)
MAX_NAME = 255


class FormatError(ValueError):
    """The packet is not a DNS message we can parse."""


class Query:
    """One parsed query. `qname` keeps the client's case; `key` is lowercased."""

    __slots__ = ("id", "flags", "qname", "qtype", "qclass", "question", "edns",
                 "edns_payload", "edns_version", "edns_do", "edns_options")

    def __init__(self) -> None:
        self.id = 0
        self.flags = 0
        self.qname = b""      # wire-encoded name, as asked
        self.qtype = 0
        self.qclass = 0
        self.question = b""   # the whole question section, echoed in the answer
        self.edns = False
        self.edns_payload = CLASSIC_UDP_LIMIT
        self.edns_version = 0
        self.edns_do = False
        self.edns_options = b""  # the OPT record's RDATA: option TLVs, as sent

    @property
    def key(self) -> bytes:
        """The lowercased wire name: what names are looked up by."""
        return self.qname.lower()

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    def udp_limit(self) -> int:
        """Largest UDP answer this client accepts (RFC 6891: at least 512)."""
        if not self.edns:
            return CLASSIC_UDP_LIMIT
        return max(CLASSIC_UDP_LIMIT, min(self.edns_payload, MAX_UDP_LIMIT))


def read_name(data: bytes, offset: int, allow_pointers: bool = True) -> tuple[bytes, int]:
    """(wire name without compression, offset after the name as stored)."""
    labels = []
    total = 1
    end = -1
    jumps = 0
    size = len(data)
    while True:
        if offset >= size:
            raise FormatError("name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if not allow_pointers:
                raise FormatError("compression pointer where none is allowed")
            if offset + 1 >= size:
                raise FormatError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64 or target >= offset:
                raise FormatError("compression pointer loop")
            offset = target
            continue
        if kind:
            raise FormatError("unsupported label type")
        total += length + 1
        if total > MAX_NAME:
            raise FormatError("name longer than 255 octets")
        if offset + 1 + length > size:
            raise FormatError("label runs past the end of the packet")
        labels.append(data[offset:offset + 1 + length])
        offset += 1 + length
    labels.append(b"\x00")
    return b"".join(labels), (end if end >= 0 else offset)


def skip_record(data: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """(type, class, ttl, rdata offset, offset after the record)."""
    _, offset = read_name(data, offset)
    if offset + 10 > len(data):
        raise FormatError("truncated resource record")
    rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, offset)
    rdata = offset + 10
    after = rdata + rdlength
    if after > len(data):
        raise FormatError("resource record data runs past the end of the packet")
    return rtype, rclass, ttl, rdata, after


def parse_query(data: bytes) -> Query:
    """Parse a query; raises FormatError for anything malformed or truncated."""
    if len(data) < 12:
        raise FormatError("shorter than a DNS header")
    query = Query()
    query.id, query.flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions")
    query.qname, offset = read_name(data, 12, allow_pointers=False)
    if offset + 4 > len(data):
        raise FormatError("truncated question")
    query.qtype, query.qclass = TYPE_CLASS.unpack_from(data, offset)
    offset += 4
    query.question = data[12:offset]
    for _ in range(ancount + nscount):
        offset = skip_record(data, offset)[4]
    for _ in range(arcount):
        start = offset
        rtype, rclass, ttl, rdata, offset = skip_record(data, offset)
        if rtype == OPT:
            if query.edns or data[start] != 0:
                raise FormatError("more than one OPT record, or one not at the root")
            query.edns = True
            query.edns_payload = rclass
            query.edns_version = (ttl >> 16) & 0xFF
            query.edns_do = bool(ttl & EDNS_DO)
            query.edns_options = data[rdata:offset]
    return query


def encode_name(name: str) -> bytes:
    """'a.b.c' -> wire format. Raises FormatError for an empty or over-long label."""
    raw = name.rstrip(".").encode("ascii")
    if not raw:
        return b"\x00"
    labels = raw.split(b".")
    for label in labels:
        if not 0 < len(label) < 64:
            raise FormatError(f"bad label in {name!r}")
    wire = b"".join([bytes((len(label),)) + label for label in labels]) + b"\x00"
    if len(wire) > MAX_NAME:
        raise FormatError(f"name {name[:40]!r}... is too long")
    return wire


def decode_name(wire: bytes) -> str:
    """Wire name -> dotted text without the trailing dot ('' for the root)."""
    labels = []
    offset = 0
    while offset < len(wire) and wire[offset]:
        length = wire[offset]
        labels.append(wire[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels)


def opt_record(do_bit: bool = False, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT pseudo-record: root name, advertised payload, `options` (TLVs)."""
    ttl = (ext_rcode << 24) | (EDNS_DO if do_bit else 0)
    return b"\x00" + RR_FIXED.pack(OPT, OUR_EDNS_PAYLOAD, ttl, len(options)) + options


# EDNS options that belong to one hop (RFC 7873 cookie, RFC 7828 keepalive,
# RFC 7830 padding): never relayed between client and upstream.
HOP_BY_HOP_OPTIONS = frozenset((10, 11, 12))
OPTION_EDE = 15             # RFC 8914 extended DNS error
EDE_STALE_ANSWER = 3


def end_to_end_options(rdata: bytes) -> bytes:
    """The option TLVs of an OPT RDATA minus the hop-by-hop ones ('' if malformed)."""
    if not rdata:
        return b""
    kept = []
    offset = 0
    size = len(rdata)
    while offset < size:
        if offset + 4 > size:
            return b""
        code, length = TYPE_CLASS.unpack_from(rdata, offset)
        end = offset + 4 + length
        if end > size:
            return b""
        if code not in HOP_BY_HOP_OPTIONS:
            kept.append(rdata[offset:end])
        offset = end
    return b"".join(kept)


def ede_option(info_code: int) -> bytes:
    return TYPE_CLASS.pack(OPTION_EDE, 2) + info_code.to_bytes(2, "big")


def record(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    """One resource record; `owner` is wire bytes (a name or a 2-byte pointer)."""
    return owner + RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


QUESTION_POINTER = b"\xc0\x0c"  # the question's name always starts at offset 12


def response_flags(query: Query, rcode: int, authoritative: bool) -> int:
    flags = QR | RA | (query.flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    return flags


def build_response(query: Query, rcode: int, answers: list[bytes] = (),  # type: ignore[assignment]
                   authority: list[bytes] = (),  # type: ignore[assignment]
                   authoritative: bool = True, limit: int | None = None) -> bytes:
    """A full response echoing the question; with TC and no records if over `limit`."""
    ext_rcode = rcode >> 4
    flags = response_flags(query, rcode, authoritative)
    extra = opt_record(query.edns_do, ext_rcode) if query.edns else b""
    arcount = 1 if query.edns else 0
    body = b"".join(answers) + b"".join(authority)
    size = 12 + len(query.question) + len(body) + len(extra)
    if limit is not None and size > limit:
        header = HEADER.pack(query.id, flags | TC, 1, 0, 0, arcount)
        return header + query.question + extra
    header = HEADER.pack(query.id, flags, 1, len(answers), len(authority), arcount)
    return header + query.question + body + extra


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare error (FORMERR/NOTIMP/REFUSED) for a packet we may not fully parse.

    Echoes the question when it parses, else none. None when the packet is
    too short to carry an ID or is itself a response (never answer those).
    """
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None
    out_flags = QR | RA | (flags & (OPCODE_MASK | RD | CD)) | rcode
    question = b""
    try:
        _, offset = read_name(data, 12, allow_pointers=False)
        if offset + 4 <= len(data) and struct.unpack_from("!H", data, 4)[0] == 1:
            question = data[12:offset + 4]
    except FormatError:
        pass
    return HEADER.pack(qid, out_flags, 1 if question else 0, 0, 0, 0) + question


def make_query(qid: int, qname: bytes, qtype: int, qclass: int, flags: int = RD,
               payload: int = OUR_EDNS_PAYLOAD, do_bit: bool = False,
               options: bytes = b"") -> bytes:
    """A query as we send it upstream (one question, an OPT record with the
    client's DO bit and its end-to-end options)."""
    return (HEADER.pack(qid, flags, 1, 0, 0, 1) + qname + TYPE_CLASS.pack(qtype, qclass)
            + b"\x00" + RR_FIXED.pack(OPT, payload, EDNS_DO if do_bit else 0, len(options))
            + options)


class Parsed:
    """A response split into parts, for caching and relaying upstream answers."""

    __slots__ = ("id", "flags", "qname", "qtype", "qclass", "qend", "counts",
                 "records", "rcode")

    def __init__(self) -> None:
        self.id = 0
        self.flags = 0
        self.qname = b""
        self.qtype = 0
        self.qclass = 0
        self.qend = 12
        self.counts = (0, 0, 0)
        # (section, start, end, type, ttl, ttl offset, rdata offset)
        self.records: list[tuple[int, int, int, int, int, int, int]] = []
        self.rcode = 0


def parse_response(data: bytes) -> Parsed:
    """Parse an upstream response (one question) into record offsets."""
    if len(data) < 12:
        raise FormatError("shorter than a DNS header")
    parsed = Parsed()
    parsed.id, parsed.flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if not parsed.flags & QR or qdcount != 1:
        raise FormatError("not a response to one question")
    parsed.qname, offset = read_name(data, 12, allow_pointers=False)
    if offset + 4 > len(data):
        raise FormatError("truncated question")
    parsed.qtype, parsed.qclass = TYPE_CLASS.unpack_from(data, offset)
    offset += 4
    parsed.qend = offset
    parsed.counts = (ancount, nscount, arcount)
    rcode = parsed.flags & 0xF
    for section, count in ((0, ancount), (1, nscount), (2, arcount)):
        for _ in range(count):
            start = offset
            rtype, _, ttl, rdata, offset = skip_record(data, offset)
            if rtype == OPT:
                rcode |= ((ttl >> 24) & 0xFF) << 4
            parsed.records.append((section, start, offset, rtype, ttl, rdata - 6, rdata))
    parsed.rcode = rcode
    return parsed


def soa_rdata(mname: bytes, rname: bytes, serial: int, minimum: int) -> bytes:
    return mname + rname + struct.pack("!IIIII", serial, 3600, 600, 86400, minimum)


def soa_minimum(data: bytes, rdata: int) -> int:
    """The MINIMUM field of the SOA whose RDATA starts at `rdata` (RFC 2308 negative TTL)."""
    _, offset = read_name(data, rdata)
    _, offset = read_name(data, offset)
    if offset + 20 > len(data):
        raise FormatError("truncated SOA")
    return struct.unpack_from("!I", data, offset + 16)[0]
