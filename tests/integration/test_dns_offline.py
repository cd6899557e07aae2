"""The node DNS when the uplink dies: a real dnsmasq upstream in a network namespace,
reached over a veth, is cut mid-run (its end of the link goes down: no answer, no
ICMP, as on a dead uplink).

Pod names keep answering, cached names are served stale, names never seen get
SERVFAIL fast, negative answers come from the cache, and with two upstreams the
dead one is skipped and taken back when it answers again. The timings are
printed (pytest -s) and bounded by the asserts.
"""

from __future__ import annotations

import statistics
import time

import pytest
from test_dns_helpers import (
    DnsNode,
    dig,
    needs_tools,
)

pytestmark = [pytest.mark.root, needs_tools]

TIMEOUT = 1.5  # the service's default --upstream-timeout
# dnsmasq as the authoritative server of zone.test on the veth: NXDOMAIN comes with
# an SOA (TTL and MINIMUM both --auth-ttl), as from a real zone.
AUTH = ["--auth-zone=zone.test", "--auth-server=ns.zone.test,{IF}",
        "--auth-soa=1,hostmaster.zone.test,1200,180,1209600"]


class Offline(DnsNode):
    def timed(self, *args: str):
        """(dig's answer, seconds to the answer: dig's own query time, which leaves out
        the ~30 ms of starting dig; the wall time when dig got no answer)."""
        started = time.monotonic()
        answer = dig(self.listen, *args, timeout=5)
        wall = time.monotonic() - started
        return answer, (answer.query_ms / 1000 if answer.query_ms is not None else wall)


@pytest.fixture
def offline(tmp_path, state_dir):
    env = Offline(tmp_path, state_dir)
    try:
        yield env
    finally:
        env.cleanup()


def test_uplink_cut_pod_names_answer_cached_names_stale_new_names_servfail_fast(offline):
    upstream = offline.netns_upstream({"cached.zone.test": "192.0.2.10",
                                      "later.zone.test": "192.0.2.11"}, ["--auth-ttl=2", *AUTH])
    offline.registry.add("c1", "web", "10.99.0.5")
    offline.start([upstream.upstream])
    assert offline.timed("cached.zone.test")[0].values() == ["192.0.2.10"]
    negative = offline.timed("nx.zone.test")[0]
    assert negative.status == "NXDOMAIN", negative
    upstream.cut()
    time.sleep(2.2)  # the TTLs (2 s) have run out: only stale copies are left
    timings: dict[str, list[float]] = {}

    # the first query after the cut finds out: one attempt's time-out, then the stale copy
    stale, took = offline.timed("cached.zone.test")
    timings["stale, first query after the cut"] = [took]
    assert stale.status == "NOERROR" and stale.values() == ["192.0.2.10"], stale
    assert took < TIMEOUT + 0.7, took
    assert all(ttl <= 30 for ttl in stale.ttls()), stale
    assert "EDE: 3" in stale.stdout, stale  # RFC 8914 "Stale Answer"

    for name, key in (("web.default.svc.cluster.local", "pod name"), ("cached.zone.test", "stale"),
                      ("nx.zone.test", "stale NXDOMAIN")):
        for _ in range(5):
            answer, took = offline.timed(name)
            timings.setdefault(key, []).append(took)
            if key == "pod name":
                assert answer.values() == ["10.99.0.5"], answer
            elif key == "stale":
                assert answer.values() == ["192.0.2.10"], answer
            else:
                assert answer.status == "NXDOMAIN", answer
                assert answer.counts.get("AUTHORITY") == 1, answer  # the SOA, for the client
            assert took < 0.5, (key, took)
    for index in range(10):  # never seen: SERVFAIL, at once (the upstream is known down)
        answer, took = offline.timed(f"never-{index}.example.test")
        timings.setdefault("never-seen name, SERVFAIL", []).append(took)
        assert answer.status == "SERVFAIL", answer
        assert took < 0.5, took
    for key, values in timings.items():
        print(f"offline: {key}: median {statistics.median(values) * 1000:.0f} ms, "
              f"max {max(values) * 1000:.0f} ms ({len(values)} queries)")

    # the uplink comes back: the background probe notices within its back-off
    upstream.restore()
    started = time.monotonic()
    while offline.timed("later.zone.test")[0].values() != ["192.0.2.11"]:
        assert time.monotonic() - started < 12, "the upstream was never taken back"
        time.sleep(0.2)
    print(f"offline: upstream back in use {time.monotonic() - started:.1f} s after the link")
    fresh = offline.timed("cached.zone.test")[0]
    assert fresh.values() == ["192.0.2.10"] and "EDE" not in fresh.stdout, fresh


