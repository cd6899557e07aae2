"""The node's own pod range from `runtimeConfig.ipRanges`, as kubelet / cri-dockerd pass it.

Two ways in, both real: a plain exec with env + stdin (the runtimeConfig in
the config, as a runtime writes it), and libcni (v1.1.2, what containerd,
CRI-O and cri-dockerd use), which only builds runtimeConfig.ipRanges from its
capability args when the conflist declares `"capabilities": {"ipRanges": true}`.
Pods live in real namespaces on a test bridge; pings stay on that bridge.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import libcni as libcni_helper
from helpers.netns import unique
from helpers.plugin import pod_args

pytestmark = pytest.mark.root

libcni = libcni_helper.fixture()


def _addresses(ns: str, dev: str = "eth0") -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", dev],
                         capture_output=True, text=True, timeout=30, check=True)
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout)
            for a in link.get("addr_info", [])]


def _bridge_addresses(bridge: str) -> set[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", bridge],
                         capture_output=True, text=True, timeout=30, check=True)
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout)
            for a in link.get("addr_info", [])}


def _default_gateway(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "route", "show", "default"],
                         capture_output=True, text=True, timeout=30, check=True)
    routes = json.loads(out.stdout)
    return routes[0]["gateway"] if routes else ""


def _ping(ns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", address],
                          capture_output=True, timeout=30).returncode == 0


def _base(network: dict) -> tuple[str, str]:
    """'10.244.N.0/24' -> ('10.244.N.', '24')."""
    address, prefix = network["subnet"].split("/")
    return address.rsplit(".", 1)[0] + ".", prefix


def _ranges(*subnets: str, key: str = "ipRanges", subnet_key: str = "subnet",
            **extra: str) -> dict:
    return {"runtimeConfig": {key: [[{subnet_key: s, **extra}] for s in subnets]}}


def test_add_takes_the_address_and_gateway_from_the_range(plugin, bridge_network, netns):
    base, _ = _base(bridge_network)  # the network is a /24; the node's range a /26 in it
    config = {**bridge_network, **_ranges(f"{base}64/26")}
    ns, path = netns.create()
    added = plugin("ADD", config, container_id=unique("c", 20), netns=path,
                   args=pod_args("ranged"))
    assert added.ok, added
    ip = added.json["ips"][0]
    assert ip["address"] == f"{base}66/26", "first free address of the range after its gateway"
    assert ip["gateway"] == f"{base}65"
    assert _addresses(ns) == [f"{base}66/26"]
    assert _default_gateway(ns) == f"{base}65"
    assert f"{base}65/26" in _bridge_addresses(bridge_network["bridge"])
    assert _ping(ns, f"{base}65"), "the bridge answers on the range's gateway"
    log = (plugin.state_dir / "smarter-cni.log").read_text()
    assert f"pod range {base}64/26 gateway {base}65/26 from runtimeConfig.ipRanges" in log


def test_capitalised_keys_and_explicit_range_bounds(plugin, bridge_network, netns):
    base, _ = _base(bridge_network)
    config = {**bridge_network, "runtimeConfig": {"IPRanges": [[{
        "Subnet": f"{base}128/25", "RangeStart": f"{base}200", "RangeEnd": f"{base}201",
        "Gateway": f"{base}254"}]]}}
    got = []
    for n in range(3):
        ns, path = netns.create()
        added = plugin("ADD", config, container_id=unique("c", 20), netns=path,
                       args=pod_args(f"cap{n}"))
        got.append(added)
    assert [a.ok for a in got] == [True, True, False], got
    assert [a.json["ips"][0]["address"] for a in got[:2]] == [f"{base}200/25", f"{base}201/25"]
    assert got[0].json["ips"][0]["gateway"] == f"{base}254"
    assert got[2].code == 100 and f"{base}200-{base}201" in got[2].json["msg"], got[2]


def test_ipv6_ranges_are_skipped_and_no_ipv4_range_keeps_the_subnet(plugin, bridge_network,
                                                                     netns):
    base, prefix = _base(bridge_network)
    ns, path = netns.create()
    config = {**bridge_network, **_ranges("fd00:42::/64")}
    added = plugin("ADD", config, container_id=unique("c", 20), netns=path,
                   args=pod_args("six"))
    assert added.ok, added
    assert added.json["ips"][0]["address"] == f"{base}2/{prefix}"
    ns2, path2 = netns.create()
    both = {**bridge_network, "runtimeConfig": {"ipRanges": [
        [{"subnet": "fd00:42::/64"}], [{"subnet": f"{base}32/27"}]]}}
    added = plugin("ADD", both, container_id=unique("c", 20), netns=path2,
                   args=pod_args("dual"))
    assert added.ok, added
    assert added.json["ips"][0]["address"] == f"{base}34/27", "the IPv4 set is used"


@pytest.mark.parametrize("runtime, words", [
    ({"ipRanges": {"subnet": "10.1.0.0/24"}}, "must be a list of range sets"),
    ({"ipRanges": [{"subnet": "10.1.0.0/24"}]}, "must be a list of range sets"),
    ({"ipRanges": [[{"rangeStart": "10.1.0.5"}]]}, "has no \"subnet\""),
    ({"ipRanges": [[{"subnet": "10.1.0.5/24"}]]}, "has host bits set; did you mean 10.1.0.0/24"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/31"}]]}, "too small"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/33"}]]}, "is not a CIDR"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.1.5"}]]},
     "rangeStart 10.1.1.5 is outside subnet 10.1.0.0/24"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"}]]},
     "network or broadcast address"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9",
                     "rangeEnd": "10.1.0.8"}]]}, "is after rangeEnd"),
    ({"ipRanges": [[{"subnet": "10.1.0.0/24", "gateway": 7}]]}, "gateway must be a string"),
])
def test_bad_ranges_are_code_7_and_leave_nothing(plugin, bridge_network, netns, runtime, words):
    ns, path = netns.create()
    done = plugin("ADD", {**bridge_network, "runtimeConfig": runtime},
                  container_id=unique("c", 20), netns=path, args=pod_args("bad"))
    assert done.returncode != 0 and done.code == 7, done
    assert words in done.json["msg"], done.json
    assert "Traceback" not in done.stderr
    assert not (plugin.state_dir / "attachments.json").exists() or \
        not json.loads((plugin.state_dir / "attachments.json").read_text())["attachments"]
    assert _addresses(ns, "lo") == ["127.0.0.1/8"] and "eth0" not in \
        subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True).stdout


def test_a_changed_range_keeps_running_pods_and_says_so(plugin, bridge_network, netns):
    """Pods started on the configured subnet keep their addresses and gateway when the
    runtime starts passing the node's range; old and new pods reach each other."""
    base, prefix = _base(bridge_network)
    bridge = bridge_network["bridge"]
    old = []
    for n in range(2):
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, container_id=unique("c", 20), netns=path,
                       args=pod_args(f"old{n}"))
        assert added.ok, added
        old.append((ns, added.json["ips"][0]["address"].split("/")[0]))
    assert _bridge_addresses(bridge) == {f"{base}1/{prefix}"}

    ns, path = netns.create()
    added = plugin("ADD", {**bridge_network, **_ranges(f"{base}128/26")},
                   container_id=unique("c", 20), netns=path, args=pod_args("new"))
    assert added.ok, added
    new_ip = added.json["ips"][0]["address"]
    assert new_ip == f"{base}130/26"
    assert _bridge_addresses(bridge) == {f"{base}1/{prefix}", f"{base}129/26"}
    for old_ns, old_ip in old:
        assert _default_gateway(old_ns) == f"{base}1"
        assert _ping(old_ns, f"{base}1"), "running pods keep their gateway"
        assert _ping(old_ns, new_ip.split("/")[0]), "old pods reach the new one"
        assert _ping(ns, old_ip), "the new pod reaches the old ones"
    log = (plugin.state_dir / "smarter-cni.log").read_text()
    assert (f"pod range is now {base}128/26 with gateway {base}129/26 (runtimeConfig.ipRanges); "
            f"2 running pod(s) keep their addresses behind gateway {base}1/{prefix}") in log

    # a later range change with the old pods gone drops their gateway
    ns2, path2 = netns.create()
    store = json.loads((plugin.state_dir / "attachments.json").read_text())
    for record in list(store["attachments"].values()):
        if record["pod"]["name"].startswith("old"):
            gone = plugin("DEL", bridge_network, container_id=record["container_id"],
                          args=pod_args(record["pod"]["name"]))
            assert gone.ok, gone
    added = plugin("ADD", {**bridge_network, **_ranges(f"{base}192/26")},
                   container_id=unique("c", 20), netns=path2, args=pod_args("newer"))
    assert added.ok, added
    assert _bridge_addresses(bridge) == {f"{base}129/26", f"{base}193/26"}, \
        "the first range's pod still runs; the configured gateway had no pods left"


