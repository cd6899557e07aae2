"""Docker-mode faults, measured: the node heals without recreating pods.

The node DNS service (with its reconciler, default 2 s interval) runs as on
a node: in the host netns, on the Docker network's reserved DNS address
(the test /24's .2, on a dummy interface of the test's own), with the
plugin's state dir. Each dockerd here is a private one of the test's own
(helpers/dockerd.py: its own root, socket and default bridge, no iptables),
never the node's.

dockerd restarted (SIGTERM, and SIGKILL as in a crash) with two pods
attached, under `live-restore` (without it dockerd stops every container
itself, so no pod can survive: see test_docker_restart.py). A probe inside
pod alpha (docker_heal_probe.py: the node DNS name and the Docker DNS alias
of pod beta, and a ping to it, every 0.1 s) must see the fault break the
pod and reports when all three work again. Afterwards: the same network,
its DNS reservation, the pods' addresses and records, and CHECK passes.

The Docker network removed while nothing is attached: the reconciler
recreates it with the reservation (ensure_network) and logs one line; the
time is from `docker network rm` to the network being back.

`pytest -s` prints the table rows for docs/reliability.md.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from heal_probe import resolve
from test_dns_helpers import DnsService
from test_docker_restart import OwnDockerd

from helpers.netns import delete_link, unique
from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.dataplane.docker_network import DNS_AUX_NAME
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]

PROBE = Path(__file__).with_name("docker_heal_probe.py")
HEAL_LIMIT = 10.0
PR_SET_CHILD_SUBREAPER = 36
RESULTS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    if RESULTS:
        print("\nfault | time to heal | log")
        for row in RESULTS:
            print(f"{row['fault']} | {row['seconds']:.1f} s | {' / '.join(row['log'])}")


def _records(state_dir: Path) -> dict:
    return json.loads((state_dir / "attachments.json").read_text())["attachments"]


def _start_service(tmp_path: Path, config: dict, state_dir: Path) -> tuple[DnsService, str]:
    conflist = tmp_path / "10-docker.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": config["name"],
                                    "plugins": [dict(config, cniVersion=None)]}))
    interface = unique("sdh")
    service = DnsService(tmp_path, config["dnsAddress"], state_dir, conflist,
                         extra=["--interface", interface])
    env = os.environ.pop("SMARTER_CNI_RECONCILE_INTERVAL", None)  # the default is measured
    try:
        service.start()
    finally:
        if env is not None:
            os.environ["SMARTER_CNI_RECONCILE_INTERVAL"] = env
    return service, interface


def _log_lines(service: DnsService, offset: int) -> list[str]:
    text = service.log_path.read_text()[offset:]
    return [line.strip() for line in text.splitlines()
            if "reconciler" in line or "network " in line]


class DockerNode:
    """A private live-restore dockerd, its network, the node DNS service and two pods."""

    def __init__(self, plugin, state_dir: Path, tmp_path: Path) -> None:
        self.plugin, self.state_dir = plugin, state_dir
        self.own = OwnDockerd(("--live-restore",))
        self.config = self.own.config
        self.service, self.interface = _start_service(tmp_path, self.config, state_dir)
        self.pods: dict[str, dict] = {}
        for name in ("alpha", "beta"):
            box = self.own.sandboxes.create(name)
            added = plugin("ADD", self.config, box.id, box.netns, args=pod_args(name))
            assert added.ok, added
            self.pods[name] = {"box": box, "result": added.json,
                               "ip": added.json["ips"][0]["address"].split("/")[0]}

    def probe(self) -> subprocess.Popen:
        """Start the probe in alpha's netns; return once its first round worked."""
        beta = self.pods["beta"]["ip"]
        proc = subprocess.Popen(
            ["nsenter", f"--net={self.pods['alpha']['box'].netns}", sys.executable, str(PROBE),
             self.config["dnsAddress"], "beta.default.svc.cluster.local", "beta", beta, "40"],
            stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first.get("ok") is True, f"the pod was not whole before the fault: {first}"
        return proc

    def cleanup(self) -> None:
        try:
            self.service.stop()  # first: its reconciler must not recreate what we remove
            delete_link(self.interface)
        finally:
            self.own.cleanup()


@pytest.fixture
def docker_node(plugin, state_dir, tmp_path):
    node = DockerNode(plugin, state_dir, tmp_path)
    try:
        yield node
    finally:
        node.cleanup()


def _set_child_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _kill_dockerd(node: DockerNode) -> None:
    """SIGKILL dockerd; its own containerd dies with it (parent-death signal).

    The test plays init's part for that orphan: on a node, systemd reaps it at
    once (and Debian's dockerd uses containerd.service, which a dockerd crash
    does not touch). Here PID 1 reaps late, and a restarted dockerd that finds
    the unreaped containerd's PID alive waits 15 s for it, then exits.
    """
    pidfile = Path(node.own.root, "exec", "containerd", "containerd.pid")
    containerd = int(pidfile.read_text().strip())
    _set_child_subreaper(True)
    try:
        os.kill(node.own.daemon.pid, signal.SIGKILL)
        node.own.daemon._proc.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.waitpid(containerd, os.WNOHANG)[0] == containerd:
                    break
            except ChildProcessError:
                break  # not ours to reap: already gone
            time.sleep(0.01)
    finally:
        _set_child_subreaper(False)


def _restart(node: DockerNode, how: str) -> None:
    if how == "dockerd restarted (live-restore)":
        node.own.stop()
    else:
        _kill_dockerd(node)
        time.sleep(0.1)  # systemd restarts docker.service (Restart=on-failure) after 100 ms
    node.own.start()


@pytest.mark.parametrize("fault", ["dockerd restarted (live-restore)",
                                   "dockerd SIGKILLed, then started (live-restore)"])
def test_the_node_heals_a_dockerd_restart(docker_node, fault):
    node, config = docker_node, docker_node.config
    before_net = node.own.daemon.network_inspect(config["network"])
    before_records = _records(node.state_dir)
    pids = {name: pod["box"].pid for name, pod in node.pods.items()}
    offset = node.service.log_path.stat().st_size
    proc = node.probe()
    at = time.monotonic()
    _restart(node, fault)
    answered = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["broken"], f"{fault} never broke the pod: {result}"
    assert result["healed"], f"not healed within 40 s: {result}"
    seconds = result["healed"] - at
    lines = _log_lines(node.service, offset)
    deadline = time.monotonic() + 10  # a look that saw dockerd away says when it is back
    while any("does not answer" in line for line in lines) and \
            not any("no longer" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.2)
        lines = _log_lines(node.service, offset)
    RESULTS.append({"fault": fault, "seconds": seconds, "log": lines})
    print(f"{fault}: dockerd answered after {answered - at:.2f} s; the pod broke "
          f"({', '.join(result['failed'])}) and healed after {seconds:.2f} s; {lines}")
    daemon_log = Path(node.own.root, "dockerd.log").read_text(errors="replace")[-3000:]
    assert seconds < HEAL_LIMIT, (fault, seconds, lines, daemon_log)

    # The same network, still reserving the DNS address; the same pods, addresses, records.
    after_net = node.own.daemon.network_inspect(config["network"])
    assert after_net is not None and after_net["Id"] == before_net["Id"]
    assert after_net["IPAM"]["Config"][0]["AuxiliaryAddresses"] == {
        DNS_AUX_NAME: config["dnsAddress"]}
    for name, pod in node.pods.items():
        box = pod["box"]
        assert int(node.own.daemon.inspect(box.id)["State"]["Pid"]) == pids[name]
        assert box.networks()[config["network"]]["IPAddress"] == pod["ip"]
        check = node.plugin("CHECK", dict(config, prevResult=pod["result"]), box.id, box.netns,
                            args=pod_args(name))
        assert check.ok, check
        assert resolve(config["dnsAddress"], f"{name}.default.svc.cluster.local", pod["ip"])
    assert _records(node.state_dir) == before_records
    assert not [line for line in lines if "repaired network" in line], lines  # nothing rebuilt
    if any("does not answer" in line for line in lines):  # a look fell into the outage
        assert "no longer: dockerd does not answer" in lines[-1], lines


def test_a_docker_network_removed_while_unused_is_recreated(plugin, docker_network, dockerd,
                                                            sandboxes, state_dir, tmp_path):
    config = docker_network
    docker_mode.ensure_network(parse_netconf(config))
    service, interface = _start_service(tmp_path, config, state_dir)
    try:
        old = sandboxes.create("old")
        assert plugin("ADD", config, old.id, old.netns, args=pod_args("old")).ok  # claims it
        assert plugin("DEL", config, old.id, old.netns).ok  # nothing attached any more
        first_id = dockerd.network_inspect(config["network"])["Id"]
        offset = service.log_path.stat().st_size
        at = time.monotonic()
        dockerd.cli("network", "rm", config["network"])
        network = None
        while time.monotonic() - at < 30 and network is None:
            time.sleep(0.05)
            network = dockerd.network_inspect(config["network"])
        seconds = time.monotonic() - at
        assert network is not None, service.log_path.read_text()[offset:]
        time.sleep(0.3)  # the log line follows the repair
        lines = _log_lines(service, offset)
        RESULTS.append({"fault": "Docker network removed (nothing attached)",
                        "seconds": seconds, "log": lines})
        print(f"network removed: back after {seconds:.2f} s; {lines}")
        assert seconds < HEAL_LIMIT
        assert network["Id"] != first_id
        assert network["IPAM"]["Config"][0]["Subnet"] == config["subnet"]
        assert network["IPAM"]["Config"][0]["AuxiliaryAddresses"] == {
            DNS_AUX_NAME: config["dnsAddress"]}
        repaired = [line for line in lines if "repaired" in line]
        assert len(repaired) == 1 and f"{config['network']} is missing" in repaired[0], lines
        # New pods work on it, with their names in the node DNS.
        new = sandboxes.create("new")
        added = plugin("ADD", config, new.id, new.netns, args=pod_args("new"))
        assert added.ok, added
        address = added.json["ips"][0]["address"].split("/")[0]
        assert address != config["dnsAddress"]
        deadline = time.monotonic() + 5
        while not resolve(config["dnsAddress"], "new.default.svc.cluster.local", address):
            assert time.monotonic() < deadline, "the node DNS never served the new pod"
            time.sleep(0.1)
        assert plugin("DEL", config, new.id, new.netns).ok
    finally:
        service.stop()
        delete_link(interface)
