"""Docker mode against a real dockerd, driven exactly as cri-dockerd drives it.

Sandboxes are `docker run -d --network none --hostname H`; the plugin gets
CNI_CONTAINERID = the sandbox's Docker ID and CNI_NETNS = /proc/<pid>/ns/net.
Names are checked with busybox nslookup against Docker's embedded DNS
(127.0.0.11) from another container on the network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers.netns import unique
from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)  # fixtures: dockerd, busybox_image, sandboxes, ...
pytestmark = [pytest.mark.root, pytest.mark.docker]


@pytest.fixture
def net(docker_network, dockerd):
    """The test's Docker network, created through ensure_network."""
    docker_mode.ensure_network(parse_netconf(docker_network))
    return docker_network


def records(state_dir) -> dict:
    path = state_dir / "attachments.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())["attachments"]


def endpoint(dockerd, sandbox_id: str, network: str) -> dict | None:
    return (dockerd.inspect(sandbox_id)["NetworkSettings"]["Networks"] or {}).get(network)


def lookup(sandbox, name: str) -> set[str]:
    """Addresses busybox nslookup gets for `name` from Docker's embedded DNS."""
    proc = sandbox.exec("nslookup", name, "127.0.0.11", timeout=20)
    text = proc.stdout.decode(errors="replace")
    addresses = set()
    answer = False
    for line in text.splitlines():
        if line.startswith("Name:"):
            answer = True
        elif answer and line.startswith("Address"):
            addresses.add(line.split()[-1].split("#")[0])
    return addresses


def add(plugin, config, sandbox, pod_name="", namespace="default", container_id=""):
    args = pod_args(pod_name, namespace, uid=str(uuid.uuid4())) if pod_name else ""
    return plugin("ADD", config, container_id or sandbox.id, sandbox.netns, args=args)


# ---------------------------------------------------------------- ADD

def test_add_returns_what_docker_assigned(plugin, net, sandboxes, dockerd, state_dir):
    pod = sandboxes.create("web-0")
    out = add(plugin, net, pod, "web")
    assert out.ok, out
    ep = endpoint(dockerd, pod.id, net["network"])
    assert ep is not None and "none" not in pod.networks()
    result = out.json
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"][0]["address"] == f"{ep['IPAddress']}/{ep['IPPrefixLen']}"
    assert result["ips"][0]["gateway"] == ep["Gateway"] == net["subnet"].replace(".0/24", ".1")
    # bridge, host veth, pod interface (as the reference bridge plugin lists them)
    bridge, host, iface = result["interfaces"]
    assert result["ips"][0]["interface"] == 2
    assert iface == {"name": "eth0", "mac": ep["MacAddress"], "sandbox": pod.netns}
    network_id = dockerd.network_inspect(net["network"])["Id"]
    assert bridge["name"] == f"br-{network_id[:12]}" and "sandbox" not in bridge
    assert "sandbox" not in host and host["mac"]
    assert Path(f"/sys/class/net/{host['name']}/master").resolve().name == bridge["name"]
    peer = pod.exec("cat", "/sys/class/net/eth0/iflink", check=True).stdout.decode().strip()
    assert Path(f"/sys/class/net/{host['name']}/ifindex").read_text().strip() == peer
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": ep["Gateway"]}]
    assert result["dns"]["nameservers"] == [net["dnsAddress"]]
    # The address really is on that interface inside the pod.
    inside = pod.exec("ip", "-o", "-4", "addr", "show", "dev", "eth0", check=True)
    assert f"{ep['IPAddress']}/{ep['IPPrefixLen']}" in inside.stdout.decode()
    assert set(ep["Aliases"]) >= {"web-0", "web"}
    # Recorded for the node DNS service.
    rec = records(state_dir)[f"{net['name']}/{pod.id}/eth0"]
    assert rec["mode"] == "docker" and rec["ready"] is True
    assert rec["ips"] == [result["ips"][0]["address"]]
    assert rec["pod"]["name"] == "web" and rec["pod"]["hostname"] == "web-0"
    assert rec["docker_id"] == pod.id


