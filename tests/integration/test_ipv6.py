"""Dual-stack bridge mode (subnet6) in real namespaces: addresses, routes, reachability,
masquerade to an "upstream" host in a namespace of the test's own, hostile prefixes."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.netns import link_exists, unique
from helpers.plugin import pod_args, teardown_bridge_network

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class _UniqueIds:
    """The plugin runner, with this test's own suffix on every short container ID: host
    veth names derive from the ID, and other suites on this machine (run at the same time)
    use the same short IDs ("ctr-1"), so a shared ID would let their DEL take our veth."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.suffix = unique("-", 10)

    def __getattr__(self, name: str):
        return getattr(self.runner, name)

    def cid(self, container_id: str) -> str:
        return container_id + self.suffix if container_id and len(container_id) < 40 \
            else container_id  # a Docker sandbox's own 64-hex ID stays as it is

    def __call__(self, command, config, container_id="", *args, **kwargs):
        return self.runner(command, config, self.cid(container_id), *args, **kwargs)


@pytest.fixture
def plugin(plugin):
    return _UniqueIds(plugin)


def _ula() -> str:
    """A random unique local /64 (fd00::/8): never routed off the machine."""
    return f"fd{random.randint(0, 255):02x}:{random.randint(1, 0xFFFF):x}:" \
        f"{random.randint(1, 0xFFFF):x}::/64"


@pytest.fixture
def dual_network(bridge_network, state_dir):
    config = dict(bridge_network, subnet6=_ula())
    try:
        yield config
    finally:
        teardown_bridge_network(config, state_dir)


def _ip_json(ns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def _global6(ns: str, ifname: str = "eth0") -> list[str]:
    return [f"{i['local']}/{i['prefixlen']}" for e in _ip_json(ns, "-6", "addr", "show", "dev", ifname)
            for i in e["addr_info"] if i.get("scope") == "global"]


def _ping6(ns: str, address: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-c1", "-W2", address],
                          capture_output=True)
    return done.returncode == 0


def _gateway6(config: dict) -> str:
    return config["subnet6"].split("/")[0] + "1"


@pytest.mark.parametrize("version", VERSIONS)
def test_dual_stack_add_check_del_in_every_version(plugin, dual_network, netns, version):
    config = dict(dual_network, cniVersion=version)
    ns, path = netns.create()
    added = plugin("ADD", config, "ctr-a", path, args=pod_args("web"))
    assert added.ok, added
    result = added.json
    ip4, ip6 = result["ips"]
    assert ip4["interface"] == 1 and ip6["interface"] == 1
    if version < "1.0.0":
        assert (ip4["version"], ip6["version"]) == ("4", "6")
    assert ip6["address"] == config["subnet6"].split("/")[0] + "2/64"
    assert ip6["gateway"] == _gateway6(config)
    assert {"dst": "::/0", "gw": _gateway6(config)} in result["routes"]
    assert _global6(ns) == [ip6["address"]]
    # no duplicate address detection wait: the address is usable (not tentative) at once
    flags = [i for e in _ip_json(ns, "-6", "addr", "show", "dev", "eth0") for i in e["addr_info"]
             if i.get("scope") == "global"][0]
    assert not flags.get("tentative"), flags
    routes = _ip_json(ns, "-6", "route", "show", "default")
    assert routes and routes[0]["gateway"] == _gateway6(config)
    assert _ping6(ns, _gateway6(config))

    if version >= "0.4.0":
        checked = plugin("CHECK", dict(config, prevResult=result), "ctr-a", path)
        assert checked.ok and checked.stdout == "", checked
        subprocess.run(["ip", "-n", ns, "-6", "route", "del", "default"], check=True)
        checked = plugin("CHECK", dict(config, prevResult=result), "ctr-a", path)
        assert checked.code == 103 and "route ::/0" in checked.json["msg"], checked

    deleted = plugin("DEL", dict(config, prevResult=result), "ctr-a", path)
    assert deleted.ok, deleted
    assert not link_exists(result["interfaces"][0]["name"])
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}


@pytest.mark.parametrize("iproute2", [False, True], ids=["netlink", "iproute2"])
def test_pods_ping6_each_other_and_the_gateway(plugin, dual_network, netns, iproute2):
    extra = {"SMARTER_CNI_USE_IPROUTE2": "1"} if iproute2 else None
    pods = []
    for name in ("alpha", "beta"):
        ns, path = netns.create()
        added = plugin("ADD", dual_network, f"ctr-{name}", path, args=pod_args(name), extra=extra)
        assert added.ok, added
        pods.append((ns, added.json["ips"][1]["address"].split("/")[0]))
    assert pods[0][1] != pods[1][1]
    assert _ping6(pods[0][0], pods[1][1]) and _ping6(pods[1][0], pods[0][1])
    assert _ping6(pods[0][0], _gateway6(dual_network))
    host = subprocess.run(["ping", "-6", "-c1", "-W2", pods[0][1]], capture_output=True)
    assert host.returncode == 0, "the host cannot reach a pod over IPv6"


@pytest.fixture
def upstream(netns):
    """An "upstream" host at 2001:db8:X::2 in a netns of ours, linked to the host by a veth
    (host side 2001:db8:X::1). It has no route back to the pods' prefix: only a
    masqueraded packet can get an answer."""
    ns, _ = netns.create("up")
    host_end, far_end = unique("u6h"), unique("u6f")
    prefix = f"2001:db8:{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}"
    subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", far_end,
                    "netns", ns], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{prefix}::1/64", "dev", host_end, "nodad"], check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{prefix}::2/64", "dev", far_end, "nodad"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", far_end, "up"], check=True)
        yield ns, f"{prefix}::2", host_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)