def test_a_range_outside_the_subnet_moves_the_nat_rules(plugin, bridge_network, netns):
    base, _ = _base(bridge_network)
    outside = f"10.245.{base.split('.')[2]}.0/24"
    routes = subprocess.run(["ip", "-4", "route", "show", "match", outside.split("/")[0]],
                            capture_output=True, text=True, timeout=30).stdout.splitlines()
    if not all(line.startswith("default") for line in routes):
        pytest.skip(f"{outside} is routed on this host")
    ns, path = netns.create()
    added = plugin("ADD", {**bridge_network, **_ranges(outside)},
                   container_id=unique("c", 20), netns=path, args=pod_args("far"))
    assert added.ok, added
    assert added.json["ips"][0]["address"] == outside.replace(".0/24", ".2/24")
    rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"],
                           capture_output=True, text=True, check=True).stdout
    mine = [line for line in rules.splitlines() if f"smarter-cni {bridge_network['name']}" in line]
    assert len(mine) == 1 and f"-s {outside}" in mine[0], mine
    assert _ping(ns, outside.replace(".0/24", ".1"))


# ---------------------------------------------------------------- through libcni

def _conflist(directory: Path, network: dict, capability: bool) -> Path:
    plugin = {k: v for k, v in network.items() if k not in ("cniVersion", "name")}
    if capability:
        plugin["capabilities"] = {"ipRanges": True}
    path = directory / f"{network['name']}-{int(capability)}.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": network["name"],
                                "plugins": [plugin]}))
    return path


