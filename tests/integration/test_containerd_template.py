"""`smarter-cni install --containerd-template`: containerd writes the node's pod CIDR itself.

containerd's CRI, once kubelet sends the node's CIDR (UpdateRuntimeConfig),
renders `conf_template` with Go's text/template into 10-containerd-net.conflist.
The containerd CRI test helper is not on main yet, so this test renders the
installed template with Go's own text/template (tests/gotemplate/main.go,
containerd's data shape: PodCIDR, PodCIDRRanges, Routes; no extra functions)
and runs the plugin on the rendered config through libcni, the library
containerd's go-cni drives. The CRI path itself (UpdateRuntimeConfig ->
RunPodSandbox) is NOT exercised here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import libcni as libcni_helper
from helpers.netns import link_exists, unique
from helpers.plugin import ROOT, pod_args

pytestmark = pytest.mark.root

libcni = libcni_helper.fixture()


@pytest.fixture(scope="session")
def render(tmp_path_factory) -> Path:
    if subprocess.run(["which", "go"], capture_output=True).returncode != 0:
        pytest.skip("`go` is not installed (apt-get install golang-go); run-tests.sh installs it")
    out = tmp_path_factory.mktemp("gotemplate") / "render"
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
               GOPROXY="off", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(out.parent / "gocache"))
    done = subprocess.run(["go", "build", "-o", str(out), "."], cwd=ROOT / "tests" / "gotemplate",
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def free_network() -> tuple[str, str]:
    """A free /20 for the cluster and the node's /24 inside it (its second /24)."""
    for _ in range(100):
        third = random.randrange(0, 256, 16)
        cluster = f"10.249.{third}.0/20"
        routes = subprocess.run(["ip", "-4", "route", "show", "match", f"10.249.{third}.0"],
                                capture_output=True, text=True).stdout.splitlines()
        if all(line.startswith("default") for line in routes):
            return cluster, f"10.249.{third + 1}.0/24"
    pytest.skip("no free /20 in 10.249.0.0/16")


def test_containerd_renders_the_template_and_pods_use_the_node_range(
        render, libcni, netns, tmp_path):
    cluster, node_range = free_network()
    name = unique("k", 10)
    bridge = f"br{name[:12]}"
    conf_dir, bin_dir, state = tmp_path / "etc-cni" / "net.d", tmp_path / "bin", tmp_path / "state"
    env = dict(os.environ, SMARTER_CNI_PREFIX=str(tmp_path / "prefix"),
               SMARTER_CNI_STATE_DIR=str(state), SMARTER_CNI_UNIT_DIR=str(tmp_path / "units"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smarter_cni", *args], env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    try:
        done = cli("install", "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir),
                   "--network", f"net-{name}", "--bridge", bridge, "--subnet", cluster,
                   "--no-dns-service", "--no-selftest", "--containerd-template", "--k3s")
        assert done.returncode == 0, done.stdout + done.stderr
        template = tmp_path / "etc-cni" / "smarter-cni-containerd.conflist.tmpl"
        assert template.is_file(), "default path: next to the conf dir, not in it"
        # containerd renders the template only while its conf dir holds no CNI config
        # ("Network plugin is ready, skip generating cni config from template"): ours
        # lives beside the template, where the DNS service, status and selftest read it
        assert list(conf_dir.iterdir()) == []
        assert (tmp_path / "etc-cni" / "10-smarter-cni.conflist").is_file()
        status = cli("status", "--json")
        assert str(tmp_path / "etc-cni" / "10-smarter-cni.conflist") in status.stdout
        assert '[plugins."io.containerd.grpc.v1.cri".cni]' in done.stdout
        assert f'conf_template = "{template}"' in done.stdout
        assert "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl" in done.stdout
        assert '{{ template "base" . }}' in done.stdout

        # containerd, dual-stack with IPv6 first: the IPv4 range is still the one used
        data = tmp_path / "data.json"
        data.write_text(json.dumps({"PodCIDR": "fd00:10:42:1::/64",
                                    "PodCIDRRanges": ["fd00:10:42:1::/64", node_range],
                                    "Routes": ["0.0.0.0/0", "::/0"]}))
        rendered = subprocess.run([str(render), str(template), str(data)], capture_output=True,
                                  text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        conflist = json.loads(rendered.stdout)
        plugin = conflist["plugins"][0]
        assert plugin["podCIDRs"] == ["fd00:10:42:1::/64", node_range]
        assert plugin["subnet"] == cluster, "the network stays the cluster CIDR"
        target = conf_dir / "10-containerd-net.conflist"  # where containerd writes it
        target.write_text(rendered.stdout)

        cache = tmp_path / "cache"
        cache.mkdir()
        base = node_range.rsplit(".", 1)[0]
        pods = []
        for n in range(2):
            ns, path = netns.create()
            added = libcni.run("add", target, cni_path=bin_dir, cache_dir=cache, netns=path,
                               container_id=unique("ctr", 32), args=pod_args(f"tpl{n}"),
                               env={"SMARTER_CNI_STATE_DIR": str(state)})
            assert added.ok, added
            pods.append((ns, added.json["ips"][0]))
        assert [ip["address"] for _, ip in pods] == [f"{base}.2/24", f"{base}.3/24"]
        assert {ip["gateway"] for _, ip in pods} == {f"{base}.1"}
        ping = subprocess.run(["ip", "netns", "exec", pods[0][0], "ping", "-c1", "-W2",
                               f"{base}.3"], capture_output=True, timeout=30)
        assert ping.returncode == 0
        rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"],
                               capture_output=True, text=True).stdout
        assert any(f"-s {cluster}" in line and f"net-{name}" in line
                   for line in rules.splitlines()), "NAT covers the cluster CIDR"

        gone = cli("uninstall", "--force", "--cni-bin-dir", str(bin_dir), "--cni-conf-dir",
                   str(conf_dir))
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not (tmp_path / "etc-cni" / "10-smarter-cni.conflist").exists()
        assert not template.exists() and not target.exists(), \
            "the template and containerd's rendering of it go with the plugin"
        assert not link_exists(bridge)
    finally:
        if (tmp_path / "prefix" / "install.json").exists():
            cli("uninstall", "--force", "--cni-bin-dir", str(bin_dir), "--cni-conf-dir",
                str(conf_dir))
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_a_template_path_we_did_not_write_is_refused(tmp_path):
    foreign = tmp_path / "mine.tmpl"
    foreign.write_text("{}\n")
    done = subprocess.run(
        [sys.executable, "-m", "smarter_cni", "install", "--cni-bin-dir", str(tmp_path / "b"),
         "--cni-conf-dir", str(tmp_path / "c"), "--no-dns-service", "--no-selftest",
         "--bridge", f"br{unique('x', 10)}", "--network", unique("n", 10),
         "--containerd-template", str(foreign), "--subnet", "10.250.250.0/24"],
        env=dict(os.environ, SMARTER_CNI_PREFIX=str(tmp_path / "p"),
                 SMARTER_CNI_STATE_DIR=str(tmp_path / "s")),
        capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode != 0
        assert "was not written by smarter-cni" in done.stderr, done.stderr
        assert foreign.read_text() == "{}\n"
    finally:
        if (tmp_path / "p" / "install.json").exists():
            subprocess.run([sys.executable, "-m", "smarter_cni", "uninstall", "--force"],
                           env=dict(os.environ, SMARTER_CNI_PREFIX=str(tmp_path / "p"),
                                    SMARTER_CNI_STATE_DIR=str(tmp_path / "s")),
                           capture_output=True, timeout=120)
