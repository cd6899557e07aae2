"""`smarter-cni install --pod-cidr-from-node`: the node's podCIDR read from the API server.

No Kubernetes API server can run on these machines, so the tests talk to a
stand-in (tests/helpers/kube_standin.py) over real HTTPS with client
certificates or a bearer token, answering GET /api/v1/nodes/NAME with the
real Node object shape (spec.podCIDRs, spec.podCIDR) and real Status errors.
The install itself is real: temp prefix, CNI dirs and state dir, a unique
bridge and network, no DNS service, no self-test; uninstalled afterwards.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.kube_standin import StandinAPI, make_pki, node, write_kubeconfig
from helpers.netns import link_exists, unique

pytestmark = pytest.mark.root


def free_subnet() -> str:
    for _ in range(100):
        cidr = f"10.247.{random.randint(0, 255)}.0/24"
        routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                                capture_output=True, text=True).stdout
        if all(not line or line.startswith("default") for line in routes.splitlines()):
            return cidr
    pytest.skip("no free /24 in 10.247.0.0/16")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Node:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = unique("k", 10)
        self.bridge = f"br{self.name[:12]}"
        self.env = dict(os.environ, SMARTER_CNI_PREFIX=str(base / "prefix"),
                        SMARTER_CNI_STATE_DIR=str(base / "state"),
                        SMARTER_CNI_UNIT_DIR=str(base / "units"))
        self.conf_dir = base / "conf"
        self.options = ["--cni-bin-dir", str(base / "bin"), "--cni-conf-dir", str(self.conf_dir),
                        "--network", f"net-{self.name}", "--bridge", self.bridge,
                        "--no-dns-service", "--no-selftest"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smarter_cni", *args], env=self.env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def install(self, *args: str) -> subprocess.CompletedProcess:
        return self.cli("install", *self.options, *args)

    def conflist(self) -> dict:
        return json.loads((self.conf_dir / "10-smarter-cni.conflist").read_text())


@pytest.fixture
def node_dirs(tmp_path: Path):
    made = Node(tmp_path)
    try:
        yield made
    finally:
        if (tmp_path / "prefix" / "install.json").exists():
            made.cli("uninstall", "--force", "--cni-bin-dir", str(tmp_path / "bin"),
                     "--cni-conf-dir", str(made.conf_dir))
        subprocess.run(["ip", "link", "del", made.bridge], capture_output=True)


def _bridge_addresses(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", bridge],
                         capture_output=True, text=True, check=True)
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout)
            for a in link.get("addr_info", [])]


def test_install_takes_the_subnet_from_the_node(pki, node_dirs, tmp_path):
    cidr = free_subnet()
    gateway = cidr.replace(".0/24", ".1")
    with StandinAPI(pki, nodes={"gw-7": node("gw-7", [cidr, "fd00:10:42:7::/64"])}) as api:
        kubeconfig = write_kubeconfig(tmp_path / "k3s.yaml", api.url, pki)  # as k3s writes it
        done = node_dirs.install("--pod-cidr-from-node", "--kubeconfig", str(kubeconfig),
                                 "--node-name", "gw-7")
        assert done.returncode == 0, done.stdout + done.stderr
        assert api.request_log == ["/api/v1/nodes/gw-7"], "one GET, nothing else"
    assert "Reading the pod CIDR of node gw-7 from the API server" in done.stdout
    assert cidr in done.stdout
    plugin = node_dirs.conflist()["plugins"][0]
    assert (plugin["subnet"], plugin.get("gateway", gateway)) == (cidr, gateway)
    assert plugin["capabilities"]["ipRanges"] is True
    assert _bridge_addresses(node_dirs.bridge) == [f"{gateway}/24"]
    # a pod through the installed plugin and config gets its address from the node's CIDR
    ns = unique("pcn-", 20)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        config = dict(plugin, name=node_dirs.conflist()["name"], cniVersion="1.0.0")
        added = subprocess.run(
            [str(tmp_path / "bin" / "smarter-cni")], input=json.dumps(config).encode(),
            capture_output=True, timeout=60,
            env={"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": ns,
                 "CNI_NETNS": f"/var/run/netns/{ns}", "CNI_IFNAME": "eth0",
                 "CNI_PATH": str(tmp_path / "bin"), "CNI_ARGS": "K8S_POD_NAME=p1",
                 "SMARTER_CNI_STATE_DIR": str(tmp_path / "state")})
        assert added.returncode == 0, added.stdout
        ip = json.loads(added.stdout)["ips"][0]
        assert (ip["address"], ip["gateway"]) == (cidr.replace(".0/24", ".2/24"), gateway)
        print(f"\n--pod-cidr-from-node {cidr}: the pod got {ip['address']} via {ip['gateway']}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    record = json.loads((tmp_path / "prefix" / "install.json").read_text())
    assert record["options"]["pod_cidr_from_node"] is True
    assert record["options"]["node_name"] == "gw-7"
    gone = node_dirs.cli("uninstall", "--force", "--cni-bin-dir", str(tmp_path / "bin"),
                         "--cni-conf-dir", str(node_dirs.conf_dir))
    assert gone.returncode == 0, gone.stderr
    assert not link_exists(node_dirs.bridge)


@pytest.mark.parametrize("spec, expected", [
    ({"pod_cidrs": ["fd00:1::/64", "10.42.7.0/24"]}, "10.42.7.0/24"),   # IPv6 first: v4 taken
    ({"pod_cidrs": None, "legacy": "10.42.9.0/24"}, "10.42.9.0/24"),     # only spec.podCIDR
])
def test_the_ipv4_cidr_is_chosen_with_a_token_and_file_paths(pki, tmp_path, spec, expected):
    from smarter_cni.kubeapi import node_pod_cidr

    name = socket.gethostname().lower()
    with StandinAPI(pki, token="s3cret", nodes={name: node(name, **spec)}) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kc", api.url, pki, token="s3cret", embed=False)
        assert node_pod_cidr(str(kubeconfig), name) == expected


@pytest.mark.parametrize("case, message, fix", [
    ("no-node", "has no node named 'gw-x'", "--node-name"),
    ("bad-token", "HTTP 401 Unauthorized", "may get nodes"),
    ("no-cidr", "has no spec.podCIDR yet", "--subnet"),
    ("v6-only", "has only IPv6 pod CIDRs (fd00:1::/64)", "--subnet"),
    ("down", "cannot reach the API server", "check that the API server runs"),
])
def test_install_says_what_to_fix_and_writes_nothing(pki, node_dirs, tmp_path, case, message,
                                                     fix):
    nodes = {"gw-x": node("gw-x", [] if case == "no-cidr" else ["fd00:1::/64"] if
                          case == "v6-only" else ["10.42.3.0/24"])}
    if case == "no-node":
        nodes = {}
    with StandinAPI(pki, token="right", nodes=nodes) as api:
        api.refuse = case == "down"
        kubeconfig = write_kubeconfig(tmp_path / "kc", api.url, pki,
                                      token="wrong" if case == "bad-token" else "right")
        done = node_dirs.install("--pod-cidr-from-node", "--kubeconfig", str(kubeconfig),
                                 "--node-name", "gw-x")
    assert done.returncode != 0
    assert message in done.stderr and fix in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (node_dirs.conf_dir / "10-smarter-cni.conflist").exists()
    assert not link_exists(node_dirs.bridge)


def test_option_mistakes(node_dirs, tmp_path):
    done = node_dirs.install("--pod-cidr-from-node")
    assert done.returncode != 0 and "needs --kubeconfig PATH" in done.stderr
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\n")
    done = node_dirs.install("--pod-cidr-from-node", "--kubeconfig", str(kubeconfig),
                             "--subnet", "10.1.0.0/24")
    assert done.returncode != 0 and "give one of them" in done.stderr
    done = node_dirs.install("--pod-cidr-from-node", "--kubeconfig", str(tmp_path / "nope"))
    assert done.returncode != 0 and "does not exist" in done.stderr
