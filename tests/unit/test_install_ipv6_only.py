"""`smarter-cni install --ipv6-only` without touching the node: option parsing, the
rendered config, the refusals, what the DNS service and status make of an IPv6-only
network (the install itself, for real: tests/integration/test_ipv6.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smarter_cni.cli import build_parser
from smarter_cni.conflist import netconf_of, plugin_config
from smarter_cni.dns.service import SettingsError, metrics_address
from smarter_cni.netconf import DEFAULT_DNS6, DEFAULT_SUBNET6, parse_netconf
from smarter_cni.node.console import CLIError, Output
from smarter_cni.node.install import (
    Options,
    check_ipv6_only,
    cluster_dns,
    install,
    k3s_command_lines,
    render_conflist,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def options(*argv: str) -> Options:
    return Options.from_args(build_parser().parse_args(["install", *argv]))


def test_ipv6_only_alone_renders_the_default_prefix_and_dns_address():
    opts = options("--ipv6-only")
    assert opts.ipv6_only is True and opts.subnet6 is None and opts.subnet is None
    plugin = plugin_config(render_conflist(opts))
    assert plugin["subnet"] == ""
    assert (plugin["subnet6"], plugin["dnsAddress6"]) == (DEFAULT_SUBNET6, DEFAULT_DNS6)
    assert "dnsAddress" not in plugin and "gateway" not in plugin
    assert "ipRanges" not in plugin["capabilities"]  # the runtime's IPv4 range has no use
    conf = parse_netconf(plugin)
    assert conf.ipv4 is False and conf.dns_address == ""
    assert conf.dns_addresses() == [DEFAULT_DNS6]
    assert conf.dns_result()["nameservers"] == [DEFAULT_DNS6]


def test_ipv6_only_with_subnet6_and_dns_ip6():
    opts = options("--ipv6-only", "--subnet6", "fd42:1:2::/64", "--dns-ip6", "fd42:53::2",
                   "--bridge", "brx", "--network", "netx")
    conflist = render_conflist(opts)
    plugin = plugin_config(conflist)
    assert (plugin["subnet"], plugin["subnet6"], plugin["dnsAddress6"]) == \
        ("", "fd42:1:2::/64", "fd42:53::2")
    conf = netconf_of(conflist)
    assert conf.cidr() == "" and conf.cidr6() == "fd42:1:2::/64"
    assert cluster_dns(conf) == "fd42:53::2"  # kubelet's --cluster-dns: no IPv4 address
    server = k3s_command_lines(conf)[0]
    assert "--cluster-cidr=fd42:1:2::/56 --service-cidr=fd00:10:43::/112" in server
    assert "--cluster-dns=fd42:53::2 " in server


def test_dual_stack_is_unchanged_by_the_new_option():
    conf = netconf_of(render_conflist(options("--ipv6")))
    assert conf.ipv4 is True and conf.dns_addresses() == ["169.254.0.2", DEFAULT_DNS6]
    assert cluster_dns(conf) == f"169.254.0.2,{DEFAULT_DNS6}"
    assert "--cluster-cidr" not in k3s_command_lines(conf)[0]


@pytest.mark.parametrize("argv, named", [
    (["--subnet", "10.42.0.0/16"], "--subnet"),
    (["--gateway", "10.42.0.1"], "--gateway"),
    (["--dns-ip", "169.254.0.2"], "--dns-ip"),
    (["--pod-cidr-from-node", "--kubeconfig", "KUBECONFIG"], "--pod-cidr-from-node"),
    (["--containerd-template"], "--containerd-template"),
    (["--subnet", "10.42.0.0/16", "--dns-ip", "169.254.0.2"], "--subnet and --dns-ip"),
])
def test_ipv6_only_with_an_ipv4_setting_is_refused(argv, named, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")  # only has to exist: nothing is read before the refusal
    argv = [str(kubeconfig) if word == "KUBECONFIG" else word for word in argv]
    opts = options("--ipv6-only", "--subnet6", "fd42::/64", *argv)
    with pytest.raises(CLIError) as caught:
        check_ipv6_only(opts)
    assert named in caught.value.message and "--ipv6-only" in caught.value.message
    assert "drop" in caught.value.fix


def test_ipv6_only_in_docker_mode_is_refused():
    with pytest.raises(CLIError) as caught:
        check_ipv6_only(options("--ipv6-only", "--mode", "docker"))
    assert "bridge mode" in caught.value.message


def test_the_refusal_comes_before_anything_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path / "prefix"))
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(tmp_path / "state"))
    opts = options("--ipv6-only", "--subnet", "10.9.0.0/24", "--cni-bin-dir",
                   str(tmp_path / "bin"), "--cni-conf-dir", str(tmp_path / "conf"))
    with pytest.raises(CLIError):
        install(opts, Output())
    assert sorted(os.listdir(tmp_path)) == []


def test_the_cli_says_the_error_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_PREFIX=str(tmp_path / "p"),
               SMARTER_CNI_STATE_DIR=str(tmp_path / "s"))
    env.pop("CNI_COMMAND", None)
    done = subprocess.run([sys.executable, "-m", "smarter_cni", "install", "--ipv6-only",
                           "--subnet", "10.9.0.0/24", "--cni-bin-dir", str(tmp_path / "b"),
                           "--cni-conf-dir", str(tmp_path / "c")],
                          env=env, capture_output=True, text=True, timeout=60)
    if os.geteuid() != 0:  # install refuses non-root first; the refusal is the same code
        assert done.returncode == 1 and "root" in done.stderr
        return
    assert done.returncode == 1 and done.stdout == ""
    assert "error: --ipv6-only gives pods no IPv4, but --subnet" in done.stderr
    assert "fix: drop --subnet" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_install_help_names_ipv6_only():
    help_text = build_parser()._subparsers._group_actions[0].choices["install"].format_help()
    assert "--ipv6-only" in help_text
    install_sh = (SRC.parent / "install.sh").read_text()
    assert "--ipv6-only" in install_sh  # install.sh passes it on and says so in its usage


# ---------------------------------------------------------------- the config, the service

def test_an_ipv6_only_config_has_no_ipv4_dns_address_unless_it_names_one():
    base = {"name": "n", "type": "smarter-cni", "subnet": "", "subnet6": "fd42::/64"}
    assert parse_netconf(base).dns_addresses() == [DEFAULT_DNS6]
    named = parse_netconf(dict(base, dnsAddress="169.254.7.7", dnsAddress6="fd42:53::2"))
    assert named.dns_addresses() == ["169.254.7.7", "fd42:53::2"]  # host processes' one
    assert named.dns_result()["nameservers"] == ["fd42:53::2"]  # pods: IPv6 only
    assert parse_netconf(dict(base, dnsAddress="")).dns_address == ""


@pytest.mark.parametrize("text, listen, expected", [
    (None, "fd00:169:254::2", ("fd00:169:254::2", 9153)),
    ("9253", "fd00:169:254::2", ("fd00:169:254::2", 9253)),
    ("[fd42::9]:9300", "169.254.0.2", ("fd42::9", 9300)),
    ("fd42::9", "169.254.0.2", ("fd42::9", 9153)),
    ("127.0.0.1:9000", "fd00:169:254::2", ("127.0.0.1", 9000)),
    ("off", "fd00:169:254::2", None),
])
def test_metrics_address_takes_ipv6(text, listen, expected):
    assert metrics_address(text, listen) == expected


@pytest.mark.parametrize("text", ["[fd42::9", "[fd42::zz]:1", "fd42::9:99999x", "[::1]:70000"])
def test_metrics_address_refuses_bad_ipv6(text):
    with pytest.raises(SettingsError):
        metrics_address(text, "fd00:169:254::2")


def status_of_files(tmp_path: Path, *install_args: str):
    """`smarter-cni status` (as `status(*extra)`) of the config `install *install_args` renders,
    over files only: the DNS address is not on this node, so nothing is sent."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conflist = render_conflist(options(*install_args))
    (conf_dir / "10-smarter-cni.conflist").write_text(json.dumps(conflist))
    env = dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_PREFIX=str(tmp_path / "p"),
               SMARTER_CNI_STATE_DIR=str(tmp_path / "s"))
    env.pop("CNI_COMMAND", None)

    def status(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smarter_cni", "status", "--cni-conf-dir",
                               str(conf_dir), "--cni-bin-dir", str(tmp_path / "b"), *extra],
                              env=env, capture_output=True, text=True, timeout=60)

    return status


def test_status_of_an_ipv6_only_config_has_no_ipv4_lines(tmp_path):
    status = status_of_files(tmp_path, "--ipv6-only", "--subnet6", "fd42:7:7::/64",
                             "--dns-ip6", "fd42:7:53::2", "--bridge", "brnone0x")
    data = json.loads(status("--json").stdout)
    assert data["families"] == ["ipv6"] and data["subnet6"] == "fd42:7:7::/64"
    assert "subnet" not in data and "gateway" not in data and "dns_address" not in data
    assert data["dns"]["address"] == "fd42:7:53::2" and data["dns"]["answering"] is False
    human = status().stdout
    assert "network   smarter  fd42:7:7::/64 via fd42:7:7::1  (IPv6 only)" in human
    assert "[fd42:7:53::2]:53 NOT answering" in human
    assert "169.254" not in human and " via ," not in human
