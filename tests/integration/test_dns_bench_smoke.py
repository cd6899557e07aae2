"""The DNS benchmark's --quick run: it starts, measures every section, cleans up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_dns_helpers import needs_tools

# dnsmasq is started with --user=root (it would drop to nobody otherwise)
pytestmark = [pytest.mark.root, needs_tools]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dns_bench.py"


def test_quick_bench_reports_every_section(tmp_path):
    out = tmp_path / "dns.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--builtin", "--json", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for label in ("pod names", "unknown names (NXDOMAIN)", "forwarded (cached)"):
        assert len(results["throughput_rounds"][label]["smarter-cni"]) == 2  # interleaved
        row = results["throughput_qps"][label]
        assert row["smarter-cni"] > 500 and row["dnsmasq"] > 500, (label, row)
        assert results["latency_1k_qps"][label]["smarter-cni"]["lost"] == 0
    assert 0 < results["rss_pods_kib"]["smarter-cni"] < 60 * 1024
    fresh = results["freshness_ms"]["smarter-cni (registry write)"]
    assert fresh["first_try"] == fresh["rounds"]  # answered on the first query, every time
    assert "record written -> first successful answer" in done.stdout

