"""Docker-mode pods through the node DNS service, as the original's dnsmasq served them.

The service listens on the Docker network's reserved DNS address (a unique
test /24's .2, put on the test's own dummy interface); the host asks it with
`dig`, a pod asks it with busybox nslookup over the Docker bridge, exactly
as kubelet's --cluster-dns would have it.
"""

from __future__ import annotations

import json

import pytest
from test_dns_helpers import DnsService, dig, needs_tools

from helpers.netns import delete_link, unique
from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker, needs_tools]


@pytest.fixture
def node_dns(docker_network, state_dir, tmp_path):
    """ensure_network, then the node DNS service on the network's DNS address."""
    docker_mode.ensure_network(parse_netconf(docker_network))
    conflist = tmp_path / "10-docker.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": docker_network["name"],
                                    "plugins": [dict(docker_network, cniVersion=None)]}))
    interface = unique("sdk")
    service = DnsService(tmp_path, docker_network["dnsAddress"], state_dir, conflist,
                         extra=["--interface", interface])
    try:
        service.start()
        yield docker_network
    finally:
        service.stop()
        delete_link(interface)


def test_host_and_pods_resolve_docker_pods_through_node_dns(plugin, node_dns, sandboxes,
                                                             dockerd):
    net = node_dns
    server = net["dnsAddress"]
    web = sandboxes.create("web-0")
    asker = sandboxes.create("asker")
    out = plugin("ADD", net, web.id, web.netns, args=pod_args("web", "shop"))
    assert out.ok, out
    web_ip = out.json["ips"][0]["address"].split("/")[0]
    assert plugin("ADD", net, asker.id, asker.netns, args=pod_args("asker", "shop")).ok

    # The host: pod name and hostname, in their search-path forms.
    for name in ("web.shop.svc.cluster.local", "web-0.shop.svc.cluster.local", "web.shop"):
        result = dig(server, name, "A")
        assert result.values("A") == [web_ip], (name, result)

    # A pod, over the Docker bridge to the reserved address (port 53).
    proc = asker.exec("nslookup", "web.shop.svc.cluster.local", server, timeout=20)
    assert web_ip in proc.stdout.decode(), proc

    # Gone from the node DNS the moment DEL returns.
    assert plugin("DEL", net, web.id, web.netns).ok
    result = dig(server, "web.shop.svc.cluster.local", "A")
    assert result.status == "NXDOMAIN", result
