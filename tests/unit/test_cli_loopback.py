"""The Python `loopback` plugin the installer adds, exec'd the way runtimes exec it.

VERSION and error handling need no privileges; ADD/CHECK/DEL run in real
network namespaces (root), over rtnetlink and over the iproute2 fallback
(SMARTER_CNI_USE_IPROUTE2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.plugin import SRC
from smarter_cni import loopback


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    dest = tmp_path / "loopback"
    loopback.write_launcher(str(dest), sys.executable, str(SRC))
    return dest


IPROUTE2 = {"SMARTER_CNI_USE_IPROUTE2": "1"}
TOOLS = [pytest.param({}, id="netlink"), pytest.param(IPROUTE2, id="iproute2")]


def call(plugin: Path, command: str, netns: str = "", config: dict | None = None,
         version: str = "1.0.0", extra: dict | None = None) -> tuple[int, dict]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": "loopbacktest", "CNI_IFNAME": "lo", "CNI_PATH": str(plugin.parent),
           # never the node's resident server (/run/smarter-cni): one of this test's own
           "SMARTER_CNI_STATE_DIR": str(plugin.parent / "state"), **(extra or {})}
    if netns:
        env["CNI_NETNS"] = netns
    body = config or {"cniVersion": version, "name": "cni-loopback", "type": "loopback"}
    done = subprocess.run([str(plugin)], input=json.dumps(body).encode(), env=env,
                          capture_output=True, timeout=30)
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, out


def test_launcher_is_small_and_isolated(plugin):
    text = plugin.read_text()
    assert text.startswith(f"#!{sys.executable} -IS\n")
    assert "from smarter_cni.client import main\nsys.exit(main('loopback'))" in text
    assert plugin.stat().st_mode & 0o755 == 0o755


def test_a_launcher_written_before_the_client_still_works(tmp_path):
    """Nodes installed earlier have `from smarter_cni.loopback import main` launchers."""
    from smarter_cni import launcher

    old = tmp_path / "loopback"
    launcher.write(str(old), sys.executable, str(SRC), module="smarter_cni.loopback",
                   header=loopback.LAUNCHER_HEADER)
    code, out = call(old, "VERSION", version="0.4.0")
    assert code == 0 and out["cniVersion"] == "0.4.0", out
    code, out = call(old, "ADD")
    assert code == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]


def test_without_cni_variables_it_is_still_a_cni_plugin_not_the_cli(plugin):
    """The client serves smarter-cni's command line when no CNI_* is set; never for loopback."""
    done = subprocess.run([str(plugin)], input=b"", capture_output=True, timeout=30,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"], done


def test_version(plugin):
    code, out = call(plugin, "VERSION", version="0.4.0")
    assert code == 0
    assert out["cniVersion"] == "0.4.0"
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_add_without_a_netns_is_a_spec_error(plugin):
    code, out = call(plugin, "ADD")
    assert code == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]


def test_unknown_version_is_incompatible(plugin):
    # refused before anything is done, so the caller's own netns is a safe stand-in
    code, out = call(plugin, "ADD", netns="/proc/self/ns/net", version="9.9.9")
    assert code == 1 and out["code"] == 1


@pytest.mark.parametrize("extra", TOOLS)
@pytest.mark.parametrize("target", ["file", "directory"])
def test_add_on_a_path_that_is_no_namespace_is_a_spec_error(plugin, tmp_path, target, extra):
    path = tmp_path / "not-a-netns"
    if target == "file":
        path.write_text("")
    else:
        path.mkdir()
    for command in ("ADD", "CHECK"):
        code, out = call(plugin, command, str(path), extra=extra)
        assert code == 1 and out["code"] == 4, out
        assert out["msg"].startswith(f"CNI_NETNS {path} is not a network namespace"), out
        assert "Traceback" not in json.dumps(out)


@pytest.mark.parametrize("extra", TOOLS)
def test_add_on_another_kind_of_namespace_is_a_spec_error(plugin, extra):
    # the caller's own UTS namespace: refused before anything is done, so it is a safe stand-in
    code, out = call(plugin, "ADD", "/proc/self/ns/uts", extra=extra)
    assert code == 1 and out["code"] == 4, out
    assert "is not a network namespace" in out["msg"], out


def test_add_on_a_missing_netns_is_a_spec_error(plugin, tmp_path):
    code, out = call(plugin, "ADD", str(tmp_path / "gone"))
    assert code == 1 and out["code"] == 4 and "does not exist" in out["msg"], out


