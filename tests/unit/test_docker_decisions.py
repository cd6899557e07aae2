"""Docker mode's pure decisions: aliases, config checks, reading the pod's interfaces.

The network's shape (compatibility, the DNS reservation, migration requests)
is tested in test_docker_network_shape.py.

The Docker API itself is exercised against a real dockerd in
tests/integration/test_docker_mode.py; these need neither root nor Docker.
"""

from __future__ import annotations

import os

import pytest

from smarter_cni.cni.errors import CNIError
from smarter_cni.dataplane import docker_mode, docker_sandbox
from smarter_cni.netconf import parse_netconf


def conf(**extra):
    config = {"cniVersion": "1.0.0", "name": "mynet", "type": "smarter-cni", "mode": "docker"}
    config.update(extra)
    return parse_netconf(config)


def test_original_c2d_config_is_docker_mode_on_its_own_network():
    c = parse_netconf({"cniVersion": "0.2.0", "name": "edge", "type": "c2d"})
    assert (c.mode, c.docker_network) == ("docker", "edge")


def test_aliases_hostname_then_pod_name_without_repeats():
    assert docker_mode.pod_aliases("web-0", "web") == ["web-0", "web"]
    assert docker_mode.pod_aliases("web", "web") == ["web"]
    assert docker_mode.pod_aliases("", "web") == ["web"]
    assert docker_mode.pod_aliases("h", "") == ["h"]
    assert docker_mode.pod_aliases("web-0", "a b;c") == ["web-0"]
    assert docker_mode.pod_aliases("x" * 254, "web") == ["web"]


@pytest.mark.parametrize("value", [0, -1, "5", True, 301])
def test_docker_timeout_is_validated(value):
    with pytest.raises(CNIError) as err:
        docker_mode.client(conf(dockerTimeout=value))
    assert err.value.code == 7


def test_docker_timeout_and_socket_reach_the_client(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other/docker.sock")
    client = docker_mode.client(conf(dockerTimeout=2.5))
    assert (client.socket_path, client.timeout) == ("/run/other/docker.sock", 2.5)
    explicit = docker_mode.client(conf(dockerSocket="/x/d.sock"))
    assert explicit.socket_path == "/x/d.sock"


def test_route_table_addresses_are_little_endian_hex():
    # /proc/net/route prints 10.245.7.0 as 0007F50A and /24 as 00FFFFFF.
    assert docker_sandbox.le32("0007F50A") == (10 << 24) | (245 << 16) | (7 << 8)
    assert docker_sandbox.le32("00FFFFFF") == 0xFFFFFF00
    assert docker_sandbox.le32("zz") == -1


def test_pod_ifname_reads_the_route_table_of_a_pid():
    """Our own netns: the interface of the first connected (non-default) route."""
    with open(f"/proc/{os.getpid()}/net/route") as handle:
        rows = [line.split() for line in handle.read().splitlines()[1:]]
    connected = [r for r in rows if r[2] == "00000000" and r[7] != "00000000"]
    if not connected:
        pytest.skip("no connected IPv4 route in this netns")
    iface, dest, mask = connected[0][0], connected[0][1], connected[0][7]
    address = docker_sandbox.le32(dest) + 1
    prefix = bin(docker_sandbox.le32(mask)).count("1")
    text = ".".join(str(address >> s & 255) for s in (24, 16, 8, 0))
    assert docker_sandbox.pod_ifname(os.getpid(), text, prefix, "") == iface


def test_cgroup_hint_only_for_proc_paths():
    assert docker_sandbox.docker_id_from_cgroup("/var/run/netns/x") == ""
    assert docker_sandbox.docker_id_from_cgroup("/proc/self/ns/net") == ""


def test_shipped_docker_conflist_is_docker_mode_with_the_original_defaults():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "10-smarter-cni-docker.conflist"
    conflist = json.loads(path.read_text())
    assert conflist["cniVersion"] == "1.0.0"
    assert conflist["cniVersions"] == ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    (plugin,) = conflist["plugins"]
    c = parse_netconf(dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"]))
    assert (c.type, c.mode, c.docker_network) == ("smarter-cni", "docker", "mynet")
    assert (c.cidr(), c.gateway_text(), c.dns_address) == ("172.38.0.0/16", "172.38.0.1",
                                                          "172.38.0.2")
