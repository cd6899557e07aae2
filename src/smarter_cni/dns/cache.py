"""The forward cache: upstream answers kept as wire bytes, bounded, served stale when offline.

- Positive answers are kept for their smallest TTL, at most `MAX_TTL`.
- Negative answers (NXDOMAIN, NOERROR without records) for the SOA's
  TTL or MINIMUM, whichever is smaller (RFC 2308), at most
  `MAX_NEGATIVE_TTL`; without an SOA they are not cached (RFC 2308 sec. 5).
- Expired entries stay up to `stale_for` seconds longer: when no upstream
  answers, they are served with TTL `STALE_TTL` (RFC 8767) and an extended
  DNS error "Stale Answer" (RFC 8914) for EDNS clients.
- Bounded by entries and by answer bytes; the least recently used entry goes
  first. Answers larger than `MAX_CACHED_ANSWER` are not kept.
"""

from __future__ import annotations

import struct

from . import wire

MAX_ENTRIES = 2048
MAX_BYTES = 2 * 1024 * 1024       # answer bytes, all entries together
MAX_CACHED_ANSWER = 4096
MAX_TTL = 300
MAX_NEGATIVE_TTL = 300
DEFAULT_STALE_FOR = 86400         # RFC 8767 suggests 1 to 3 days
STALE_TTL = 30                    # RFC 8767's recommended TTL for a stale answer
ROTATE = (wire.A, wire.AAAA)

# (qname lowercased, qtype, qclass, CD bit, DO bit, end-to-end EDNS options)
Key = tuple


def cache_key(query: wire.Query) -> Key:
    options = wire.end_to_end_options(query.edns_options) if query.edns_options else b""
    return (query.qname.lower(), query.qtype, query.qclass, query.flags & wire.CD,
            query.edns_do, options)


class Entry:
    __slots__ = ("data", "parsed", "stored", "expires", "negative", "options", "run", "turn")

    def __init__(self, data: bytes, parsed: wire.Parsed, stored: float, expires: float,
                 negative: bool = False) -> None:
        self.data = data
        self.parsed = parsed
        self.stored = stored
        self.expires = expires
        self.negative = negative
        self.options = b""        # the upstream's end-to-end EDNS options, relayed
        self.run: tuple[int, int] | None = None  # (first, count) of A/AAAA records to rotate
        self.turn = 0
        records = parsed.records
        for record in records:
            if record[3] == wire.OPT:
                self.options = wire.end_to_end_options(data[record[6]:record[2]])
                break
        self.run = rotation_run(data, records)

    @property
    def size(self) -> int:
        """Resident bytes, about (measured: 835 for a one-record A answer of 63 bytes)."""
        return len(self.data) + 160 * len(self.parsed.records) + 520


def rotation_run(data: bytes, records: list) -> tuple[int, int] | None:
    """The longest run of answer records of one type (A or AAAA) and one owner."""
    best: tuple[int, int] | None = None
    index = 0
    while index < len(records) and records[index][0] == 0:
        section, start, _, rtype, _, ttl_at, _ = records[index]
        if rtype not in ROTATE:
            index += 1
            continue
        owner = data[start:ttl_at - 4]
        count = 1
        while index + count < len(records):
            other = records[index + count]
            if other[0] != 0 or other[3] != rtype or data[other[1]:other[5] - 4] != owner:
                break
            count += 1
        if count > 1 and (best is None or count > best[1]):
            best = (index, count)
        index += count
    return best


def cache_ttl(parsed: wire.Parsed, data: bytes) -> tuple[int, bool]:
    """(seconds an upstream answer may be kept, 0 = not at all; is it negative)."""
    if parsed.flags & wire.TC or parsed.rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return 0, False
    records = [r for r in parsed.records if r[0] < 2 and r[3] != wire.OPT]
    if parsed.rcode == wire.NOERROR and any(r[0] == 0 for r in records):
        return min(min(r[4] for r in records), MAX_TTL), False
    for section, _, _, rtype, ttl, _, rdata in records:
        if section == 1 and rtype == wire.SOA:
            try:
                minimum = wire.soa_minimum(data, rdata)
            except wire.FormatError:
                return 0, True
            return min(ttl, minimum, MAX_NEGATIVE_TTL), True
    return 0, True  # no SOA: RFC 2308 says do not cache


