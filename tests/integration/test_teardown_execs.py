"""A network's teardown (uninstall, test fixtures) in one listing and at most one restore per
family, counted with a PATH of logging wrappers around the real iptables; exactly the
network's rules and NAT chain go, other networks' and other tools' rules stay as they were.
And the dual-stack subnet6 overlap check over rtnetlink, with its `ip` fallback."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from helpers.execlog import PLAIN_PATH, execs, make_wrappers, ours, programs
from helpers.netns import unique
from helpers.plugin import state_dir_env, teardown_bridge_network

pytestmark = pytest.mark.root

FAMILIES = ("iptables", "ip6tables")


def _ula() -> str:
    return f"fd{random.randint(0, 255):02x}:{random.randint(1, 0xFFFF):x}:" \
        f"{random.randint(1, 0xFFFF):x}::/64"


def _free_subnet(taken: str) -> str:
    for _ in range(50):
        cidr = f"10.244.{random.randint(0, 255)}.0/24"
        routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                                capture_output=True, text=True).stdout
        if cidr != taken and all(not line or line.startswith("default")
                                 for line in routes.splitlines()):
            return cidr
    pytest.skip("no second free /24 in 10.244.0.0/16 on this host")


@pytest.fixture
def other_network(bridge_network, state_dir):
    """A second test network next to `bridge_network`, torn down afterwards."""
    name = unique("o")
    config = {"cniVersion": "1.0.0", "name": f"net-{name}", "type": "smarter-cni",
              "bridge": f"br{name[:10]}", "subnet": _free_subnet(bridge_network["subnet"])}
    try:
        yield config
    finally:
        teardown_bridge_network(config, state_dir)


@pytest.fixture
def foreign_chains(bridge_network):
    """Per family a filter and a nat chain of the test's own (no rule jumps to them), with a
    rule carrying the torn-down network's very comment: not in FORWARD/POSTROUTING, so not
    the network's, and it must stay. Yields the chain name; both are deleted afterwards."""
    chain = unique("TFW-", 20)
    tag = ["-m", "comment", "--comment", f"smarter-cni {bridge_network['name']}"]
    try:
        for program in FAMILIES:
            for table in ("filter", "nat"):
                subprocess.run([program, "-w", "5", "-t", table, "-N", chain], check=True)
                subprocess.run([program, "-w", "5", "-t", table, "-A", chain, "-i",
                                bridge_network["bridge"], *tag, "-j", "RETURN"], check=True)
                subprocess.run([program, "-w", "5", "-t", table, "-A", chain, "-m", "comment",
                                "--comment", "another tool's rule", "-j", "RETURN"], check=True)
        yield chain
    finally:
        for program in FAMILIES:
            for table in ("filter", "nat"):
                subprocess.run([program, "-w", "5", "-t", table, "-F", chain], capture_output=True)
                subprocess.run([program, "-w", "5", "-t", table, "-X", chain], capture_output=True)


def _foreign(chain: str, program: str) -> list[str]:
    out = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if chain in line]


def _kept(other: dict, chain: str) -> dict[str, list[str]]:
    """What must come through the teardown unchanged: the other network's lines, the
    foreign chains' lines, per family."""
    return {p: ours(other, f"{p}-save") + _foreign(chain, f"{p}-save") for p in FAMILIES}


def _set_up(state_dir: Path, *configs: dict) -> None:
    from smarter_cni.dataplane.bridge_network import setup_network
    from smarter_cni.netconf import parse_netconf

    with state_dir_env(state_dir):
        for config in configs:
            setup_network(parse_netconf(config))


def _teardown(config: dict, state_dir: Path) -> None:
    from smarter_cni.dataplane.bridge_network import teardown_network
    from smarter_cni.netconf import parse_netconf

    with state_dir_env(state_dir):
        teardown_network(parse_netconf(config))


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
def test_teardown_lists_once_and_restores_once_per_family(
        bridge_network, other_network, foreign_chains, state_dir, tmp_path, monkeypatch, dual):
    from smarter_cni.dataplane.names import chain_name

    config = dict(bridge_network, subnet6=_ula()) if dual else bridge_network
    other = dict(other_network, subnet6=_ula()) if dual else other_network
    _set_up(state_dir, config, other)
    assert len(ours(config)) == 7  # 2 accepts, the jump, the chain and its 3 rules
    assert len(ours(config, "ip6tables-save")) == (7 if dual else 0)
    kept = _kept(other, foreign_chains)
    assert len(kept["iptables"]) == 7 + 6  # the other network; 2 chains declared + 2 rules each
    wrappers, log = make_wrappers(tmp_path)
    monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
    _teardown(config, state_dir)

    six = ["ip6tables-save", "ip6tables-restore"] if dual else ["ip6tables-save"]
    assert programs(log) == [*six, "iptables-save", "iptables-restore"], log.read_text()
    for program in FAMILIES:
        restores = [line for line in execs(log, program) if "-restore" in line]
        assert all(line.endswith("--noflush -w 5") for line in restores), restores
    monkeypatch.setenv("PATH", PLAIN_PATH)
    chain = chain_name(config["name"])
    for program in FAMILIES:
        assert ours(config, f"{program}-save") == []
        listing = subprocess.run([f"{program}-save"], capture_output=True, text=True).stdout
        assert f":{chain} " not in listing and f'"smarter-cni {config["name"]}"' not in \
            "\n".join(line for line in listing.splitlines() if foreign_chains not in line)
    assert _kept(other, foreign_chains) == kept
    # the foreign rule with the network's comment is still there, in both tables and families
    assert all(sum(f'"smarter-cni {config["name"]}"' in line for line in lines) == 2
               for lines in kept.values())


