"""node/ (install, uninstall, service, status, console) and conflist, without touching
the node: options, config rendering, the unit, what uninstall may remove."""

from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace

import pytest

from helpers.sample_state import sample_state
from smarter_cni import conflist, files
from smarter_cni.netconf import parse_netconf
from smarter_cni.node import console, install, service, status, uninstall
from smarter_cni.node.console import CLIError


def options(**overrides) -> install.Options:
    args = SimpleNamespace(mode="bridge", subnet=None, gateway=None, dns_ip=None, bridge=None,
                           network=None, domain=None, cni_bin_dir=None, cni_conf_dir=None,
                           k3s=False, no_selftest=False, no_dns_service=False,
                           plugin_python=None, plugin_lib=None)
    for key, value in overrides.items():
        setattr(args, key, value)
    return install.Options.from_args(args)


def plugin_of(rendered: dict) -> dict:
    return conflist.plugin_config(rendered)



def test_k3s_preset_selects_the_dirs_k3s_uses_without_flannel():
    opts = options(k3s=True)
    assert (opts.bin_dir, opts.conf_dir) == ("/opt/cni/bin", "/etc/cni/net.d")
    explicit = options(k3s=True, cni_bin_dir="/x/bin", cni_conf_dir="rel/conf")
    assert explicit.bin_dir == "/x/bin" and explicit.conf_dir == os.path.abspath("rel/conf")


# ---------------------------------------------------------------- config rendering

def test_default_bridge_config(monkeypatch, tmp_path):
    # the source checkout's deploy/ template, not the one an install on this node copied
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path))
    conf = parse_netconf(plugin_of(install.render_conflist(options())))
    assert (conf.mode, conf.bridge, conf.cidr(), conf.gateway_text(), conf.dns_address) == \
        ("bridge", "smarter0", "10.42.0.0/16", "10.42.0.1", "169.254.0.2")
    assert conflist.our_plugin(install.render_conflist(options()))["capabilities"] == \
        {"io.kubernetes.cri.pod-annotations": True, "ipRanges": True}


def test_options_fill_the_config():
    rendered = install.render_conflist(options(subnet="192.168.50.0/24", dns_ip="169.254.9.9",
                                               bridge="pods0", domain="edge.local"))
    conf = parse_netconf(plugin_of(rendered))
    assert conf.cidr() == "192.168.50.0/24"
    assert conf.gateway_text() == "192.168.50.1"  # the template's gateway is not kept
    assert (conf.dns_address, conf.bridge, conf.domain) == ("169.254.9.9", "pods0", "edge.local")
    gateway = install.render_conflist(options(subnet="192.168.50.0/24", gateway="192.168.50.254"))
    assert parse_netconf(plugin_of(gateway)).gateway_text() == "192.168.50.254"


