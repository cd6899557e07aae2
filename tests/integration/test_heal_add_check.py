"""ADD does not trust stale state; CHECK reports missing network pieces.

No reconciler runs here: each fault is made to this test's own network only
(its bridge, its rules deleted one by one, never a flush of a host chain),
then CHECK must fail with code 103 naming the piece, the next ADD must
restore it (and say so in repairs.json), a resident pod must work again,
and CHECK must pass. Forwarding off is host-wide, so it is only faulted
inside a namespace of its own (test_heal_faults.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import run_id, sh  # noqa: E402
from helpers.plugin import SRC, pod_args  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane.firewall import comment, split_words  # noqa: E402
from smarter_cni.dataplane.names import chain_name  # noqa: E402
from smarter_cni.netconf import parse_netconf  # noqa: E402

pytestmark = pytest.mark.root


def _our_rules(conf) -> list[tuple[str, list[str]]]:
    """(table, words after -A) of every rule of this network."""
    found = []
    for table in ("filter", "nat"):
        text = sh("iptables-save", "-t", table).stdout.decode()
        for line in text.splitlines():
            if line.startswith("-A ") and (comment(conf) in line or chain_name(conf.name) in line):
                found.append((table, split_words(line)[1:]))
    return sorted(found)


def _delete_rules(conf, which: str) -> None:
    for table, words in _our_rules(conf):
        chain = words[0]
        if which == "forward" and chain == "FORWARD" or \
                which == "nat-jump" and chain == "POSTROUTING" or \
                which == "nat-chain" and chain == chain_name(conf.name):
            sh("iptables", "-t", table, "-D", *words)


def _fault(config: dict, fault: str) -> None:
    conf = parse_netconf(config)
    if fault in ("forward", "nat-jump", "nat-chain"):
        _delete_rules(conf, fault)
    elif fault == "address":
        sh("ip", "addr", "flush", "dev", conf.bridge)
    elif fault == "down":
        sh("ip", "link", "set", conf.bridge, "down")
    elif fault == "bridge":
        sh("ip", "link", "del", conf.bridge)


EXPECTED = {
    "forward": "FORWARD accept",
    "nat-jump": "nat POSTROUTING jump",
    "nat-chain": "nat chain SMARTER-CNI-",
    "address": "lacks its address",
    "down": "is down",
    "bridge": "is missing",
}


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_check_reports_and_add_restores(plugin, bridge_network, netns, state_dir, fault):
    conf = parse_netconf(bridge_network)
    resident_ns, resident_path = netns.create()
    added = plugin("ADD", bridge_network, run_id("resident"), resident_path, args=pod_args("resident"))
    assert added.ok, added
    rules_before = _our_rules(conf)
    assert len(rules_before) == 6, rules_before
    check_conf = dict(bridge_network, prevResult=added.json)
    assert plugin("CHECK", check_conf, run_id("resident"), resident_path).ok

    _fault(bridge_network, fault)
    checked = plugin("CHECK", check_conf, run_id("resident"), resident_path)
    assert checked.code == 103, checked
    assert f"network {bridge_network['name']} is not whole" in checked.json["msg"]
    assert EXPECTED[fault] in checked.json["msg"], checked.json["msg"]

    _, path = netns.create()
    again = plugin("ADD", bridge_network, run_id("newcomer"), path, args=pod_args("newcomer"))
    assert again.ok, again
    assert _our_rules(conf) == rules_before  # restored, nothing duplicated
    assert plugin("CHECK", check_conf, run_id("resident"), resident_path).ok
    # the resident pod reaches its gateway again (a rebuilt bridge got its port back)
    gateway = added.json["ips"][0]["gateway"]
    pinged = subprocess.run(["ip", "netns", "exec", resident_ns, "ping", "-c1", "-W2", gateway],
                            capture_output=True, text=True)
    assert pinged.returncode == 0, pinged.stdout
    repairs = json.loads((state_dir / "repairs.json").read_text())
    assert repairs[-1]["by"] == "ADD" and repairs[-1]["network"] == bridge_network["name"]
    assert any(EXPECTED[fault] in r["what"] for r in repairs), repairs
    log = (state_dir / "smarter-cni.log").read_text()
    assert f"ADD repaired network {bridge_network['name']}" in log


def test_a_rebuilt_bridge_keeps_its_mac(plugin, bridge_network, netns):
    """Pods keep the gateway's MAC in their ARP cache: a rebuilt bridge must answer to it."""
    _, path = netns.create()
    assert plugin("ADD", bridge_network, run_id("one"), path, args=pod_args("one")).ok
    bridge = bridge_network["bridge"]
    mac = Path(f"/sys/class/net/{bridge}/address").read_text()
    sh("ip", "link", "del", bridge)
    _, other = netns.create()
    assert plugin("ADD", bridge_network, run_id("two"), other, args=pod_args("two")).ok
    assert Path(f"/sys/class/net/{bridge}/address").read_text() == mac
    assert len(list(Path(f"/sys/class/net/{bridge}/brif").iterdir())) == 2  # both pods on it


