"""The `smarter-cni` command line without touching the node: parsing, help,
config rendering, status and pods over files in temp dirs, error output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from smarter_cni import cli, install, status
from smarter_cni.cli import CLIError, format_table, main
from smarter_cni.netconf import parse_netconf

SRC = Path(__file__).resolve().parents[2] / "src"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a child process (as the installed script runs it)."""
    full = dict(os.environ, PYTHONPATH=str(SRC), **(env or {}))
    full.pop("CNI_COMMAND", None)
    return subprocess.run([sys.executable, "-m", "smarter_cni", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def options(**overrides) -> install.Options:
    args = SimpleNamespace(mode="bridge", subnet=None, gateway=None, dns_ip=None, bridge=None,
                           network=None, domain=None, cni_bin_dir=None, cni_conf_dir=None,
                           k3s=False, no_selftest=False, no_dns_service=False,
                           plugin_python=None, plugin_lib=None)
    for key, value in overrides.items():
        setattr(args, key, value)
    return install.Options.from_args(args)


def plugin_of(conflist: dict) -> dict:
    return install.plugin_config(conflist)


# ---------------------------------------------------------------- parsing and help

def test_help_lists_every_command():
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("install", "uninstall", "status", "pods", "selftest", "dns"):
        assert command in done.stdout
    assert "supervise-dns" not in done.stdout  # internal
    assert "sudo smarter-cni install" in done.stdout  # examples a person can follow


def test_install_help_names_the_options():
    done = run_cli("install", "--help")
    assert done.returncode == 0
    for option in ("--mode", "--subnet", "--gateway", "--dns-ip", "--bridge", "--network",
                   "--cni-bin-dir", "--cni-conf-dir", "--k3s", "--no-selftest",
                   "--no-dns-service"):
        assert option in done.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: smarter-cni" in capsys.readouterr().out


def test_unknown_command_and_bad_mode_are_usage_errors():
    done = run_cli("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run_cli("install", "--mode", "vxlan")
    assert done.returncode == 2 and "invalid choice: 'vxlan'" in done.stderr


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip().startswith("smarter-cni ")


def test_k3s_preset_selects_the_dirs_k3s_uses_without_flannel():
    opts = options(k3s=True)
    assert (opts.bin_dir, opts.conf_dir) == ("/opt/cni/bin", "/etc/cni/net.d")
    explicit = options(k3s=True, cni_bin_dir="/x/bin", cni_conf_dir="rel/conf")
    assert explicit.bin_dir == "/x/bin" and explicit.conf_dir == os.path.abspath("rel/conf")


# ---------------------------------------------------------------- config rendering

def test_default_bridge_config():
    conf = parse_netconf(plugin_of(install.render_conflist(options())))
    assert (conf.mode, conf.bridge, conf.cidr(), conf.gateway_text(), conf.dns_address) == \
        ("bridge", "smarter0", "10.42.0.0/16", "10.42.0.1", "169.254.0.2")
    assert install.our_plugin(install.render_conflist(options()))["capabilities"] == \
        {"io.kubernetes.cri.pod-annotations": True}


def test_options_fill_the_config():
    conflist = install.render_conflist(options(subnet="192.168.50.0/24", dns_ip="169.254.9.9",
                                               bridge="pods0", domain="edge.local"))
    conf = parse_netconf(plugin_of(conflist))
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
    plugin = install.our_plugin(install.render_conflist(options(mode="docker")))
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


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "10-smarter-cni.conflist"
    install.write_atomic(str(target), "old\n")
    install.write_atomic(str(target), "new\n", 0o644)
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


# ---------------------------------------------------------------- output helpers

def test_tables_align():
    lines = format_table(("NAME", "ADDRESS"), [("a", "10.42.0.2"), ("longer-name", None)])
    assert lines == ["NAME         ADDRESS", "a            10.42.0.2", "longer-name"]


def test_ages_read_like_kubectl():
    assert [status.age(s) for s in (5, 119, 120, 7199, 7200, 172799, 172800)] == \
        ["5s", "119s", "2m", "119m", "2h", "47h", "2d"]


# ---------------------------------------------------------------- status and pods over files

def test_status_without_an_install_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path / "prefix"))
    done = run_cli("status", "--cni-conf-dir", str(tmp_path),
                   env={"SMARTER_CNI_PREFIX": str(tmp_path / "prefix")})
    assert done.returncode == 1
    assert "no 10-smarter-cni.conflist found" in done.stdout
    assert "fix: run `sudo smarter-cni install`" in done.stdout
    report = json.loads(run_cli("status", "--json", "--cni-conf-dir", str(tmp_path),
                                env={"SMARTER_CNI_PREFIX": str(tmp_path / "p")}).stdout)
    assert report["ok"] is False and report["config"] is None
    assert report["problems"][0]["fix"]


def test_status_with_a_broken_config_has_no_traceback(tmp_path):
    (tmp_path / "10-smarter-cni.conflist").write_text("{not json")
    done = run_cli("status", "--cni-conf-dir", str(tmp_path),
                   env={"SMARTER_CNI_PREFIX": str(tmp_path / "p")})
    assert done.returncode == 1 and "not valid JSON" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def _state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    records = {
        "smarter/c1/eth0": {"network": "smarter", "mode": "bridge", "container_id": "a" * 64,
                            "ifname": "eth0", "ips": ["10.42.0.5/16"], "ready": True,
                            "created": now - 4000,
                            "pod": {"name": "web", "namespace": "shop", "uid": "u1",
                                    "hostname": "web-0"}},
        "smarter/c2/eth0": {"network": "smarter", "mode": "bridge", "container_id": "b" * 64,
                            "ifname": "eth0", "ips": ["10.42.0.6/16"], "ready": False,
                            "created": now - 3,
                            "pod": {"name": "db", "namespace": "shop", "uid": "u2",
                                    "hostname": ""}},
    }
    (state / "attachments.json").write_text(json.dumps(
        {"version": 1, "networks": {}, "attachments": records}))
    return state


def test_pods_table_and_json(tmp_path):
    env = {"SMARTER_CNI_STATE_DIR": str(_state(tmp_path))}
    done = run_cli("pods", env=env)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NAMESPACE", "HOSTNAME", "ADDRESS", "CONTAINER", "AGE"]
    assert lines[1].split() == ["db", "(not", "ready)", "shop", "-", "10.42.0.6", "b" * 12, "3s"]
    assert lines[2].split() == ["web", "shop", "web-0", "10.42.0.5", "a" * 12, "66m"]
    rows = json.loads(run_cli("pods", "--json", env=env).stdout)
    assert [(r["name"], r["address"], r["ready"]) for r in rows] == \
        [("db", "10.42.0.6", False), ("web", "10.42.0.5", True)]
    assert rows[1]["container"] == "a" * 64


def test_pods_with_no_state(tmp_path):
    done = run_cli("pods", env={"SMARTER_CNI_STATE_DIR": str(tmp_path / "none")})
    assert done.returncode == 0 and "no pods attached" in done.stdout
    assert json.loads(run_cli("pods", "--json",
                              env={"SMARTER_CNI_STATE_DIR": str(tmp_path / "n")}).stdout) == []


def test_pods_with_a_corrupt_state_file_is_an_error_not_a_traceback(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "attachments.json").write_text("[1, 2")
    done = run_cli("pods", env={"SMARTER_CNI_STATE_DIR": str(state)})
    assert done.returncode == 1
    assert done.stderr.startswith("smarter-cni: error:") and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_unexpected_failures_become_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(tmp_path))

    def broken() -> int:
        raise ZeroDivisionError("boom")

    assert cli._guarded(broken) == 1
    err = capsys.readouterr().err
    assert "unexpected failure: ZeroDivisionError: boom" in err and "Traceback" not in err
    assert "ZeroDivisionError" in (tmp_path / "smarter-cni.log").read_text()  # kept for the operator