def test_negative_answers_are_cached_for_the_soa_minimum(offline):
    upstream = offline.netns_upstream({"a.zone.test": "192.0.2.1"}, ["--auth-ttl=60", *AUTH])
    offline.start([upstream.upstream])
    first = offline.timed("nx.zone.test")[0]
    assert first.status == "NXDOMAIN" and first.counts.get("AUTHORITY") == 1, first
    nodata = offline.timed("a.zone.test", "AAAA")[0]
    assert nodata.status == "NOERROR" and nodata.counts.get("ANSWER") == 0, nodata
    upstream.cut()  # from now on only the cache can answer
    time.sleep(1.1)
    for args, status in ((("nx.zone.test",), "NXDOMAIN"), (("NX.Zone.Test",), "NXDOMAIN"),
                         (("a.zone.test", "AAAA"), "NOERROR")):
        answer, took = offline.timed(*args, "+authority")
        assert answer.status == status, (args, answer)
        assert took < 0.5 and "EDE" not in answer.stdout, (args, took, answer)  # fresh
        soa_ttl = int(next(line.split()[1] for line in answer.stdout.splitlines()
                           if "\tSOA\t" in line or " SOA " in line))
        assert 50 <= soa_ttl <= 59, answer  # RFC 2308: counted down from min(TTL, MINIMUM)


def test_a_never_seen_name_as_the_first_query_after_the_cut_fails_within_the_bound(offline):
    upstream = offline.netns_upstream({"x.test": "192.0.2.1"})
    offline.start([upstream.upstream])
    assert offline.timed("x.test")[0].values() == ["192.0.2.1"]
    upstream.cut()
    answer, took = offline.timed("first.example.test")
    print(f"offline: first never-seen name after the cut: SERVFAIL in {took * 1000:.0f} ms")
    assert answer.status == "SERVFAIL", answer
    assert TIMEOUT - 0.1 < took < TIMEOUT + 0.7, took  # one attempt, well under glibc's 5 s
    answer, took = offline.timed("second.example.test")
    assert answer.status == "SERVFAIL" and took < 0.5, (answer, took)


def test_two_upstreams_the_dead_one_is_skipped_and_taken_back(offline):
    first = offline.netns_upstream({"which.test": "192.0.2.1"})  # TTL 0: never cached
    second = offline.dnsmasq({"which.test": "192.0.2.2"})
    offline.start([first.upstream, second.upstream])
    assert offline.timed("which.test")[0].values() == ["192.0.2.1"]  # the first is preferred
    first.cut()
    answer, took = offline.timed("which.test")
    print(f"offline: first query after the first upstream died: {took * 1000:.0f} ms")
    assert answer.values() == ["192.0.2.2"] and took < TIMEOUT + 0.7, (answer, took)
    later = []
    for _ in range(10):
        answer, took = offline.timed("which.test")
        later.append(took)
        assert answer.values() == ["192.0.2.2"], answer
    print(f"offline: later queries, dead upstream skipped: max {max(later) * 1000:.0f} ms")
    assert max(later) < 0.5, later
    first.restore()
    started = time.monotonic()
    while offline.timed("which.test")[0].values() != ["192.0.2.1"]:
        assert time.monotonic() - started < 12, "the first upstream was never retried"
        time.sleep(0.2)
    print(f"offline: first upstream back {time.monotonic() - started:.1f} s after its link")