def test_egress_is_masqueraded_to_an_upstream_host(plugin, dual_network, netns, upstream):
    up_ns, up_address, host_end = upstream
    # the upstream address is reached through the test's own veth, never the default route
    route = subprocess.run(["ip", "-6", "route", "get", up_address], capture_output=True, text=True)
    assert f"dev {host_end}" in route.stdout, route.stdout
    ns, path = netns.create()
    added = plugin("ADD", dual_network, "ctr-egress", path, args=pod_args("egress"))
    assert added.ok, added
    assert _ping6(ns, up_address)
    # the masquerade, not some route back, made the answer arrive
    assert _ip_json(up_ns, "-6", "route", "show", "default") == []
    neighbours = _ip_json(up_ns, "-6", "neigh", "show")
    assert all(not n["dst"].startswith(dual_network["subnet6"].split("::")[0]) for n in neighbours)
    nat = subprocess.run(["ip6tables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert f"-s {dual_network['subnet6']}" in nat


@pytest.mark.parametrize("subnet6, words", [
    ("fd42::1/64", "host bits"),
    ("fd42::/128", "/128"),
    ("fd42::/130", "not an IPv6 prefix"),
    ("fe80::/64", "link-local"),
    ("ff02::/64", "multicast"),
    ("::ffff:0:0/96", "::/8"),
    ("10.1.0.0/16", "not an IPv6"),
    ("fd42:::/64", "not an IPv6"),
    ("fd42::/32", "/32"),
    (64, "must be a str"),
])
def test_hostile_subnet6_is_refused_and_changes_nothing(plugin, bridge_network, netns,
                                                       subnet6, words):
    ns, path = netns.create()
    config = dict(bridge_network, subnet6=subnet6)
    added = plugin("ADD", config, "ctr-bad", path)
    assert added.code == 7 and words in added.json["msg"], added
    assert "Traceback" not in added.stderr
    assert not link_exists(bridge_network["bridge"])
    assert not (plugin.state_dir / "attachments.json").exists() or \
        json.loads((plugin.state_dir / "attachments.json").read_text())["attachments"] == {}


def test_subnet6_overlapping_a_host_route_is_refused(plugin, bridge_network, netns, upstream):
    _, up_address, host_end = upstream
    overlapping = up_address.rsplit("::", 1)[0] + "::/64"
    ns, path = netns.create()
    added = plugin("ADD", dict(bridge_network, subnet6=overlapping), "ctr-ovl", path)
    assert added.code == 7 and "overlaps" in added.json["msg"] and host_end in added.json["msg"], added
    assert not link_exists(bridge_network["bridge"])


def test_subnet6_in_docker_mode_is_a_clear_error(plugin, netns):
    ns, path = netns.create()
    config = {"cniVersion": "1.0.0", "name": unique("dk"), "type": "smarter-cni",
              "mode": "docker", "network": unique("n"), "subnet6": "fd42::/64"}
    added = plugin("ADD", config, "ctr-dk", path)
    assert added.code == 7 and "docker network create --ipv6" in added.json["msg"], added


def test_dual_stack_storm_gives_unique_addresses_and_leaks_nothing(plugin, dual_network, netns):
    spaces = [netns.create() for _ in range(16)]

    def add(i: int):
        return plugin("ADD", dual_network, f"ctr-{i}", spaces[i][1], args=pod_args(f"p{i}"))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(add, range(16)))
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    v6 = [r.json["ips"][1]["address"] for r in results]
    assert len(set(v6)) == 16
    for (ns, _), address in zip(spaces, v6):
        assert _global6(ns) == [address]

    def delete(i: int):
        return plugin("DEL", dual_network, f"ctr-{i}", spaces[i][1])

    with ThreadPoolExecutor(16) as pool:
        assert all(r.ok for r in pool.map(delete, range(16)))
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}
    assert not [p for p in __import__("os").listdir(f"/sys/class/net/{dual_network['bridge']}/brif")]


def test_network_look_and_add_restore_the_ipv6_pieces(plugin, dual_network, netns, state_dir):
    from helpers.plugin import state_dir_env
    from smarter_cni.dataplane.bridge_network import network_problems
    from smarter_cni.netconf import parse_netconf

    ns, path = netns.create()
    assert plugin("ADD", dual_network, "ctr-1", path).ok
    conf = parse_netconf(dual_network)
    with state_dir_env(state_dir):
        assert network_problems(conf) == []
        gateway = f"{_gateway6(dual_network)}/64"
        subprocess.run(["ip", "addr", "del", gateway, "dev", dual_network["bridge"]], check=True)
        chain = subprocess.run(["ip6tables", "-S", "FORWARD"], capture_output=True, text=True)
        for line in chain.stdout.splitlines():
            if dual_network["name"] in line:
                subprocess.run(["ip6tables", "-D", "FORWARD", *shlex.split(line)[2:]], check=True)
        problems = network_problems(conf)
    assert any("IPv6 address" in p for p in problems), problems
    assert any("IPv6 FORWARD" in p for p in problems), problems
    ns2, path2 = netns.create()
    assert plugin("ADD", dual_network, "ctr-2", path2).ok
    with state_dir_env(state_dir):
        assert network_problems(conf) == []
    assert _ping6(ns2, _gateway6(dual_network))
    repairs = json.loads((state_dir / "repairs.json").read_text())
    assert any("IPv6" in r["what"] for r in repairs)


def test_ipam_delegated_to_host_local_with_two_ranges(plugin, dual_network, netns, tmp_path):
    data_dir = tmp_path / "host-local"
    config = dict(dual_network, ipam={
        "type": "host-local", "dataDir": str(data_dir),
        "ranges": [[{"subnet": dual_network["subnet"]}], [{"subnet": dual_network["subnet6"]}]]})
    ns, path = netns.create()
    added = plugin("ADD", config, "ctr-hl", path, args=pod_args("hl"))
    assert added.ok, added
    ip4, ip6 = added.json["ips"]
    assert ":" in ip6["address"] and ip6["interface"] == 1
    assert _global6(ns) == [ip6["address"]]
    assert _ping6(ns, _gateway6(dual_network))
    reserved = sorted(p.name for p in (data_dir / dual_network["name"]).iterdir()
                      if p.name[0].isdigit() or p.name[0] == "f")
    assert ip6["address"].split("/")[0] in reserved
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert list(state["attachments"].values())[0]["ips"] == [ip4["address"], ip6["address"]]
    assert plugin("DEL", config, "ctr-hl", path).ok
    assert not [p for p in (data_dir / dual_network["name"]).iterdir() if ":" in p.name]
    # a delegate that hands out no IPv6 address on a dual-stack network: a clear error, no leak
    one_range = dict(config, ipam=dict(config["ipam"], ranges=[[{"subnet": dual_network["subnet"]}]]))
    failed = plugin("ADD", one_range, "ctr-hl2", path)
    assert "returned no IPv6 address" in (failed.json or {}).get("msg", ""), failed
    assert not failed.ok
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}


def test_sigkill_mid_add_leaks_nothing(plugin, dual_network, netns):
    import os
    import signal
    import time

    rng = random.Random()
    ns, path = netns.create()
    env_add = None
    for i in range(10):
        env_add = plugin.env("ADD", plugin.cid(f"ctr-k{i}"), path, args=pod_args(f"k{i}"))
        proc = subprocess.Popen([str(plugin.bin_dir / "smarter-cni")], env=env_add,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        proc.stdin.write(json.dumps(dual_network).encode())
        proc.stdin.close()
        time.sleep(rng.uniform(0.0, 0.12))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        cleaned = plugin("DEL", dual_network, f"ctr-k{i}", path)
        assert cleaned.ok, cleaned
        assert not _global6(ns) if link_exists_in(ns, "eth0") else True
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}
    assert not link_exists_in(ns, "eth0")
    assert not __import__("os").listdir(f"/sys/class/net/{dual_network['bridge']}/brif")
    added = plugin("ADD", dual_network, "ctr-after", path)
    assert added.ok, added
    assert _ping6(ns, _gateway6(dual_network))


def link_exists_in(ns: str, ifname: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "show", ifname],
                          capture_output=True).returncode == 0


LISTENER6 = r"""
import socket, sys
server = socket.socket(socket.AF_INET6)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[1])))
server.listen(4)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(("%s %s\n" % (sys.argv[2], peer[0])).encode())
    conn.close()
"""

