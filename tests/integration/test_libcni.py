"""The plugin driven through libcni (v1.1.2, as in containerd 1.7 / CRI-O / cri-dockerd).

libcni builds each plugin's stdin from a conflist, parses and converts the
result (so a malformed result fails here), caches it and feeds it back as
`prevResult` to CHECK and DEL. Every cniVersion libcni 1.1.2 knows from 0.3.0
on is exercised; 1.1.0 results are beyond this libcni and are covered by the
direct-exec tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import libcni as libcni_helper
from helpers.libcni import LibcniDriver, LibcniResult
from helpers.netns import link_exists, unique
from helpers.plugin import ROOT, pod_args

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
SUPPORTED = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
INCOMPATIBLE_VERSION = 1  # CNI error code

libcni = libcni_helper.fixture()


def write_conflist(directory: Path, network: dict, version: str, **list_keys) -> Path:
    """A conflist holding the test network's smarter-cni config as its only plugin."""
    plugin = {key: value for key, value in network.items() if key not in ("cniVersion", "name")}
    conflist = {"cniVersion": version, "name": network["name"], **list_keys, "plugins": [plugin]}
    path = directory / f"{network['name']}-{version}.conflist"
    path.write_text(json.dumps(conflist))
    return path


class Pod:
    """One pod sandbox driven through libcni with fixed runtime parameters."""

    def __init__(self, driver: LibcniDriver, conflist: Path, bin_dir: Path, cache_dir: Path,
                 state_dir: Path, netns_name: str, netns_path: str, name: str) -> None:
        self.driver = driver
        self.conflist = conflist
        self.netns_name = netns_name
        self.common = {
            "cni_path": bin_dir, "cache_dir": cache_dir, "netns": netns_path,
            "container_id": unique("ctr", 32), "ifname": "eth0",
            "args": pod_args(name, "default", uid=unique("uid-", 20)),
            "env": {"SMARTER_CNI_STATE_DIR": str(state_dir)},
        }

    def __call__(self, command: str) -> LibcniResult:
        return self.driver.run(command, self.conflist, **self.common)


def bridge_ports(bridge: str) -> list[str]:
    """Links enslaved to the test bridge (other tests' links are never counted)."""
    path = f"/sys/class/net/{bridge}/brif"
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def pod_addresses(netns_name: str, ifname: str = "eth0") -> list[str]:
    out = subprocess.run(["ip", "-n", netns_name, "-j", "-4", "addr", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout)
            for a in link.get("addr_info", [])]


def pod_default_gateway(netns_name: str) -> str | None:
    out = subprocess.run(["ip", "-n", netns_name, "-j", "-4", "route", "show", "default"],
                         capture_output=True, text=True, timeout=30, check=True)
    routes = json.loads(out.stdout)
    return routes[0].get("gateway") if routes else None