def relay(entry: Entry, query: wire.Query, limit: int | None, now: float,
          stale: bool = False) -> bytes:
    """The cached upstream answer re-addressed to `query`: its ID, its question's
    case, its EDNS; TTLs reduced by the time spent in the cache (or STALE_TTL);
    a run of A/AAAA records rotated one step per answer."""
    data, parsed = entry.data, entry.parsed
    elapsed = int(now - entry.stored)
    counts = [0, 0, 0]
    parts = []
    for section, start, end, rtype, ttl, ttl_at, _ in parsed.records:
        if rtype == wire.OPT:
            break  # OPT is ours to add; whatever follows it would shift offsets
        counts[section] += 1
        if stale:
            parts.append(data[start:ttl_at] + struct.pack("!I", min(ttl, STALE_TTL))
                         + data[ttl_at + 4:end])
        elif elapsed:
            parts.append(data[start:ttl_at] + struct.pack("!I", max(0, ttl - elapsed))
                         + data[ttl_at + 4:end])
        else:
            parts.append(data[start:end])
    run = entry.run
    if run is not None:
        first, count = run
        shift = entry.turn % count
        entry.turn += 1
        if shift:
            block = parts[first:first + count]
            parts[first:first + count] = block[shift:] + block[:shift]
    question = query.question if len(query.question) == parsed.qend - 12 else data[12:parsed.qend]
    # Not authoritative for what we relay: AA goes; AD only for clients that
    # asked for DNSSEC data (RFC 6840 sec. 5.8).
    flags = (parsed.flags & ~(wire.AA | wire.RD | wire.TC | wire.CD | wire.AD | 0xF)) \
        | (query.flags & (wire.RD | wire.CD))
    if parsed.flags & wire.AD and (query.edns_do or query.flags & wire.AD):
        flags |= wire.AD
    flags |= parsed.rcode & 0xF
    extra = b""
    if query.edns:
        options = entry.options + (wire.ede_option(wire.EDE_STALE_ANSWER) if stale else b"")
        extra = wire.opt_record(query.edns_do, parsed.rcode >> 4, options)
    body = b"".join(parts)
    arcount = counts[2] + (1 if extra else 0)
    if limit is not None and 12 + len(question) + len(body) + len(extra) > limit:
        header = wire.HEADER.pack(query.id, flags | wire.TC, 1, 0, 0, 1 if extra else 0)
        return header + question + extra
    header = wire.HEADER.pack(query.id, flags | (parsed.flags & wire.TC), 1, counts[0],
                              counts[1], arcount)
    return header + question + body + extra


class Cache:
    """Key -> Entry, least recently used first; bounded by entries and bytes."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 stale_for: float = DEFAULT_STALE_FOR) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stale_for = stale_for
        self.entries: dict[Key, Entry] = {}
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def fresh(self, key: Key, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None or entry.expires <= now:
            return None
        # most recently used goes last
        del self.entries[key]
        self.entries[key] = entry
        return entry

    def stale(self, key: Key, now: float) -> Entry | None:
        """An expired entry still inside the stale window (serve only when offline)."""
        entry = self.entries.get(key)
        if entry is None or entry.expires > now:
            return None
        if now - entry.expires >= self.stale_for:
            self._drop(key)
            return None
        return entry

    def put(self, key: Key, entry: Entry) -> bool:
        if len(entry.data) > MAX_CACHED_ANSWER:
            return False
        if key in self.entries:
            self._drop(key)
        size = entry.size
        while self.entries and (len(self.entries) >= self.max_entries
                                or self.bytes + size > self.max_bytes):
            self._drop(next(iter(self.entries)))
            self.evictions += 1
        self.entries[key] = entry
        self.bytes += size
        return True

    def _drop(self, key: Key) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def sweep(self, now: float) -> int:
        """Drop entries past their stale window; returns how many went."""
        dead = [k for k, e in self.entries.items() if now - e.expires >= self.stale_for]
        for key in dead:
            self._drop(key)
        return len(dead)

    def counts(self, now: float) -> tuple[int, int]:
        """(positive, negative) entries."""
        negative = sum(1 for e in self.entries.values() if e.negative)
        return len(self.entries) - negative, negative

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
