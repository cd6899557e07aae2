"""Faults, measured: the node heals itself and running pods regain egress and names.

The whole "node" is a network namespace of its own, so a fault can be as
blunt as on a real node (`iptables -F`, `sysctl ip_forward=0`) without
touching the host: the plugin runs in it (`ip netns exec NODE plugin`), its
bridge, rules, DNS dummy interface and the DNS service live there, and the
service is run by the real supervisor (`smarter-cni supervise-dns`). Beyond
the node sits an "upstream" namespace with no route back to the pods, so a
pod's ping there is answered only through the node's masquerade; the node's
FORWARD policy is DROP, as on a host with Docker.

For each fault the test notes the time, breaks the node, and a probe inside
a pod (heal_probe.py: one ICMP echo upstream and one DNS query for the other
pod's name every 0.1 s) reports when both work again. The probe's first
round must fail (the fault really broke the pod) and the heal must take
under 10 s. The repair log lines of the service are kept for the table in
docs/reliability.md (`pytest -s` prints them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import sh, unique  # noqa: E402
from helpers.plugin import SRC, make_bin_dir, pod_args  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane.names import chain_name  # noqa: E402

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("heal_probe.py")
SUBNET, GATEWAY = "10.42.7.0/24", "10.42.7.1"
DNS_ADDRESS = "169.254.20.10"
NODE_UPLINK, UPSTREAM = "203.0.113.1", "203.0.113.2"
HEAL_LIMIT = 10.0
RESULTS: list[dict] = []


class Node:
    """A node in its own netns: plugin, bridge network, supervised DNS service, two pods."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = unique("scnode-", 20)
        self.upstream = unique("scup-", 20)
        self.pods: dict[str, dict] = {}
        self.pod_ns: list[str] = []
        self.bridge = unique("hb", 12)
        self.dns_if = unique("hd", 12)
        self.network = unique("heal-", 16)
        self.state = tmp / "state"
        self.state.mkdir(mode=0o700)
        self.bin = make_bin_dir(tmp / "bin")
        self.plugin_conf = {"cniVersion": "1.0.0", "name": self.network, "type": "smarter-cni",
                            "bridge": self.bridge, "subnet": SUBNET, "dnsAddress": DNS_ADDRESS}
        self.conflist = tmp / "10-heal.conflist"
        self.conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": self.network,
                                             "plugins": [{k: v for k, v in self.plugin_conf.items()
                                                          if k not in ("cniVersion", "name")}]}))
        (tmp / "resolv.conf").write_text("")
        self.log = tmp / "dns.log"
        self.supervisor: subprocess.Popen | None = None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *argv, check=check)

    def build(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "netns", "add", self.upstream)
        for ns in (self.ns, self.upstream):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
           "netns", self.upstream)
        sh("ip", "-n", self.ns, "addr", "add", f"{NODE_UPLINK}/24", "dev", "uplink")
        sh("ip", "-n", self.ns, "link", "set", "uplink", "up")
        sh("ip", "-n", self.upstream, "addr", "add", f"{UPSTREAM}/24", "dev", "eth0")
        sh("ip", "-n", self.upstream, "link", "set", "eth0", "up")
        self.run("iptables", "-P", "FORWARD", "DROP")  # as on a host with Docker
        for name in ("alpha", "beta"):
            self.add_pod(name)
        self.start_dns()

    def plugin(self, command: str, container: str, netns: str, args: str = ""
               ) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin), "CNI_ARGS": args,
               "SMARTER_CNI_STATE_DIR": str(self.state)}
        return subprocess.run(["ip", "netns", "exec", self.ns, str(self.bin / "smarter-cni")],
                              env=env, input=json.dumps(self.plugin_conf).encode(),
                              capture_output=True, timeout=60)

    def add_pod(self, name: str) -> None:
        ns = unique(f"schp{name[0]}-", 20)
        sh("ip", "netns", "add", ns)
        self.pod_ns.append(ns)
        done = self.plugin("ADD", f"ctr-{name}", f"/var/run/netns/{ns}", pod_args(name))
        assert done.returncode == 0, done
        address = json.loads(done.stdout)["ips"][0]["address"].split("/")[0]
        self.pods[name] = {"ns": ns, "ip": address}

    def start_dns(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_STATE_DIR=str(self.state))
        env.pop("SMARTER_CNI_RECONCILE_INTERVAL", None)  # the default interval is measured
        dns = [sys.executable, "-m", "smarter_cni", "dns", "--config", str(self.conflist),
               "--state-dir", str(self.state), "--interface", self.dns_if,
               "--resolv-conf", str(self.tmp / "resolv.conf")]
        with open(self.log, "ab") as log:
            self.supervisor = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "smarter_cni",
                 "supervise-dns", "--", *dns],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def dns_pid(self) -> int:
        """The DNS service: the supervisor's child (`ip netns exec` became the supervisor)."""
        assert self.supervisor is not None
        path = Path(f"/proc/{self.supervisor.pid}/task/{self.supervisor.pid}/children")
        children = path.read_text().split() if path.exists() else []
        return int(children[0]) if children else 0

    def probe(self, limit: float = 20.0) -> dict:
        pod = self.pods["alpha"]
        done = subprocess.run(["ip", "netns", "exec", pod["ns"], sys.executable, str(PROBE),
                               UPSTREAM, DNS_ADDRESS, "beta.default.svc.cluster.local",
                               self.pods["beta"]["ip"], str(limit)],
                              capture_output=True, text=True, timeout=limit + 30)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def our_rule_lines(self) -> list[str]:
        text = self.run("iptables-save").stdout.decode()
        chain = chain_name(self.network)
        return sorted(line for line in text.splitlines()
                      if line.startswith("-A ") and (self.network in line or chain in line))

    def stop(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is None:
            os.kill(self.supervisor.pid, signal.SIGTERM)
            try:
                self.supervisor.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.supervisor.pid, signal.SIGKILL)
                self.supervisor.wait(10)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            for ns in (*self.pod_ns, self.upstream, self.ns):
                sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("heal"))
    try:
        node.build()
        healthy = node.probe(30)
        assert healthy["healed"], f"the node never worked: {node.log.read_text()[-3000:]}"
        node.baseline_rules = node.our_rule_lines()
        assert len(node.baseline_rules) == 6, node.baseline_rules  # 2 FORWARD, jump, 3 in chain
        yield node
    finally:
        node.cleanup()
        if RESULTS:
            print("\nfault | time to heal | log")
            for row in RESULTS:
                print(f"{row['fault']} | {row['seconds']:.1f} s | {' / '.join(row['log'])}")