@pytest.mark.parametrize("version", ["0.2.0", "0.4.0", "1.0.0", "1.1.0"])
def test_result_in_each_version(plugin, net, sandboxes, dockerd, dockerd_host_env, version):
    pod = sandboxes.create("v-pod")
    if version == "0.2.0":
        # The original smarter-cni config, verbatim: network = name, type c2d,
        # socket from DOCKER_HOST.
        config = {"cniVersion": "0.2.0", "name": net["network"], "type": "c2d"}
        out = plugin("ADD", config, pod.id, pod.netns, plugin="c2d", extra=dockerd_host_env)
    else:
        config = dict(net, cniVersion=version)
        out = add(plugin, config, pod, "v-pod")
    assert out.ok, out
    ep = endpoint(dockerd, pod.id, net["network"])
    cidr = f"{ep['IPAddress']}/{ep['IPPrefixLen']}"
    result = out.json
    assert result["cniVersion"] == version
    if version == "0.2.0":
        assert result["ip4"]["ip"] == cidr
        assert result["ip4"]["gateway"] == ep["Gateway"]
        assert "interfaces" not in result and "ips" not in result
        deleted = plugin("DEL", config, pod.id, pod.netns, plugin="c2d", extra=dockerd_host_env)
    else:
        assert result["ips"][0]["address"] == cidr
        assert ("version" in result["ips"][0]) == (version == "0.4.0")
        assert result["interfaces"][-1]["mac"] == ep["MacAddress"]
        deleted = plugin("DEL", config, pod.id, pod.netns)
    assert deleted.ok, deleted
    assert endpoint(dockerd, pod.id, net["network"]) is None


@pytest.fixture
def dockerd_host_env(dockerd):
    return {"DOCKER_HOST": dockerd.host}


def test_pods_resolve_each_other_by_hostname_and_pod_name(plugin, net, sandboxes, dockerd):
    a = sandboxes.create("alpha-host")
    b = sandboxes.create("beta-host")
    assert add(plugin, net, a, "alpha-pod").ok
    assert add(plugin, net, b, "beta-pod").ok
    a_ip = endpoint(dockerd, a.id, net["network"])["IPAddress"]
    b_ip = endpoint(dockerd, b.id, net["network"])["IPAddress"]
    assert lookup(b, "alpha-host") == {a_ip}
    assert lookup(b, "alpha-pod") == {a_ip}
    assert lookup(a, "beta-pod") == {b_ip}
    # A plain container on the network (not a pod) resolves them too.
    plain = sandboxes.create("plain", network=net["network"])
    assert lookup(plain, "beta-host") == {b_ip}


def test_two_pods_with_one_hostname_both_resolve(plugin, net, sandboxes, dockerd):
    first = sandboxes.create("same-name")
    second = sandboxes.create("same-name")
    asker = sandboxes.create("asker")
    for pod, name in ((first, "rs-a"), (second, "rs-b"), (asker, "asker")):
        out = add(plugin, net, pod, name)
        assert out.ok, out
    ips = {endpoint(dockerd, p.id, net["network"])["IPAddress"] for p in (first, second)}
    assert len(ips) == 2
    assert lookup(asker, "same-name") == ips


def test_add_again_is_idempotent_and_re_add_after_del_works(plugin, net, sandboxes, dockerd,
                                                            state_dir):
    pod = sandboxes.create("again")
    first = add(plugin, net, pod, "again")
    assert first.ok, first
    second = add(plugin, net, pod, "again")  # a runtime retrying ADD
    assert second.ok, second
    assert second.json["ips"] == first.json["ips"]
    assert len(records(state_dir)) == 1
    assert plugin("DEL", net, pod.id, pod.netns).ok
    assert pod.networks() == {}  # neither our network nor `none` any more
    third = add(plugin, net, pod, "again")  # the same sandbox attached again
    assert third.ok, third
    assert endpoint(dockerd, pod.id, net["network"])["IPAddress"] == \
        third.json["ips"][0]["address"].split("/")[0]
    assert records(state_dir)[f"{net['name']}/{pod.id}/eth0"]["ready"] is True


@pytest.mark.parametrize("path_kind", ["proc", "named"])
def test_add_finds_sandbox_by_netns_when_id_is_unknown(plugin, net, sandboxes, dockerd,
                                                     state_dir, path_kind):
    """/proc/<pid>/ns/net (found through the pid's cgroup) and a named netns bind
    mount (`ip netns attach`: no pid, so every running container is compared)."""
    pod = sandboxes.create("by-netns")
    runtime_id = unique("", 32)  # an ID dockerd has never heard of
    netns_path = pod.netns
    name = f"scni-{uuid.uuid4().hex[:12]}"
    if path_kind == "named":
        subprocess.run(["ip", "netns", "attach", name, str(pod.pid)], check=True)
        netns_path = f"/var/run/netns/{name}"
    try:
        _add_and_del_by_netns(plugin, net, pod, dockerd, state_dir, runtime_id, netns_path)
    finally:
        if path_kind == "named":
            subprocess.run(["ip", "netns", "del", name], check=False)


