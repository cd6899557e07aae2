"""The node DNS service with pods made by the real plugin, asked from inside pod
namespaces (through the test's own bridge) and from the host; and REFUSED for
a source that is neither the node nor a pod.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import struct
import subprocess
import time

import pytest
from test_dns_helpers import DnsService, dig, needs_tools

from helpers.netns import delete_link, run_id, sh, unique
from helpers.plugin import pod_args

pytestmark = [pytest.mark.root, needs_tools]


def _unused_net(prefix: str, bits: int) -> ipaddress.IPv4Network:
    """A random subnet of `prefix` with no route on the host (so nothing real uses it)."""
    parent = ipaddress.ip_network(prefix)
    for _ in range(50):
        net = random.choice(list(parent.subnets(new_prefix=bits))[:4096])
        routes = subprocess.run(["ip", "-4", "route", "show", "match", str(net[1])],
                                capture_output=True, text=True).stdout
        if all(not line or line.startswith("default") for line in routes.splitlines()):
            return net
    pytest.skip(f"no free subnet in {prefix}")


def _unused_link_local() -> str:
    for _ in range(50):
        address = f"169.254.{random.randint(100, 250)}.{random.randint(2, 254)}"
        found = subprocess.run(["ip", "-4", "-o", "addr", "show", "to", address],
                               capture_output=True, text=True).stdout
        if not found.strip():
            return address
    pytest.skip("no free link-local address")


@pytest.fixture
def services():
    started: list[DnsService] = []
    try:
        yield started
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def dns_address():
    """A unique 169.254.x.y for the service to put on its own unique interface."""
    address = _unused_link_local()
    interface = unique("sdns")
    try:
        yield address, interface
    finally:
        delete_link(interface)
        sh("ip", "addr", "del", f"{address}/32", "dev", "lo", check=False)


def _conflist(tmp_path, network: dict) -> str:
    path = tmp_path / "10-pods.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": network["name"],
                                "plugins": [dict(network, cniVersion=None)]}))
    return str(path)


def raw_query(server: str, name: str) -> bytes | None:
    """One A query over UDP from the host, no process started in between."""
    packet = (struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
              + b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
              + struct.pack("!HH", 1, 1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(packet, (server, 53))
        data = sock.recv(4096)
    return data if data[:2] == packet[:2] else None


def _add(plugin, network, netns, name, container, **config_extra):
    ns, path = netns.create()
    added = plugin("ADD", dict(network, **config_extra), container, path, args=pod_args(name))
    assert added.ok, added
    return ns, path, added.json["ips"][0]["address"].split("/")[0]


def test_pods_resolve_each_other_by_every_name_from_their_namespaces(
        plugin, bridge_network, netns, services, dns_address, tmp_path):
    address, interface = dns_address
    alpha_ns, _, alpha_ip = _add(plugin, bridge_network, netns, "alpha", run_id("ctr-alpha"))
    service = DnsService(tmp_path, address, plugin.state_dir, _conflist(tmp_path, bridge_network),
                         extra=["--interface", interface])
    services.append(service)
    service.start()
    # the service put its address on the node (a dummy interface, or lo without the driver)
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "to", address],
                           capture_output=True, text=True).stdout
    assert address in shown

    # a pod with a hostname (learned from the pod annotation, as containerd passes it)
    beta_ns, _, beta_ip = _add(
        plugin, bridge_network, netns, "beta-x7k2p", run_id("ctr-beta"),
        runtimeConfig={"io.kubernetes.cri.pod-annotations": {"smarter-cni.io/hostname": "beta"}})
    # the pod's route to the DNS address is its default route: the test's bridge
    route = subprocess.run(["ip", "-n", alpha_ns, "route", "get", address],
                           capture_output=True, text=True).stdout
    assert "dev eth0" in route and bridge_network["subnet"].rsplit(".", 1)[0] in route

    for name in ("beta-x7k2p", "beta-x7k2p.default", "beta-x7k2p.default.svc.cluster.local",
                 "beta", "beta.default", "beta.default.svc.cluster.local"):
        for transport in ("+notcp", "+tcp"):
            answer = dig(address, name, transport, netns=alpha_ns)
            assert answer.values() == [beta_ip], (name, transport, answer)
    assert dig(address, "alpha", netns=beta_ns).values() == [alpha_ip]
    ptr = dig(address, "-x", beta_ip, netns=alpha_ns)
    assert "beta-x7k2p.default.svc.cluster.local" in ptr.values("PTR"), ptr
    assert dig(address, "nobody.default.svc.cluster.local", netns=alpha_ns).status == "NXDOMAIN"

    # from the host (a host-network pod or process) too
    assert dig(address, "alpha.default.svc.cluster.local").values() == [alpha_ip]


def test_a_pod_resolves_the_moment_add_returns_and_not_after_del(
        plugin, bridge_network, netns, services, dns_address, tmp_path):
    address, interface = dns_address
    watcher_ns, _, _ = _add(plugin, bridge_network, netns, "watcher", run_id("ctr-watch"))
    service = DnsService(tmp_path, address, plugin.state_dir, _conflist(tmp_path, bridge_network),
                         extra=["--interface", interface])
    services.append(service)
    service.start()
    delays = []
    for index in range(10):
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, run_id(f"ctr-new{index}"), path,
                       args=pod_args(f"new-{index}"))
        returned = time.monotonic()
        assert added.ok, added
        ip = added.json["ips"][0]["address"].split("/")[0]
        name = f"new-{index}.default.svc.cluster.local"
        if index % 2:  # first asked from the host, timed without any exec in between
            answer = raw_query(address, name)
            delays.append(time.monotonic() - returned)
            assert answer is not None and answer[3] & 0xF == 0 and \
                answer[-4:] == socket.inet_aton(ip), answer
        else:  # first asked from a pod, with dig
            answer = dig(address, name, netns=watcher_ns)
            assert answer.values() == [ip], answer  # first try, no sleep, no retry
        deleted = plugin("DEL", bridge_network, run_id(f"ctr-new{index}"), path)
        assert deleted.ok, deleted
        gone = dig(address, name, netns=watcher_ns)
        assert gone.status == "NXDOMAIN", gone
    print(f"ADD returned -> answer from the host: "
          f"{', '.join(f'{d * 1000:.1f}' for d in delays)} ms")


def test_a_source_that_is_not_local_nor_a_pod_is_refused(netns, tmp_path, state_dir):
    """A namespace on a veth to the host, with an address outside the pod subnet.

    The host end's address is the node's own, so the host is answered; the
    namespace's address is neither the node's nor a pod's, so it is refused.
    """
    net = _unused_net("10.250.0.0/16", 30)
    host_ip, far_ip = str(net[1]), str(net[2])
    ns, _ = netns.create()
    host_if = unique("vdh")
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    try:
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{far_ip}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        conf = tmp_path / "refuse.conflist"
        conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": run_id("refuse"), "plugins": [
            {"type": "smarter-cni", "subnet": "10.99.0.0/16", "bridge": unique("sdb")}]}))
        service = DnsService(tmp_path, host_ip, state_dir, conf, extra=["--no-address-setup"])
        service.start()
        try:
            refused = dig(host_ip, "anything.cluster.local", netns=ns)
            assert refused.status == "REFUSED", refused
            assert dig(host_ip, "anything.cluster.local", "+tcp", netns=ns).status == "REFUSED"
            assert dig(host_ip, "anything.cluster.local").status == "NXDOMAIN"  # the host
        finally:
            service.stop()
    finally:
        delete_link(host_if)