@pytest.mark.root
def test_commands_that_change_the_node_refuse_without_root(tmp_path):
    for command in ("install", "uninstall", "selftest"):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "smarter_cni", command],
            env=dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_PREFIX=str(tmp_path)),
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, command
        assert "needs root" in done.stderr and f"sudo smarter-cni {command}" in done.stderr


def test_systemd_unit_runs_this_installation(monkeypatch):
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", "/run/other-state")
    argv = ["/opt/x/venv/bin/smarter-cni", "dns", "--config", "/etc/cni/net.d/10-smarter-cni.conflist"]
    text = install._unit_text(argv)
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == ["ExecStart=" + " ".join(argv)]
    assert "Environment=SMARTER_CNI_STATE_DIR=/run/other-state" in text.splitlines()
    assert text.index("[Service]") < text.index("Environment=") < text.index("[Install]")
    assert "Restart=" in text and "WantedBy=multi-user.target" in text


# ---------------------------------------------------------------- what uninstall may remove

def test_a_step_that_found_a_failure_never_says_ok():
    import io

    stream = io.StringIO()
    out = cli.Output(stream=stream)
    with out.step("Checking ping and names between the pods") as step:
        step.fail("2 of 8 checks failed")
    with out.step("Deleting the test pods"):
        pass
    lines = stream.getvalue().splitlines()
    assert lines == ["  Checking ping and names between the pods ... FAILED: 2 of 8 checks failed",
                     "  Deleting the test pods ... ok"]


def test_state_dir_keeps_files_smarter_cni_did_not_write(tmp_path, monkeypatch):
    state = _state(tmp_path)
    for name in ("lock", "dns.log", "dns-supervisor.pid", "smarter-cni.log",
                 ".dns-supervisor.pid.77.tmp"):
        (state / name).write_text("x")
    (state / "operator-notes.txt").write_text("mine")
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(state))
    detail = install._remove_state(None, force=True)
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
    install.purge_program(install.load_program_record())
    assert sorted(p.name for p in prefix.iterdir()) == ["docs", "lib", "share"]
    assert sorted(p.name for p in links.iterdir()) == ["other"]
    assert tmp_path.exists()


def test_purge_leaves_a_link_that_is_not_ours(tmp_path, monkeypatch):
    links = tmp_path / "bin"
    links.mkdir()
    (links / "smarter-cni").symlink_to("/usr/bin/someone-elses")
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path / "p"))
    install.purge_program({"link": str(links / "smarter-cni"), "link_target": "/x/venv/bin/y"})
    assert (links / "smarter-cni").is_symlink()


def test_install_options_for_a_private_install(monkeypatch, tmp_path):
    opts = options(network="scni-test", dns_interface="dnstest0", service="supervisor")
    assert (opts.network, opts.dns_interface, opts.service) == ("scni-test", "dnstest0",
                                                                "supervisor")
    assert install.render_conflist(opts)["name"] == "scni-test"
    docker = install.render_conflist(options(mode="docker", network="scni-d"))
    assert docker["name"] == "scni-d" and install.our_plugin(docker)["network"] == "scni-d"
    assert options().dns_interface == "smarter-dns" and options().service == "auto"
    monkeypatch.setenv("SMARTER_CNI_UNIT_DIR", str(tmp_path))
    assert install.unit_path() == str(tmp_path / "smarter-cni-dns.service")
    assert install.dns_arguments("/c", None, "dnstest0") == ["--config", "/c", "--interface",
                                                             "dnstest0"]
    with pytest.raises(CLIError):
        install.service_kind("systemd") if not install.systemd_running() else \
            install.service_kind("bogus")
