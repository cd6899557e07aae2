"""Docker mode: pods on a real Docker network ask the node DNS at the network's
reserved address (the host owns it, so it answers ARP for it on the bridge).

Sandboxes are made as cri-dockerd makes them and attached by the real plugin;
the lookups are busybox nslookup inside the containers.
"""

from __future__ import annotations

import json

import pytest
from test_dns_helpers import DnsService, needs_tools

from helpers.netns import delete_link, sh, unique
from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)  # fixtures: dockerd, busybox_image, sandboxes, ...
pytestmark = [pytest.mark.root, pytest.mark.docker, needs_tools]


@pytest.fixture
def net(docker_network, dockerd):
    docker_mode.ensure_network(parse_netconf(docker_network))
    return docker_network


@pytest.fixture
def node_dns(net, plugin, tmp_path):
    """The service on the network's dnsAddress, put on the node by the service itself."""
    address = net["dnsAddress"]
    interface = unique("sdns")
    conf = tmp_path / "docker.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": net["name"],
                                "plugins": [dict(net, cniVersion=None)]}))
    service = DnsService(tmp_path, address, plugin.state_dir, conf,
                         extra=["--interface", interface])
    try:
        yield service.start()
    finally:
        service.stop()
        delete_link(interface)
        sh("ip", "addr", "del", f"{address}/32", "dev", "lo", check=False)


def lookup(sandbox, name: str, server: str) -> set[str]:
    proc = sandbox.exec("nslookup", name, server, timeout=20)
    addresses = set()
    answer = False
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("Name:"):
            answer = True
        elif answer and line.startswith("Address"):
            addresses.add(line.split()[-1].split("#")[0])
    return addresses


def test_docker_pods_resolve_each_other_through_the_node_dns(
        plugin, net, sandboxes, dockerd, node_dns):
    alpha = sandboxes.create("alpha-host")
    beta = sandboxes.create("beta-host")
    for sandbox, name in ((alpha, "alpha-pod"), (beta, "beta-pod")):
        added = plugin("ADD", net, sandbox.id, sandbox.netns, args=pod_args(name))
        assert added.ok, added
    alpha_ip = dockerd.inspect(alpha.id)["NetworkSettings"]["Networks"][net["network"]]["IPAddress"]
    server = net["dnsAddress"]
    for name in ("alpha-pod", "alpha-pod.default", "alpha-pod.default.svc.cluster.local",
                 "alpha-host", "alpha-host.default.svc.cluster.local"):
        assert lookup(beta, name, server) == {alpha_ip}, name
    # gone the moment DEL returns
    deleted = plugin("DEL", net, alpha.id, alpha.netns)
    assert deleted.ok, deleted
    gone = beta.exec("nslookup", "alpha-pod.default.svc.cluster.local", server, timeout=20)
    assert b"NXDOMAIN" in gone.stdout + gone.stderr, gone
