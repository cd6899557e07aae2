"""The answer engine on tables built by the real registry code."""

from __future__ import annotations

import socket
import struct

from smarter_cni import registry
from smarter_cni.dns import answers, wire


def record(name: str, ip: str, namespace: str = "default", hostname: str = "",
           ready: bool = True) -> dict:
    return {"ips": [f"{ip}/16"], "ready": ready,
            "pod": registry.pod_identity(name, namespace, "", hostname)}


def from_tables(forward: dict[str, list[str]], reverse: dict[str, list[str]],
                domain: str, subnet: int, prefix: int) -> answers.Names:
    """Names filled from registry.build_tables' tables: the reference that
    Names.from_records (the service's own, incremental build) must match."""
    names = answers.Names(domain, subnet, prefix)
    names.pods = len(forward)
    unusable = (wire.FormatError, UnicodeError, OSError)  # skipped, as from_records does
    for name, ips in forward.items():
        try:
            key = answers.encode_cached(name.lower())
            records = [answers.a_record(address) for address in ips]
        except unusable:
            continue
        if records:
            names.a_records[key] = records
            names.nonterminals.update(answers.ancestors(key, names.domain))
    for address, targets in reverse.items():
        try:
            key = answers.reverse_name6(address) if ":" in address else answers.reverse_name(address)
            records = [answers.ptr_record(target) for target in targets]
        except unusable:
            continue
        if records:
            names.ptr_records[key] = records
    return names


def names_for(*records: dict) -> answers.Names:
    forward, reverse = registry.build_tables(records, "cluster.local")
    return from_tables(forward, reverse, "cluster.local",
                       struct.unpack("!I", socket.inet_aton("10.42.0.0"))[0], 16)


def ask(names: answers.Names, name: str, qtype: int = wire.A) -> answers.Answer | None:
    packet = (wire.HEADER.pack(1, wire.RD, 1, 0, 0, 0) + wire.encode_name(name)
              + struct.pack("!HH", qtype, wire.CLASS_IN))
    return names.answer(wire.parse_query(packet))


def addresses(answer: answers.Answer) -> list[str]:
    return [socket.inet_ntoa(rr[-4:]) for rr in answer.answers]


def test_every_name_form_answers_a():
    names = names_for(record("web", "10.42.0.5", hostname="web-0"))
    for form in ("web", "web.default", "web.default.svc.cluster.local", "web-0",
                 "web-0.default", "web-0.default.svc.cluster.local",
                 "WEB.Default.SVC.cluster.LOCAL"):
        answer = ask(names, form)
        assert answer is not None and answer.rcode == wire.NOERROR, form
        assert addresses(answer) == ["10.42.0.5"], form


def test_several_pods_one_name_give_several_records():
    names = names_for(record("web", "10.42.0.5"), record("web", "10.42.0.6"),
                      record("db", "10.42.0.7"))
    assert sorted(addresses(ask(names, "web.default.svc.cluster.local"))) == \
        ["10.42.0.5", "10.42.0.6"]


def test_records_not_ready_are_not_served():
    names = names_for(record("web", "10.42.0.5", ready=False))
    answer = ask(names, "web.default.svc.cluster.local")
    assert answer.rcode == wire.NXDOMAIN
    assert ask(names, "web") is None  # not ours: forwarded


def test_aaaa_and_other_types_for_a_pod_are_empty_noerror():
    names = names_for(record("web", "10.42.0.5"))
    for qtype in (wire.AAAA, wire.TXT, wire.MX):
        answer = ask(names, "web.default.svc.cluster.local", qtype)
        assert answer.rcode == wire.NOERROR and answer.answers == []
        assert len(answer.authority) == 1  # the SOA, for negative caching
    assert ask(names, "web", wire.AAAA).answers == []


def test_unknown_cluster_names_are_nxdomain_and_parents_are_nodata():
    names = names_for(record("web", "10.42.0.5"))
    assert ask(names, "nope.default.svc.cluster.local").rcode == wire.NXDOMAIN
    assert ask(names, "x.y.z.cluster.local").rcode == wire.NXDOMAIN
    for parent in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        answer = ask(names, parent)
        assert answer.rcode == wire.NOERROR and answer.answers == [], parent
    soa = ask(names, "cluster.local", wire.SOA)
    assert len(soa.answers) == 1


def test_other_names_are_forwarded():
    names = names_for(record("web", "10.42.0.5"))
    for other in ("example.com", "nope", "web.other", "cluster.local.example.com",
                  "xcluster.local"):
        assert ask(names, other) is None, other


def test_ptr_for_pod_addresses():
    names = names_for(record("web", "10.42.0.5", hostname="web-0"))
    answer = ask(names, "5.0.42.10.in-addr.arpa", wire.PTR)
    targets = [wire.decode_name(rr[12:]) for rr in answer.answers]
    assert targets == ["web.default.svc.cluster.local", "web-0.default.svc.cluster.local"]
    assert ask(names, "9.0.42.10.in-addr.arpa", wire.PTR).rcode == wire.NXDOMAIN
    assert ask(names, "0.42.10.in-addr.arpa", wire.PTR).rcode == wire.NOERROR
    assert ask(names, "1.1.168.192.in-addr.arpa", wire.PTR) is None  # not the pod subnet
    assert ask(names, "10.in-addr.arpa", wire.PTR) is None           # above our zone


