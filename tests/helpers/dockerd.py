"""A real dockerd for tests, a local busybox image, sandboxes made as cri-dockerd makes them.

`dockerd` (session): the daemon at /var/run/docker.sock when one answers
there; otherwise one of our own, with its data-root, exec-root, pidfile and
socket in a fresh temp dir and no default bridge, so it can never disturb a
dockerd someone else runs. Ours is stopped by its PID at the end.

SMARTER_CNI_TEST_DOCKERD=private always starts our own (useful on a shared
machine where the system dockerd may be stopped mid-run); =system insists on
the one at /var/run/docker.sock; the default is auto, as above.

`busybox_image` (session): no registry is reachable here, so the image is
`docker import`ed from a root filesystem of /bin/busybox and its applet links.

Use them from a test module with `pytest_plugins = ("helpers.dockerd",)`
(fixtures: dockerd, busybox_image, sandboxes, docker_network). The daemon
is also shared by reference count, so it is started once per session even
when several modules load this file.
"""

from __future__ import annotations

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

DEFAULT_SOCKET = "/var/run/docker.sock"
START_TIMEOUT = 60.0
BUSYBOX = "/bin/busybox"


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


def start_private(attempts: int = 3, extra: tuple[str, ...] = (), root: str = "") -> Dockerd:
    """Start a dockerd of our own under a fresh temp dir (or `root`, to restart one).

    Waits until it answers. A start can fail when another dockerd on the
    machine rewrites its iptables chains at the same moment; that race is
    retried.
    """
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    for attempt in range(attempts):
        try:
            return _start_once(extra, root)
        except _StartFailed as err:
            if attempt == attempts - 1:
                pytest.fail(str(err))
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


class _StartFailed(Exception):
    pass


def _start_once(extra: tuple[str, ...], root: str) -> Dockerd:
    fresh = not root
    root = root or tempfile.mkdtemp(prefix="scni-dockerd-")
    sock = os.path.join(root, "docker.sock")
    with open(os.path.join(root, "dockerd.log"), "ab") as log:
        proc = subprocess.Popen(
            ["dockerd", "--data-root", os.path.join(root, "data"),
             "--exec-root", os.path.join(root, "exec"),
             "--pidfile", os.path.join(root, "docker.pid"),
             "-H", f"unix://{sock}", "--bridge", "none", "--log-level", "warn", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    daemon = Dockerd(sock, proc.pid, root)
    daemon._proc = proc  # type: ignore[attr-defined]
    daemon.extra = extra  # type: ignore[attr-defined]
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(root, "dockerd.log").read_text(errors="replace")[-2000:]
            if fresh:
                _remove_root(root)
            raise _StartFailed(f"dockerd exited with {proc.returncode}: {tail}")
        if ping(sock, 1.0):
            return daemon
        time.sleep(0.1)
    stop_private(daemon, remove_root=fresh)
    raise _StartFailed(f"dockerd did not answer on {sock} within {START_TIMEOUT:g} s")


def stop_private(daemon: Dockerd, remove_root: bool = True) -> None:
    """SIGTERM our dockerd by PID (it stops its own containerd), SIGKILL if it hangs."""
    proc = getattr(daemon, "_proc", None)
    if proc is None or not daemon.pid:
        return
    if proc.poll() is None:
        os.kill(daemon.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if remove_root and daemon.root:
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
        choice = os.environ.get("SMARTER_CNI_TEST_DOCKERD", "auto")
        if choice == "system" or (choice == "auto" and ping(DEFAULT_SOCKET)):
            if not ping(DEFAULT_SOCKET):
                pytest.fail(f"SMARTER_CNI_TEST_DOCKERD=system but nothing answers on "
                            f"{DEFAULT_SOCKET}")
            daemon = Dockerd(DEFAULT_SOCKET)
        else:
            daemon = start_private()
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
        self.id = docker_id
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
    name = f"scni-{uuid.uuid4().hex[:10]}"
    cidr = free_subnet(dockerd)
    config = network_config(name, cidr, dockerd.socket)
    try:
        yield config
    finally:
        remove_network(dockerd, name)
