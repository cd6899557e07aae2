"""Bridge mode end to end in real network namespaces, driven like a runtime."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.netns import link_exists, run_id
from helpers.plugin import pod_args

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def _ip_json(ns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def _pod_address(ns: str, ifname: str = "eth0") -> str:
    for entry in _ip_json(ns, "-4", "addr", "show", "dev", ifname):
        for info in entry["addr_info"]:
            return f"{info['local']}/{info['prefixlen']}"
    return ""


def _ping(ns: str, address: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", address],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(plugin, bridge_network, netns, version):
    config = dict(bridge_network, cniVersion=version)
    ns, path = netns.create()
    added = plugin("ADD", config, run_id("ctr-a"), path, args=pod_args("web"))
    assert added.ok, added
    result = added.json
    assert result["cniVersion"] == version
    host_if, pod_if = result["interfaces"]
    assert pod_if == {"name": "eth0", "mac": pod_if["mac"], "sandbox": path,
                      **({"mtu": 1500} if version == "1.1.0" else {})}
    assert link_exists(host_if["name"])
    ip = result["ips"][0]
    assert ip["interface"] == 1
    assert ("version" in ip) == (version < "1.0.0")
    assert _pod_address(ns) == ip["address"]
    assert ip["gateway"] == bridge_network["subnet"].replace(".0/24", ".1")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    assert _ping(ns, ip["gateway"])

    if version >= "0.4.0":
        checked = plugin("CHECK", dict(config, prevResult=result), run_id("ctr-a"), path)
        assert checked.ok and checked.stdout == "", checked

    deleted = plugin("DEL", dict(config, prevResult=result), run_id("ctr-a"), path)
    assert deleted.ok and deleted.stdout == "", deleted
    assert not link_exists(host_if["name"])


def test_pods_reach_each_other_the_gateway_and_the_host(plugin, bridge_network, netns):
    pods = []
    for name in ("alpha", "beta", "gamma"):
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, run_id(f"ctr-{name}"), path, args=pod_args(name))
        assert added.ok, added
        pods.append((ns, path, added.json["ips"][0]["address"].split("/")[0]))
    addresses = [p[2] for p in pods]
    assert len(set(addresses)) == 3
    for ns, _, own in pods:
        for other in addresses:
            if other != own:
                assert _ping(ns, other), f"{own} cannot reach {other}"
    # The host end of the network: the bridge's gateway address is the node itself.
    gateway = bridge_network["subnet"].replace(".0/24", ".1")
    host = subprocess.run(["ping", "-c1", "-W2", addresses[0]], capture_output=True)
    assert host.returncode == 0, "the host cannot reach a pod"
    assert _ping(pods[0][0], gateway)


def test_check_reports_what_is_missing(plugin, bridge_network, netns):
    ns, path = netns.create()
    added = plugin("ADD", bridge_network, run_id("ctr-chk"), path)
    assert added.ok, added
    subprocess.run(["ip", "-n", ns, "route", "del", "default"], check=True)
    checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), run_id("ctr-chk"), path)
    assert checked.code == 103 and "route 0.0.0.0/0" in checked.json["msg"], checked
    subprocess.run(["ip", "link", "del", added.json["interfaces"][0]["name"]], check=True)
    checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), run_id("ctr-chk"), path)
    assert checked.code == 103 and "missing" in checked.json["msg"], checked
    assert plugin("DEL", bridge_network, run_id("ctr-chk"), path).ok


def test_del_is_idempotent_and_works_without_netns(plugin, bridge_network, netns):
    ns, path = netns.create()
    added = plugin("ADD", bridge_network, run_id("ctr-idem"), path)
    assert added.ok, added
    host_if = added.json["interfaces"][0]["name"]
    netns.cleanup()  # the sandbox is gone before kubelet's DEL arrives
    assert plugin("DEL", bridge_network, run_id("ctr-idem"), path).ok
    assert plugin("DEL", bridge_network, run_id("ctr-idem"), path).ok
    assert plugin("DEL", bridge_network, run_id("ctr-idem")).ok
    assert plugin("DEL", bridge_network, run_id("never-seen"), "/var/run/netns/none").ok
    assert not link_exists(host_if)
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}


def test_repeated_add_is_refused_and_keeps_the_pod(plugin, bridge_network, netns):
    ns, path = netns.create()
    first = plugin("ADD", bridge_network, run_id("ctr-twice"), path)
    assert first.ok, first
    again = plugin("ADD", bridge_network, run_id("ctr-twice"), path)
    assert again.code == 101 and "DEL" in again.json["msg"], again
    assert _pod_address(ns) == first.json["ips"][0]["address"]
    assert link_exists(first.json["interfaces"][0]["name"])
    other = plugin("ADD", bridge_network, run_id("ctr-other"), path)
    assert other.code == 101 and "already exists" in other.json["msg"], other
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert list(state["attachments"]) == [f"{bridge_network['name']}/{run_id('ctr-twice')}/eth0"]


def test_32_concurrent_adds_and_dels(plugin, bridge_network, netns):
    spaces = [netns.create() for _ in range(32)]

    def add(i: int):
        return plugin("ADD", bridge_network, run_id(f"ctr-{i}"), spaces[i][1], args=pod_args(f"p{i}"))

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(add, range(32)))
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    addresses = [r.json["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 32
    for (ns, _), address in zip(spaces, addresses):
        assert _pod_address(ns) == address
    host_links = [r.json["interfaces"][0]["name"] for r in results]

    def delete(i: int):
        return plugin("DEL", bridge_network, run_id(f"ctr-{i}"), spaces[i][1])

    with ThreadPoolExecutor(32) as pool:
        deleted = list(pool.map(delete, range(32)))
    assert all(d.ok for d in deleted), [d for d in deleted if not d.ok][:3]
    assert not any(link_exists(name) for name in host_links)
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}


def test_ipam_range_and_exhaustion(plugin, bridge_network, netns):
    base = bridge_network["subnet"].rsplit(".", 1)[0]
    config = dict(bridge_network, rangeStart=f"{base}.10", rangeEnd=f"{base}.11")
    (_, p1), (_, p2), (_, p3) = netns.create(), netns.create(), netns.create()
    a = plugin("ADD", config, run_id("ctr-1"), p1)
    b = plugin("ADD", config, run_id("ctr-2"), p2)
    assert a.ok and b.ok, (a, b)
    assert {a.json["ips"][0]["address"], b.json["ips"][0]["address"]} == {
        f"{base}.10/24", f"{base}.11/24"}
    full = plugin("ADD", config, run_id("ctr-3"), p3)
    assert full.code == 100 and "no free address" in full.json["msg"], full
    assert plugin("DEL", config, run_id("ctr-1"), p1).ok
    again = plugin("ADD", config, run_id("ctr-3"), p3)
    assert again.ok and again.json["ips"][0]["address"] == f"{base}.10/24", again


def test_forwarding_and_masquerade_rules_are_made_once(plugin, bridge_network, netns):
    (_, p1), (_, p2) = netns.create(), netns.create()
    assert plugin("ADD", bridge_network, run_id("ctr-1"), p1).ok
    assert plugin("ADD", bridge_network, run_id("ctr-2"), p2).ok
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    tag = f"smarter-cni {bridge_network['name']}"
    assert rules.count(tag) == 3  # FORWARD in, FORWARD out, POSTROUTING jump
    assert f"-s {bridge_network['subnet']}" in rules
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        assert handle.read().strip() == "1"


def test_netns_given_as_a_process_path(plugin, bridge_network, netns):
    """cri-dockerd and podman pass /proc/PID/ns/net rather than a named netns."""
    ns, _ = netns.create()
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        added = plugin("ADD", bridge_network, run_id("ctr-proc"), path)
        assert added.ok, added
        assert _pod_address(ns) == added.json["ips"][0]["address"]
        checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), run_id("ctr-proc"), path)
        assert checked.ok, checked
        assert plugin("DEL", bridge_network, run_id("ctr-proc"), path).ok
    finally:
        holder.kill()
        holder.wait()


def test_add_keeps_an_earlier_plugins_result(plugin, bridge_network, netns):
    _, path = netns.create()
    earlier = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": path}],
               "ips": [], "dns": {}}
    added = plugin("ADD", dict(bridge_network, prevResult=earlier), run_id("ctr-prev"), path)
    assert added.ok, added
    names = [i["name"] for i in added.json["interfaces"]]
    assert names[0] == "lo" and names[2] == "eth0"
    assert added.json["ips"][0]["interface"] == 2


def test_a_changed_subnet_replaces_the_old_rules_and_bridge_address(plugin, bridge_network, netns,
                                                                   state_dir):
    (_, p1), (_, p2) = netns.create(), netns.create()
    assert plugin("ADD", bridge_network, run_id("ctr-1"), p1).ok
    assert plugin("DEL", bridge_network, run_id("ctr-1"), p1).ok
    old = bridge_network["subnet"]
    new = old.replace(".0/24", ".128/25")
    (state_dir / "attachments.json").unlink()  # as after a reboot: /run is empty again
    added = plugin("ADD", dict(bridge_network, subnet=new), run_id("ctr-2"), p2)
    assert added.ok, added
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert f"-s {new}" in rules and f"-s {old}" not in rules
    addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge_network["bridge"]],
                           capture_output=True, text=True).stdout
    assert new.replace(".128/25", ".129/25") in addrs and old.replace(".0/24", ".1/24") not in addrs


@pytest.mark.parametrize("tool", ["netlink", "iproute2"])
def test_both_data_plane_paths_build_the_same_pod(plugin, bridge_network, netns, tool):
    """ADD talks rtnetlink directly; where it cannot (no _ctypes, no setns) it falls back
    to `ip`. Both must give the same pod."""
    extra = {"SMARTER_CNI_USE_IPROUTE2": "1"} if tool == "iproute2" else {}
    pods = []
    for name in ("one", "two"):
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, run_id(f"ctr-{name}"), path, extra=extra)
        assert added.ok, added
        pods.append((ns, path, added.json, run_id(f"ctr-{name}")))
    for ns, path, result, container in pods:
        host_if = result["interfaces"][0]["name"]
        assert _pod_address(ns) == result["ips"][0]["address"]
        (link,) = _ip_json(ns, "link", "show", "eth0")
        assert link["address"] == result["interfaces"][1]["mac"] and "UP" in link["flags"]
        assert link["mtu"] == 1500
        (lo,) = _ip_json(ns, "link", "show", "lo")
        assert "UP" in lo["flags"]
        routes = _ip_json(ns, "-4", "route", "show", "default")
        assert routes[0]["gateway"] == result["ips"][0]["gateway"] and routes[0]["dev"] == "eth0"
        details = json.loads(subprocess.run(["ip", "-j", "-d", "link", "show", host_if],
                                            capture_output=True, text=True).stdout)[0]
        assert details["master"] == bridge_network["bridge"] and "UP" in details["flags"]
        assert details["linkinfo"]["info_slave_data"]["hairpin"] is True
        checked = plugin("CHECK", dict(bridge_network, prevResult=result), container, path,
                         extra=extra)
        assert checked.ok, checked
    assert _ping(pods[0][0], pods[1][2]["ips"][0]["address"].split("/")[0])
    for _, path, result, container in pods:
        assert plugin("DEL", bridge_network, container, path, extra=extra).ok
        assert not link_exists(result["interfaces"][0]["name"])
