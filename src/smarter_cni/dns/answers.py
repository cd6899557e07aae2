"""The answer engine: pod names from the registry -> authoritative answers.

Built once per registry change into dicts keyed by the lowercased wire
name, with every resource record already encoded, so answering is a dict
lookup and a join. Names outside the cluster domain and the pod subnet's
reverse zone that are not pod names go to the forwarder (`None`).

`Names.from_records` builds the same tables as `registry.build_tables`
(through the registry's own `names_for` and `record_addresses`), but keeps
each attachment's encoded contribution while the record is unchanged, so a
reload after one ADD costs little more than parsing the file.
"""

from __future__ import annotations

import socket
import struct

from .. import registry
from . import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..store import Attachment

POD_TTL = 5          # as CoreDNS' kubernetes plugin: pods come and go
NEGATIVE_TTL = 5
IN_ADDR_ARPA = wire.encode_name("in-addr.arpa")


class Answer:
    __slots__ = ("rcode", "answers", "authority")

    def __init__(self, rcode: int, answers: list[bytes], authority: list[bytes]) -> None:
        self.rcode = rcode
        self.answers = answers
        self.authority = authority


def encode_cached(name: str) -> bytes:
    """(Unchanged records keep their encoded names through `Names.from_records`' memo;
    no cache here: lru_caches cost ~1 KB per pod of resident memory.)"""
    return wire.encode_name(name)


def a_record(address: str) -> bytes:
    """An A record whose owner points at the question name (any name can share it)."""
    return (wire.QUESTION_POINTER + struct.pack("!HHIH", wire.A, wire.CLASS_IN, POD_TTL, 4)
            + socket.inet_aton(address))


def aaaa_record(address: str) -> bytes:
    """An AAAA record, owner a pointer at the question name (as a_record)."""
    return (wire.QUESTION_POINTER + struct.pack("!HHIH", wire.AAAA, wire.CLASS_IN, POD_TTL, 16)
            + socket.inet_pton(socket.AF_INET6, address))


def reverse_name6(address: str) -> bytes:
    """'fd42::5' -> wire '5.0.0...2.4.d.f.ip6.arpa' (OSError if not an address)."""
    nibbles = socket.inet_pton(socket.AF_INET6, address).hex()
    return wire.encode_name(".".join(reversed(nibbles)) + ".ip6.arpa")


def ptr_record(target: str) -> bytes:
    return wire.record(wire.QUESTION_POINTER, wire.PTR, POD_TTL, encode_cached(target))


def ancestors(key: bytes, zone: bytes) -> tuple[bytes, ...]:
    """The names between `key` and its zone apex (both included when inside the zone)."""
    start = suffix_offset(key, zone)
    if start < 0:
        return ()
    return tuple(key[offset:] for offset in label_offsets(key)[1:] if offset <= start)


def reverse_name(address: str) -> bytes:
    """'10.42.0.5' -> wire '5.0.42.10.in-addr.arpa' (OSError if not an address)."""
    socket.inet_aton(address)
    return wire.encode_name(".".join(reversed(address.split("."))) + ".in-addr.arpa")


