"""Smoke run of bench/plugin_bench.py at a tiny size, so it does not rot.

The numbers are not judged here (benchmarks are not pass/fail); what is
checked: the script runs to completion against the real plugin, the real
reference plugins (and docker mode on the tests' private dockerd, never the
node's: DOCKER_HOST points the bench at it),
prints its ratio table, writes its JSON, finds no repeated address or
leftover veth, and leaves no namespace, bridge or iptables rule behind.
bench/dns_bench.py has its own smoke test (test_dns_bench_smoke.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytest_plugins = ("helpers.dockerd",)  # fixture: dockerd (the tests' private one)
pytestmark = pytest.mark.root


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _nat_rules() -> set[str]:
    out = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True,
                         text=True).stdout
    return set(out.splitlines())


def _run(script: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
         ) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"{script}.json"
    proc = subprocess.run([PYTHON, str(BENCH / script), "--quick", "--json", str(report), *extra],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(report.read_text())
    return proc, data


def test_plugin_bench_quick(tmp_path: Path, dockerd) -> None:
    before_ns, before_links, before_nat = _netns(), _links(), _nat_rules()
    proc, data = _run("plugin_bench.py", tmp_path, env=dockerd.env)
    out = proc.stdout
    for row in ("ADD median", "DEL median", "DEL p99", "16-concurrent ADD pods/s",
                "peak RSS of one ADD"):
        assert any(line.startswith(row) and "x" in line for line in out.splitlines()), \
            f"no ratio row {row!r} in:\n{out}"
    metrics = {r["metric"]: r for r in data["ratios"]}
    for name in ("ADD median", "ADD p99", "DEL median", "DEL p99", "16-concurrent ADD pods/s"):
        assert metrics[name]["vs_B"] > 0, metrics[name]
    seq = data["sequential"]
    for key in ("A", "B", "C"):
        assert seq["add"][key]["n"] == data["pods"] and seq["del"][key]["n"] == data["pods"]
        assert 0 < seq["add"][key]["min"] <= seq["add"][key]["median"] <= seq["add"][key]["max"]
    for workers in ("4", "16"):
        for key in ("A", "B", "C"):
            slot = data["concurrency"][workers][key]
            assert slot["duplicates"] == [] and slot["leftovers"] == [], slot
            assert slot["add_pods_per_s"] > 0 and slot["del_pods_per_s"] > 0
    assert data["footprint"]["importtime"]["ADD"].get("total_ms", 0) > 0, data["footprint"]
    docker = data["docker"]
    assert docker["add"]["D"]["n"] == docker["pods"], docker  # dockerd is there: measured
    # everything the bench made is gone
    assert not {n for n in _netns() - before_ns if n.startswith("scb")}
    assert not {n for n in _links() - before_links if n.startswith("scb")}
    assert not {r for r in _nat_rules() - before_nat if "scb-" in r}



def _ours(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_plugin_bench_candidate_runs_the_resident_server_and_the_reconciler(tmp_path: Path) -> None:
    """As on an installed node, whose DNS service runs both: the resident server serves
    chain N and the real reconciler keeps N's rules stamp fresh; both stop with the bench."""
    before_ns, before_links, before_nat = _netns(), _links(), _nat_rules()
    proc, data = _run("plugin_bench.py", tmp_path, "--no-docker", "--candidate-src",
                      str(ROOT / "src"), "--candidate-resident")
    assert data["candidate_resident"] is True and data["candidate_reconciler"] is True
    rec = data["reconciler"]
    assert rec["running"] is True and rec["stamp_fresh"] is True, rec
    assert not [line for line in rec["log"] if line.startswith(("WARNING", "ERROR"))], rec
    assert "at the end, stamp fresh" in proc.stdout and f"pid {rec['pid']}" in proc.stdout
    assert not _ours(rec["pid"], b"smarter_cni import reconcile"), "the reconciler outlived it"
    assert 0 <= rec["stamp_waited_s"] < 15, rec  # the measured pods start once it vouched
    served = data["resident"]
    assert 0 < served["served"] <= served["requests"] and served["failed"] == [], served
    assert 0 < served["served_sequential"] <= served["requests_sequential"], served
    assert f"which ran {served['served']} of N's {served['requests']}" in proc.stdout
    seq = data["sequential"]
    assert seq["add"]["N"]["n"] == data["pods"] and seq["del"]["N"]["n"] == data["pods"]
    for workers in ("4", "16"):
        slot = data["concurrency"][workers]["N"]
        assert slot["duplicates"] == [] and slot["leftovers"] == [], slot
    assert not {n for n in _netns() - before_ns if n.startswith("scb")}
    assert not {n for n in _links() - before_links if n.startswith("scb")}
    assert not {r for r in _nat_rules() - before_nat if "scb-" in r}
