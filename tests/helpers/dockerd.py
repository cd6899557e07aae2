"""A private dockerd for tests, a local busybox image, sandboxes made as cri-dockerd makes them.

`dockerd` (session): always a dockerd of the tests' own, never the node's.
Its data-root, exec-root, pidfile, socket, daemon.json and trust key live
in a fresh temp dir, so it shares no file with the node's dockerd (nor with
another suite's private one running at the same time). Stopped by its PID.

How it stays out of the node's way (measured on Debian 12, Docker 20.10):

- `--bridge none` is NOT used: dockerd started that way deletes the host's
  `docker0` (it "removes the default bridge interface" by that literal
  name), and the node's own dockerd then fails `docker run` with
  `could not find bridge docker0`. Instead the default bridge is a bridge
  this module creates (unique name, an unused /24 of 10.248.0.0/16) and
  passes with `--bridge`; `docker0` is never named.
- `--iptables=false --ip6tables=false --ip-masq=false --ip-forward=false`:
  a dockerd with iptables enabled first removes and recreates the shared
  `DOCKER`, `DOCKER-ISOLATION-STAGE-*` chains, wiping the node dockerd's
  port mappings and isolation rules; it also sets the FORWARD policy. Ours
  touches neither the host's iptables nor its sysctls.
- Docker's embedded DNS (127.0.0.11) still works without `--iptables`: its
  DNAT rules live inside each container's own netns.
- Containers on one of our Docker networks still reach each other: bridged
  traffic passes the host's FORWARD chain (br_netfilter), whose policy is
  DROP where the node runs Docker. So while our dockerd runs, one ACCEPT
  rule of our own (comment `smarter-cni-tests <bridge>`) lets traffic
  within 10.247.0.0/16 -- the range every test Docker network comes from
  (`free_subnet`) -- through, and it is deleted with the daemon.

A dockerd in a network namespace of its own was the other option; it would
keep the bridges of its networks out of the host netns, where the plugin,
the node DNS service and `install.sh` (which run in the host netns as on a
real node) must reach them, so every docker-mode test would have to run its
plugin, DNS service and digs through nsenter. The host netns with the
settings above gives the same isolation with the real node's topology.
tests/integration/test_isolation.py checks it against a node-like dockerd.

SMARTER_CNI_TEST_DOCKERD=system opts in to the dockerd at
/var/run/docker.sock instead (never the default; for debugging only).

`busybox_image` (session): no registry is reachable here, so the image is
`docker import`ed from a root filesystem of /bin/busybox and its applet links.

Use them from a test module with `pytest_plugins = ("helpers.dockerd",)`
(fixtures: dockerd, busybox_image, sandboxes, docker_network). The daemon
is also shared by reference count, so it is started once per session even
when several modules load this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import session_watch
from helpers.netns import adopt, unique

DEFAULT_SOCKET = "/var/run/docker.sock"
START_TIMEOUT = 60.0
BUSYBOX = "/bin/busybox"
# Every test Docker network is carved from here (free_subnet); see the docstring.
TEST_NETWORKS = "10.247.0.0/16"
# Our dockerds' default bridges (one /24 each).
BRIDGE_RANGE = "10.248"
# Settings that keep a second dockerd in the host netns off the node's docker0,
# iptables chains and sysctls.
ISOLATING_FLAGS = ("--iptables=false", "--ip6tables=false", "--ip-masq=false",
                   "--ip-forward=false")


def ping(socket_path: str, timeout: float = 2.0) -> bool:
    """True when a dockerd answers GET /_ping on the socket (a real HTTP round trip)."""
    import socket

    if not os.path.exists(socket_path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Dockerd:
    """One dockerd the tests talk to: its socket, and the `docker` CLI pointed at it."""

    def __init__(self, socket_path: str, pid: int = 0, root: str = "") -> None:
        self.socket = socket_path
        self.pid = pid          # non-zero only when we started it
        self.root = root
        self.users = 0
        self.bridge = ""        # our default bridge (private daemons only)

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        return proc

    def out(self, *args: str) -> str:
        return self.cli(*args).stdout.decode().strip()

    def inspect(self, ref: str) -> dict[str, Any]:
        return json.loads(self.out("inspect", "--type", "container", ref))[0]

    def network_inspect(self, name: str) -> dict[str, Any] | None:
        proc = self.cli("network", "inspect", name, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def _ip(*argv: str, netns: str = "") -> subprocess.CompletedProcess:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)


def _bridge_name(root: str) -> str:
    """Our default bridge's name, fixed by the daemon's root (so a restart finds it)."""
    return "scd" + hashlib.sha256(root.encode()).hexdigest()[:12]


def _ensure_bridge(name: str, netns: str = "") -> None:
    """Create our default bridge with an unused /24 gateway address, unless it exists."""
    if _ip("link", "show", name, netns=netns).returncode == 0:
        return
    routes = _ip("-4", "route", "show", netns=netns).stdout
    for _ in range(100):
        cidr = f"{BRIDGE_RANGE}.{random.randint(0, 255)}.0/24"
        if cidr.split("/")[0] not in routes:
            break
    else:
        pytest.fail(f"no free /24 in {BRIDGE_RANGE}.0.0/16 for a test dockerd's bridge")
    done = _ip("link", "add", name, "type", "bridge", netns=netns)
    if done.returncode != 0:
        pytest.fail(f"cannot create bridge {name}: {done.stderr.strip()}")
    _ip("addr", "add", cidr.replace(".0/24", ".1/24"), "dev", name, netns=netns)
    _ip("link", "set", name, "up", netns=netns)


def _forward_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-s", TEST_NETWORKS, "-d", TEST_NETWORKS, "-m", "comment",
            "--comment", f"smarter-cni-tests {bridge}", "-j", "ACCEPT"]


def _iptables(*args: str, netns: str = "") -> int:
    if not shutil.which("iptables"):
        return 1
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "iptables", "-w", "10", *args], capture_output=True,
                          timeout=30).returncode


def _ensure_forward_rule(bridge: str, netns: str = "") -> None:
    rule = _forward_rule(bridge)
    if _iptables("-C", *rule, netns=netns) != 0:
        _iptables("-I", *rule[:1], "1", *rule[1:], netns=netns)


def _remove_own_bridges(daemon: Dockerd, netns: str = "") -> None:
    """Our default bridge, our FORWARD rule, and the bridges of Docker networks the
    daemon still had (dockerd leaves them behind when it stops)."""
    for bridge in getattr(daemon, "network_bridges", []) + [daemon.bridge]:
        if bridge:
            _ip("link", "del", bridge, netns=netns)
    if daemon.bridge:
        while _iptables("-D", *_forward_rule(daemon.bridge), netns=netns) == 0:
            pass


def start_private(attempts: int = 3, extra: tuple[str, ...] = (), root: str = "",
                  netns: str = "") -> Dockerd:
    """Start a dockerd of our own under a fresh temp dir (or `root`, to restart one).

    Waits until it answers; a failed start is retried. `netns` (a name under
    /var/run/netns) runs it in that network namespace instead of the host's,
    as test_isolation.py does to watch it next to a node-like dockerd.
    """
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    for attempt in range(attempts):
        try:
            return _start_once(extra, root, netns)
        except _StartFailed as err:
            if attempt == attempts - 1:
                pytest.fail(str(err))
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


class _StartFailed(Exception):
    pass


def private_argv(root: str, bridge: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The dockerd command line of a private daemon (see the module docstring)."""
    config = os.path.join(root, "daemon.json")
    if not os.path.exists(config):
        # Never the node's /etc/docker/daemon.json, nor its /etc/docker/key.json
        # (dockerd 20.10 creates that trust key when it is missing).
        with open(config, "w") as handle:
            json.dump({"deprecated-key-path": os.path.join(root, "key.json")}, handle)
    return ["dockerd", "--config-file", config,
            "--data-root", os.path.join(root, "data"),
            "--exec-root", os.path.join(root, "exec"),
            "--pidfile", os.path.join(root, "docker.pid"),
            "-H", f"unix://{os.path.join(root, 'docker.sock')}",
            "--bridge", bridge, *ISOLATING_FLAGS, "--log-level", "warn", *extra]


