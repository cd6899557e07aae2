"""The Python `loopback` plugin the installer adds, exec'd the way runtimes exec it.

VERSION and error handling need no privileges; ADD/CHECK/DEL run in real
network namespaces (root).
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


def call(plugin: Path, command: str, netns: str = "", config: dict | None = None,
         version: str = "1.0.0") -> tuple[int, dict]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": "loopbacktest", "CNI_IFNAME": "lo", "CNI_PATH": str(plugin.parent)}
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
    assert "from smarter_cni.loopback import main" in text
    assert plugin.stat().st_mode & 0o755 == 0o755


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


@pytest.mark.root
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_brings_lo_up_check_and_del(plugin, netns, version):
    name, path = netns.create("lo")
    netns.exec(name, "ip", "link", "set", "lo", "down")
    code, out = call(plugin, "ADD", path, version=version)
    assert code == 0, out
    assert out["cniVersion"] == version
    assert out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": path}]
    assert {"address": "127.0.0.1/8", "interface": 0}.items() <= out["ips"][0].items()
    shown = netns.exec(name, "ip", "-o", "link", "show", "lo").stdout.decode()
    assert ",UP" in shown
    assert netns.exec(name, "ping", "-c1", "-W1", "127.0.0.1", check=False).returncode == 0
    assert call(plugin, "CHECK", path, version=version)[0] == 0
    assert call(plugin, "DEL", path, version=version)[0] == 0


@pytest.mark.root
def test_check_fails_when_lo_is_down(plugin, netns):
    name, path = netns.create("lo")
    netns.exec(name, "ip", "link", "set", "lo", "down")
    code, out = call(plugin, "CHECK", path)
    assert code == 1 and out["code"] == 103 and "lo is not up" in out["msg"]


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
