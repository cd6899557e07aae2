"""Docker mode chained with portmap and bandwidth, through libcni (as cri-dockerd runs it).

The reference plugins find what to configure in our result: bandwidth needs
the host end of the veth Docker made, portmap the pod address. Traffic goes
only to the Docker bridge's gateway address (local to this host, on the
test's own network) and to 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import libcni as libcni_helper
from helpers.plugin import pod_args
from helpers.portmap import CONTAINER_PORT, Listener, fetch, nat_rules
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]

libcni = libcni_helper.fixture()



def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_portmap_and_bandwidth_after_docker_mode(version, libcni, docker_network, sandboxes,
                                                  dockerd, bin_dir, state_dir, tmp_path,
                                                  host_port, portmap_chains_restored):
    docker_mode.ensure_network(parse_netconf(docker_network))
    smarter = {k: v for k, v in docker_network.items() if k not in ("cniVersion", "name")}
    plugins = [
        smarter,
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]
    conflist = tmp_path / "docker-chain.conflist"
    conflist.write_text(json.dumps({"cniVersion": version, "name": docker_network["name"],
                                    "plugins": plugins}))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    capability_args = {
        "portMappings": [{"hostPort": host_port, "containerPort": CONTAINER_PORT,
                          "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                      "egressRate": 100_000_000, "egressBurst": 1_000_000},
    }
    pod = sandboxes.create("chained")
    common = dict(cni_path=bin_dir, cache_dir=cache_dir, container_id=pod.id, netns=pod.netns,
                  ifname="eth0", args=pod_args("chained"), capability_args=capability_args,
                  env={"SMARTER_CNI_STATE_DIR": str(state_dir)})
    gateway = docker_network["subnet"].replace(".0/24", ".1")
    listener = None
    try:
        added = libcni.run("add", conflist, **common)
        assert added.ok, added
        result = added.json
        host = [i["name"] for i in result["interfaces"]
                if not i.get("sandbox") and i["name"].startswith("veth")]
        assert len(host) == 1, result["interfaces"]
        assert "tbf" in sh("tc", "qdisc", "show", "dev", host[0]).stdout
        assert pod.id in nat_rules()

        listener = Listener(pod.netns, CONTAINER_PORT)
        answer = fetch(gateway, host_port)  # the bridge's own address: DNAT to the pod
        assert answer.startswith(listener.token + " "), answer

        deleted = libcni.run("del", conflist, **common)
        assert deleted.ok, deleted
        assert pod.id not in nat_rules(), "portmap rules survived DEL"
        assert docker_network["network"] not in pod.networks()
    finally:
        if listener is not None:
            listener.stop()
        libcni.run("del", conflist, **common)


def test_original_c2d_config_through_libcni(libcni, docker_network, sandboxes, dockerd,
                                            bin_dir, state_dir, tmp_path):
    """`{"cniVersion": "0.2.0", "name": "<network>", "type": "c2d"}` as cri-dockerd loads
    a .conf (libcni wraps it into a one-plugin list); DOCKER_HOST names the socket."""
    docker_mode.ensure_network(parse_netconf(docker_network))
    conflist = tmp_path / "c2d.conflist"
    conflist.write_text(json.dumps({"cniVersion": "0.2.0", "name": docker_network["network"],
                                    "plugins": [{"type": "c2d"}]}))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    pod = sandboxes.create("original")
    common = dict(cni_path=bin_dir, cache_dir=cache_dir, container_id=pod.id, netns=pod.netns,
                  ifname="eth0", args=pod_args("original"),
                  env={"SMARTER_CNI_STATE_DIR": str(state_dir), "DOCKER_HOST": dockerd.host})
    added = libcni.run("add", conflist, **common)
    assert added.ok, added
    endpoint = pod.networks()[docker_network["network"]]
    assert added.json["ip4"]["ip"] == f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}", added
    deleted = libcni.run("del", conflist, **common)
    assert deleted.ok, deleted
    assert docker_network["network"] not in pod.networks()
