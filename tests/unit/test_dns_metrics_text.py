"""The Prometheus text the service writes, read back by the parser `status` uses."""

from __future__ import annotations

from smarter_cni.dns import metrics


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = metrics.Histogram()
    histogram.observe(0.0001)          # first bucket (0.25 ms)
    histogram.observe(0.003, 2)        # le 0.004
    histogram.observe(100.0)           # past the last bucket: only +Inf
    text = metrics.Text()
    text.histogram("x_seconds", "help", {"server": "dns://a:53"}, histogram)
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


def test_count_repair_accumulates_per_kind():
    before = metrics.REPAIRS.get("unit-test", 0)
    metrics.count_repair("unit-test")
    metrics.count_repair("unit-test")
    assert metrics.REPAIRS["unit-test"] == before + 2