def test_a_fresh_reconciler_stamp_spares_adds_rule_look_and_a_stale_one_does_not(
        plugin, bridge_network, netns, state_dir):
    conf = parse_netconf(bridge_network)
    _, path = netns.create()
    assert plugin("ADD", bridge_network, run_id("one"), path, args=pod_args("one")).ok
    rules = _our_rules(conf)
    stamp = state_dir / f"verified-{bridge_network['name']}"
    _delete_rules(conf, "forward")
    stamp.write_text(f"{time.time() + 30:.3f}")  # as the reconciler writes after a clean look
    _, second = netns.create()
    assert plugin("ADD", bridge_network, run_id("two"), second, args=pod_args("two")).ok
    assert len(_our_rules(conf)) == 4  # trusted the fresh look: the reconciler will repair
    stamp.write_text(f"{time.time() - 1:.3f}")  # the reconciler stopped vouching
    _, third = netns.create()
    assert plugin("ADD", bridge_network, run_id("three"), third, args=pod_args("three")).ok
    assert _our_rules(conf) == rules


def test_the_reconciler_never_builds_a_network_this_node_did_not_set_up(bridge_network,
                                                                         state_dir):
    """A DNS service pointed at a config whose network was never created here (no marker
    in the state) must not create bridges or rules by itself."""
    from smarter_cni import reconcile

    conf = parse_netconf(bridge_network)
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    assert reconciler.tick() == []
    assert not Path(f"/sys/class/net/{conf.bridge}").exists()
    assert _our_rules(conf) == []
    problems = reconcile.check(conf, str(state_dir))  # what `status` would list
    assert f"bridge {conf.bridge} is missing" in problems
    assert any("FORWARD accept" in p for p in problems)


def test_a_network_claimed_by_the_installer_is_kept_before_any_pod(bridge_network, state_dir,
                                                                    monkeypatch):
    """What `smarter-cni install` should do: setup_network, then claim_network."""
    from smarter_cni import reconcile, repairs
    from smarter_cni.dataplane.bridge_network import claim_network, setup_network

    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(state_dir))
    conf = parse_netconf(bridge_network)
    setup_network(conf)
    claim_network(conf, str(state_dir))
    rules = _our_rules(conf)
    _delete_rules(conf, "nat-jump")
    sh("ip", "addr", "flush", "dev", conf.bridge)
    assert len(reconcile.check(conf, str(state_dir))) == 2
    repaired = reconcile.Reconciler(conf, str(state_dir)).tick()
    assert len(repaired) == 2, repaired
    assert _our_rules(conf) == rules and reconcile.check(conf, str(state_dir)) == []
    assert [r["by"] for r in repairs.recent_repairs(str(state_dir))] == ["reconciler"] * 2
    assert (state_dir / f"verified-{conf.name}").exists() is False  # vouched on the next look
    assert reconcile.Reconciler(conf, str(state_dir)).tick() == []
    assert float((state_dir / f"verified-{conf.name}").read_text()) > time.time()


@pytest.mark.parametrize("tool", ["netlink", "iproute2"])
def test_a_busy_reconciler_during_a_burst_repairs_nothing_and_breaks_nothing(
        plugin, bridge_network, netns, state_dir, monkeypatch, tool):
    """24 concurrent ADDs then DELs while the reconciler looks every 50 ms: a whole
    network must never look broken to it (no false repair), and every call works."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from smarter_cni import reconcile

    extra = {"SMARTER_CNI_USE_IPROUTE2": "1"} if tool == "iproute2" else {}
    _, first = netns.create()
    assert plugin("ADD", bridge_network, run_id("first"), first, args=pod_args("first"), extra=extra).ok
    conf = parse_netconf(bridge_network)
    reconciler = reconcile.Reconciler(conf, str(state_dir), interval=0.05)
    repairs: list[str] = []
    halt = threading.Event()

    def watch() -> None:
        while not halt.wait(0.05):
            repairs.extend(reconciler.tick())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        pods = [(run_id(f"burst-{i}"), netns.create()[1]) for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            added = list(pool.map(lambda p: plugin("ADD", bridge_network, p[0], p[1],
                                                   args=pod_args(p[0]), extra=extra), pods))
            assert all(a.ok for a in added), [a for a in added if not a.ok][:2]
            deleted = list(pool.map(lambda p: plugin("DEL", bridge_network, p[0], p[1],
                                                     extra=extra), pods))
            assert all(d.ok for d in deleted), [d for d in deleted if not d.ok][:2]
    finally:
        halt.set()
        watcher.join(10)
    assert reconciler.ticks >= 5
    assert repairs == [], repairs
    assert not (state_dir / "repairs.json").exists()
