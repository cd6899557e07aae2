"""Docker mode on a network made the original smarter-cni's way, against a real dockerd.

The original's install.sh ran `docker network create --subnet=... --gateway=...
mynet` (no DNS reservation) and started its dnsmasq container `mydns` on it
with `--ip=172.38.0.2`. The tests make the same network with the same
command (unique name, a free /24 from helpers.dockerd, its .2 as the DNS
address), then check that ADD and STATUS refuse it and that
`ensure_network` (what `smarter-cni install --mode docker` calls) migrates
it or says what to move off it.
"""

from __future__ import annotations

import json

import pytest

from helpers.plugin import pod_args
from smarter_cni.cni.errors import CNIError
from smarter_cni.dataplane.docker_network import MANAGED_LABEL, MIGRATED_LABEL, ensure_network
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)  # fixtures: dockerd, sandboxes, docker_network
pytestmark = [pytest.mark.root, pytest.mark.docker]


def gateway_of(config: dict) -> str:
    return config["subnet"].rsplit(".", 1)[0] + ".1"


@pytest.fixture
def original(docker_network, dockerd):
    """The test's network, created as the original's install.sh created mynet."""
    dockerd.cli("network", "create", f"--subnet={docker_network['subnet']}",
                f"--gateway={gateway_of(docker_network)}", docker_network["network"])
    return docker_network


def mydns(sandboxes, config):
    """A stand-in for the original's dnsmasq container: on the network at the DNS address."""
    return sandboxes.create("mydns", network=config["network"],
                            extra=("--ip", config["dnsAddress"]))


def reservation(dockerd, config) -> dict:
    pool = dockerd.network_inspect(config["network"])["IPAM"]["Config"][0]
    return pool.get("AuxiliaryAddresses") or {}


def records(state_dir) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_text())["attachments"] if path.exists() else {}


def fix_command(config: dict) -> str:
    return (f"sudo smarter-cni install --mode docker --network {config['network']} "
            f"--subnet {config['subnet']} --dns-ip {config['dnsAddress']}")


# ---------------------------------------------------------------- ADD and STATUS refuse it

def test_add_on_the_originals_network_fails_with_the_fix(plugin, original, sandboxes, dockerd,
                                                         state_dir):
    pod = sandboxes.create("web-0")
    out = plugin("ADD", original, pod.id, pod.netns, args=pod_args("web"))
    assert out.returncode != 0 and out.code == 106, out
    msg = out.json["msg"]
    assert (f"docker network {original['network']} does not reserve the node DNS address "
            f"{original['dnsAddress']}") in msg
    assert f"`{fix_command(original)}`" in msg
    assert "already holds" not in msg
    # Nothing changed: the sandbox is still in `none`, nothing recorded.
    assert set(pod.networks()) == {"none"}
    assert records(state_dir) == {}
    assert plugin("DEL", original, pod.id, pod.netns).ok
    # What the check prevents: Docker's IPAM would give this very pod the DNS address.
    dockerd.cli("network", "disconnect", "none", pod.id)
    dockerd.cli("network", "connect", original["network"], pod.id)
    assert pod.networks()[original["network"]]["IPAddress"] == original["dnsAddress"]


def test_add_says_which_container_holds_the_dns_address(plugin, original, sandboxes):
    holder = mydns(sandboxes, original)
    pod = sandboxes.create("web-1")
    out = plugin("ADD", original, pod.id, pod.netns, args=pod_args("web"))
    assert out.code == 106, out
    name = holder.daemon.inspect(holder.id)["Name"].lstrip("/")
    assert f"container {name} ({holder.id[:12]}) already holds it" in out.json["msg"], out


def test_status_on_the_originals_network_is_50(plugin, original):
    out = plugin("STATUS", dict(original, cniVersion="1.1.0"), ifname="")
    assert out.code == 50 and "does not reserve the node DNS address" in out.json["msg"], out


# ---------------------------------------------------------------- the installer migrates it

def test_ensure_network_creates_reserves_and_is_idempotent(docker_network, dockerd):
    conf = parse_netconf(docker_network)
    first = ensure_network(conf)
    second = ensure_network(conf)
    assert first and first == second
    info = dockerd.network_inspect(docker_network["network"])
    pool = info["IPAM"]["Config"][0]
    assert pool["Subnet"] == docker_network["subnet"]
    assert pool["Gateway"] == conf.gateway_text()
    assert docker_network["dnsAddress"] in pool["AuxiliaryAddresses"].values()
    assert info["Labels"].get(MANAGED_LABEL) == "true"