@pytest.mark.parametrize("capability", [True, False])
def test_libcni_passes_ranges_only_to_a_plugin_that_declares_them(
        libcni, bridge_network, netns, bin_dir, state_dir, tmp_path, capability):
    base, prefix = _base(bridge_network)
    cache = tmp_path / "cache"
    cache.mkdir()
    conflist = _conflist(tmp_path, bridge_network, capability)
    ns, path = netns.create()
    common = {"cni_path": bin_dir, "cache_dir": cache, "netns": path,
              "container_id": unique("ctr", 32), "args": pod_args("viacni"),
              "env": {"SMARTER_CNI_STATE_DIR": str(state_dir)},
              # kubelet's shape: one range set per family, the node's podCIDR as subnet
              "capability_args": {"ipRanges": [[{"subnet": f"{base}64/26"}]]}}
    added = libcni.run("add", conflist, **common)
    assert added.ok, added
    want = f"{base}66/26" if capability else f"{base}2/{prefix}"
    assert added.json["ips"][0]["address"] == want
    assert _addresses(ns) == [want]
    checked = libcni.run("check", conflist, **common)
    assert checked.ok, checked
    deleted = libcni.run("del", conflist, **common)
    assert deleted.ok, deleted
    store = json.loads((state_dir / "attachments.json").read_text())
    assert store["attachments"] == {}


@pytest.mark.parametrize("cidrs, words", [
    ("10.1.0.0/24", "podCIDRs must be a list"),
    ([7], "podCIDRs must be a list"),
    (["10.1.0.1/24"], "has host bits set"),
])
def test_bad_pod_cidrs_from_a_template_are_code_7(plugin, bridge_network, netns, cidrs, words):
    ns, path = netns.create()
    done = plugin("ADD", {**bridge_network, "podCIDRs": cidrs}, container_id=unique("c", 20),
                  netns=path, args=pod_args("bad"))
    assert done.code == 7 and words in done.json["msg"], done


def test_the_reconciler_keeps_the_range_an_add_set_up(plugin, bridge_network, netns, state_dir,
                                                      monkeypatch):
    """The DNS service's reconciler reads the installed conflist (no ipRanges there): it must
    check the range the last ADD set the network up with, not put the file's gateway back
    (the next ADD would swap it again) and not report the range's gateway as drift."""
    from smarter_cni import reconcile
    from smarter_cni.netconf import parse_netconf

    base, _ = _base(bridge_network)
    ranged = {**bridge_network, **_ranges(f"{base}64/26")}
    ns, path = netns.create()
    assert plugin("ADD", ranged, container_id=unique("c", 20), netns=path, args=pod_args("kept")).ok
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(state_dir))
    file_conf = parse_netconf(bridge_network)
    bridge_before = _bridge_addresses(bridge_network["bridge"])
    assert reconcile.check(file_conf, str(state_dir)) == []
    for _ in range(2):  # two looks: a port seen off the bridge twice would count
        assert reconcile.Reconciler(file_conf, str(state_dir)).tick() == []
    assert _bridge_addresses(bridge_network["bridge"]) == bridge_before
    assert f"{base}65/26" in bridge_before
    assert _ping(ns, f"{base}65")