def reverse_zone(subnet: int, prefix: int) -> bytes:
    """The in-addr.arpa zone covering the subnet, rounded out to whole octets."""
    octets = socket.inet_aton(socket.inet_ntoa(struct.pack("!I", subnet)))[: prefix // 8]
    text = ".".join(str(octet) for octet in reversed(octets))
    return wire.encode_name((text + "." if text else "") + "in-addr.arpa")


def label_offsets(name: bytes) -> list[int]:
    """Offsets where each suffix of a wire name starts (the root excluded)."""
    offsets = []
    offset = 0
    while offset < len(name) and name[offset]:
        offsets.append(offset)
        offset += 1 + name[offset]
    return offsets


def suffix_offset(name: bytes, zone: bytes) -> int:
    """Offset in `name` where `zone` starts on a label boundary, or -1."""
    if not name.endswith(zone):
        return -1
    start = len(name) - len(zone)
    if start == 0:
        return 0
    return start if start in label_offsets(name) else -1


class Contribution:
    """What one attachment record adds to the tables, encoded."""

    __slots__ = ("names", "a_records", "ptrs", "aaaa_records")

    def __init__(self, record: Attachment, domain: str, domain_wire: bytes) -> None:
        self.names: list[tuple[bytes, tuple[bytes, ...]]] = []  # (wire name, its ancestors)
        self.a_records: list[bytes] = []
        self.ptrs: list[tuple[bytes, list[bytes]]] = []
        self.aaaa_records: list[bytes] = []
        if not isinstance(record, dict) or not record.get("ready"):
            return
        pod = record.get("pod")
        if not isinstance(pod, dict):
            return
        addresses = []
        for address in registry.record_addresses(record):
            try:
                rr = a_record(address)
            except OSError:
                continue
            if rr not in self.a_records:
                self.a_records.append(rr)
                addresses.append(address)
        names = registry.names_for(pod, domain)
        for name in names:
            try:
                key = encode_cached(name.lower())
            except (wire.FormatError, UnicodeError):
                continue
            self.names.append((key, ancestors(key, domain_wire)))
        # as registry.build_tables: PTR to the FQDN forms, else the bare name
        targets = [n for n in names if n.endswith("." + domain)] or names[:1]
        for address in addresses if targets else ():
            try:
                self.ptrs.append((reverse_name(address), [ptr_record(t) for t in targets]))
            except (wire.FormatError, UnicodeError, OSError):
                continue
        for address in registry.record_addresses6(record):  # dual-stack pods (subnet6)
            try:
                rr, reverse = aaaa_record(address), reverse_name6(address)
                if rr not in self.aaaa_records:
                    self.aaaa_records.append(rr)
                    if targets:
                        self.ptrs.append((reverse, [ptr_record(t) for t in targets]))
            except (wire.FormatError, UnicodeError, OSError, ValueError):
                continue


class Names:
    """Everything the server answers authoritatively, pre-encoded."""

    services: Any = None  # dns/services.Services when the DNS service has a kubeconfig

    @classmethod
    def from_records(cls, records: dict[str, Attachment], domain: str, subnet: int, prefix: int,
                     serial: int, memo: dict[str, tuple[Any, Contribution]]) -> Names:
        """Tables from the store's attachment records; `memo` (key -> (fingerprint,
        contribution)) is read and replaced, so unchanged records are not redone."""
        names = cls(domain, subnet, prefix, serial)
        domain = domain.lower()
        a_records = names.a_records
        aaaa_records = names.aaaa_records
        ptr_records = names.ptr_records
        nonterminals = names.nonterminals
        fresh: dict[str, tuple[Any, Contribution]] = {}
        for key, record in records.items():
            # only these fields shape a record's names (not created, netns, mac, ...);
            # kept as one string, not the parsed dicts and lists (a third of the memory)
            fingerprint = repr((record.get("ready"), record.get("ips"), record.get("pod"))) \
                if isinstance(record, dict) else repr(record)
            seen = memo.get(key)
            if seen is not None and seen[0] == fingerprint:
                contribution = seen[1]
            else:
                contribution = Contribution(record, domain, names.domain)
            fresh[key] = (fingerprint, contribution)
            if not contribution.names and not contribution.ptrs:
                continue
            if contribution.a_records or contribution.aaaa_records:
                names.pods += 1
            for name, parents in (contribution.names if contribution.a_records
                                  or contribution.aaaa_records else ()):
                bucket = a_records.get(name)
                if bucket is None:
                    if contribution.a_records:
                        a_records[name] = list(contribution.a_records)
                else:
                    bucket.extend(rr for rr in contribution.a_records if rr not in bucket)
                if contribution.aaaa_records:
                    bucket = aaaa_records.setdefault(name, [])
                    bucket.extend(rr for rr in contribution.aaaa_records if rr not in bucket)
                nonterminals.update(parents)
            for reverse, ptrs in contribution.ptrs:
                ptr_records.setdefault(reverse, []).extend(ptrs)
        for name in [n for n, rrs in a_records.items() if not rrs]:
            del a_records[name]
        for name in [n for n, rrs in ptr_records.items() if not rrs]:
            del ptr_records[name]
        memo.clear()
        memo.update(fresh)
        return names

    def __init__(self, domain: str, subnet: int = 0, prefix: int = 32, serial: int = 1) -> None:
        """Empty tables; `from_records` fills them."""
        self.domain = wire.encode_name(domain.lower())
        self.subnet = subnet
        self.prefix = prefix
        self.mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        self.reverse_zone = reverse_zone(subnet, prefix)
        self.a_records: dict[bytes, list[bytes]] = {}
        self.aaaa_records: dict[bytes, list[bytes]] = {}  # names with IPv6 pods (subnet6)
        self.ptr_records: dict[bytes, list[bytes]] = {}
        self.nonterminals: set[bytes] = set()
        self.pods = 0  # attachments served (from_records counts them)
        # One SOA (for negative caching, RFC 2308) serves both zones.
        self.soa_rdata = wire.soa_rdata(wire.encode_name("ns.dns")[:-1] + self.domain,
                                        wire.encode_name("hostmaster")[:-1] + self.domain,
                                        serial & 0xFFFFFFFF, NEGATIVE_TTL)

    @property
    def count(self) -> int:
        return len(self.a_records)

    def probe_name(self) -> bytes | None:
        """A name that must answer (for the readiness check), or None without pods."""
        return next(iter(self.a_records), None)

    def _soa(self, offset: int) -> bytes:
        """The zone's SOA, its owner a pointer into the question name at `offset`."""
        owner = struct.pack("!H", 0xC000 | (12 + offset))
        return wire.record(owner, wire.SOA, NEGATIVE_TTL, self.soa_rdata)

    def answer(self, query: wire.Query) -> Answer | None:
        """The authoritative answer, or None when the name is not ours (forward it)."""
        key = query.qname.lower()
        qtype = query.qtype
        in_class = query.qclass in (wire.CLASS_IN, wire.CLASS_ANY)
        records = self.a_records.get(key)
        records6 = self.aaaa_records.get(key) if self.aaaa_records else None
        if records is not None or records6 is not None:
            if not in_class:
                return Answer(wire.REFUSED, [], [])
            if qtype == wire.A and records:
                return Answer(wire.NOERROR, records, [])
            if qtype in (wire.AAAA, wire.ANY):
                both = ((records or []) if qtype == wire.ANY else []) + (records6 or [])
                if both:
                    return Answer(wire.NOERROR, both, [])
            return Answer(wire.NOERROR, [], self._negative(key, False))
        records = self.ptr_records.get(key)
        if records is not None:
            if not in_class:
                return Answer(wire.REFUSED, [], [])
            if qtype in (wire.PTR, wire.ANY):
                return Answer(wire.NOERROR, records, [])
            return Answer(wire.NOERROR, [], self._negative(key, True))
        if self.services is not None:  # Service names, not pods' (dns/services.py)
            found = self.services.answer(key, qtype, in_class, self)
            if found is not None:
                return found
        offset = suffix_offset(key, self.domain)
        if offset >= 0:
            if not in_class:
                return Answer(wire.REFUSED, [], [])
            if offset == 0:
                if qtype == wire.SOA:
                    return Answer(wire.NOERROR, [wire.record(wire.QUESTION_POINTER, wire.SOA,
                                                             NEGATIVE_TTL, self.soa_rdata)], [])
                return Answer(wire.NOERROR, [], [self._soa(0)])
            if key in self.nonterminals:
                return Answer(wire.NOERROR, [], [self._soa(offset)])
            return Answer(wire.NXDOMAIN, [], [self._soa(offset)])
        return self._reverse(key, in_class)

    def _negative(self, key: bytes, reverse: bool) -> list[bytes]:
        """The SOA for a no-data answer, when the name is inside one of our zones."""
        zone = self.reverse_zone if reverse else self.domain
        offset = suffix_offset(key, zone)
        return [self._soa(offset)] if offset >= 0 else []

    def _reverse(self, key: bytes, in_class: bool) -> Answer | None:
        """Pod-subnet addresses with no pod: NXDOMAIN here; other addresses: forward."""
        zone_offset = suffix_offset(key, IN_ADDR_ARPA)
        if zone_offset < 0 or not in_class:
            return None
        octets = []
        for offset in label_offsets(key[:zone_offset] + b"\x00"):
            label = key[offset + 1:offset + 1 + key[offset]]
            if not label.isdigit() or len(label) > 3 or int(label) > 255 or \
                    (len(label) > 1 and label[:1] == b"0"):
                return None
            octets.append(int(label))
        if len(octets) > 4:
            return None
        octets.reverse()  # most significant first
        value = 0
        for octet in octets:
            value = (value << 8) | octet
        known_bits = 8 * len(octets)
        value <<= 32 - known_bits
        bits = min(known_bits, self.prefix)
        top = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF if bits else 0
        if (value & top) != (self.subnet & top):
            return None
        soa_offset = suffix_offset(key, self.reverse_zone)
        if soa_offset < 0:
            return None  # above our zone (e.g. 10.in-addr.arpa for a /16)
        authority = [self._soa(soa_offset)]
        if known_bits < 32:
            return Answer(wire.NOERROR, [], authority)  # an empty non-terminal of the zone
        return Answer(wire.NXDOMAIN, [], authority)
