"""Shared pieces for the DNS tests (no tests here): the service as a real
subprocess, a real dnsmasq upstream, records written through the real store,
and `dig` with its output parsed."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import session_watch
from helpers.netns import run_id, unique

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from smarter_cni import store  # noqa: E402
from smarter_cni.dns.acl import host_has  # noqa: E402

DNSMASQ = "/usr/sbin/dnsmasq"
DIG = "/usr/bin/dig"
# The DNS tests' network: its name would name host iptables rules, were any made for it.
NETWORK = run_id("dnstest")


def port_free(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def is_local(address: str) -> bool:
    """Whether the address is this host's (a bind test: no packet is sent)."""
    return host_has(address)


def unique_loopback() -> str:
    """A 127.x.y.z address nobody serves port 53 on (loopback owns all of 127/8)."""
    for _ in range(100):
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        if port_free(address, 53):
            return address
    raise RuntimeError("no free loopback address")


def free_port(address: str = "127.0.0.1") -> int:
    for _ in range(100):
        port = random.randint(20000, 60000)
        if port_free(address, port):
            return port
    raise RuntimeError("no free port")


def write_conflist(directory: Path, subnet: str = "10.99.0.0/16", name: str = NETWORK,
                   **extra: object) -> Path:
    path = directory / "10-dnstest.conflist"
    # Never the default bridge smarter0, should anything ever act on this config's network.
    plugin = {"type": "smarter-cni", "subnet": subnet, "bridge": unique("sdb"), **extra}
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}))
    return path


class Registry:
    """Pod records written exactly as the plugin writes them (store.save: temp + rename)."""

    def __init__(self, state_dir: Path, network: str = NETWORK) -> None:
        self.state_dir = state_dir
        self.network = network
        self.state = store.empty_state()

    def add(self, container: str, name: str, ip: str, namespace: str = "default",
            hostname: str = "", save: bool = True) -> None:
        from smarter_cni.registry import pod_identity

        self.state["attachments"][f"{self.network}/{container}/eth0"] = {
            "network": self.network, "mode": "bridge", "container_id": container,
            "ifname": "eth0", "ips": [f"{ip}/16"], "domain": "cluster.local",
            "pod": pod_identity(name, namespace, "", hostname), "ready": True,
            "created": time.time()}
        if save:
            self.save()

    def remove(self, container: str) -> None:
        self.state["attachments"].pop(f"{self.network}/{container}/eth0", None)
        self.save()

    def save(self) -> None:
        store.save(self.state, str(self.state_dir))


def probe(address: str, port: int = 53, timeout: float = 0.3) -> bytes | None:
    """One raw query (SOA of cluster.local); the raw answer or None."""
    qid = random.randint(1, 0xFFFF)
    packet = (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
              + b"\x07cluster\x05local\x00" + struct.pack("!HH", 6, 1))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(packet, (address, port))
        data, _ = sock.recvfrom(4096)
        return data if data[:2] == packet[:2] else None
    except OSError:
        return None
    finally:
        sock.close()