def _start_once(extra: tuple[str, ...], root: str, netns: str) -> Dockerd:
    fresh = not root
    root = root or tempfile.mkdtemp(prefix="scni-dockerd-")
    sock = os.path.join(root, "docker.sock")
    bridge = _bridge_name(root)
    session_watch.note("name", bridge)
    if fresh:
        session_watch.note("dir", root)
    _ensure_bridge(bridge, netns)
    _ensure_forward_rule(bridge, netns)
    # nsenter (not `ip netns exec`) keeps the mount namespace: dockerd needs the
    # host's cgroup mounts, which `ip netns exec` hides behind a fresh /sys.
    prefix = ["nsenter", f"--net=/var/run/netns/{netns}"] if netns else []
    with open(os.path.join(root, "dockerd.log"), "ab") as log:
        proc = subprocess.Popen(
            [*prefix, *private_argv(root, bridge, extra)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    # If pytest is killed, the session watchdog stops it by this PID and removes the rest.
    session_watch.track_process(proc.pid, marker=root, docker_socket=sock)
    daemon = Dockerd(sock, proc.pid, root)
    daemon.bridge = bridge
    daemon._proc = proc  # type: ignore[attr-defined]
    daemon.extra = extra  # type: ignore[attr-defined]
    daemon.netns = netns  # type: ignore[attr-defined]
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(root, "dockerd.log").read_text(errors="replace")[-2000:]
            if fresh:
                _remove_own_bridges(daemon, netns)
                _remove_root(root)
            raise _StartFailed(f"dockerd exited with {proc.returncode}: {tail}")
        if ping(sock, 1.0):
            return daemon
        time.sleep(0.1)
    stop_private(daemon, remove_root=fresh)
    raise _StartFailed(f"dockerd did not answer on {sock} within {START_TIMEOUT:g} s")


def _network_bridges(daemon: Dockerd) -> list[str]:
    """Linux bridges of the daemon's own bridge-driver networks (br-<id> or named)."""
    proc = daemon.cli("network", "ls", "-q", "--filter", "driver=bridge", check=False)
    ids = proc.stdout.decode().split() if proc.returncode == 0 else []
    if not ids:
        return []
    proc = daemon.cli("network", "inspect", *ids, check=False)
    names = []
    for net in json.loads(proc.stdout or b"[]"):
        name = (net.get("Options") or {}).get("com.docker.network.bridge.name") \
            or f"br-{net['Id'][:12]}"
        if name != daemon.bridge:
            names.append(name)
    return names


def stop_private(daemon: Dockerd, remove_root: bool = True) -> None:
    """SIGTERM our dockerd by PID (it stops its own containerd), SIGKILL if it hangs.

    With `remove_root`, also removes what it leaves on the host: its networks'
    bridges, our default bridge and our FORWARD rule, then its temp dir.
    """
    proc = getattr(daemon, "_proc", None)
    if proc is None or not daemon.pid:
        return
    netns = getattr(daemon, "netns", "")
    if remove_root and proc.poll() is None:
        daemon.network_bridges = _network_bridges(daemon)  # type: ignore[attr-defined]
    if proc.poll() is None:
        os.kill(daemon.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if remove_root:
        _remove_own_bridges(daemon, netns)
        if daemon.root:
            _remove_root(daemon.root)


def _remove_root(root: str) -> None:
    """Delete the temp dir, unmounting leftovers first (never rm through a live mount)."""
    with open("/proc/self/mounts") as handle:
        mounts = [line.split()[1] for line in handle]
    for point in sorted((m for m in mounts if m.startswith(root + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    with open("/proc/self/mounts") as handle:
        if any(line.split()[1].startswith(root + "/") for line in handle):
            return  # leave it rather than delete inside a mount
    shutil.rmtree(root, ignore_errors=True)


_SHARED: dict[str, Dockerd] = {}


def acquire() -> Dockerd:
    daemon = _SHARED.get("daemon")
    if daemon is None:
        if os.geteuid() != 0:
            pytest.skip("dockerd tests need root")
        choice = os.environ.get("SMARTER_CNI_TEST_DOCKERD", "private")
        if choice == "system":
            if not ping(DEFAULT_SOCKET):
                pytest.fail(f"SMARTER_CNI_TEST_DOCKERD=system but nothing answers on "
                            f"{DEFAULT_SOCKET}")
            daemon = Dockerd(DEFAULT_SOCKET)
        elif choice == "private":
            daemon = start_private()
        else:
            pytest.fail(f"SMARTER_CNI_TEST_DOCKERD={choice!r}: use 'private' (the default) "
                        "or 'system'")
        _SHARED["daemon"] = daemon
    daemon.users += 1
    return daemon


def release(daemon: Dockerd) -> None:
    daemon.users -= 1
    if daemon.users == 0:
        _SHARED.pop("daemon", None)
        stop_private(daemon)


@pytest.fixture(scope="session")
def dockerd():
    daemon = acquire()
    try:
        yield daemon
    finally:
        release(daemon)


def build_busybox_image(daemon: Dockerd, tag: str) -> str:
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    root = tempfile.mkdtemp(prefix="scni-rootfs-")
    try:
        bin_dir = Path(root, "bin")
        bin_dir.mkdir()
        shutil.copy2(BUSYBOX, bin_dir / "busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bin_dir / applet).symlink_to("busybox")
        for directory in ("etc", "tmp", "proc", "sys", "dev"):
            Path(root, directory).mkdir(exist_ok=True)
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True)
        daemon.cli("import", "-", tag, input=tar.stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


@pytest.fixture(scope="session")
def busybox_image(dockerd: Dockerd):
    tag = f"smarter-cni-test/busybox:{uuid.uuid4().hex[:10]}"
    build_busybox_image(dockerd, tag)
    try:
        yield tag
    finally:
        dockerd.cli("rmi", "-f", tag, check=False)


class Sandbox:
    """A pod sandbox as cri-dockerd makes it: `--network none --hostname H`."""

    def __init__(self, daemon: Dockerd, docker_id: str) -> None:
        self.daemon = daemon
        self.id = adopt(docker_id)  # random, made by this run's dockerd: a test's own ID
        self.pid = int(daemon.inspect(docker_id)["State"]["Pid"])
        self.netns = f"/proc/{self.pid}/ns/net"

    def exec(self, *argv: str, check: bool = False, timeout: float = 30
             ) -> subprocess.CompletedProcess:
        return self.daemon.cli("exec", self.id, *argv, check=check, timeout=timeout)

    def networks(self) -> dict[str, Any]:
        return self.daemon.inspect(self.id)["NetworkSettings"]["Networks"] or {}


class Sandboxes:
    """Makes sandboxes and removes every one (docker rm -f) at teardown."""

    def __init__(self, daemon: Dockerd, image: str) -> None:
        self.daemon = daemon
        self.image = image
        self.ids: list[str] = []

    def create(self, hostname: str, network: str = "none", extra: tuple[str, ...] = ()
               ) -> Sandbox:
        name = f"scni-test-{uuid.uuid4().hex[:12]}"
        docker_id = self.daemon.out("run", "-d", "--name", name, "--network", network,
                                    "--hostname", hostname, "--label", "smarter-cni-test=1",
                                    *extra, self.image, "sleep", "3600")
        self.ids.append(docker_id)
        return Sandbox(self.daemon, docker_id)

    def remove(self, sandbox: Sandbox) -> None:
        self.daemon.cli("rm", "-f", sandbox.id, check=False)

    def cleanup(self) -> None:
        for docker_id in self.ids:
            self.daemon.cli("rm", "-f", docker_id, check=False)
        self.ids.clear()


@pytest.fixture
def sandboxes(dockerd: Dockerd, busybox_image: str):
    made = Sandboxes(dockerd, busybox_image)
    try:
        yield made
    finally:
        made.cleanup()


def _route_free(cidr: str) -> bool:
    routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                            capture_output=True, text=True).stdout
    return all(not line or line.startswith("default") for line in routes.splitlines())


def free_subnet(daemon: Dockerd) -> str:
    """An unused /24 in 10.247.0.0/16 (no other suite uses that range): no host route to
    it, no Docker network on it."""
    used = set()
    ids = daemon.out("network", "ls", "-q").split()
    if ids:
        for net in json.loads(daemon.out("network", "inspect", *ids)):
            for pool in (net.get("IPAM") or {}).get("Config") or []:
                used.add(pool.get("Subnet"))
    for _ in range(100):
        cidr = f"10.247.{random.randint(0, 255)}.0/24"
        if cidr not in used and _route_free(cidr):
            return cidr
    pytest.skip("no free /24 in 10.247.0.0/16 on this host")


def network_config(name: str, cidr: str, socket_path: str, version: str = "1.0.0",
                   **extra: Any) -> dict[str, Any]:
    base = cidr.rsplit(".", 1)[0]
    config = {
        "cniVersion": version,
        "name": name,
        "type": "smarter-cni",
        "mode": "docker",
        "network": name,
        "subnet": cidr,
        "dnsAddress": f"{base}.2",
        "dockerSocket": socket_path,
    }
    config.update(extra)
    return config


def remove_network(daemon: Dockerd, name: str) -> None:
    """Disconnect whatever is still attached, then remove the network."""
    net = daemon.network_inspect(name)
    if net is None:
        return
    for docker_id in (net.get("Containers") or {}):
        daemon.cli("network", "disconnect", "-f", name, docker_id, check=False)
    daemon.cli("network", "rm", name, check=False)


@pytest.fixture
def docker_network(dockerd: Dockerd):
    """A unique Docker network name and free /24 (created by the test via ensure_network,
    or not); removed afterwards whatever happened."""
    name = unique("scni-")  # carries a token of this run (see session_watch)
    cidr = free_subnet(dockerd)
    config = network_config(name, cidr, dockerd.socket)
    try:
        yield config
    finally:
        remove_network(dockerd, name)