FETCH6 = r"""
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(conn.recv(200).decode().strip())
"""


@pytest.fixture
def ip6_portmap_chains_restored():
    """portmap leaves its top-level ip6tables chains behind; remove them if this test made them."""
    existed = subprocess.run(["ip6tables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"],
                             capture_output=True).returncode == 0
    yield
    if existed:
        return
    nat = subprocess.run(["ip6tables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    for line in nat.splitlines():
        if line.startswith("-A ") and "CNI-HOSTPORT" in line and not line.split()[1].startswith("CNI-"):
            subprocess.run(["ip6tables", "-t", "nat", "-D", *shlex.split(line)[1:]],
                           capture_output=True)
    for chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"):
        subprocess.run(["ip6tables", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["ip6tables", "-t", "nat", "-X", chain], capture_output=True)


def test_portmap_ipv6_host_port_after_the_plugin(plugin, dual_network, netns, upstream,
                                                 ip6_portmap_chains_restored):
    import sys
    import uuid

    up_ns, up_address, _ = upstream
    host_address = up_address[:-1] + "1"
    ns, path = netns.create()
    added = plugin("ADD", dual_network, "ctr-pm", path, args=pod_args("pm"))
    assert added.ok, added
    port = random.randint(20000, 45000)
    portmap = dict(dual_network, type="portmap", prevResult=added.json, runtimeConfig={
        "portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]})
    mapped = plugin("ADD", portmap, "ctr-pm", path, plugin="portmap")
    assert mapped.ok, mapped
    token = uuid.uuid4().hex[:12]
    listener = subprocess.Popen(["nsenter", f"--net={path}", sys.executable, "-c", LISTENER6,
                                 "8080", token], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        # from the "upstream" host to the node's IPv6 address on that link, port-mapped
        got = subprocess.run(["ip", "netns", "exec", up_ns, sys.executable, "-c", FETCH6,
                              host_address, str(port)], capture_output=True, text=True, timeout=20)
        assert got.stdout.startswith(token), got
        # our CHECK with the chain's final result (portmap's) as prevResult, as a runtime
        # does. portmap 1.1.1's own CHECK is not run: on any dual-stack pod it looks for the
        # IPv4 DNAT rule in its ip6tables chain and fails (a portmap bug, seen here).
        checked = plugin("CHECK", dict(dual_network, prevResult=mapped.json), "ctr-pm", path)
        assert checked.ok, checked
    finally:
        listener.terminate()
        listener.wait(timeout=10)
        plugin("DEL", portmap, "ctr-pm", path, plugin="portmap")
        plugin("DEL", dual_network, "ctr-pm", path)
    nat = subprocess.run(["ip6tables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert plugin.cid("ctr-pm") not in nat  # this run's ID: another run's "ctr-pm-..." may be there


# ---------------------------------------------------------------- names (AAAA, PTR, IPv6 listener)

def _free_link_local() -> str:
    for _ in range(50):
        address = f"169.254.{random.randint(100, 250)}.{random.randint(2, 254)}"
        if not subprocess.run(["ip", "-o", "addr", "show", "to", address],
                              capture_output=True, text=True).stdout.strip():
            return address
    pytest.skip("no free link-local address")


@pytest.fixture
def dns6_service(dual_network, plugin, tmp_path):
    """The node DNS on a unique 169.254.x.y and a unique ULA /128, on a unique dummy."""
    from test_dns_helpers import DnsService

    address = _free_link_local()
    address6 = _ula().split("/")[0] + "53"
    interface = unique("sd6")
    dual_network.update(dnsAddress=address, dnsAddress6=address6)  # the pods' config too
    conf = tmp_path / "dns6.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": dual_network["name"],
                                "plugins": [dual_network]}))
    service = DnsService(tmp_path, address, plugin.state_dir, conf,
                         extra=["--interface", interface])
    try:
        service.start()
        yield address, address6
    finally:
        service.stop()
        subprocess.run(["ip", "link", "del", interface], capture_output=True)


def test_aaaa_and_ptr_from_pods_and_the_host_over_both_families(plugin, dual_network, netns,
                                                                dns6_service, upstream):
    from test_dns_helpers import dig

    address, address6 = dns6_service
    shown = subprocess.run(["ip", "-6", "-o", "addr", "show", "to", address6],
                           capture_output=True, text=True).stdout
    assert address6 in shown  # the service put its IPv6 address on the node
    pods = {}
    for name, container in (("alpha", "ctr-a"), ("beta", "ctr-b1"), ("beta", "ctr-b2")):
        ns, path = netns.create()
        added = plugin("ADD", dual_network, container, path, args=pod_args(name))
        assert added.ok, added
        assert address6 in added.json["dns"]["nameservers"]
        pods[container] = (ns, added.json["ips"][0]["address"].split("/")[0],
                           added.json["ips"][1]["address"].split("/")[0])
    alpha_ns = pods["ctr-a"][0]
    betas6 = sorted(pods[c][2] for c in ("ctr-b1", "ctr-b2"))
    # the pod reaches the IPv6 DNS address through its IPv6 default route (the test's bridge)
    route = subprocess.run(["ip", "-n", alpha_ns, "-6", "route", "get", address6],
                           capture_output=True, text=True).stdout
    assert "dev eth0" in route, route
    for server in (address, address6):
        for name in ("beta", "beta.default", "beta.default.svc.cluster.local"):
            for transport in ("+notcp", "+tcp"):
                answer = dig(server, name, "AAAA", transport, netns=alpha_ns)
                assert answer.values("AAAA") == betas6, (server, name, transport, answer)
        assert len(dig(server, "beta", "A", netns=alpha_ns).values("A")) == 2
    # ANY carries both families; the host asks too
    both = dig(address6, "alpha.default.svc.cluster.local", "ANY")
    assert both.values("A") == [pods["ctr-a"][1]] and both.values("AAAA") == [pods["ctr-a"][2]]
    assert dig(address, "alpha", "AAAA").values("AAAA") == [pods["ctr-a"][2]]
    ptr = dig(address6, "-x", pods["ctr-a"][2], netns=pods["ctr-b1"][0])
    assert ptr.values("PTR") == ["alpha.default.svc.cluster.local"], ptr
    assert dig(address6, "nobody.default.svc.cluster.local", "AAAA").status == "NXDOMAIN"
    # a deleted pod's AAAA is gone the moment DEL returns
    assert plugin("DEL", dual_network, "ctr-b2", "").ok
    assert dig(address6, "beta", "AAAA", netns=alpha_ns).values("AAAA") == [pods["ctr-b1"][2]]
    # an IPv6 source that is neither a pod nor the node is refused
    up_ns, up_address, host_end = upstream
    subprocess.run(["ip", "-n", up_ns, "-6", "route", "add", f"{address6}/128",
                    "via", up_address[:-1] + "1"], check=True)
    refused = dig(address6, "alpha.default.svc.cluster.local", "AAAA", netns=up_ns)
    assert refused.status == "REFUSED", refused


# ---------------------------------------------------------------- IPv6-only pods

@pytest.fixture
def v6_only_network(bridge_network, state_dir):
    config = dict(bridge_network, subnet="", subnet6=_ula())
    try:
        yield config
    finally:
        teardown_bridge_network(config, state_dir)


@pytest.mark.parametrize("iproute2", [False, True], ids=["netlink", "iproute2"])
def test_ipv6_only_pods(plugin, v6_only_network, netns, iproute2):
    extra = {"SMARTER_CNI_USE_IPROUTE2": "1"} if iproute2 else None
    pods = []
    for name in ("one", "two"):
        ns, path = netns.create()
        added = plugin("ADD", v6_only_network, f"ctr-{name}", path, args=pod_args(name),
                       extra=extra)
        assert added.ok, added
        result = added.json
        assert [ip["address"].count(":") > 0 for ip in result["ips"]] == [True]
        assert result["routes"] == [{"dst": "::/0", "gw": _gateway6(v6_only_network)}]
        assert result["dns"]["nameservers"] == ["fd00:169:254::2"]
        assert not [i for e in _ip_json(ns, "-4", "addr", "show", "dev", "eth0")
                    for i in e.get("addr_info", [])]
        assert _global6(ns) == [result["ips"][0]["address"]]
        pods.append((ns, path, result))
    assert _ping6(pods[0][0], pods[1][2]["ips"][0]["address"].split("/")[0])
    assert _ping6(pods[1][0], _gateway6(v6_only_network))
    bridge4 = json.loads(subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", v6_only_network["bridge"]],
        capture_output=True, text=True).stdout or "[]")
    assert not [i for e in bridge4 for i in e.get("addr_info", [])], "an IPv4 address on the bridge"
    ns, path, result = pods[0]
    checked = plugin("CHECK", dict(v6_only_network, prevResult=result), "ctr-one", path)
    assert checked.ok, checked
    status = plugin("STATUS", dict(v6_only_network, cniVersion="1.1.0"))
    assert status.ok, status
    for name, (_, path, _) in zip(("one", "two"), pods):
        assert plugin("DEL", v6_only_network, f"ctr-{name}", path).ok
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}


def test_ipv6_only_egress_is_masqueraded(plugin, v6_only_network, netns, upstream):
    _, up_address, _ = upstream
    ns, path = netns.create()
    added = plugin("ADD", v6_only_network, "ctr-v6eg", path, args=pod_args("v6eg"))
    assert added.ok, added
    assert _ping6(ns, up_address)
    nat4 = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert v6_only_network["name"] not in nat4  # no IPv4 rules for an IPv6-only network


@pytest.mark.parametrize("extra, words", [
    ({"subnet": ""}, "subnet6 is not set"),
    ({"subnet": "", "subnet6": "fd42::/64", "gateway": "10.0.0.1"}, "gateway is an IPv4 setting"),
    ({"subnet": "", "subnet6": "fd42::/64", "mode": "docker"}, "docker mode"),
])
def test_ipv6_only_config_errors(plugin, bridge_network, netns, extra, words):
    ns, path = netns.create()
    added = plugin("ADD", dict(bridge_network, **extra), "ctr-v6bad", path)
    assert added.code == 7 and words in added.json["msg"], added
    assert not link_exists(bridge_network["bridge"])


def test_the_reconciler_restores_the_ipv6_pieces(plugin, dual_network, netns, dns6_service,
                                                 state_dir):
    import time

    ns, path = netns.create()
    assert plugin("ADD", dual_network, "ctr-rec", path, args=pod_args("rec")).ok
    gateway = f"{_gateway6(dual_network)}/64"
    subprocess.run(["ip", "addr", "del", gateway, "dev", dual_network["bridge"]], check=True)
    nat = subprocess.run(["ip6tables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                         text=True).stdout
    for line in nat.splitlines():
        if dual_network["name"] in line:
            subprocess.run(["ip6tables", "-t", "nat", "-D", *shlex.split(line)[1:]], check=True)
    deadline = time.monotonic() + 15
    repaired = []
    while time.monotonic() < deadline:
        path_repairs = state_dir / "repairs.json"
        if path_repairs.exists():
            repaired = [r["what"] for r in json.loads(path_repairs.read_text())
                        if r["by"] == "reconciler"]
            if any("IPv6 address" in w for w in repaired) and \
                    any("ip6tables nat" in w for w in repaired):
                break
        time.sleep(0.2)
    assert any("IPv6 address" in w for w in repaired), repaired
    assert any("ip6tables nat" in w for w in repaired), repaired
    assert _ping6(ns, _gateway6(dual_network))


def _free_port6() -> int:
    import socket

    for _ in range(100):
        port = random.randint(20000, 60000)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET6, kind) as sock:
                    sock.bind(("::1", port))
            return port
        except OSError:
            continue
    pytest.skip("no free port on ::1")


def test_a_pod_asks_the_ipv6_listener_and_it_forwards_to_an_ipv6_upstream(
        plugin, dual_network, netns, tmp_path):
    """Upstream: a real dnsmasq on [::1]; the node DNS on IPv6 and IPv4 addresses of ours."""
    from test_dns_helpers import Dnsmasq, DnsService, dig

    upstream = Dnsmasq(tmp_path, {"outside.example": "192.0.2.7"}, address="::1",
                       port=_free_port6(), extra=["--host-record=outside6.example,2001:db8::7"])
    upstream.start()
    address, address6, interface = _free_link_local(), _ula().split("/")[0] + "53", unique("sd6")
    dual_network.update(dnsAddress=address, dnsAddress6=address6)
    conf = tmp_path / "fwd6.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": dual_network["name"],
                                "plugins": [dual_network]}))
    service = DnsService(tmp_path, address, plugin.state_dir, conf,
                         upstreams=[f"[::1]:{upstream.port}"], extra=["--interface", interface])
    try:
        service.start()
        ns, path = netns.create()
        assert plugin("ADD", dual_network, "ctr-fwd", path, args=pod_args("fwd")).ok
        got = dig(address6, "outside6.example", "AAAA", netns=ns)
        assert got.values("AAAA") == ["2001:db8::7"], got
        assert dig(address6, "outside.example", "+tcp", netns=ns).values("A") == ["192.0.2.7"]
    finally:
        service.stop()
        upstream.stop()
        subprocess.run(["ip", "link", "del", interface], capture_output=True)


class _PrivateNode:
    """An Install (test_install.py: private prefix, dirs and names) with a random ULA
    subnet6 and IPv6 DNS address, and `run` for this checkout's CLI; `remove()` takes all
    of it away, whatever state the test left."""

    def __init__(self, tmp_path, reconcile_interval: str = "") -> None:
        from test_install import Install

        self.inst = Install(tmp_path)
        if reconcile_interval:
            self.inst.env["SMARTER_CNI_RECONCILE_INTERVAL"] = reconcile_interval
        self.subnet6 = _ula()
        self.dns6 = _ula().split("/")[0] + "53"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        import sys

        return subprocess.run([sys.executable, "-m", "smarter_cni", *args], env=self.inst.env,
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)

    def remove(self) -> None:
        inst = self.inst
        if (inst.prefix / "install.json").exists():
            self.run("uninstall", "--force")
        inst.cleanup()
        teardown_bridge_network({"name": inst.network, "type": "smarter-cni",
                                 "bridge": inst.bridge, "subnet": inst.subnet,
                                 "subnet6": self.subnet6}, inst.state_dir)
        for device in (inst.dns_interface, "lo"):
            subprocess.run(["ip", "addr", "del", f"{self.dns6}/128", "dev", device],
                           capture_output=True)


def test_install_with_subnet6_then_uninstall(tmp_path):
    """`smarter-cni install --subnet6 --dns-ip6` (this checkout's, not install.sh's venv):
    dual-stack network, the node DNS on both addresses, self-test, status, uninstall."""
    import time

    from test_dns_helpers import dig

    node = _PrivateNode(tmp_path)
    inst, run, subnet6, dns6 = node.inst, node.run, node.subnet6, node.dns6

    try:
        done = run("install", *inst.options, "--subnet6", subnet6, "--dns-ip6", dns6)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"--cluster-dns={inst.dns_ip},{dns6}" in done.stdout
        plugin_conf = inst.plugin_config()
        assert (plugin_conf["subnet6"], plugin_conf["dnsAddress6"]) == (subnet6, dns6)
        bridge6 = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", inst.bridge],
                                 capture_output=True, text=True).stdout
        assert subnet6.split("/")[0] + "1/64" in bridge6
        assert dig(dns6, "cluster.local", "SOA").status == "NOERROR"
        status = run("status", "--json")
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["subnet6"] == subnet6, status.stdout
        assert data["dns6"]["answering"] is True, data
        # the IPv6 listener's address gone: the installed service's reconciler puts it back
        # (test_heal_faults.py measures that in a node of its own), and status shows the repair
        where = subprocess.run(["ip", "-6", "-o", "addr", "show", "to", dns6],
                               capture_output=True, text=True).stdout.split()[1]
        subprocess.run(["ip", "addr", "del", f"{dns6}/128", "dev", where], check=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not subprocess.run(
                ["ip", "-6", "-o", "addr", "show", "to", dns6], capture_output=True,
                text=True).stdout.strip():
            time.sleep(0.2)
        healed = run("status", "--json")
        data = json.loads(healed.stdout)
        assert healed.returncode == 0 and data["dns6"]["answering"] is True, healed.stdout
        assert any(r["what"].startswith(f"DNS address {dns6} was missing")
                   for r in data["repairs"]), data["repairs"]
        gone = run("uninstall", "--force")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not link_exists(inst.bridge)
        assert not subprocess.run(["ip", "-6", "-o", "addr", "show", "to", dns6],
                                  capture_output=True, text=True).stdout.strip()
        rules6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
        assert inst.network not in rules6 and subnet6 not in rules6
    finally:
        node.remove()


def _ipv4_free_options(inst) -> list[str]:
    """The test install's private options without its IPv4 ones (--subnet, --dns-ip)."""
    options, skip = [], False
    for word in inst.options:
        if skip:
            skip = False
        elif word in ("--subnet", "--dns-ip"):
            skip = True
        else:
            options.append(word)
    return options


def _ipv4_addresses(device: str) -> list[str]:
    if not link_exists(device):
        return []
    return [f"{i['local']}/{i['prefixlen']}" for e in json.loads(subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", device], capture_output=True, text=True,
        check=True).stdout or "[]") for i in e.get("addr_info", [])]