class DnsService:
    """`python -m smarter_cni.dns` as a subprocess, stopped by its PID."""

    def __init__(self, tmp_path: Path, listen: str, state_dir: Path, conf: Path,
                 upstreams: list[str] = (), extra: list[str] = (), port: int = 53) -> None:
        self.tmp_path = tmp_path
        self.listen = listen
        self.port = port
        self.state_dir = state_dir
        self.conf = conf
        self.upstreams = list(upstreams)
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / f"dns-{listen}.log"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "smarter_cni.dns", "--config", str(self.conf),
                "--listen", self.listen, "--port", str(self.port),
                "--state-dir", str(self.state_dir), *self.extra]
        if self.upstreams:
            for upstream in self.upstreams:
                argv += ["--upstream", upstream]
        elif "--resolv-conf" not in self.extra:
            empty = self.tmp_path / "resolv.conf"
            empty.write_text("")
            argv += ["--resolv-conf", str(empty)]
        return argv

    def start(self, wait: float = 10.0) -> DnsService:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(self.argv(), env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        session_watch.track_process(self.proc.pid)  # ended by the watchdog if pytest is killed
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"DNS service exited {self.proc.returncode}: "
                                     f"{self.log_path.read_text()}")
            # Never probe an address before it is the node's own: until then a
            # packet to it would follow the default route off the machine.
            if is_local(self.listen) and probe(self.listen, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"DNS service never answered: {self.log_path.read_text()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class Dnsmasq:
    """A real dnsmasq on loopback (127.0.0.1:<free port> by default), answering
    from TEST-NET-1."""

    def __init__(self, tmp_path: Path, records: dict[str, str], extra: list[str] = (),
                 address: str = "127.0.0.1", port: int = 0) -> None:
        self.address = address
        self.extra = list(extra)
        self.port = port or free_port(self.address)
        self.tmp_path = tmp_path
        self.records = records
        self.proc: subprocess.Popen | None = None

    def start(self) -> Dnsmasq:
        argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--bind-interfaces", f"--listen-address={self.address}",
                f"--port={self.port}", "--pid-file=", "--user=root", "--cache-size=0"]
        argv += [f"--host-record={name},{ip}" for name, ip in self.records.items()]
        argv += self.extra
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        session_watch.track_process(self.proc.pid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited {self.proc.returncode}")
            if dig(self.address, "anything.invalid", port=self.port).status:
                return self
            time.sleep(0.05)
        raise AssertionError("dnsmasq never answered")

    @property
    def upstream(self) -> str:
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class NetnsUpstream:
    """A real dnsmasq in a network namespace of its own, reached from the host over a
    veth pair (198.18.x.y/30, the benchmarking range).

    `cut()` takes the namespace's end of the link down: the upstream stops answering
    and no ICMP comes back, as when a gateway's uplink dies. A blackhole route for
    the /30 (behind the link's own route) makes sure no packet for it can ever leave
    by the default route, whatever state the link is in. `stop()` removes it all.
    """

    def __init__(self, records: dict[str, str], extra: list[str] = ()) -> None:
        from helpers.netns import unique

        self.ns = unique("scdns-", 20)
        self.host_if = unique("vdh")
        self.ns_if = unique("vdn")
        self.records = records
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.subnet = ""
        self.address = ""
        self.host_address = ""
        self.made: list[str] = []

    def _ip(self, *argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)

    def _pick_subnet(self) -> None:
        taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                               timeout=30).stdout + \
            subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                           timeout=30).stdout
        for _ in range(100):
            base = f"198.{random.randint(18, 19)}.{random.randint(0, 255)}"
            last = random.randrange(0, 256, 4)
            if f"{base}.{last}/30" not in taken and f"{base}.{last + 1}/" not in taken \
                    and f"{base}.{last + 2}/" not in taken:
                self.subnet = f"{base}.{last}/30"
                self.host_address = f"{base}.{last + 1}"
                self.address = f"{base}.{last + 2}"
                return
        raise RuntimeError("no free /30 in 198.18.0.0/15")

    def start(self, serve: bool = True) -> NetnsUpstream:
        """Namespace, veth, addresses; and dnsmasq in it unless `serve` is False
        (then the namespace is an off-node client: `exec` runs commands there)."""
        self._pick_subnet()
        self._ip("route", "add", "blackhole", self.subnet, "metric", "4000")
        self.made.append("route")
        self._ip("netns", "add", self.ns)
        self.made.append("netns")
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                 "netns", self.ns)
        self.made.append("link")
        self._ip("-n", self.ns, "link", "set", "lo", "up")
        self._ip("-n", self.ns, "addr", "add", f"{self.address}/30", "dev", self.ns_if)
        self._ip("-n", self.ns, "link", "set", self.ns_if, "up")
        self._ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        if not serve:
            return self
        argv = ["ip", "netns", "exec", self.ns, DNSMASQ, "--keep-in-foreground",
                "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={self.address}", "--port=53", "--pid-file=", "--user=root",
                "--cache-size=0"]
        argv += [f"--host-record={name},{ip}" for name, ip in self.records.items()]
        argv += [arg.replace("{IF}", self.ns_if) for arg in self.extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # `ip netns exec` execs dnsmasq
        session_watch.track_process(self.proc.pid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq in {self.ns} exited {self.proc.returncode}")
            if dig(self.address, "anything.invalid", timeout=1).status:
                return self
            time.sleep(0.05)
        raise AssertionError("dnsmasq in the namespace never answered")

    @property
    def upstream(self) -> str:
        return f"{self.address}:53"

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=timeout)

    def cut(self) -> None:
        self._ip("-n", self.ns, "link", "set", self.ns_if, "down")

    def restore(self) -> None:
        self._ip("-n", self.ns, "link", "set", self.ns_if, "up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        if "link" in self.made:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        if "netns" in self.made:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        if "route" in self.made:
            subprocess.run(["ip", "route", "del", "blackhole", self.subnet, "metric", "4000"],
                           capture_output=True, timeout=30)
        self.made.clear()


class DnsNode:
    """A node for DNS service tests: a unique loopback listen address, a conflist, a
    registry, and every service and upstream it started, stopped newest first."""

    def __init__(self, tmp_path: Path, state_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = state_dir
        self.listen = unique_loopback()
        self.conf = write_conflist(tmp_path)
        self.registry = Registry(state_dir)
        self.parts: list = []

    def track(self, part):
        """Stop `part` (anything with stop()) at cleanup."""
        self.parts.append(part)
        return part

    def start(self, upstreams: list[str] = (), extra: list[str] = ()) -> DnsService:
        """The service on the listen address, forwarding to `upstreams`."""
        return self.track(DnsService(self.tmp_path, self.listen, self.state_dir, self.conf,
                                     upstreams, ["--no-address-setup", *extra])).start()

    def dnsmasq(self, records: dict[str, str], extra: list[str] = (), **where) -> Dnsmasq:
        """A dnsmasq upstream on loopback."""
        return self.track(Dnsmasq(self.tmp_path, records, extra, **where)).start()

    def netns_upstream(self, records: dict[str, str], extra: list[str] = ()) -> NetnsUpstream:
        """A dnsmasq upstream in a network namespace of its own, whose link can be cut."""
        return self.track(NetnsUpstream(records, list(extra))).start()

    def dig(self, *args: str, **kw) -> DigResult:
        return dig(self.listen, *args, **kw)

    def cleanup(self) -> None:
        for part in reversed(self.parts):
            part.stop()


class DigResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.status = ""
        self.query_ms: int | None = None  # dig's own measure of the round trip
        self.flags: set[str] = set()
        self.answers: list[tuple[str, str, str]] = []
        self.counts: dict[str, int] = {}
        for line in proc.stdout.splitlines():
            if line.startswith(";; Query time:"):
                self.query_ms = int(line.split()[3])
            elif "status:" in line:
                self.status = line.split("status:")[1].split(",")[0].strip()
            elif line.startswith(";; flags:"):
                flags, _, counts = line[len(";; flags:"):].partition(";")
                self.flags = set(flags.split())
                for part in counts.split(","):
                    key, _, value = part.strip().partition(":")
                    if value.strip().isdigit():
                        self.counts[key] = int(value)
            elif line and not line.startswith(";"):
                fields = line.split()
                if len(fields) >= 5:
                    self.answers.append((fields[0].rstrip(".").lower(), fields[3],
                                         fields[4].rstrip(".")))

    def values(self, rtype: str = "A") -> list[str]:
        return sorted(v for _, t, v in self.answers if t == rtype)

    def ttls(self, rtype: str = "A") -> list[int]:
        ttls = []
        for line in self.stdout.splitlines():
            fields = line.split()
            if line and not line.startswith(";") and len(fields) >= 5 and fields[3] == rtype:
                ttls.append(int(fields[1]))
        return ttls

    def __repr__(self) -> str:
        return f"<dig rc={self.returncode} {self.stdout!r}>"


def dig(server: str, *args: str, port: int = 53, netns: str = "", timeout: int = 2) -> DigResult:
    argv = [DIG, f"@{server}", "-p", str(port), f"+time={timeout}", "+tries=1",
            "+noall", "+comments", "+answer", "+stats", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return DigResult(proc)


needs_tools = pytest.mark.skipif(not (os.path.exists(DIG) and os.path.exists(DNSMASQ)),
                                 reason="needs dig (dnsutils) and dnsmasq (dnsmasq-base)")
