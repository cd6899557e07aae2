"""The Prometheus text the service writes, read back by the parser `status` uses."""

from __future__ import annotations

from smarter_cni.dns import metrics


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = metrics.Histogram()
    histogram.observe(0.0001)          # first bucket (0.25 ms)
    histogram.observe(0.003, 2)        # le 0.004
    histogram.observe(100.0)           # past the last bucket: only +Inf
    text = metrics.Text()
    text.histogram("x_seconds", "help", [({"server": "dns://a:53"}, histogram)])
    parsed = metrics.parse_text(text.render().decode())
    buckets = {labels["le"]: value for labels, value in parsed["x_seconds_bucket"]}
    assert buckets["0.00025"] == 1 and buckets["0.002"] == 1 and buckets["0.004"] == 3
    assert buckets["8.192"] == 3 and buckets["+Inf"] == 4
    assert parsed["x_seconds_count"][0][1] == 4
    assert abs(parsed["x_seconds_sum"][0][1] - 100.0061) < 1e-9


def test_label_values_are_escaped_and_parsed_back():
    text = metrics.Text()
    text.family("t_total", "counter", "help", [({"kind": 'a"b', "to": "1.2.3.4:53"}, 3)])
    out = text.render().decode()
    assert 't_total{kind="a\\"b",to="1.2.3.4:53"} 3' in out
    assert "# TYPE t_total counter" in out
    assert metrics.parse_text(out)["t_total"][0][1] == 3


def test_counts_share_a_slot_per_proto_type_and_rcode():
    counts = metrics.Counts()
    slot = counts.slot("udp", 1, 0)
    assert counts.slot("udp", 1, 0) == slot and counts.slot("tcp", 1, 0) != slot
    assert counts.slot("udp", 9999, 0) == counts.slot("udp", 8888, 0)  # both "other"
    counts.add("udp", 1, 0, 5)
    assert counts.values[slot] == 5


def test_one_histogram_per_type_seen_uncommon_types_share_other():
    counts = metrics.Counts()
    a = counts.slot("udp", 1, 0)
    assert counts.slot("tcp", 1, 3) != a and counts.kinds[counts.slot("tcp", 1, 3)] == \
        counts.kinds[a]                                    # one "A" histogram for both
    aaaa = counts.kinds[counts.slot("udp", 28, 0)]
    other = counts.kinds[counts.slot("udp", 99, 0)]
    latency = counts.latency
    for qtype in range(65536):                             # every type a client could ask
        latency.kind(qtype)
    assert latency.kind(4242) == latency.kind(-1) == other
    assert len(latency.histograms) == len(metrics.TYPE_NAMES) + 1
    assert sorted(latency.names) == sorted([*metrics.TYPE_NAMES.values(), "other"])
    assert {"A", "AAAA", "PTR", "SRV", "TXT", "NSEC3", "HTTPS", "AXFR"} <= set(latency.names)
    assert 64 not in metrics.TYPE_NAMES                    # SVCB: "other", as in CoreDNS

    latency.pending[counts.kinds[a]] += 3                  # a batch: 3 A and 1 AAAA
    latency.pending[aaaa] += 1
    latency.flush(0.003)
    latency.flush(0.5)                                     # nothing pending: nothing counted
    latency.observe(other, 0.1)                            # a forwarded answer, timed alone
    by_name = dict(zip(latency.names, latency.histograms))
    assert (by_name["A"].count, by_name["AAAA"].count, by_name["other"].count) == (3, 1, 1)
    assert abs(by_name["A"].sum - 0.009) < 1e-12 and by_name["MX"].count == 0
    assert latency.pending == [0] * len(latency.pending)


def test_count_repair_accumulates_per_kind():
    before = metrics.REPAIRS.get("unit-test", 0)
    metrics.count_repair("unit-test")
    metrics.count_repair("unit-test")
    assert metrics.REPAIRS["unit-test"] == before + 2