def test_docker_config_reserves_dot_two_of_its_subnet(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    conf = parse_netconf(plugin_of(install.render_conflist(options(mode="docker"))))
    assert (conf.mode, conf.docker_network, conf.cidr(), conf.dns_address) == \
        ("docker", "mynet", "172.38.0.0/16", "172.38.0.2")
    other = install.render_conflist(options(mode="docker", subnet="172.40.0.0/16",
                                            network="edge"))
    conf = parse_netconf(plugin_of(other))
    assert (conf.docker_network, conf.dns_address) == ("edge", "172.40.0.2")


def test_docker_socket_from_docker_host_goes_into_the_config(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other/docker.sock")
    plugin = conflist.our_plugin(install.render_conflist(options(mode="docker")))
    assert plugin["dockerSocket"] == "/run/other/docker.sock"


@pytest.mark.parametrize("field, value, words", [
    ("subnet", "10.0.0.0/33", "subnet"),
    ("dns_ip", "not-an-ip", "dnsAddress"),
    ("bridge", "a-bridge-name-far-too-long", "not a valid interface name"),
    ("gateway", "10.99.0.1", "outside subnet"),
])
def test_bad_options_are_errors_that_say_what(field, value, words):
    with pytest.raises(CLIError) as caught:
        install.render_conflist(options(**{field: value}))
    assert words in caught.value.message and caught.value.fix


def test_k3s_command_lines():
    bridge = parse_netconf(plugin_of(install.render_conflist(options())))
    server, agent = install.k3s_command_lines(bridge)
    for flag in ("--flannel-backend=none", "--disable-network-policy", "--disable-kube-proxy",
                 "--disable=coredns,servicelb,traefik,metrics-server",
                 "--cluster-dns=169.254.0.2"):
        assert flag in server
    assert "--no-flannel" not in server and "--no-deploy" not in server  # gone since v1.26
    assert "K3S_URL=" in agent and "--docker" not in server + agent
    docker = parse_netconf(plugin_of(install.render_conflist(options(mode="docker"))))
    server, agent = install.k3s_command_lines(docker)
    assert "--docker" in server and "--docker" in agent and "--cluster-dns=172.38.0.2" in server
    kept, _ = install.k3s_command_lines(bridge, keep_kube_proxy=True)
    assert "--disable-kube-proxy" not in kept
    for flag in ("--flannel-backend=none", "--disable-network-policy",
                 "--disable=coredns,servicelb,traefik,metrics-server", "--cluster-dns=169.254.0.2"):
        assert flag in kept


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "10-smarter-cni.conflist"
    files.write_atomic(str(target), "old\n")
    files.write_atomic(str(target), "new\n", 0o644)
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_ages_read_like_kubectl():
    assert [status.age(s) for s in (5, 119, 120, 7199, 7200, 172799, 172800)] == \
        ["5s", "119s", "2m", "119m", "2h", "47h", "2d"]


def test_systemd_unit_runs_this_installation(monkeypatch):
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", "/run/other-state")
    argv = ["/opt/x/venv/bin/smarter-cni", "dns", "--config", "/etc/cni/net.d/10-smarter-cni.conflist"]
    text = service.unit_text(argv)
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == ["ExecStart=" + " ".join(argv)]
    assert "Environment=SMARTER_CNI_STATE_DIR=/run/other-state" in text.splitlines()
    assert text.index("[Service]") < text.index("Environment=") < text.index("[Install]")
    assert "Restart=" in text and "WantedBy=multi-user.target" in text


# ---------------------------------------------------------------- what uninstall may remove

def test_a_step_that_found_a_failure_never_says_ok():
    stream = io.StringIO()
    out = console.Output(stream=stream)
    with out.step("Checking ping and names between the pods") as step:
        step.fail("2 of 8 checks failed")
    with out.step("Deleting the test pods"):
        pass
    lines = stream.getvalue().splitlines()
    assert lines == ["  Checking ping and names between the pods ... FAILED: 2 of 8 checks failed",
                     "  Deleting the test pods ... ok"]


def test_state_dir_keeps_files_smarter_cni_did_not_write(tmp_path, monkeypatch):
    state = sample_state(tmp_path)
    for name in ("lock", "dns.log", "dns-supervisor.pid", "smarter-cni.log",
                 ".dns-supervisor.pid.77.tmp"):
        (state / name).write_text("x")
    (state / "operator-notes.txt").write_text("mine")
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(state))
    detail = uninstall._remove_state(None, force=True)
    assert sorted(p.name for p in state.iterdir()) == ["operator-notes.txt"]
    assert "operator-notes.txt" in detail


def test_purge_removes_only_what_the_program_record_lists(tmp_path, monkeypatch):
    prefix = tmp_path / "checkout"
    for name in ("venv", "docs", "lib", "share"):
        (prefix / name).mkdir(parents=True)
    links = tmp_path / "bin"
    links.mkdir()
    (links / "smarter-cni").symlink_to(prefix / "venv" / "bin" / "smarter-cni")
    (links / "other").symlink_to("/bin/true")
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(prefix))
    program = {"made_by": "install.sh", "made": ["venv", "../escape"], "made_prefix": False,
               "link": str(links / "smarter-cni"),
               "link_target": str(prefix / "venv" / "bin" / "smarter-cni")}
    (prefix / "program.json").write_text(json.dumps(program))
    uninstall.purge_program(uninstall.load_program_record())
    assert sorted(p.name for p in prefix.iterdir()) == ["docs", "lib", "share"]
    assert sorted(p.name for p in links.iterdir()) == ["other"]
    assert tmp_path.exists()


def test_purge_leaves_a_link_that_is_not_ours(tmp_path, monkeypatch):
    links = tmp_path / "bin"
    links.mkdir()
    (links / "smarter-cni").symlink_to("/usr/bin/someone-elses")
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path / "p"))
    uninstall.purge_program({"link": str(links / "smarter-cni"), "link_target": "/x/venv/bin/y"})
    assert (links / "smarter-cni").is_symlink()


def test_install_options_for_a_private_install(monkeypatch, tmp_path):
    opts = options(network="scni-test", dns_interface="dnstest0", service="supervisor")
    assert (opts.network, opts.dns_interface, opts.service) == ("scni-test", "dnstest0",
                                                                "supervisor")
    assert install.render_conflist(opts)["name"] == "scni-test"
    docker = install.render_conflist(options(mode="docker", network="scni-d"))
    assert docker["name"] == "scni-d" and conflist.our_plugin(docker)["network"] == "scni-d"
    assert options().dns_interface == "smarter-dns" and options().service == "auto"
    monkeypatch.setenv("SMARTER_CNI_UNIT_DIR", str(tmp_path))
    assert service.unit_path() == str(tmp_path / "smarter-cni-dns.service")
    assert service.dns_arguments("/c", None, "dnstest0") == ["--config", "/c", "--interface",
                                                             "dnstest0"]
    assert service.dns_arguments("/c", None, "dnstest0", "/k.yaml")[-2:] == \
        ["--kubeconfig", "/k.yaml"]
    with pytest.raises(CLIError):
        service.service_kind("systemd") if not service.systemd_running() else \
            service.service_kind("bogus")


def test_a_bad_dns_interface_name_is_refused_before_anything_changes():
    for name in ("bad/name", "a-name-far-too-long-for-linux", ""):
        with pytest.raises(CLIError) as caught:
            install._check_interface_name(name)
        assert "--dns-interface" in caught.value.message and caught.value.fix
