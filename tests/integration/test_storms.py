"""Storms: many concurrent ADDs then DELs, as kubelet sends them when a node fills up.

CI size: 2 rounds of 32; `SMARTER_CNI_LONG=1`: 10 rounds of 64 (issue 7).
After every round: zero errors, zero duplicate addresses, the store back to
empty (the pool full again), zero host links left on the bridge, and the
firewall rules of the network exactly as after its set-up (none per pod).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import link_exists, sh, unique  # noqa: E402
from helpers.plugin import SRC, pod_args, teardown_bridge_network  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane.names import chain_name, host_ifname  # noqa: E402

pytest_plugins = ("helpers.dockerd",)  # fixtures: dockerd, busybox_image, sandboxes, docker_network
pytestmark = pytest.mark.root

LONG = os.environ.get("SMARTER_CNI_LONG") == "1"
ROUNDS, WIDTH = (10, 64) if LONG else (2, 32)


def records(state_dir: Path) -> dict:
    path = state_dir / "attachments.json"
    if not path.exists():
        return {}
    return json.loads(path.read_bytes())["attachments"]


def bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))
    except FileNotFoundError:
        return []


def firewall_lines(config: dict) -> list[str]:
    tokens = (f"smarter-cni {config['name']}", chain_name(config["name"]))
    text = sh("iptables-save", check=False).stdout.decode()
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                  if any(t in line for t in tokens))


def teardown(config: dict, state_dir: Path) -> None:
    teardown_bridge_network(config, state_dir)


def _timed(plugin, *args, **kwargs):
    start = time.monotonic()
    result = plugin(*args, **kwargs)
    return result, time.monotonic() - start


def test_storm_rounds(plugin, bridge_network, netns, state_dir, record_property) -> None:
    spaces = [netns.create("storm") for _ in range(WIDTH)]
    config = bridge_network
    rules_after_setup: list[str] | None = None
    add_times: list[float] = []
    del_times: list[float] = []
    for round_no in range(ROUNDS):
        ids = [f"storm{round_no}-{i}-{unique('', 8)}" for i in range(WIDTH)]
        with ThreadPoolExecutor(max_workers=WIDTH) as pool:
            added = list(pool.map(
                lambda i, ids=ids: _timed(plugin, "ADD", config, ids[i], spaces[i][1],
                                          args=pod_args(f"storm-{i}")), range(WIDTH)))
        failures = [r for r, _ in added if not r.ok]
        assert not failures, f"round {round_no}: {len(failures)} ADDs failed, e.g. {failures[0]!r}"
        add_times += [t for _, t in added]
        addresses = [r.json["ips"][0]["address"] for r, _ in added]
        assert len(set(addresses)) == WIDTH, f"duplicate addresses: {sorted(addresses)}"
        stored = records(state_dir)
        assert len(stored) == WIDTH and all(r["ready"] for r in stored.values())
        assert sorted(ip for r in stored.values() for ip in r["ips"]) == sorted(addresses)
        assert len(bridge_ports(config["bridge"])) == WIDTH
        for i in range(WIDTH):  # each pod really has its own address
            shown = sh("ip", "-n", spaces[i][0], "-4", "-o", "addr", "show", "dev", "eth0").stdout.decode()
            assert addresses[i] in shown
        if rules_after_setup is None:
            rules_after_setup = firewall_lines(config)
            assert rules_after_setup, "the network's forward/NAT rules were not set up"

        with ThreadPoolExecutor(max_workers=WIDTH) as pool:
            deleted = list(pool.map(
                lambda i, ids=ids: _timed(plugin, "DEL", config, ids[i], spaces[i][1]), range(WIDTH)))
        failures = [r for r, _ in deleted if not r.ok]
        assert not failures, f"round {round_no}: {len(failures)} DELs failed, e.g. {failures[0]!r}"
        del_times += [t for _, t in deleted]
        assert records(state_dir) == {}, "the store is not empty after DEL"
        assert bridge_ports(config["bridge"]) == [], "host links left on the bridge"
        leftover = [host_ifname(c, "eth0") for c in ids if link_exists(host_ifname(c, "eth0"))]
        assert not leftover, leftover
        for name, _ in spaces:
            links = sh("ip", "-n", name, "-o", "link").stdout.decode()
            assert "eth0" not in links
        assert firewall_lines(config) == rules_after_setup, "per-pod firewall rules leaked"
    ops = ROUNDS * WIDTH * 2
    record_property("storm_ops", ops)
    print(f"\nstorm: {ROUNDS} rounds x {WIDTH}: {ops} ops, 0 errors, 0 duplicates, 0 leftovers; "
          f"concurrent ADD median {statistics.median(add_times) * 1000:.0f} ms "
          f"max {max(add_times) * 1000:.0f} ms; DEL median {statistics.median(del_times) * 1000:.0f} ms "
          f"max {max(del_times) * 1000:.0f} ms")


def test_pool_exhaustion_and_recovery(plugin, bridge_network, netns, state_dir) -> None:
    """A /29 holds 5 pods (gateway .1): the 6th ADD gets code 100 and leaves nothing; after a DEL it works."""
    config = dict(bridge_network, subnet=bridge_network["subnet"].replace(".0/24", ".0/29"))
    spaces = [netns.create("pool") for _ in range(7)]
    ids = [f"pool{i}-{unique('', 8)}" for i in range(7)]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda i: plugin("ADD", config, ids[i], spaces[i][1]), range(6)))
        good = [r for r in results if r.ok]
        bad = [r for r in results if not r.ok]
        assert len(good) == 5 and len(bad) == 1, results
        assert bad[0].code == 100, bad[0]
        assert "no free address" in bad[0].json["msg"], bad[0]
        loser = results.index(bad[0])
        assert not link_exists(host_ifname(ids[loser], "eth0")), "the failed ADD left its veth"
        assert "eth0" not in sh("ip", "-n", spaces[loser][0], "-o", "link").stdout.decode()
        assert len(records(state_dir)) == 5
        assert len({r.json["ips"][0]["address"] for r in good}) == 5

        again = plugin("ADD", config, ids[6], spaces[6][1])
        assert again.code == 100, again
        winner = results.index(good[2])
        freed = good[2].json["ips"][0]["address"]
        deleted = plugin("DEL", config, ids[winner], spaces[winner][1])
        assert deleted.ok, deleted
        again = plugin("ADD", config, ids[6], spaces[6][1])
        assert again.ok, again
        assert again.json["ips"][0]["address"] == freed
    finally:
        for i in range(7):
            plugin("DEL", config, ids[i], spaces[i][1])
        assert records(state_dir) == {}
        teardown(config, state_dir)


def test_concurrent_first_adds_build_one_bridge(plugin, bridge_network, netns, state_dir) -> None:
    """Many ADDs racing on a node where the bridge does not exist yet: one bridge, one address on it."""
    width = 16
    spaces = [netns.create("race") for _ in range(width)]
    ids = [f"race{i}-{unique('', 8)}" for i in range(width)]
    assert not link_exists(bridge_network["bridge"])
    try:
        with ThreadPoolExecutor(max_workers=width) as pool:
            results = list(pool.map(lambda i: plugin("ADD", bridge_network, ids[i], spaces[i][1]),
                                    range(width)))
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        shown = sh("ip", "-4", "-o", "addr", "show", "dev", bridge_network["bridge"]).stdout.decode()
        assert shown.count(" inet ") == 1, shown
        rules = firewall_lines(bridge_network)
        assert len(rules) == len(set(rules)), f"duplicate firewall rules: {rules}"
        for i in range(width):  # every pod reaches the gateway through the one bridge
            gateway = results[i].json["ips"][0]["gateway"]
            ping = subprocess.run(["ip", "netns", "exec", spaces[i][0], "ping", "-c1", "-W2", gateway],
                                  capture_output=True, timeout=10)
            assert ping.returncode == 0, ping.stdout
    finally:
        for i in range(width):
            plugin("DEL", bridge_network, ids[i], spaces[i][1])


# ---------------------------------------------------------------- docker mode

DOCKER_ROUNDS, DOCKER_WIDTH = (10, 64) if LONG else (1, 16)


@pytest.mark.docker
def test_docker_mode_storm(plugin, docker_network, dockerd, sandboxes, state_dir) -> None:
    """The same storm through docker mode: Docker connects each sandbox to the network."""
    from smarter_cni.dataplane import docker_mode
    from smarter_cni.netconf import parse_netconf

    # dockerd serializes network connects (~0.1-0.3 s each here): with 64 at once the last
    # waits 6-8 s. The default config must carry the storm: dockerd answers the sandbox
    # lookup within dockerTimeout, then the connect may queue for dockerConnectTimeout.
    config = dict(docker_network)
    docker_mode.ensure_network(parse_netconf(config))
    network_id = dockerd.network_inspect(config["network"])["Id"]
    docker_bridge = f"br-{network_id[:12]}"
    pods = [sandboxes.create(f"dstorm-{i}") for i in range(DOCKER_WIDTH)]
    slowest = 0.0
    for round_no in range(DOCKER_ROUNDS):
        with ThreadPoolExecutor(max_workers=DOCKER_WIDTH) as pool:
            timed = list(pool.map(lambda i: _timed(plugin, "ADD", config, pods[i].id, pods[i].netns,
                                                   args=pod_args(f"dstorm-{i}")), range(DOCKER_WIDTH)))
        added = [r for r, _ in timed]
        slowest = max(slowest, max(t for _, t in timed))
        failures = [r for r in added if not r.ok]
        assert not failures, f"round {round_no}: {len(failures)} ADDs failed, e.g. {failures[0]!r}"
        addresses = [r.json["ips"][0]["address"] for r in added]
        assert len(set(addresses)) == DOCKER_WIDTH, sorted(addresses)
        assert len(records(state_dir)) == DOCKER_WIDTH
        attached = dockerd.network_inspect(config["network"]).get("Containers") or {}
        assert len(attached) == DOCKER_WIDTH
        with ThreadPoolExecutor(max_workers=DOCKER_WIDTH) as pool:
            deleted = list(pool.map(lambda i: plugin("DEL", config, pods[i].id, pods[i].netns),
                                    range(DOCKER_WIDTH)))
        failures = [r for r in deleted if not r.ok]
        assert not failures, f"round {round_no}: {len(failures)} DELs failed, e.g. {failures[0]!r}"
        assert records(state_dir) == {}
        assert not dockerd.network_inspect(config["network"]).get("Containers")
        assert bridge_ports(docker_bridge) == [], "veths left on Docker's bridge"
    print(f"\ndocker storm: {DOCKER_ROUNDS} rounds x {DOCKER_WIDTH}: "
          f"{DOCKER_ROUNDS * DOCKER_WIDTH * 2} ops, 0 errors, 0 duplicates, 0 leftovers; "
          f"slowest concurrent ADD {slowest:.1f} s")


def test_delegated_ipam_exhaustion_leaves_nothing(plugin, bridge_network, netns, state_dir, tmp_path) -> None:
    """host-local as the IPAM plugin, run dry: the failing ADD leaves no veth (the reference
    bridge plugin leaves the pair behind until DEL) and no record; a DEL frees an address."""
    if not (plugin.bin_dir / "host-local").exists():
        pytest.skip("containernetworking-plugins (host-local) is not installed")
    subnet = bridge_network["subnet"]
    base = subnet.rsplit(".", 1)[0]
    config = dict(bridge_network, ipam={
        "type": "host-local", "dataDir": str(tmp_path / "host-local"),
        "ranges": [[{"subnet": subnet, "rangeStart": f"{base}.10", "rangeEnd": f"{base}.12",
                     "gateway": f"{base}.1"}]]})
    spaces = [netns.create("hl") for _ in range(4)]
    ids = [f"hl{i}-{unique('', 8)}" for i in range(4)]
    try:
        for i in range(3):
            added = plugin("ADD", config, ids[i], spaces[i][1])
            assert added.ok, added
        failed = plugin("ADD", config, ids[3], spaces[3][1])
        assert not failed.ok and failed.json["msg"], failed
        assert "Traceback" not in failed.stdout + failed.stderr
        assert not link_exists(host_ifname(ids[3], "eth0")), "veth left after the IPAM error"
        assert "eth0" not in sh("ip", "-n", spaces[3][0], "-o", "link").stdout.decode()
        assert len(records(state_dir)) == 3
        assert plugin("DEL", config, ids[0], spaces[0][1]).ok
        again = plugin("ADD", config, ids[3], spaces[3][1])
        assert again.ok, again
    finally:
        for i in range(4):
            plugin("DEL", config, ids[i], spaces[i][1])
    assert records(state_dir) == {}
    held = [n for n in os.listdir(tmp_path / "host-local" / bridge_network["name"])
            if n not in ("lock", "last_reserved_ip.0")]
    assert not held, \
        "host-local still holds reservations"
