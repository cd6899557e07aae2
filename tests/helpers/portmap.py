"""Shared pieces of the portmap chaining tests: a pod listener, a free host port,
and removal of portmap's shared chains when a test was the one that made them."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import uuid

import pytest

CONTAINER_PORT = 8080
PORTMAP_TOP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
PORTMAP_JUMPS = (
    ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade",
     "-j", "CNI-HOSTPORT-MASQ"),
)

# Runs inside the pod netns: answer every connection with a token and the peer
# address, so the test knows it reached this very listener and from where.
LISTENER = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(16)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(("%s %s\n" % (sys.argv[2], peer[0])).encode())
    conn.close()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def nat_rules() -> str:
    return sh("iptables", "-t", "nat", "-S").stdout


@pytest.fixture
def portmap_chains_restored():
    """portmap leaves its shared top-level chains behind on DEL (by design);
    remove them afterwards when this test was the one that created them."""
    existed = sh("iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT", check=False).returncode == 0
    yield
    if existed:
        return
    for jump in PORTMAP_JUMPS:
        sh("iptables", "-t", "nat", "-D", *jump, check=False)
    for chain in PORTMAP_TOP_CHAINS:
        sh("iptables", "-t", "nat", "-F", chain, check=False)
        sh("iptables", "-t", "nat", "-X", chain, check=False)


@pytest.fixture
def host_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on."""
    for _ in range(50):
        port = random.randint(20000, 45000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free TCP port found on 127.0.0.1")


def fetch(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.settimeout(5)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.decode().strip()


class Listener:
    """A TCP listener inside a pod netns (any netns path), stopped by its PID."""

    def __init__(self, netns_path: str, port: int) -> None:
        self.token = uuid.uuid4().hex[:16]
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path}", sys.executable, "-c", LISTENER, str(port),
             self.token],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"pod listener did not start: {line!r} {self.proc.stderr.read()!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
