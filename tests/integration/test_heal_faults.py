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

A second, dual-stack node (`node6`: subnet6 and dnsAddress6, IPv6 switched on
in its namespaces) has its IPv6 DNS address removed (the probe asks the IPv6
listener) and its IPv6 listener silenced by an ip6tables drop, which the
reconciler must report after LISTENER_FAILURES_BEFORE_REPORT looks.
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
SUBNET6, DNS_ADDRESS6 = "fd42:77:7::/64", "fd42:77:53::2"  # node6 only (unique local)
NODE_UPLINK, UPSTREAM = "203.0.113.1", "203.0.113.2"
HEAL_LIMIT = 10.0
RESULTS: list[dict] = []


class Node:
    """A node in its own netns: plugin, bridge network, supervised DNS service, two pods."""

    def __init__(self, tmp: Path, ipv6: bool = False) -> None:
        self.tmp = tmp
        self.ipv6 = ipv6
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
        if ipv6:
            self.plugin_conf.update(subnet6=SUBNET6, dnsAddress6=DNS_ADDRESS6)
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
            self.prepare_ns(ns)
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

    def prepare_ns(self, ns: str) -> None:
        """lo up; on node6 IPv6 switched on explicitly (a host may default to it off)."""
        if self.ipv6:
            for scope in ("all", "default", "lo"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw",
                   f"net.ipv6.conf.{scope}.disable_ipv6=0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

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
        self.prepare_ns(ns)
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

    def probe(self, limit: float = 20.0, dns: str = DNS_ADDRESS) -> dict:
        pod = self.pods["alpha"]
        done = subprocess.run(["ip", "netns", "exec", pod["ns"], sys.executable, str(PROBE),
                               UPSTREAM, dns, "beta.default.svc.cluster.local",
                               self.pods["beta"]["ip"], str(limit)],
                              capture_output=True, text=True, timeout=limit + 30)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def our_rule_lines(self) -> list[str]:
        text = self.run("iptables-save").stdout.decode()
        chain = chain_name(self.network)
        return sorted(line for line in text.splitlines()
                      if line.startswith("-A ") and (self.network in line or chain in line))

    def log_since(self, offset: int) -> str:
        return self.log.read_text()[offset:]

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


def _built(node: Node, dns: str = DNS_ADDRESS) -> Node:
    node.build()
    healthy = node.probe(30, dns)
    assert healthy["healed"], f"the node never worked: {node.log.read_text()[-3000:]}"
    node.baseline_rules = node.our_rule_lines()
    assert len(node.baseline_rules) == 6, node.baseline_rules  # 2 FORWARD, jump, 3 in chain
    return node


@pytest.fixture(scope="module")
def node6(tmp_path_factory):
    """A dual-stack node: the DNS service also listens on DNS_ADDRESS6."""
    node = Node(tmp_path_factory.mktemp("heal6"), ipv6=True)
    try:
        yield _built(node, DNS_ADDRESS6)
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("heal"))
    try:
        yield _built(node)
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


# ---------------------------------------------------------------- the IPv6 DNS listener (node6)

def _dns6_device(node: Node) -> str:
    shown = sh("ip", "-n", node.ns, "-6", "-o", "addr", "show", "to", DNS_ADDRESS6).stdout.decode()
    assert shown, f"{DNS_ADDRESS6} is on no device: {node.log.read_text()[-2000:]}"
    return shown.split()[1]


