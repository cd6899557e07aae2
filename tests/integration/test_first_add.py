"""How many iptables execs a network's set-up and repair cost (issue 16), counted with a
PATH of logging wrappers around the real programs, and that the rules come out the same."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from helpers.execlog import PLAIN_PATH, make_wrappers
from helpers.execlog import execs as _execs
from helpers.netns import unique
from helpers.plugin import pod_args, state_dir_env, teardown_bridge_network

pytestmark = pytest.mark.root


@pytest.fixture
def exec_log(tmp_path: Path):
    """(wrapper dir, log file): each wrapper logs its name and arguments, then execs the real one."""
    return make_wrappers(tmp_path)


def _ula() -> str:
    return f"fd{random.randint(0, 255):02x}:{random.randint(1, 0xFFFF):x}:" \
        f"{random.randint(1, 0xFFFF):x}::/64"


def _ours(config: dict, program: str = "iptables-save") -> list[str]:
    """This network's lines in the listing, in order (the rules and its NAT chain's)."""
    from smarter_cni.dataplane.names import chain_name

    chain = chain_name(config["name"])
    out = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if f'"smarter-cni {config["name"]}"' in line or line.startswith(f"-A {chain} ")]


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
def test_first_add_costs_one_listing_and_one_restore_per_family(
        plugin, bridge_network, state_dir, netns, exec_log, dual):
    config = dict(bridge_network, subnet6=_ula()) if dual else bridge_network
    wrappers, log = exec_log
    _, path = netns.create()
    try:
        added = plugin("ADD", config, unique("ctr-"), path, args=pod_args("first"),
                       extra={"PATH": f"{wrappers}:{PLAIN_PATH}"})
        assert added.ok, added
        families = ["iptables", "ip6tables"] if dual else ["iptables"]
        for family in families:
            execs = _execs(log, family)
            assert len(execs) <= 2, execs
            assert [e.split(" ", 1)[0] for e in execs] == [f"{family}-save", f"{family}-restore"], \
                execs
            assert execs[1].endswith("--noflush -w 5"), execs
        if not dual:
            assert not _execs(log, "ip6tables")
        # the bridge, its addresses, the pod's links and (dual-stack) the subnet6 overlap
        # check's route listing over rtnetlink: no `ip`
        assert [e for e in log.read_text().splitlines() if e.split(" ", 1)[0] == "ip"] == []
        from smarter_cni.dataplane import firewall
        from smarter_cni.netconf import parse_netconf

        assert firewall.present(parse_netconf(config)) == []
        lines = _ours(config)
        assert len(lines) == 6, lines  # 2 FORWARD accepts, the jump, the chain's 3 rules
        if dual:
            assert len(_ours(config, "ip6tables-save")) == 6
    finally:
        if dual:
            teardown_bridge_network(config, state_dir)


def test_second_ensure_writes_nothing_and_a_repair_one_restore(
        plugin, bridge_network, state_dir, netns, exec_log, monkeypatch):
    """On a whole network ensure() only lists; after the rules are gone one restore brings
    them back exactly as they were (same lines, same order in their chains)."""
    from smarter_cni.dataplane import firewall
    from smarter_cni.dataplane.names import chain_name
    from smarter_cni.netconf import parse_netconf

    config = dict(bridge_network, subnet6=_ula())
    wrappers, log = exec_log
    _, path = netns.create()
    try:
        added = plugin("ADD", config, unique("ctr-"), path, args=pod_args("second"))
        assert added.ok, added
        conf = parse_netconf(config)
        before4, before6 = _ours(config), _ours(config, "ip6tables-save")
        monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
        with state_dir_env(state_dir):
            assert firewall.ensure(conf) == []
        assert [e.split(" ", 1)[0] for e in log.read_text().splitlines()] == \
            ["ip6tables-save", "iptables-save"]
        assert _ours(config) == before4 and _ours(config, "ip6tables-save") == before6

        # A repair: the FORWARD accepts, the jump and the chain's rules gone (a flush by hand)
        chain = chain_name(config["name"])
        for program in ("iptables", "ip6tables"):
            prefix = f"-A {chain} "
            listing = before4 if program == "iptables" else before6
            for line in listing:
                if not line.startswith(prefix):
                    words = firewall.split_words(line)
                    table = "filter" if words[1] == "FORWARD" else "nat"
                    subprocess.run([program, "-t", table, "-D", *words[1:]], check=True)
            subprocess.run([program, "-t", "nat", "-F", chain], check=True)
        log.write_text("")
        with state_dir_env(state_dir):
            missing = firewall.ensure(conf)
        assert len(missing) == 8, missing  # per family: 2 accepts, the jump, the chain
        assert [e.split(" ", 1)[0] for e in log.read_text().splitlines()] == \
            ["ip6tables-save", "ip6tables-restore", "iptables-save", "iptables-restore"]
        assert _ours(config) == before4 and _ours(config, "ip6tables-save") == before6
        assert firewall.present(conf) == []
    finally:
        teardown_bridge_network(config, state_dir)


def test_stale_rules_of_the_network_go_in_the_same_restore(
        bridge_network, state_dir, exec_log, monkeypatch):
    """A changed bridge name: the old accepts are deleted, the new ones inserted at the top,
    in one restore; rules of other networks stay."""
    from smarter_cni.dataplane import firewall
    from smarter_cni.dataplane.bridge_network import setup_network
    from smarter_cni.netconf import parse_netconf

    old = dict(bridge_network, bridge=unique("bro", 15))
    new = bridge_network
    wrappers, log = exec_log
    try:
        with state_dir_env(state_dir):
            setup_network(parse_netconf(old))
            setup_network(parse_netconf(new))  # bridge (and accepts) now named differently
        assert all(old["bridge"] not in line for line in _ours(new))
        forward = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                                 text=True).stdout.splitlines()
        ours = [line for line in forward if f'"smarter-cni {new["name"]}"' in line]
        # inserted one after the other at the top: the -o accept ends up before the -i one
        assert [line.split()[2:4] for line in ours] == [["-o", new["bridge"]], ["-i", new["bridge"]]]
        monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
        with state_dir_env(state_dir):
            assert firewall.ensure(parse_netconf(new)) == []
        assert [e.split(" ", 1)[0] for e in log.read_text().splitlines()] == ["iptables-save"]
    finally:
        subprocess.run(["ip", "link", "del", old["bridge"]], capture_output=True)
        teardown_bridge_network(new, state_dir)


def _bridge_view(bridge: str) -> tuple:
    """What the set-up leaves on the bridge, without what differs per creation (ifindex)."""
    link = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", "dev", bridge],
                                     capture_output=True, text=True, check=True).stdout)[0]
    addrs = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", bridge],
                                      capture_output=True, text=True, check=True).stdout)[0]
    found = sorted((a["family"], a["local"], a["prefixlen"], a.get("scope"), a.get("broadcast"),
                    a.get("nodad", False), a.get("noprefixroute", False))
                   for a in addrs["addr_info"] if not a["local"].startswith("fe80:"))
    return (link["linkinfo"]["info_kind"], link["address"], "UP" in link["flags"], link["mtu"],
            found)


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale-addresses"])
def test_bridge_comes_out_the_same_over_netlink_and_iproute2(bridge_network, state_dir,
                                                             monkeypatch, stale):
    """setup_network's rtnetlink path leaves the bridge as the `ip` path does: kind, MAC,
    up, exactly the gateway addresses (stale ones replaced)."""
    from smarter_cni.dataplane.bridge_network import bridge_mac, setup_network
    from smarter_cni.netconf import parse_netconf

    config = dict(bridge_network, subnet6=_ula())
    conf = parse_netconf(config)
    views = {}
    try:
        for tool in ("netlink", "iproute2"):
            if tool == "iproute2":
                monkeypatch.setenv("SMARTER_CNI_USE_IPROUTE2", "1")
            if stale:
                subprocess.run(["ip", "link", "add", conf.bridge, "type", "bridge"], check=True)
                base = bridge_network["subnet"].rsplit(".", 1)[0]
                for cidr in (f"{base}.77/24", f"{base}.1/25", "fd00:1:2:3::9/64"):
                    subprocess.run(["ip", "addr", "add", cidr, "dev", conf.bridge], check=True)
            with state_dir_env(state_dir):
                setup_network(conf)
            view = _bridge_view(conf.bridge)
            # a bridge made by hand keeps its own (random) MAC either way
            views[tool] = (view[0], "" if stale else view[1], *view[2:])
            teardown_bridge_network(config, state_dir)
        assert views["netlink"] == views["iproute2"]
        kind, mac, up, _, addresses = views["netlink"]
        assert (kind, up) == ("bridge", True)
        assert mac == ("" if stale else bridge_mac(conf))
        gateway = bridge_network["subnet"].replace(".0/24", ".1")
        assert [(a[0], a[1], a[2]) for a in addresses] == \
            [("inet", gateway, 24), ("inet6", conf.gateway6_text(), 64)]
    finally:
        teardown_bridge_network(config, state_dir)


BACKEND_SCRIPT = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from smarter_cni.dataplane import firewall
from smarter_cni.netconf import parse_netconf

conf = parse_netconf(json.loads(sys.argv[2]))
def ours(program):
    out = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]
first = firewall.ensure(conf)
listing = {p: ours(p) for p in ("iptables-save", "ip6tables-save")}
again = firewall.ensure(conf)
for program in ("iptables", "ip6tables"):
    subprocess.run([program, "-F", "FORWARD"], check=True)
    subprocess.run([program, "-t", "nat", "-F"], check=True)
repaired = firewall.ensure(conf)
print(json.dumps({"first": first, "listing": listing, "again": again, "repaired": repaired,
                  "after": {p: ours(p) for p in ("iptables-save", "ip6tables-save")},
                  "present": firewall.present(conf)}))
"""


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_restore_path_on_both_iptables_backends(netns, tmp_path, backend):
    """In a netns of the test's own, with iptables (and -save/-restore, ip6tables) pointing at
    the `backend` variant: rules made, a second ensure writes nothing, a flush is repaired to
    the same listing."""
    from helpers.plugin import SRC

    ns, _ = netns.create("fw")
    tools = tmp_path / "tools"
    tools.mkdir()
    log = tmp_path / "execs.log"
    for family in ("iptables", "ip6tables"):
        for tail in ("", "-save", "-restore"):
            real = f"/usr/sbin/{family}-{backend}{tail}"
            (tools / f"{family}{tail}").write_text(
                f'#!/bin/sh\necho "{family}{tail} $*" >> {log}\nexec {real} "$@"\n')
            (tools / f"{family}{tail}").chmod(0o755)
    config = {"cniVersion": "1.0.0", "name": "net-fw", "type": "smarter-cni", "bridge": "brfw",
              "subnet": "10.99.0.0/24", "subnet6": "fd99:1:2::/64"}
    done = subprocess.run(["ip", "netns", "exec", ns, "env", f"PATH={tools}:{PLAIN_PATH}",
                           "python3", "-c", BACKEND_SCRIPT, str(SRC), json.dumps(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["first"]) == 8 and out["again"] == [] and len(out["repaired"]) == 8, out
    assert out["present"] == []
    assert out["after"] == out["listing"]
    for program in ("iptables-save", "ip6tables-save"):
        assert len(out["listing"][program]) == 6, out["listing"]  # accepts, jump, 3 in the chain
    restores = [line for line in log.read_text().splitlines() if "-restore" in line]
    assert len(restores) == 4, restores  # first and repair, per family; none for "again"
    writes = [line for line in log.read_text().splitlines()
              if line.split(" ", 1)[0] in ("iptables", "ip6tables")
              and not line.split(" ", 2)[1].startswith(("-F", "-t"))]
    assert writes == [], writes  # every change went through the restores