def host_veth(result: dict, bridge: str) -> str:
    names = [i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"] != bridge]
    assert len(names) == 1, f"expected one host-side veth in {result['interfaces']}"
    return names[0]


def pod_ip(result: dict, netns_path: str) -> str:
    """The pod address, checked against the interface index the result gives."""
    interfaces = result["interfaces"]
    pod_index = next(n for n, i in enumerate(interfaces)
                     if i.get("sandbox") == netns_path and i["name"] == "eth0")
    ips = [ip for ip in result["ips"] if ip.get("interface") == pod_index]
    assert len(ips) == 1, f"expected one IP on interface {pod_index}: {result['ips']}"
    return ips[0]["address"]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path / "libcni-cache"
    path.mkdir()
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_through_libcni(version, libcni, bridge_network, netns,
                                      bin_dir, state_dir, cache_dir, tmp_path):
    conflist = write_conflist(tmp_path, bridge_network, version)
    ns_name, ns_path = netns.create()
    pod = Pod(libcni, conflist, bin_dir, cache_dir, state_dir, ns_name, ns_path, "web")
    try:
        added = pod("add")
        assert added.ok, added
        result = added.json
        assert result["cniVersion"] == version, "the plugin must answer in the version asked"

        address = pod_ip(result, ns_path)
        assert address in pod_addresses(ns_name)
        assert address.endswith("/24"), address
        gateway = result["ips"][0]["gateway"]
        assert gateway == bridge_network["subnet"].replace(".0/24", ".1")
        assert pod_default_gateway(ns_name) == gateway
        veth = host_veth(result, bridge_network["bridge"])
        assert os.path.realpath(f"/sys/class/net/{veth}/master").endswith(
            "/" + bridge_network["bridge"]), "host veth is not attached to the bridge"

        cached = pod("cached")
        assert cached.ok, cached
        assert cached.json["ips"] == result["ips"]

        # CNI_ARGS from libcni's RuntimeConf reach the plugin.
        attachments = json.loads((state_dir / "attachments.json").read_text())["attachments"]
        assert [a["pod"]["name"] for a in attachments.values()] == ["web"]

        checked = pod("check")
        if version in ("0.3.0", "0.3.1"):
            assert not checked.ok
            assert "does not support the CHECK command" in checked.error
        else:
            assert checked.ok, checked

        deleted = pod("del")
        assert deleted.ok, deleted
        assert not link_exists(veth), f"DEL left the host veth {veth}"
        assert pod_addresses(ns_name) == []
        assert not (cache_dir / "results").exists() or not os.listdir(cache_dir / "results")
        assert bridge_ports(bridge_network["bridge"]) == []

        again = pod("del")
        assert again.ok, f"a second DEL must succeed: {again}"
    finally:
        pod("del")


def test_check_reports_a_missing_address(libcni, bridge_network, netns, bin_dir,
                                         state_dir, cache_dir, tmp_path):
    conflist = write_conflist(tmp_path, bridge_network, "1.0.0")
    ns_name, ns_path = netns.create()
    pod = Pod(libcni, conflist, bin_dir, cache_dir, state_dir, ns_name, ns_path, "db")
    try:
        added = pod("add")
        assert added.ok, added
        address = pod_ip(added.json, ns_path)
        netns.exec(ns_name, "ip", "addr", "del", address, "dev", "eth0")

        checked = pod("check")
        assert not checked.ok, "CHECK passed although the pod lost its address"
        assert address.split("/")[0] in checked.error, checked
        assert checked.code, f"CHECK failure without a CNI error code: {checked}"
    finally:
        assert pod("del").ok


def test_shipped_style_conflist_negotiates_1_0_0(libcni, bridge_network, netns,
                                                 bin_dir, state_dir, cache_dir, tmp_path):
    """cniVersion 1.0.0 with a cniVersions list, as the shipped conflist: libcni 1.1.2
    ignores cniVersions and runs the chain at 1.0.0."""
    conflist = write_conflist(tmp_path, bridge_network, "1.0.0",
                              cniVersions=["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    ns_name, ns_path = netns.create()
    pod = Pod(libcni, conflist, bin_dir, cache_dir, state_dir, ns_name, ns_path, "api")
    try:
        validated = libcni.run("validate", conflist, cni_path=bin_dir)
        assert validated.ok, validated
        added = pod("add")
        assert added.ok, added
        assert added.json["cniVersion"] == "1.0.0"
        assert pod_ip(added.json, ns_path) in pod_addresses(ns_name)
        assert pod("check").ok
    finally:
        assert pod("del").ok


def test_shipped_conflist_through_libcni(libcni, bridge_network, netns, bin_dir, state_dir,
                                        cache_dir, tmp_path):
    """deploy/10-smarter-cni.conflist as the installer ships it, with only the
    node-specific keys (network name, bridge, subnet, gateway) moved to the test's."""
    shipped = json.loads((ROOT / "deploy" / "10-smarter-cni.conflist").read_text())
    shipped["name"] = bridge_network["name"]
    ours = [p for p in shipped["plugins"] if p["type"] == "smarter-cni"]
    assert len(ours) == 1, shipped
    gateway = bridge_network["subnet"].replace(".0/24", ".1")
    ours[0].update(bridge=bridge_network["bridge"], subnet=bridge_network["subnet"],
                   gateway=gateway)
    conflist = tmp_path / "shipped.conflist"
    conflist.write_text(json.dumps(shipped))
    ns_name, ns_path = netns.create()
    pod = Pod(libcni, conflist, bin_dir, cache_dir, state_dir, ns_name, ns_path, "shipped")
    pod.common["capability_args"] = {
        "io.kubernetes.cri.pod-annotations": {"example.com/owner": "tests"}}
    try:
        validated = libcni.run("validate", conflist, cni_path=bin_dir)
        assert validated.ok, validated
        added = pod("add")
        assert added.ok, added
        assert added.json["cniVersion"] == shipped["cniVersion"]
        assert pod_ip(added.json, ns_path) in pod_addresses(ns_name)
        assert pod_default_gateway(ns_name) == gateway
        assert pod("check").ok
    finally:
        assert pod("del").ok


def test_version_info_through_libcni(libcni, bin_dir):
    info = libcni.run("version", plugin="smarter-cni", cni_path=bin_dir)
    assert info.ok, info
    assert set(info.json["supportedVersions"]) >= SUPPORTED


@pytest.mark.parametrize("version,advertised", [
    # 0.1.0/0.2.0 are advertised by VERSION (docker mode serves the original c2d
    # configs) but bridge mode needs 0.3.0+ results, so its ADD refuses them.
    ("0.1.0", True), ("0.2.0", True), ("2.0.0", False)])
def test_unsupported_version_is_refused(version, advertised, libcni,
                                        bridge_network, netns, bin_dir, state_dir,
                                        cache_dir, tmp_path):
    conflist = write_conflist(tmp_path, bridge_network, version)
    ns_name, ns_path = netns.create()
    pod = Pod(libcni, conflist, bin_dir, cache_dir, state_dir, ns_name, ns_path, "old")

    validated = libcni.run("validate", conflist, cni_path=bin_dir)
    assert validated.ok == advertised, validated
    if not advertised:
        assert (f'plugin smarter-cni does not support config version "{version}"'
                in validated.error)

    added = pod("add")
    assert not added.ok, f"ADD at cniVersion {version} must fail: {added}"
    assert added.code == INCOMPATIBLE_VERSION, added
    assert 'plugin type="smarter-cni"' in added.error
    assert version in added.error, f"the error should name the version asked: {added.error}"
    # Refused before touching the node: no bridge, no address in the pod, no state.
    assert not link_exists(bridge_network["bridge"])
    assert pod_addresses(ns_name) == []
    state = state_dir / "attachments.json"
    assert not state.exists() or not json.loads(state.read_text()).get("attachments")