def _add_and_del_by_netns(plugin, net, pod, dockerd, state_dir, runtime_id, netns_path):
    out = plugin("ADD", net, runtime_id, netns_path, args=pod_args("by-netns"))
    assert out.ok, out
    assert endpoint(dockerd, pod.id, net["network"]) is not None
    assert records(state_dir)[f"{net['name']}/{runtime_id}/eth0"]["docker_id"] == pod.id
    out = plugin("DEL", net, runtime_id, netns_path)
    assert out.ok, out
    assert endpoint(dockerd, pod.id, net["network"]) is None
    assert records(state_dir) == {}


def test_add_unknown_container_and_netns_is_code_3(plugin, net, netns):
    _, path = netns.create()  # a netns no container lives in
    out = plugin("ADD", net, unique("", 32), path)
    assert out.code == 3, out


def test_add_to_missing_network_fails_cleanly(plugin, docker_network, sandboxes, state_dir):
    pod = sandboxes.create("lonely")
    out = add(plugin, docker_network, pod, "lonely")  # network never created
    assert not out.ok and "does not exist" in out.json["msg"], out
    assert records(state_dir) == {}


# ---------------------------------------------------------------- DEL

def test_del_twice_succeeds_and_removes_names(plugin, net, sandboxes, dockerd, state_dir):
    pod = sandboxes.create("gone-soon")
    asker = sandboxes.create("asker")
    assert add(plugin, net, pod, "gone-soon").ok
    assert add(plugin, net, asker, "asker").ok
    assert lookup(asker, "gone-soon")
    for _ in range(2):
        out = plugin("DEL", net, pod.id, pod.netns)
        assert out.ok, out
    assert endpoint(dockerd, pod.id, net["network"]) is None
    assert f"{net['name']}/{pod.id}/eth0" not in records(state_dir)
    assert lookup(asker, "gone-soon") == set()


def test_del_after_container_removed_succeeds(plugin, net, sandboxes, state_dir):
    pod = sandboxes.create("removed")
    assert add(plugin, net, pod, "removed").ok
    netns = pod.netns
    sandboxes.remove(pod)
    out = plugin("DEL", net, pod.id, netns)
    assert out.ok, out
    assert records(state_dir) == {}
    out = plugin("DEL", net, pod.id, "")  # and with no netns at all
    assert out.ok, out


def test_del_of_never_seen_container_succeeds(plugin, net):
    out = plugin("DEL", net, unique("", 32), "")
    assert out.ok, out


# ---------------------------------------------------------------- dockerd unreachable

