"""No resurrected records in docker mode: a DEL or GC between ADD's two transactions wins.

As test_heal_resurrection.py does for bridge mode: the real plugin is paused
by SMARTER_CNI_TEST_PAUSE_FIFO between its transactions (the sandbox is
connected to the Docker network, the record says "ready": false), a real
DEL (with and without CNI_NETNS) or GC runs there, then the ADD goes on. It
must fail with code 3, leave no record, and leave the sandbox disconnected
(no endpoint on the network, so Docker's IPAM has its address back and its
embedded DNS no alias). Against the tests' private dockerd.
"""

from __future__ import annotations

import json

import pytest
from test_heal_resurrection import PausedAdd

from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]


@pytest.fixture
def net(docker_network, dockerd):
    docker_mode.ensure_network(parse_netconf(docker_network))
    return docker_network


def _records(state_dir) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_text())["attachments"] if path.exists() else {}


def _endpoints(dockerd, name: str) -> dict[str, str]:
    """Docker ID -> IPv4 address of everything attached to the network."""
    network = dockerd.network_inspect(name) or {}
    return {docker_id: str(endpoint.get("IPv4Address", "")).split("/")[0]
            for docker_id, endpoint in (network.get("Containers") or {}).items()}


@pytest.mark.parametrize("between", ["DEL", "DEL-no-netns", "GC"])
def test_a_del_or_gc_between_adds_transactions_is_not_undone(plugin, net, dockerd, sandboxes,
                                                             state_dir, tmp_path, between):
    resident = sandboxes.create("resident")
    added = plugin("ADD", net, resident.id, resident.netns, args=pod_args("resident"))
    assert added.ok, added
    paused_box = sandboxes.create("paused")
    paused = PausedAdd(plugin, net, paused_box.id, paused_box.netns, tmp_path / "pause")
    key = f"{net['name']}/{paused_box.id}/eth0"
    try:
        assert _records(state_dir)[key]["ready"] is False  # really between the two
        assert paused_box.id in _endpoints(dockerd, net["network"])  # already connected
        if between == "GC":
            gc = dict(net, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
                {"containerID": resident.id, "ifname": "eth0"}]})
            done = plugin("GC", gc)
        else:
            done = plugin("DEL", net, paused_box.id,
                          "" if between == "DEL-no-netns" else paused_box.netns)
        assert done.ok, done
        assert key not in _records(state_dir)
    finally:
        finished = paused.finish()

    assert finished.code == 3, finished
    assert "deleted (DEL or GC) while its ADD was running" in finished.json["msg"]
    assert key not in _records(state_dir), "the record was resurrected"
    assert net["network"] not in paused_box.networks()
    resident_ip = added.json["ips"][0]["address"].split("/")[0]
    assert _endpoints(dockerd, net["network"]) == {resident.id: resident_ip}
    assert _records(state_dir)[f"{net['name']}/{resident.id}/eth0"]["ready"] is True

    # The same sandbox can be added again, and the resident is untouched.
    again = plugin("ADD", net, paused_box.id, paused_box.netns, args=pod_args("paused"))
    assert again.ok, again
    assert _records(state_dir)[key]["ready"] is True
    assert plugin("DEL", net, paused_box.id, paused_box.netns).ok
    assert plugin("DEL", net, resident.id, resident.netns).ok
    assert _records(state_dir) == {}


def test_a_paused_add_with_nothing_in_between_completes(plugin, net, dockerd, sandboxes,
                                                        state_dir, tmp_path):
    """The control: the hook alone changes nothing; a re-ADD of the connected sandbox too."""
    box = sandboxes.create("lonely")
    added = PausedAdd(plugin, net, box.id, box.netns, tmp_path / "pause").finish()
    assert added.ok, added
    key = f"{net['name']}/{box.id}/eth0"
    record = _records(state_dir)[key]
    assert record["ready"] is True and record["ips"] == [added.json["ips"][0]["address"]]
    assert _records(state_dir) and json.loads((state_dir / "attachments.json").read_text())[
        "networks"][net["name"]]["mode"] == "docker"  # claimed for the reconciler
    again = PausedAdd(plugin, net, box.id, box.netns, tmp_path / "pause2").finish()
    assert again.ok, again
    assert again.json["ips"] == added.json["ips"]
    assert _records(state_dir)[key]["ready"] is True
    assert plugin("DEL", net, box.id, box.netns).ok
    assert _records(state_dir) == {}