def test_teardown_of_an_absent_network_only_lists(bridge_network, state_dir, tmp_path,
                                                  monkeypatch):
    wrappers, log = make_wrappers(tmp_path)
    monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
    _teardown(dict(bridge_network, subnet6=_ula()), state_dir)
    assert programs(log) == ["ip6tables-save", "iptables-save"]


@pytest.mark.parametrize("how", ["restore-missing", "restore-fails"])
def test_teardown_falls_back_to_one_rule_at_a_time(
        bridge_network, other_network, foreign_chains, state_dir, tmp_path, monkeypatch, how):
    """Without iptables-restore (hidden from PATH and from the sbin dirs the plugin also
    searches: `run._SEARCH_PATH` emptied for this process) or with one that fails, the old
    one-exec-per-rule path removes everything just as well."""
    from smarter_cni import run as run_module
    from smarter_cni.dataplane.names import chain_name

    config = dict(bridge_network, subnet6=_ula())
    other = dict(other_network, subnet6=_ula())
    _set_up(state_dir, config, other)
    kept = _kept(other, foreign_chains)
    restores = ("iptables-restore", "ip6tables-restore")
    if how == "restore-missing":
        wrappers, log = make_wrappers(tmp_path, omit=restores)
        monkeypatch.setattr(run_module, "_SEARCH_PATH", ())
        monkeypatch.setenv("PATH", str(wrappers))
    else:
        wrappers, log = make_wrappers(tmp_path, failing=restores)
        monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
    from smarter_cni.dataplane import firewall
    from smarter_cni.netconf import parse_netconf

    firewall.teardown(parse_netconf(config))
    monkeypatch.undo()
    chain = chain_name(config["name"])
    for program in FAMILIES:
        logged = execs(log, program)
        assert (logged[0].split(" ", 1)[0] == f"{program}-save") == (how == "restore-fails"), logged
        assert (f"{program}-restore --noflush -w 5" in logged) == (how == "restore-fails")
        assert f"{program} -w 5 -t nat -X {chain}" in logged, logged
        assert ours(config, f"{program}-save") == []
    assert _kept(other, foreign_chains) == kept


def _link_with_routes(name: str, routes: list[str]) -> None:
    """A bridge of the test's own (no dummy module on this kernel), up, with IPv6 routes."""
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    for route in routes:
        subprocess.run(["ip", "-6", "route", "add", route, "dev", name], check=True)


@pytest.mark.parametrize("tool", ["netlink", "iproute2"])
def test_subnet6_overlap_check_over_netlink_and_iproute2(bridge_network, state_dir, tmp_path,
                                                         monkeypatch, tool):
    """A route of a test-owned link (a /64, a /128 host route) makes an overlapping
    subnet6 a clear error before anything changes; a free prefix is accepted, also again
    once the bridge's own route is there. Over rtnetlink no `ip` is exec'd."""
    from smarter_cni.cni.errors import CNIError

    link = unique("dm")
    taken = _ula()
    host_route = _ula().replace("::/64", "::5")
    wrappers, log = make_wrappers(tmp_path)
    try:
        _link_with_routes(link, [taken, host_route])
        if tool == "iproute2":
            monkeypatch.setenv("SMARTER_CNI_USE_IPROUTE2", "1")
        monkeypatch.setenv("PATH", f"{wrappers}:{PLAIN_PATH}")
        for subnet6, route in ((taken, taken), (taken.replace("::/64", "::/56"), taken),
                               (host_route.replace("::5", "::/64"), host_route)):
            config = dict(bridge_network, subnet6=subnet6)
            log.write_text("")
            with pytest.raises(CNIError) as refused:
                _set_up(state_dir, config)
            assert refused.value.code == 7, refused.value.msg
            assert f"overlaps the host's route {route} on {link};" in refused.value.msg, \
                refused.value.msg
            assert [line for line in log.read_text().splitlines() if line.startswith("ip ")] == \
                ([] if tool == "netlink" else ["ip -j -6 route show"])
            assert programs(log) == ([] if tool == "netlink" else ["ip"])  # nothing changed
            assert not Path(f"/sys/class/net/{bridge_network['bridge']}").exists()
        free = dict(bridge_network, subnet6=_ula())
        _set_up(state_dir, free)
        _set_up(state_dir, free)  # its own prefix route, on the bridge, is fine
        assert Path(f"/sys/class/net/{bridge_network['bridge']}/bridge").exists()
    finally:
        monkeypatch.undo()
        subprocess.run(["ip", "link", "del", link], capture_output=True)


def test_netlink_route_dump_lists_what_ip_lists():
    """The rtnetlink dump and `ip -j -6 route show` give the same (destination, device)
    list, with a /64 and a host route of a test-owned link added."""
    import os

    from smarter_cni.dataplane import bridge_network
    from smarter_cni.dataplane.netlink import FORCE_IPROUTE2

    link = unique("dm")
    try:
        _link_with_routes(link, [_ula(), _ula().replace("::/64", "::7")])
        over_netlink = bridge_network._routes6()
        os.environ[FORCE_IPROUTE2] = "1"
        try:
            over_ip = bridge_network._routes6()
        finally:
            del os.environ[FORCE_IPROUTE2]
        assert over_netlink == over_ip
        assert sum(dev == link for _, dev in over_netlink) >= 2  # (and its fe80::/64)
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