class SilentServer:
    """A unix socket that accepts connections and never answers (a wedged dockerd)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_socket(tmp_path):
    path = str(tmp_path / "wedged.sock")
    server = SilentServer(path)
    try:
        yield path
    finally:
        server.close()


def _unchanged(dockerd, pod, net, state_dir) -> None:
    assert set(pod.networks()) == {"none"}
    assert records(state_dir) == {}


def test_dockerd_not_listening_gives_code_11_fast(plugin, net, sandboxes, dockerd, state_dir,
                                                  tmp_path):
    pod = sandboxes.create("no-daemon")
    config = dict(net, dockerSocket=str(tmp_path / "nothing-here.sock"))
    start = time.monotonic()
    out = add(plugin, config, pod, "no-daemon")
    elapsed = time.monotonic() - start
    assert out.code == 11, out
    assert "not running" in out.json["msg"]
    assert elapsed < 2.0
    _unchanged(dockerd, pod, net, state_dir)
    # DEL must not claim success while the pod's netns is alive and dockerd is away.
    assert plugin("DEL", config, pod.id, pod.netns).code == 11


@pytest.mark.parametrize("timeout", [None, 1])
def test_dockerd_not_answering_gives_code_11_in_bounded_time(
        plugin, net, sandboxes, dockerd, state_dir, silent_socket, timeout):
    pod = sandboxes.create("wedged")
    config = dict(net, dockerSocket=silent_socket)
    if timeout:
        config["dockerTimeout"] = timeout
    budget = timeout or docker_mode.DEFAULT_TIMEOUT
    start = time.monotonic()
    out = add(plugin, config, pod, "wedged")
    elapsed = time.monotonic() - start
    assert out.code == 11, out
    assert "did not answer" in out.json["msg"]
    assert budget - 0.1 <= elapsed < budget + 1.5
    _unchanged(dockerd, pod, net, state_dir)


# ---------------------------------------------------------------- CHECK, GC, STATUS

def test_check_passes_then_fails_when_disconnected(plugin, net, sandboxes, dockerd):
    pod = sandboxes.create("checked")
    out = add(plugin, net, pod, "checked")
    assert out.ok, out
    config = dict(net, prevResult=out.json)
    args = pod_args("checked")
    ok = plugin("CHECK", config, pod.id, pod.netns, args=args)
    assert ok.ok, ok
    dockerd.cli("network", "disconnect", "-f", net["network"], pod.id)
    bad = plugin("CHECK", config, pod.id, pod.netns, args=args)
    assert bad.code == 103 and "not connected" in bad.json["msg"], bad


def test_gc_disconnects_only_what_is_not_valid(plugin, net, sandboxes, dockerd, state_dir):
    keep = sandboxes.create("keep")
    drop = sandboxes.create("drop")
    foreign = sandboxes.create("foreign", network=net["network"])  # not ours: never touched
    assert add(plugin, net, keep, "keep").ok
    assert add(plugin, net, drop, "drop").ok
    config = dict(net, cniVersion="1.1.0")
    config["cni.dev/valid-attachments"] = [{"containerID": keep.id, "ifname": "eth0"}]
    out = plugin("GC", config, ifname="")
    assert out.ok, out
    assert endpoint(dockerd, keep.id, net["network"]) is not None
    assert endpoint(dockerd, drop.id, net["network"]) is None
    assert endpoint(dockerd, foreign.id, net["network"]) is not None
    assert list(records(state_dir)) == [f"{net['name']}/{keep.id}/eth0"]


def test_gc_while_dockerd_is_away(plugin, net, sandboxes, dockerd, state_dir, tmp_path):
    alive = sandboxes.create("alive")
    dead = sandboxes.create("dead")
    assert add(plugin, net, alive, "alive").ok
    assert add(plugin, net, dead, "dead").ok
    sandboxes.remove(dead)  # its netns is gone with it
    config = dict(net, cniVersion="1.1.0", dockerSocket=str(tmp_path / "away.sock"))
    config["cni.dev/valid-attachments"] = []
    out = plugin("GC", config, ifname="")
    assert out.code == 11, out  # the live sandbox cannot be disconnected now
    assert list(records(state_dir)) == [f"{net['name']}/{alive.id}/eth0"]
    assert endpoint(dockerd, alive.id, net["network"]) is not None
    out = plugin("GC", dict(config, dockerSocket=dockerd.socket), ifname="")
    assert out.ok, out  # dockerd back: the next GC finishes the job
    assert records(state_dir) == {}
    assert endpoint(dockerd, alive.id, net["network"]) is None


def test_status(plugin, net, docker_network, tmp_path):
    config = dict(net, cniVersion="1.1.0")
    out = plugin("STATUS", config, ifname="")
    assert out.ok, out
    missing = dict(config, network="scni-no-such-network")
    out = plugin("STATUS", missing, ifname="")
    assert out.code == 50 and "does not exist" in out.json["msg"], out
    dead = dict(config, dockerSocket=str(tmp_path / "none.sock"))
    out = plugin("STATUS", dead, ifname="")
    assert out.code == 50, out


# ---------------------------------------------------------------- the network

# ensure_network itself (create, conflicts, migration): test_docker_migration.py


def test_docker_never_hands_out_the_dns_address(plugin, sandboxes, dockerd):
    """A /29 has 4 pod addresses once the gateway and DNS address are taken: fill it."""
    from helpers.dockerd import free_subnet, network_config, remove_network

    base = free_subnet(dockerd).rsplit(".", 1)[0]
    name = f"scni-{uuid.uuid4().hex[:10]}"
    config = network_config(name, f"{base}.0/29", dockerd.socket)
    try:
        docker_mode.ensure_network(parse_netconf(config))
        given = set()
        for index in range(4):
            pod = sandboxes.create(f"p{index}")
            out = add(plugin, config, pod, f"p{index}")
            assert out.ok, out
            given.add(out.json["ips"][0]["address"].split("/")[0])
        assert f"{base}.2" not in given and len(given) == 4
        full = sandboxes.create("one-too-many")
        out = add(plugin, config, full, "one-too-many")
        assert not out.ok and out.code == 105, out
        assert "no available IPv4 addresses" in out.json["msg"]
        # Nothing half-done: no endpoint and no interface besides lo in the pod.
        # (Docker itself keeps an empty, endpoint-less entry for the network in
        # the container's settings after a refused connect; it does not block a
        # later connect and is gone with the sandbox.)
        assert not any(ep.get("EndpointID") for ep in full.networks().values())
        links = full.exec("ip", "-o", "link", check=True).stdout.decode()
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    finally:
        sandboxes.cleanup()
        remove_network(dockerd, name)


def test_docker_host_env_is_honoured(plugin, net, sandboxes, dockerd, dockerd_host_env):
    pod = sandboxes.create("env-host")
    config = {k: v for k, v in net.items() if k != "dockerSocket"}
    out = plugin("ADD", config, pod.id, pod.netns, args=pod_args("env-host"),
                 extra=dockerd_host_env)
    assert out.ok, out
    assert os.environ.get("DOCKER_HOST") != dockerd.host  # came from the plugin's env only