def _dns_service_sockets(supervisor: int) -> list[str]:
    """Local addresses of the port-53 sockets held by the DNS service under `supervisor`."""
    children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True,
                              text=True).stdout.split()
    assert children, "the supervisor runs no DNS service"
    lines = subprocess.run(["ss", "-H", "-lnup", "-t", "sport = :53"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    return sorted({line.split()[4] for line in lines
                   if any(f"pid={pid}," in line for pid in children)})


def test_install_ipv6_only_then_uninstall(tmp_path, netns):
    """`smarter-cni install --ipv6-only --subnet6 --dns-ip6` in private locations: no IPv4
    anywhere (config, bridge, DNS address, listeners), the self-test passes over IPv6, two
    pods of ours find each other's AAAA with dig against the IPv6 DNS address and ping over
    IPv6, status reads right, and uninstall leaves nothing."""

    from test_dns_helpers import dig
    from test_install import Added

    node = _PrivateNode(tmp_path)
    inst, run, subnet6, dns6 = node.inst, node.run, node.subnet6, node.dns6

    def addresses6(address: str) -> str:
        return subprocess.run(["ip", "-6", "-o", "addr", "show", "to", address],
                              capture_output=True, text=True).stdout.strip()

    pods = []
    try:
        done = run("install", *_ipv4_free_options(inst), "--ipv6-only", "--subnet6", subnet6,
                   "--dns-ip6", dns6)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "IPv6 only" in out and "Traceback" not in out
        assert "self-test passed" in out and "FAILED" not in out, out
        assert "Checking ping and names between the pods ... ok: 8 checks" in out, out
        assert f"--cluster-dns={dns6} " in out and "169.254" not in out, out
        plugin_conf = inst.plugin_config()
        assert plugin_conf["subnet"] == "" and plugin_conf["subnet6"] == subnet6
        assert plugin_conf["dnsAddress6"] == dns6
        assert "dnsAddress" not in plugin_conf and "gateway" not in plugin_conf
        record = json.loads((inst.prefix / "install.json").read_text())
        assert record["dns_address"] == dns6 and record["options"]["ipv6_only"] is True
        # no IPv4 on the bridge, on the DNS interface, or in the DNS service's listeners
        bridge6 = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", inst.bridge],
                                 capture_output=True, text=True, check=True).stdout
        assert subnet6.split("/")[0] + "1/64" in bridge6
        assert _ipv4_addresses(inst.bridge) == [], "an IPv4 address on the bridge"
        assert _ipv4_addresses(inst.dns_interface) == []
        device = addresses6(dns6).split()[1]
        assert device in (inst.dns_interface, "lo") and record["dns_address_device"] == device
        sockets = _dns_service_sockets(inst.supervisor_pid())
        assert sockets == [f"[{dns6}]:53"], sockets

        # the self-test as a command: both pods IPv6 only, AAAA answers, ping over IPv6
        selftest = run("selftest", "--json")
        report = json.loads(selftest.stdout)
        assert selftest.returncode == 0 and report["passed"] is True, selftest.stdout
        for pod in report["pods"]:
            assert pod["address"].startswith(subnet6.split("/")[0]), report
            assert {c["check"] for c in pod["checks"]} == {"ping", "resolve"}
            assert all(c["ok"] and ":" in c["detail"] for c in pod["checks"]
                       if c["check"] == "resolve"), pod["checks"]

        # two pods through the installed plugin: dig asks the IPv6 DNS address for AAAA
        pods = [Added(inst, netns, "alpha", "alpha-0"), Added(inst, netns, "beta")]
        alpha, beta = pods
        assert [":" in ip["address"] for ip in alpha.result["ips"]] == [True]
        assert alpha.result["dns"]["nameservers"] == [dns6]
        for pod, peer, name in ((alpha, beta, "beta"), (beta, alpha, "alpha-0"),
                                (beta, alpha, "alpha.edge.svc.cluster.local")):
            got = dig(dns6, name, "AAAA", netns=pod.ns_name)
            assert got.status == "NOERROR" and got.values("AAAA") == [peer.address], got.stdout
            assert dig(dns6, name, "A", netns=pod.ns_name).values("A") == []
            ping = netns.exec(pod.ns_name, "ping", "-6", "-c1", "-W2", peer.address, check=False)
            assert ping.returncode == 0, ping

        status = run("status", "--json")
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["ok"] is True, status.stdout
        assert data["families"] == ["ipv6"] and data["subnet6"] == subnet6
        assert "subnet" not in data and "gateway" not in data and "dns_address" not in data
        assert data["dns"]["address"] == dns6 and data["dns"]["answering"] is True, data
        assert data["pool"]["used"] == 2 and "dns6" not in data
        assert data["dns"]["metrics"]["queries"] >= 1, data["dns"]  # metrics on [dns6]:9153
        from smarter_cni.dns.metrics import fetch

        ready = fetch(dns6, 9153, "/readyz")  # its own probe query goes to [dns6]:53
        assert ready[0] == 200, ready
        human = run("status")
        assert human.returncode == 0, human.stdout + human.stderr
        network = [line for line in human.stdout.splitlines() if line.startswith("network ")]
        assert network == [f"network   {inst.network}  {subnet6} via "
                           f"{subnet6.split('/')[0]}1  (IPv6 only)"], human.stdout
        assert f"[{dns6}]:53 answering" in human.stdout and "169.254" not in human.stdout
        for pod in pods:
            pod.delete()
        pods = []

        gone = run("uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not link_exists(inst.bridge) and not link_exists(inst.dns_interface)
        assert not addresses6(dns6), "the IPv6 DNS address is still on the node"
        assert not (inst.prefix / "install.json").exists() and not inst.conflist_path.exists()
        assert not inst.bin_dir.exists() or not list(inst.bin_dir.iterdir())
        assert not inst.state_dir.exists() or not list(inst.state_dir.iterdir())
        rules6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
        assert inst.bridge not in rules6 and subnet6 not in rules6
        assert not _is_supervisor_left(inst)
    finally:
        for pod in pods:
            pod.call("DEL")
        node.remove()


def test_reinstalling_an_ipv4_node_ipv6_only_leaves_no_ipv4(tmp_path):
    """Install (IPv4), then install --ipv6-only over it with the same names: the bridge's
    IPv4 gateway, the IPv4 rules and the IPv4 DNS address go; the IPv6 DNS answers."""

    from test_dns_helpers import dig
    from test_install import dns_address_present

    # a busy earlier reconciler
    node = _PrivateNode(tmp_path, reconcile_interval="0.1")
    inst, run, subnet6, dns6 = node.inst, node.run, node.subnet6, node.dns6

    try:
        done = run("install", *inst.options, "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _ipv4_addresses(inst.bridge) and dns_address_present(inst.dns_ip)
        done = run("install", *_ipv4_free_options(inst), "--ipv6-only", "--subnet6", subnet6,
                   "--dns-ip6", dns6, "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{inst.dns_ip} removed" in done.stdout, done.stdout
        assert _ipv4_addresses(inst.bridge) == [], "the IPv4 gateway stayed on the bridge"
        assert not dns_address_present(inst.dns_ip), "the IPv4 DNS address stayed"
        rules4 = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert inst.bridge not in rules4 and inst.subnet not in rules4
        assert dig(dns6, "cluster.local", "SOA").status == "NOERROR"
        status = run("status", "--json")
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["families"] == ["ipv6"], status.stdout
        gone = run("uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not link_exists(inst.bridge)
        assert not subprocess.run(["ip", "-6", "-o", "addr", "show", "to", dns6],
                                  capture_output=True, text=True).stdout.strip()
    finally:
        node.remove()


def _global_ipv6(device: str) -> list[str]:
    """The global IPv6 addresses on `device` (not the kernel's fe80:: one)."""
    if not link_exists(device):
        return []
    return [f"{i['local']}/{i['prefixlen']}" for e in json.loads(subprocess.run(
        ["ip", "-j", "-6", "addr", "show", "dev", device], capture_output=True, text=True,
        check=True).stdout or "[]") for i in e.get("addr_info", [])
        if i.get("scope") == "global"]


def _tagged_rules(program: str, network: str) -> list[str]:
    """This network's lines in `program` (iptables-save/ip6tables-save): its rules, found
    by their comment, and its NAT chain's declaration and rules."""
    from smarter_cni.dataplane.names import chain_name

    chain = chain_name(network)
    text = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines()
            if f"smarter-cni {network}" in line or chain in line.split()[:2]
            or line.startswith(f":{chain} ")]


def _dns6_everywhere(dns6: str) -> str:
    return subprocess.run(["ip", "-6", "-o", "addr", "show", "to", dns6], capture_output=True,
                          text=True).stdout.strip()


def _ipv6_install(inst, before: str, subnet6: str, dns6: str) -> list[str]:
    """The install options of an IPv6-only or a dual-stack node of the test's own."""
    if before == "ipv6-only":
        return [*_ipv4_free_options(inst), "--ipv6-only", "--subnet6", subnet6,
                "--dns-ip6", dns6]
    return [*inst.options, "--subnet6", subnet6, "--dns-ip6", dns6]


@pytest.mark.parametrize("before", ["ipv6-only", "dual-stack"])
def test_reinstalling_ipv4_only_leaves_no_ipv6(tmp_path, before):
    """Install IPv6-only (or dual-stack), then reinstall IPv4-only with the same names: the
    bridge's IPv6 gateway, the network's ip6tables rules and NAT chain, the IPv6 DNS
    address and its listener all go; the IPv4 side works."""

    from test_dns_helpers import dig
    from test_install import dns_address_present

    # the earlier service's reconciler looks every 0.1 s: it would put the IPv6 pieces back
    # between install's removal and that service's restart, unless install looks again
    node = _PrivateNode(tmp_path, reconcile_interval="0.1")
    inst, run, subnet6, dns6 = node.inst, node.run, node.subnet6, node.dns6

    try:
        done = run("install", *_ipv6_install(inst, before, subnet6, dns6), "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        # the IPv6 pieces are there to be dropped
        assert subnet6.split("/")[0] + "1/64" in _global_ipv6(inst.bridge)
        assert _dns6_everywhere(dns6)
        assert len(_tagged_rules("ip6tables-save", inst.network)) >= 5  # accepts, jump, chain
        assert dig(dns6, "cluster.local", "SOA").status == "NOERROR"

        done = run("install", *inst.options, "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        if before == "ipv6-only":  # install put it there; a dual-stack node's service did
            assert f"{dns6} removed" in done.stdout, done.stdout  # (and took it on stopping)
        assert _global_ipv6(inst.bridge) == [], "an IPv6 gateway stayed on the bridge"
        assert _global_ipv6(inst.dns_interface) == [] and not _dns6_everywhere(dns6)
        assert _tagged_rules("ip6tables-save", inst.network) == [], "ip6tables rules stayed"
        rules6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
        assert inst.bridge not in rules6 and subnet6 not in rules6
        # the IPv4 side is whole: gateway, rules, DNS address and the one listener
        assert _ipv4_addresses(inst.bridge) == [inst.subnet.rsplit(".", 1)[0] + ".1/24"]
        assert dns_address_present(inst.dns_ip)
        assert len(_tagged_rules("iptables-save", inst.network)) >= 5
        assert _dns_service_sockets(inst.supervisor_pid()) == [f"{inst.dns_ip}:53"]
        assert dig(inst.dns_ip, "cluster.local", "SOA").status == "NOERROR"
        time.sleep(1)  # ten looks of the new service's reconciler: nothing comes back
        assert _global_ipv6(inst.bridge) == [] and not _dns6_everywhere(dns6)
        assert _tagged_rules("ip6tables-save", inst.network) == []
        status = run("status", "--json")
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["ok"] is True, status.stdout
        assert data["families"] == ["ipv4"] and "subnet6" not in data and "dns6" not in data
        gone = run("uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not link_exists(inst.bridge)
        assert _tagged_rules("iptables-save", inst.network) == []
    finally:
        node.remove()


def _node_snapshot(inst, dns6: str) -> dict:
    """Everything a refused reinstall must leave alone, as bytes or sorted lines: config,
    install record, pod records, bridge and DNS addresses, both families' rules."""

    def addresses(device: str) -> list[str]:
        if not link_exists(device):  # no dummy interfaces in this kernel: on lo
            return ["(no such device)"]
        return sorted(f"{i['local']}/{i['prefixlen']}" for e in json.loads(subprocess.run(
            ["ip", "-j", "addr", "show", "dev", device], capture_output=True, text=True,
            check=True).stdout or "[]") for i in e.get("addr_info", []))

    return {"conflist": inst.conflist_path.read_bytes(),
            "record": (inst.prefix / "install.json").read_bytes(),
            "attachments": (inst.state_dir / "attachments.json").read_bytes(),
            "state_files": sorted(os.listdir(inst.state_dir)),
            "bridge": addresses(inst.bridge), "dns_interface": addresses(inst.dns_interface),
            "dns6": _dns6_everywhere(dns6), "dns4": dns_address_lines(inst.dns_ip),
            "rules4": _tagged_rules("iptables-save", inst.network),
            "rules6": _tagged_rules("ip6tables-save", inst.network),
            "bin": sorted(p.name for p in inst.bin_dir.iterdir())}


def dns_address_lines(address: str) -> str:
    return subprocess.run(["ip", "-o", "addr", "show", "to", address], capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.parametrize("before, after", [
    ("dual-stack", "ipv4"), ("ipv6-only", "ipv4"), ("dual-stack", "ipv6-only")])
def test_a_family_change_with_pods_attached_is_refused_and_changes_nothing(
        tmp_path, netns, before, after):
    """A reinstall that would drop (or add) a family while a pod is attached: exit 1, an
    error naming the pods' count and the fix, and the node byte-identical; the pod keeps
    its IPv6 address and reaches its gateway over it."""

    from test_install import Added

    node = _PrivateNode(tmp_path)
    inst, run, subnet6, dns6 = node.inst, node.run, node.subnet6, node.dns6

    pod = None
    try:
        done = run("install", *_ipv6_install(inst, before, subnet6, dns6), "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        pod = Added(inst, netns, "keeper")
        time.sleep(1)  # the DNS service's first reconciler pass is done
        snapshot = _node_snapshot(inst, dns6)
        options = inst.options if after == "ipv4" else \
            [*_ipv4_free_options(inst), "--ipv6-only", "--subnet6", subnet6, "--dns-ip6", dns6]
        done = run("install", *options, "--no-selftest")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert f"1 pod(s) are attached to network {inst.network}" in done.stderr, done.stderr
        assert "drain the node" in done.stderr and "nothing was changed" in done.stderr
        assert _node_snapshot(inst, dns6) == snapshot
        six = [ip["address"].split("/")[0] for ip in pod.result["ips"]
               if ":" in ip["address"]]
        assert six and six[0] in " ".join(_global6(pod.ns_name)), pod.result
        assert _ping6(pod.ns_name, subnet6.split("/")[0] + "1")  # its gateway, on our bridge
        pod.delete()
        pod = None
        # with the pod gone the same reinstall goes through
        done = run("install", *options, "--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        if pod is not None:
            pod.call("DEL")
        node.remove()


NFT_ONLY = """set -e
mount --bind "$1" /usr/sbin/iptables
mount --bind "$1" /usr/sbin/ip6tables
shift
exec "$@"
"""


@pytest.mark.skipif(not shutil.which("nft"), reason="needs nft (apt-get install nftables; "
                    "run-tests.sh installs it)")
@pytest.mark.parametrize("before, after", [("ipv4", "ipv6-only"), ("dual-stack", "ipv4")])
def test_reinstalling_with_fewer_families_on_an_nft_only_host(tmp_path, netns, before, after):
    """An nft-only host (no iptables binaries): the dropped family's nft table goes. The
    installs run in a network namespace of the test's own, in a private mount namespace
    whose iptables and ip6tables are hidden (an empty non-executable file bound over them),
    so the tables are made in that namespace only and the node's rules cannot be touched."""
    import sys

    from test_install import Install

    from smarter_cni.dataplane.firewall import _nft_table
    from smarter_cni.netconf import parse_netconf

    inst = Install(tmp_path)
    ns, _ = netns.create("nft")
    hidden = tmp_path / "not-iptables"
    hidden.write_text("")
    hidden.chmod(0o644)
    subnet6 = _ula()
    table = _nft_table(parse_netconf({"cniVersion": "1.0.0", "name": inst.network,
                                      "type": "smarter-cni"}))

    def install(family: str) -> subprocess.CompletedProcess:
        options = {"ipv4": inst.options,
                   "dual-stack": [*inst.options, "--subnet6", subnet6],
                   "ipv6-only": [*_ipv4_free_options(inst), "--ipv6-only", "--subnet6", subnet6]}
        return subprocess.run(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
             NFT_ONLY, "sh", str(hidden), sys.executable, "-m", "smarter_cni", "install",
             *options[family], "--no-dns-service", "--no-selftest"],
            env=inst.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def tables() -> list[str]:
        listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                 capture_output=True, text=True, check=True).stdout
        return sorted(line.strip() for line in listing.splitlines() if line.strip())

    done = install(before)
    assert done.returncode == 0, done.stdout + done.stderr
    made = {"ipv4": [f"table ip {table}"],
            "dual-stack": [f"table ip {table}", f"table ip6 {table}"],
            "ipv6-only": [f"table ip6 {table}"]}
    assert tables() == made[before]  # nft made them: no iptables in that mount namespace
    done = install(after)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tables() == made[after]
    # the tables were this namespace's only: the node's own ruleset never had them
    assert f"table ip {table}" not in subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout


def _is_supervisor_left(inst) -> bool:
    from test_install import _is_our_supervisor

    pid = inst.supervisor_pid()
    return bool(pid) and _is_our_supervisor(pid)


@pytest.mark.parametrize("extra, named", [
    (["--subnet", "10.250.0.0/24"], "--subnet"),
    (["--dns-ip", "169.254.99.2"], "--dns-ip"),
    (["--gateway", "10.42.0.9"], "--gateway"),
    (["--mode", "docker"], "bridge mode"),
])
def test_install_ipv6_only_with_ipv4_options_is_refused_and_changes_nothing(tmp_path, extra,
                                                                             named):
    import sys

    from test_install import Install

    inst = Install(tmp_path)
    options = [w for w in _ipv4_free_options(inst) if w not in ("--mode", "bridge")]
    done = subprocess.run([sys.executable, "-m", "smarter_cni", "install", *options,
                           "--ipv6-only", *extra], env=inst.env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "smarter-cni: error: --ipv6-only" in done.stderr and named in done.stderr
    assert "fix: " in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # refused before the first step
    for path in (inst.prefix, inst.bin_dir, inst.conf_dir, inst.state_dir):
        assert not path.exists(), path
    assert not link_exists(inst.bridge) and not link_exists(inst.dns_interface)


def test_a_dual_stack_config_at_0_2_0_is_refused_clearly(plugin, dual_network, netns):
    ns, path = netns.create()
    added = plugin("ADD", dict(dual_network, cniVersion="0.2.0"), "ctr-old", path)
    assert added.code == 1 and "0.3.0" in added.json["msg"], added
    assert not link_exists(dual_network["bridge"])


def test_state_wiped_with_dual_stack_survivors(plugin, dual_network, netns, state_dir):
    """State lost while pods remain on the bridge: new pods never get a survivor's IPv6
    address (as for IPv4, tests/integration/test_reboot_drift.py)."""
    import shutil

    old = []
    for i in range(3):
        ns, path = netns.create()
        added = plugin("ADD", dual_network, f"old{i}", path)
        assert added.ok, added
        old.append(added.json["ips"][1]["address"])
    shutil.rmtree(state_dir)
    new = []
    for i in range(3):
        ns, path = netns.create()
        added = plugin("ADD", dual_network, f"new{i}", path)
        assert added.ok, added
        new.append(added.json["ips"][1]["address"])
    assert not set(old) & set(new), (old, new)


def test_dual_stack_with_the_runtimes_ip_ranges(plugin, dual_network, netns):
    """kubelet/containerd pass both podCIDRs in ipRanges: IPv4 is narrowed to the node's
    range, IPv6 comes from subnet6 (the IPv6 range is named in the log, not used)."""
    base = dual_network["subnet"].rsplit(".", 1)[0]
    ranges = [[{"subnet": f"{base}.64/26"}], [{"subnet": "fd99:1:2:3::/64"}]]
    ns, path = netns.create()
    added = plugin("ADD", dict(dual_network, runtimeConfig={"ipRanges": ranges}), "ctr-rr", path)
    assert added.ok, added
    ip4, ip6 = added.json["ips"]
    assert ip4["address"] == f"{base}.66/26" and ip4["gateway"] == f"{base}.65"
    assert ip6["address"] == dual_network["subnet6"].split("/")[0] + "2/64"
    assert _ping6(ns, _gateway6(dual_network))


# ---------------------------------------------------------------- docker mode

def test_docker_mode_on_an_ipv6_enabled_docker_network(plugin, dockerd, sandboxes, state_dir):
    """Docker hands out both addresses on a network created with --ipv6; the result, the
    record (AAAA), CHECK and a 0.2.0 result carry the IPv6 one too."""
    from helpers.dockerd import free_subnet, network_config, remove_network

    name = f"scni6-{unique('', 8)}"
    cidr, prefix6 = free_subnet(dockerd), _ula()
    base = cidr.rsplit(".", 1)[0]
    dockerd.cli("network", "create", "--ipv6", "--subnet", cidr, "--subnet", prefix6,
                "--aux-address", f"dns={base}.2", name)
    try:
        config = network_config(name, cidr, dockerd.socket)
        pod = sandboxes.create("web6")
        out = plugin("ADD", config, pod.id, pod.netns, args=pod_args("web6"))
        assert out.ok, out
        ep = dockerd.inspect(pod.id)["NetworkSettings"]["Networks"][name]
        ip4, ip6 = out.json["ips"]
        assert ip6["address"] == f"{ep['GlobalIPv6Address']}/{ep['GlobalIPv6PrefixLen']}"
        assert ip6["interface"] == ip4["interface"]
        assert {"dst": "::/0", "gw": ep["IPv6Gateway"]} in out.json["routes"]
        rec = json.loads((state_dir / "attachments.json").read_text())["attachments"]
        assert list(rec.values())[0]["ips"] == [ip4["address"], ip6["address"]]
        checked = plugin("CHECK", dict(config, prevResult=out.json), pod.id, pod.netns)
        assert checked.ok, checked
        assert plugin("DEL", config, pod.id, pod.netns).ok
        legacy = plugin("ADD", dict(config, cniVersion="0.2.0"), pod.id, pod.netns)
        assert legacy.ok, legacy
        assert legacy.json["ip6"]["ip"].startswith(prefix6.split("::")[0] + ":")
        assert legacy.json["ip6"]["gateway"] == ep["IPv6Gateway"]
        assert legacy.json["ip4"]["ip"].startswith(base + ".")
        assert plugin("DEL", dict(config, cniVersion="0.2.0"), pod.id, pod.netns).ok
    finally:
        remove_network(dockerd, name)


def test_host_local_ipv6_only_and_a_range_outside_subnet6(plugin, v6_only_network, netns,
                                                          tmp_path):
    data_dir = tmp_path / "hl6"
    config = dict(v6_only_network, ipam={"type": "host-local", "dataDir": str(data_dir),
                                         "ranges": [[{"subnet": v6_only_network["subnet6"]}]]})
    ns, path = netns.create()
    added = plugin("ADD", config, "ctr-hl6", path)
    assert added.ok, added
    assert [ip["address"] for ip in added.json["ips"]] == _global6(ns)
    assert _ping6(ns, _gateway6(v6_only_network))
    assert plugin("DEL", config, "ctr-hl6", path).ok
    outside = dict(config, ipam=dict(config["ipam"], ranges=[[{"subnet": _ula()}]]))
    ns2, path2 = netns.create()
    failed = plugin("ADD", outside, "ctr-hl6b", path2)
    assert failed.code == 102 and "outside subnet6" in failed.json["msg"], failed
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert state["attachments"] == {}
    assert not [p for p in (data_dir / v6_only_network["name"]).iterdir() if ":" in p.name]
