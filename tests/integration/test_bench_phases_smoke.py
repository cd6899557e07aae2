"""Smoke run of bench/phases.py (issue 16's phase breakdown) at 3 rounds, so it does not rot.

The numbers are not judged (a benchmark is not pass/fail); what is checked:
the script runs against the real plugin, a real bridge and real namespaces
and the real reference plugins, every phase it reports was measured, the
in-process steps add up to about the whole in-process call they replay, and
nothing it made (namespace, link, iptables rule) is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytestmark = pytest.mark.root


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _iptables() -> set[str]:
    rules = set()
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables", "-w", "5", "-t", table, "-S"], capture_output=True,
                             text=True).stdout
        rules |= set(out.splitlines())
    return rules


def test_phases_quick(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, bridges, iptables")
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.skip("reference plugins missing: apt-get install containernetworking-plugins")
    before_ns, before_links, before_rules = _netns(), set(os.listdir("/sys/class/net")), _iptables()
    report = tmp_path / "phases.json"
    proc = subprocess.run([PYTHON, str(ROOT / "bench" / "phases.py"), "--quick", "--json", str(report)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(report.read_text())
    assert data["cleanup_problems"] == []
    for title in ("One bridge-mode ADD by phase", "One bridge-mode DEL by phase", "Whole execs",
                  "-X importtime"):
        assert title in proc.stdout, proc.stdout

    add = data["inprocess"]["ADD stale stamp"]
    for phase in ("parse request (env + stdin JSON)", "network look: iptables-save (stale stamp)",
                  "state tx 1 (reserve): write state + unlock",
                  "netlink: create veth (peer in pod netns, on bridge, up)",
                  "setns: into pod netns + socket + back", "state tx 2 (ready): lock",
                  "result: encode (to_dict + JSON)"):
        assert add[phase]["n"] == 3 and add[phase]["median"] > 0, (phase, add.get(phase))
    assert "network look: iptables-save (stale stamp)" not in data["inprocess"]["ADD fresh stamp"]
    assert data["inprocess"]["DEL"]["netlink: delete veth until unlisted (kernel)"]["median"] > 0
    # the replayed steps cost about what the real call costs (same work, same process);
    # the fastest of 3 rounds each, as other load on a shared machine hits single rounds
    steps = add["(sum of steps)"]["min"]
    whole = data["inprocess"]["whole plugin.cmd_add (stale stamp)"]["min"]
    assert 0.25 * whole < steps < 4 * whole, (steps, whole)

    execs = data["execs"]
    for name in ("ADD smarter-cni, stale stamp", "DEL smarter-cni, stale stamp",
                 "ADD reference, no ipMasq (incl. loopback)", "DEL reference, ipMasq (incl. loopback)",
                 "floor: python3 -I -S -c pass (the launcher's flags)",
                 "floor: thin client -> Unix socket -> trivial server -> reply (raise SystemExit)",
                 "ADD exec: interpreter start (spawn -> launcher's first line)",
                 "ADD exec: imports (launcher's imports + the plugin's)",
                 # the thin client with no service behind it did the work itself
                 "ADD smarter-cni, thin client, service down (in-process fallback), stale stamp",
                 "DEL smarter-cni, thin client, service down (in-process fallback), stale stamp"):
        assert execs[name]["wall"]["n"] == 3 and execs[name]["wall"]["median"] > 0, name
    # a whole exec includes the interpreter: it cannot be cheaper than a bare one
    assert execs["ADD smarter-cni, stale stamp"]["wall"]["median"] > \
        execs["floor: python3 -I -S -c pass (the launcher's flags)"]["wall"]["min"]
    assert data["importtime"]["ADD"]["smarter_cni_count"] >= 5
    ratios = data["ratios"]
    assert len(ratios) == 14 and all(r["n"] == 3 and r["median"] > 0 for r in ratios.values()), ratios
    if os.path.exists("/usr/bin/time"):
        assert data["peak_rss_kb"]["thin client"] > 1000, data["peak_rss_kb"]
    tmpfs = [s for s in data["state_io"] if s["where"] == "tmpfs"]
    assert [s["records"] for s in tmpfs] == [0, 120, 250], data["state_io"]
    assert tmpfs[0]["bytes"] < tmpfs[1]["bytes"] < tmpfs[2]["bytes"]
    assert data["state_dir"].endswith("(tmpfs)"), data["state_dir"]

    assert not {n for n in _netns() - before_ns if n.startswith("scp")}
    assert not {n for n in set(os.listdir("/sys/class/net")) - before_links if n.startswith("scp")}
    assert not {r for r in _iptables() - before_rules if "scp-" in r}