def _lo_flags(netns, name: str) -> list[str]:
    shown = netns.exec(name, "ip", "-o", "link", "show", "lo").stdout.decode()
    return shown.split("<", 1)[1].split(">", 1)[0].split(",")


def _ipv6_on(netns, name: str) -> bool:
    done = netns.exec(name, "cat", "/proc/sys/net/ipv6/conf/lo/disable_ipv6", check=False)
    return done.returncode == 0 and done.stdout.strip() == b"0"


@pytest.mark.root
@pytest.mark.parametrize("extra", TOOLS)
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_brings_lo_up_check_and_del(plugin, netns, version, extra):
    name, path = netns.create("lo")
    netns.exec(name, "ip", "link", "set", "lo", "down")
    assert "UP" not in _lo_flags(netns, name)
    code, out = call(plugin, "ADD", path, version=version, extra=extra)
    assert code == 0, out
    assert out["cniVersion"] == version
    assert out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": path}]
    expected = ["127.0.0.1/8"] + (["::1/128"] if _ipv6_on(netns, name) else [])
    assert [ip["address"] for ip in out["ips"]] == expected, out
    assert all(ip["interface"] == 0 for ip in out["ips"])
    assert "UP" in _lo_flags(netns, name)
    assert netns.exec(name, "ping", "-c1", "-W1", "127.0.0.1", check=False).returncode == 0
    assert call(plugin, "CHECK", path, version=version, extra=extra)[0] == 0
    assert call(plugin, "DEL", path, version=version, extra=extra)[0] == 0
    assert "UP" in _lo_flags(netns, name)  # DEL leaves lo alone: it dies with the netns


@pytest.mark.root
def test_add_on_a_netns_without_ipv6_reports_only_ipv4(plugin, netns):
    name, path = netns.create("lo")
    netns.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    netns.exec(name, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
    code, out = call(plugin, "ADD", path)
    assert code == 0, out
    assert [ip["address"] for ip in out["ips"]] == ["127.0.0.1/8"], out


@pytest.mark.root
def test_add_over_netlink_execs_nothing(netns):
    """The rtnetlink path runs no nsenter/ip: a process whose posix_spawn fails still serves it."""
    _, path = netns.create("lo")
    script = ("import os, sys, json\n"
              f"sys.path.insert(0, {str(SRC)!r})\n"
              "def refuse(*a, **k):\n    raise OSError(1, 'spawn refused by the test')\n"
              "os.posix_spawn = refuse\n"
              "from smarter_cni import loopback\n"
              "from smarter_cni.cni import dispatch\n"
              "sys.exit(dispatch.run(loopback.HANDLERS))\n")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "loopbacktest", "CNI_IFNAME": "lo",
           "CNI_PATH": "/nonexistent", "CNI_NETNS": path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run([sys.executable, "-I", "-c", script], env=env, capture_output=True,
                          input=json.dumps({"cniVersion": "1.0.0", "name": "n",
                                            "type": "loopback"}).encode(), timeout=30)
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["ips"][0]["address"] == "127.0.0.1/8"
    env["CNI_COMMAND"] = "CHECK"
    done = subprocess.run([sys.executable, "-I", "-c", script], env=env, capture_output=True,
                          input=b'{"cniVersion": "1.0.0", "name": "n", "type": "loopback"}',
                          timeout=30)
    assert done.returncode == 0 and done.stdout == b"", done


@pytest.mark.root
@pytest.mark.parametrize("extra", TOOLS)
def test_check_fails_when_lo_is_down(plugin, netns, extra):
    name, path = netns.create("lo")
    netns.exec(name, "ip", "link", "set", "lo", "down")
    code, out = call(plugin, "CHECK", path, extra=extra)
    assert code == 1 and out["code"] == 103 and "lo is not up" in out["msg"], out
    assert call(plugin, "ADD", path, extra=extra)[0] == 0
    assert call(plugin, "CHECK", path, extra=extra)[0] == 0


@pytest.mark.root
def test_chained_add_passes_the_previous_result_on(plugin, netns):
    _, path = netns.create("lo")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": path}],
            "ips": [{"address": "10.42.0.9/16", "gateway": "10.42.0.1", "interface": 0}],
            "dns": {}}
    config = {"cniVersion": "1.0.0", "name": "n", "type": "loopback", "prevResult": prev}
    code, out = call(plugin, "ADD", path, config=config)
    assert code == 0 and out["ips"] == prev["ips"] and out["interfaces"] == prev["interfaces"]


def test_del_for_a_netns_already_gone_succeeds(plugin, tmp_path):
    code, _ = call(plugin, "DEL", str(tmp_path / "gone"))
    assert code == 0