def test_ensure_network_refuses_a_conflicting_network(docker_network, dockerd):
    other = docker_network["subnet"].replace(".0/24", ".128/25")
    dockerd.cli("network", "create", "--subnet", other, docker_network["network"])
    with pytest.raises(CNIError) as err:
        ensure_network(parse_netconf(docker_network))
    assert err.value.code == 7
    assert "does not match" in err.value.msg and other in err.value.msg
    assert dockerd.network_inspect(docker_network["network"])["IPAM"]["Config"][0][
        "Subnet"] == other  # left alone


def test_unused_originals_network_is_recreated_with_the_reservation(
        plugin, docker_network, dockerd, sandboxes):
    config = docker_network
    dockerd.cli("network", "create", f"--subnet={config['subnet']}",
                f"--gateway={gateway_of(config)}", "--opt", "com.docker.network.driver.mtu=1400",
                "--label", "owner=ops", config["network"])
    before = dockerd.network_inspect(config["network"])
    assert reservation(dockerd, config) == {}
    heard: list[str] = []
    new_id = ensure_network(parse_netconf(config), on_change=heard.append)
    after = dockerd.network_inspect(config["network"])
    assert new_id == after["Id"] != before["Id"]
    assert after["Driver"] == "bridge"
    assert after["IPAM"]["Config"] == [{"Subnet": config["subnet"],
                                        "Gateway": gateway_of(config),
                                        "AuxiliaryAddresses": {"smarter-cni-dns":
                                                               config["dnsAddress"]}}]
    assert after["Options"] == before["Options"] == {"com.docker.network.driver.mtu": "1400"}
    assert after["Labels"] == {"owner": "ops",
                               MIGRATED_LABEL: config["dnsAddress"]}
    assert heard == [f"docker network {config['network']} ({config['subnet']}) recreated "
                     f"with the node DNS address {config['dnsAddress']} reserved (it was not)"]
    # Idempotent: a second install keeps the migrated network.
    assert ensure_network(parse_netconf(config), on_change=heard.append) == new_id
    assert len(heard) == 1
    # Pods attach now, and the first one gets .3: .1 is the gateway, .2 stays reserved.
    pod = sandboxes.create("first")
    out = plugin("ADD", config, pod.id, pod.netns, args=pod_args("first"))
    assert out.ok, out
    assert out.json["ips"][0]["address"] == config["subnet"].replace(".0/24", ".3/24")


def test_used_originals_network_is_refused_until_it_is_emptied(original, dockerd, sandboxes):
    config = original
    holder = mydns(sandboxes, config)
    pod = sandboxes.create("web-0", network=config["network"],
                           extra=("--label", "io.kubernetes.pod.name=web",
                                  "--label", "io.kubernetes.pod.namespace=shop"))
    stopped = sandboxes.create("old-job", network=config["network"])
    dockerd.cli("stop", "-t", "0", stopped.id)
    names = {s.id: dockerd.inspect(s.id)["Name"].lstrip("/") for s in (holder, pod, stopped)}
    before = dockerd.network_inspect(config["network"])
    conf = parse_netconf(config)

    with pytest.raises(CNIError) as err:
        ensure_network(conf)
    msg = err.value.msg
    assert err.value.code == 106
    assert "In use by 3:" in msg, msg
    assert f"{names[holder.id]} ({holder.id[:12]}, running, {config['dnsAddress']}, holds " \
           "the DNS address)" in msg, msg
    assert f"{names[pod.id]} ({pod.id[:12]}, running, " in msg and "pod shop/web)" in msg, msg
    assert f"{names[stopped.id]} ({stopped.id[:12]}, exited" in msg, msg
    assert "kubectl drain NODE" in msg and "kubectl uncordon NODE" in msg
    assert f"docker rm -f {names[holder.id]} {names[stopped.id]}" in msg, msg
    assert f"`{fix_command(config)}` again" in msg
    after = dockerd.network_inspect(config["network"])
    assert after["Id"] == before["Id"] and reservation(dockerd, config) == {}  # untouched

    # Do as told, but leave the stopped container: it alone still blocks (it could never
    # start again on a recreated network).
    dockerd.cli("rm", "-f", holder.id)
    dockerd.cli("network", "disconnect", "-f", config["network"], pod.id)
    with pytest.raises(CNIError) as err:
        ensure_network(conf)
    assert "In use by 1:" in err.value.msg and names[stopped.id] in err.value.msg
    dockerd.cli("rm", "-f", stopped.id)
    new_id = ensure_network(conf)
    assert new_id != before["Id"]
    assert config["dnsAddress"] in reservation(dockerd, config).values()