def _fault(node: Node, fault: str) -> None:
    if fault == "rules flushed":
        node.run("iptables", "-F")
        node.run("iptables", "-t", "nat", "-F")
    elif fault == "NAT rules flushed":
        node.run("iptables", "-t", "nat", "-F")
    elif fault == "bridge deleted":
        sh("ip", "-n", node.ns, "link", "del", node.bridge)
    elif fault == "bridge down":
        sh("ip", "-n", node.ns, "link", "set", node.bridge, "down")
    elif fault == "bridge address removed":
        sh("ip", "-n", node.ns, "addr", "flush", "dev", node.bridge)
    elif fault == "forwarding off":
        node.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    elif fault == "DNS address removed":
        shown = sh("ip", "-n", node.ns, "-o", "addr", "show", "to", DNS_ADDRESS).stdout.decode()
        assert shown, f"{DNS_ADDRESS} is on no device: {node.log.read_text()[-2000:]}"
        device = shown.split()[1]
        sh("ip", "-n", node.ns, "addr", "del", f"{DNS_ADDRESS}/32", "dev", device)
    elif fault == "DNS service SIGKILLed":
        pid = node.dns_pid()
        assert pid, "no DNS service under the supervisor"
        os.kill(pid, signal.SIGKILL)
    else:
        raise AssertionError(fault)


FAULTS = ["rules flushed", "NAT rules flushed", "bridge deleted", "bridge down", "bridge address removed",
          "forwarding off", "DNS address removed", "DNS service SIGKILLed"]


@pytest.mark.parametrize("fault", FAULTS)
def test_the_node_heals(node, fault):
    before = node.probe(15)
    assert before["healed"] and before["first_ok"], "the node was not whole before the fault"
    dns_before = node.dns_pid()
    log_offset = node.log.stat().st_size
    at = time.monotonic()
    _fault(node, fault)
    after = node.probe(30)
    assert after["first_ok"] is False, f"{fault} did not break the pod"
    assert after["healed"], f"not healed after 30 s: {node.log.read_text()[log_offset:]}"
    seconds = after["healed"] - at
    time.sleep(0.3)  # the repair's log line is written right after the repair itself
    lines = [line.strip() for line in node.log.read_text()[log_offset:].splitlines()
             if "repaired" in line or "restarting" in line or "serving" in line]
    RESULTS.append({"fault": fault, "seconds": seconds, "log": lines})
    print(f"{fault}: healed in {seconds:.2f} s; {lines}")
    assert seconds < HEAL_LIMIT, (fault, seconds, lines)
    assert lines, "no log line says what was repaired"
    # whole again, with no duplicate rule and the pods where they were
    assert node.our_rule_lines() == node.baseline_rules
    assert node.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == b"1"
    ports = node.run("ls", f"/sys/class/net/{node.bridge}/brif").stdout.decode().split()
    assert len(ports) == 2, ports
    if fault == "DNS service SIGKILLed":
        assert node.dns_pid() not in (0, dns_before)
        # the restarted service picked up the registry as it was: both pods' names
        for name, pod in node.pods.items():
            out = sh("ip", "netns", "exec", node.pods["alpha"]["ns"], "dig", f"@{DNS_ADDRESS}",
                     "+short", "+time=1", "+tries=2", f"{name}.default").stdout.decode().split()
            assert out == [pod["ip"]], (name, out)
    else:
        assert node.dns_pid() == dns_before  # healed in place, the service was not restarted
    repairs = json.loads((node.state / "repairs.json").read_text()) \
        if (node.state / "repairs.json").exists() else []
    if fault != "DNS service SIGKILLed":
        assert any(r["time"] >= time.time() - 60 for r in repairs), repairs