def _metric(node: Node, name: str) -> str:
    """The service's /metrics lines for `name` (read inside the node's namespace)."""
    script = ("import urllib.request; print(urllib.request.urlopen("
              f"'http://{DNS_ADDRESS}:9153/metrics', timeout=5).read().decode())")
    text = node.run(sys.executable, "-c", script).stdout.decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_the_ipv6_dns_address_is_restored(node6):
    """`ip -6 addr del` of dnsAddress6: the pod's queries to it fail, then the reconciler
    puts it back (same service, no restart): a log line, repairs.json, the metrics."""
    before = node6.probe(15, DNS_ADDRESS6)
    assert before["healed"] and before["first_ok"], "the IPv6 listener did not answer before"
    dns_before = node6.dns_pid()
    repairs_before = _metric(node6, "smarter_cni_node_repairs_total")
    log_offset = node6.log.stat().st_size
    at = time.monotonic()
    sh("ip", "-n", node6.ns, "-6", "addr", "del", f"{DNS_ADDRESS6}/128", "dev", _dns6_device(node6))
    after = node6.probe(30, DNS_ADDRESS6)
    assert after["first_ok"] is False, "removing the IPv6 DNS address did not break the pod"
    assert after["healed"], f"not healed after 30 s: {node6.log_since(log_offset)}"
    seconds = after["healed"] - at
    time.sleep(0.3)  # the repair's log line is written right after the repair itself
    lines = [line.strip() for line in node6.log_since(log_offset).splitlines()
             if "repaired" in line]
    RESULTS.append({"fault": "IPv6 DNS address removed", "seconds": seconds, "log": lines})
    print(f"IPv6 DNS address removed: healed in {seconds:.2f} s; {lines}")
    assert seconds < HEAL_LIMIT, (seconds, lines)
    assert len(lines) == 1 and f"repaired DNS address {DNS_ADDRESS6} was missing (added to " \
        in lines[0], lines
    assert _dns6_device(node6)  # back on the node
    assert node6.dns_pid() == dns_before  # restored in place, the service was not restarted
    repairs = json.loads((node6.state / "repairs.json").read_text())
    assert [r for r in repairs if r["by"] == "reconciler" and r["time"] >= time.time() - 60
            and r["what"].startswith(f"DNS address {DNS_ADDRESS6} was missing")], repairs
    counted = _metric(node6, "smarter_cni_node_repairs_total")
    assert counted != repairs_before and 'kind="dns"' in counted, (repairs_before, counted)
    # the IPv4 listener was never touched
    assert node6.probe(5)["first_ok"]


def test_a_silent_ipv6_listener_is_reported_after_the_threshold(node6):
    """An ip6tables drop in front of the IPv6 listener only: the reconciler logs it after
    LISTENER_FAILURES_BEFORE_REPORT misses, keeps serving IPv4, restarts nothing, and
    says so when it answers again."""
    from smarter_cni.reconcile import LISTENER_FAILURES_BEFORE_REPORT

    rule = ["INPUT", "-d", f"{DNS_ADDRESS6}/128", "-p", "udp", "--dport", "53", "-j", "DROP"]
    dns_before = node6.dns_pid()
    log_offset = node6.log.stat().st_size
    silent = f"DNS listener on [{DNS_ADDRESS6}]:53 did not answer " \
        f"{LISTENER_FAILURES_BEFORE_REPORT} checks in a row"
    node6.run("ip6tables", "-I", *rule)
    try:
        at = time.monotonic()
        while silent not in node6.log_since(log_offset) and time.monotonic() - at < 20:
            time.sleep(0.2)
        seconds = time.monotonic() - at
        said = node6.log_since(log_offset)
        assert silent in said, said
        print(f"silent IPv6 listener reported after {seconds:.1f} s")
        # not before the threshold: at least (threshold - 1) full intervals of 2 s
        assert seconds >= (LISTENER_FAILURES_BEFORE_REPORT - 1) * 2.0 - 0.5, (seconds, said)
        assert said.count(silent) == 1, said
        assert "DNS listener on 169.254" not in said, said  # IPv4 is counted on its own
        assert node6.probe(5)["first_ok"], "the IPv4 listener stopped too"
        assert node6.dns_pid() == dns_before  # reported, not a restart
    finally:
        node6.run("ip6tables", "-D", *rule, check=False)
    again = f"DNS listener on [{DNS_ADDRESS6}]:53 answers again"
    at = time.monotonic()
    while again not in node6.log_since(log_offset) and time.monotonic() - at < 15:
        time.sleep(0.2)
    assert again in node6.log_since(log_offset), node6.log_since(log_offset)
    assert node6.probe(10, DNS_ADDRESS6)["first_ok"]