def test_crafted_names_never_become_records():
    names = names_for(record("evil.example.com", "10.42.0.5"),
                      record("UPPER", "10.42.0.6"), record("a" * 64, "10.42.0.7"))
    assert ask(names, "evil.example.com") is None
    assert addresses(ask(names, "upper")) == ["10.42.0.6"]
    assert names.count == 3  # upper, upper.default, upper.default.svc.cluster.local


def _random_records(rng, count: int) -> dict:
    labels = ["web", "db", "Web", "cache-0", "bad.name", "", "-x", "a" * 63, "a" * 64]
    records = {}
    for index in range(count):
        # (one record never lists an address twice: build_tables would give it twin PTRs)
        ips = sorted({f"10.42.{rng.randint(0, 3)}.{rng.randint(1, 9)}/16"
                      for _ in range(rng.choice([0, 1, 1, 1, 2]))})
        # an IPv6 address beside IPv4 ones (build_tables' forward table is IPv4 only, so
        # IPv6-only records, whose names become AAAA-only, are tested on their own below)
        if ips and rng.random() < 0.1:
            ips.append(f"fd00::{index + 5:x}/64")
        pod = {"name": rng.choice(labels), "namespace": rng.choice(["default", "prod", ""]),
               "uid": "", "hostname": rng.choice(labels)}
        records[f"net/c{index}/eth0"] = {
            "ips": ips, "ready": rng.random() < 0.9,
            "pod": pod if rng.random() < 0.95 else "junk"}
    return records


def _same(left: answers.Names, right: answers.Names) -> None:
    assert left.a_records == right.a_records
    assert left.ptr_records == right.ptr_records
    assert left.nonterminals == right.nonterminals


def test_incremental_build_matches_registry_build_tables():
    import random

    rng = random.Random(42)
    for _ in range(200):
        records = _random_records(rng, rng.randint(0, 12))
        forward, reverse = registry.build_tables(records.values(), "cluster.local")
        reference = from_tables(forward, reverse, "cluster.local", 0x0A2A0000, 16)
        memo: dict = {}
        built = answers.Names.from_records(records, "cluster.local", 0x0A2A0000, 16, 1, memo)
        _same(built, reference)
        # change one record, drop another: the memo must not keep stale contributions
        if records:
            key = next(iter(records))
            records[key] = dict(records[key], ready=not records[key]["ready"])
            last = list(records)[-1]
            if isinstance(records[last]["pod"], dict):  # renamed and readdressed in place
                records[last] = dict(records[last], ips=["10.42.9.9/16"],
                                     pod=dict(records[last]["pod"], name="renamed"))
            else:
                records.pop(last)
        forward, reverse = registry.build_tables(records.values(), "cluster.local")
        reference = from_tables(forward, reverse, "cluster.local", 0x0A2A0000, 16)
        _same(answers.Names.from_records(records, "cluster.local", 0x0A2A0000, 16, 1, memo),
              reference)
        assert set(memo) == set(records)


def _dual(name: str, ips: list[str]) -> dict:
    return {"ips": ips, "ready": True, "pod": registry.pod_identity(name, "default", "", "")}


def test_aaaa_ptr_and_any_for_dual_stack_and_ipv6_only_pods():
    records = {"n/a/eth0": _dual("web", ["10.42.0.5/16", "fd42::5/64"]),
               "n/b/eth0": _dual("web", ["10.42.0.6/16", "fd42::6/64"]),
               "n/c/eth0": _dual("six", ["fd42::7/64"])}
    names = answers.Names.from_records(records, "cluster.local", 0x0A2A0000, 16, 1, {})
    got = ask(names, "web.default.svc.cluster.local", wire.AAAA)
    assert sorted(socket.inet_ntop(socket.AF_INET6, rr[-16:]) for rr in got.answers) == \
        ["fd42::5", "fd42::6"]
    assert len(ask(names, "web", wire.ANY).answers) == 4
    six = ask(names, "six.default", wire.AAAA)
    assert [socket.inet_ntop(socket.AF_INET6, rr[-16:]) for rr in six.answers] == ["fd42::7"]
    no_a = ask(names, "six.default.svc.cluster.local", wire.A)
    assert no_a.rcode == wire.NOERROR and no_a.answers == [] and len(no_a.authority) == 1
    ptr_name = ".".join(reversed(socket.inet_pton(socket.AF_INET6, "fd42::7").hex())) + ".ip6.arpa"
    ptr = ask(names, ptr_name, wire.PTR)
    assert [wire.decode_name(rr[12:]) for rr in ptr.answers] == ["six.default.svc.cluster.local"]
    assert ask(names, "nobody.default.svc.cluster.local", wire.AAAA).rcode == wire.NXDOMAIN
