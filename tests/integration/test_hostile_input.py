"""Hostile input: every malformed invocation gets the right CNI error and changes nothing.

One node (a bridge network with one resident pod, plus an empty target
netns) serves the whole table. Around every invocation the node is
snapshotted (links, addresses, routes, iptables rules, the state
directory, both namespaces) and must be byte-for-byte the same afterwards.
Other engineers' tests may run on the same machine at the same time, so
host-wide listings are narrowed to the lines that name this node's bridge,
subnet, network, chain or one of the host link names our container IDs map
to; the state directory and the namespaces are compared whole.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import NetnsFactory, run_id, sh, unique  # noqa: E402
from helpers.plugin import SRC, PluginRunner, pod_args, teardown_bridge_network  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane.names import chain_name, host_ifname  # noqa: E402

pytest_plugins = ("helpers.dockerd",)  # docker-mode cases: dockerd, sandboxes, docker_network
pytestmark = pytest.mark.root

V = "1.0.0"
MIB = 1 << 20


# ---------------------------------------------------------------- the node

class Node:
    """A bridge network with one resident pod; torn down by the fixture."""

    def __init__(self, runner: PluginRunner, config: dict, resident: str, resident_ns: str,
                 target_ns: str, target_path: str) -> None:
        self.runner = runner
        self.config = config
        self.resident = resident
        self.resident_ns = resident_ns
        self.target_ns = target_ns
        self.target_path = target_path
        prefix = ".".join(config["subnet"].split(".")[:3]) + "."
        self.tokens = [config["bridge"], prefix, f"smarter-cni {config['name']}",
                       chain_name(config["name"]), host_ifname(resident, "eth0")]

    def base(self, version: str = V, **changes: Any) -> dict:
        config = dict(self.config, cniVersion=version)
        for key, value in changes.items():
            if value is DROP:
                config.pop(key, None)
            else:
                config[key] = value
        return config

    @property
    def state_file(self) -> Path:
        return self.runner.state_dir / "attachments.json"

    def state(self) -> dict:
        return json.loads(self.state_file.read_bytes())


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


def _free_subnet() -> str:
    import random

    for _ in range(60):
        cidr = f"10.246.{random.randint(0, 255)}.0/24"  # 10.244/16: conftest, 10.245/16: dockerd helper
        routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                                capture_output=True, text=True).stdout
        if all(not line or line.startswith("default") for line in routes.splitlines()):
            return cidr
    pytest.skip("no free /24 in 10.246.0.0/16")


@pytest.fixture(scope="module")
def node(bin_dir: Path, tmp_path_factory) -> Node:
    state = tmp_path_factory.mktemp("hostile") / "state"
    state.mkdir(mode=0o700)
    runner = PluginRunner(bin_dir, state)
    name = unique("h")
    config = {"cniVersion": V, "name": f"net-{name}", "type": "smarter-cni",
              "bridge": f"br{name[:10]}", "subnet": _free_subnet()}
    factory = NetnsFactory()
    try:
        resident_ns, resident_path = factory.create("hres")
        target_ns, target_path = factory.create("htgt")
        resident = "resident-" + unique("", 12)
        added = runner("ADD", config, resident, resident_path, args=pod_args("resident"))
        assert added.ok, added
        _wait_settled(config["bridge"], resident)
        yield Node(runner, config, resident, resident_ns, target_ns, target_path)
    finally:
        factory.cleanup()
        teardown_bridge_network(config, state)


def _wait_settled(bridge: str, resident: str) -> None:
    """IPv6 duplicate address detection flips flags for ~1-2 s after links come up."""
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = sh("ip", "-o", "addr", check=False).stdout.decode()
        if "tentative" not in text:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------- snapshots

_COUNTERS = re.compile(r"\[\d+:\d+\]")


_DAD_FLAGS = re.compile(r" (?:tentative|dadfailed|optimistic)\b")


def _lines(*argv: str) -> list[str]:
    text = sh(*argv, check=False).stdout.decode("utf-8", "replace")
    return [_DAD_FLAGS.sub("", line) for line in text.splitlines()]


def snapshot(node: Node, extra_tokens: list[str]) -> dict[str, Any]:
    tokens = node.tokens + extra_tokens

    def ours(lines: list[str]) -> list[str]:
        return [line for line in lines if any(t in line for t in tokens)]

    iptables = [_COUNTERS.sub("", line) for line in _lines("iptables-save")
                if not line.startswith("#")]
    state_dir = node.runner.state_dir
    listing = sorted(p.name for p in state_dir.iterdir() if p.name != "smarter-cni.log")
    snap: dict[str, Any] = {
        "host links": ours(_lines("ip", "-o", "link")),
        "host addrs": ours(_lines("ip", "-o", "addr")),
        "host routes": ours(_lines("ip", "route")),
        "iptables": ours(iptables),
        "state dir": listing,
        "state file": node.state_file.read_bytes(),
        "lock mode": oct((state_dir / "lock").stat().st_mode),
    }
    for label, ns in (("target", node.target_ns), ("resident", node.resident_ns)):
        snap[f"{label} links"] = _lines("ip", "-n", ns, "-o", "link")
        snap[f"{label} addrs"] = _lines("ip", "-n", ns, "-o", "addr")
        snap[f"{label} routes"] = _lines("ip", "-n", ns, "route")
    return snap


def _without_last_reserved(snap: dict) -> dict:
    state = json.loads(snap["state file"])
    state.pop("last_reserved", None)
    return dict(snap, **{"state file": json.dumps(state, sort_keys=True)})


def assert_unchanged(before: dict, after: dict, what: str) -> None:
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"{what} changed the node: {changed}"


# ---------------------------------------------------------------- the table

class Case:
    def __init__(self, case_id: str, command: str, code: int | str | None, config: Any = None,
                 env: dict[str, str | None] | None = None, args: str | None = None,
                 pod: dict[str, str] | None = None, msg: str = "") -> None:
        self.id = case_id
        self.command = command
        self.code = code        # None: must succeed
        self.config = config    # None: the node's config; callable(node) -> config
        self.env = env or {}    # value None removes the variable
        self.args = args        # CNI_ARGS (default: a plain pod)
        self.pod = pod or {}    # expected recorded pod identity fields after a good ADD
        self.msg = msg          # a word the message must contain (case-insensitive)


def cfg(**changes: Any):
    return lambda node: node.base(**changes)


def ver(version: Any, **changes: Any):
    return lambda node: node.base(version, **changes)


def raw(data: bytes):
    return lambda node: data


def prev(value: Any):
    return lambda node: node.base("1.0.0", prevResult=value)


HUGE = (b'{"cniVersion": "1.0.0", "name": "x", "type": "smarter-cni", "pad": "'
        + b"a" * (MIB + 10) + b'"}')
GOOD_PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
             "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 0}]}
ANN = "io.kubernetes.cri.pod-annotations"

CASES: list[Case] = [
    # CNI_COMMAND
    Case("cmd-empty", "ADD", 4, env={"CNI_COMMAND": ""}, msg="CNI_COMMAND"),
    Case("cmd-lowercase", "ADD", 4, env={"CNI_COMMAND": "add"}, msg="CNI_COMMAND"),
    Case("cmd-unknown", "ADD", 4, env={"CNI_COMMAND": "DELETE"}, msg="CNI_COMMAND"),
    Case("cmd-newline", "ADD", 4, env={"CNI_COMMAND": "ADD\n"}, msg="CNI_COMMAND"),
    Case("cmd-missing", "ADD", 4, env={"CNI_COMMAND": None}, msg="CNI_COMMAND"),
    # container ID
    Case("add-no-containerid", "ADD", 4, env={"CNI_CONTAINERID": None}, msg="CNI_CONTAINERID"),
    Case("add-empty-containerid", "ADD", 4, env={"CNI_CONTAINERID": ""}, msg="CNI_CONTAINERID"),
    Case("add-containerid-dotdot", "ADD", 4, env={"CNI_CONTAINERID": "../../etc"}, msg="CNI_CONTAINERID"),
    Case("add-containerid-slash", "ADD", 4, env={"CNI_CONTAINERID": "abc/def"}, msg="CNI_CONTAINERID"),
    Case("add-containerid-newline", "ADD", 4, env={"CNI_CONTAINERID": "abc\ndef"}, msg="CNI_CONTAINERID"),
    Case("add-containerid-300", "ADD", 4, env={"CNI_CONTAINERID": "a" * 300}, msg="CNI_CONTAINERID"),
    # netns
    Case("add-no-netns", "ADD", 4, env={"CNI_NETNS": None}, msg="CNI_NETNS"),
    Case("add-netns-relative", "ADD", 4, env={"CNI_NETNS": "var/run/netns/x"}, msg="CNI_NETNS"),
    Case("add-netns-missing", "ADD", 4, env={"CNI_NETNS": "/var/run/netns/no-such-ns-x1"}, msg="CNI_NETNS"),
    Case("add-netns-regular-file", "ADD", 4, env={"CNI_NETNS": "/etc/hostname"}, msg="CNI_NETNS"),
    Case("add-netns-directory", "ADD", 4, env={"CNI_NETNS": "/"}, msg="CNI_NETNS"),
    Case("add-netns-devnull", "ADD", 4, env={"CNI_NETNS": "/dev/null"}, msg="CNI_NETNS"),
    Case("add-netns-mnt-namespace", "ADD", 4, env={"CNI_NETNS": "/proc/self/ns/mnt"}, msg="CNI_NETNS"),
    Case("add-netns-dotdot", "ADD", 4, env={"CNI_NETNS": "/var/run/netns/../../../etc/hostname"},
         msg="CNI_NETNS"),
    # ifname
    Case("add-no-ifname", "ADD", 4, env={"CNI_IFNAME": None}, msg="CNI_IFNAME"),
    Case("add-ifname-16", "ADD", 4, env={"CNI_IFNAME": "e" * 16}, msg="CNI_IFNAME"),
    Case("add-ifname-slash", "ADD", 4, env={"CNI_IFNAME": "eth0/../x"}, msg="CNI_IFNAME"),
    Case("add-ifname-space", "ADD", 4, env={"CNI_IFNAME": "eth 0"}, msg="CNI_IFNAME"),
    Case("add-ifname-colon", "ADD", 4, env={"CNI_IFNAME": "eth:0"}, msg="CNI_IFNAME"),
    Case("add-ifname-dotdot", "ADD", 4, env={"CNI_IFNAME": ".."}, msg="CNI_IFNAME"),
    Case("add-ifname-newline", "ADD", 4, env={"CNI_IFNAME": "eth0\n"}, msg="CNI_IFNAME"),
    Case("add-ifname-unicode-long", "ADD", 4, env={"CNI_IFNAME": "ééééééééé"}, msg="CNI_IFNAME"),
    Case("add-ifname-lo-exists", "ADD", 101, env={"CNI_IFNAME": "lo"}, msg="exists"),
    # path and args
    Case("add-no-cni-path", "ADD", 4, env={"CNI_PATH": None}, msg="CNI_PATH"),
    Case("add-args-no-equals", "ADD", 4, args="K8S_POD_NAME=web;garbage", msg="CNI_ARGS"),
    Case("add-args-empty-key", "ADD", 4, args="=value", msg="CNI_ARGS"),
    # decoding
    Case("add-empty-stdin", "ADD", 6, config=raw(b""), msg="config"),
    Case("add-whitespace-stdin", "ADD", 6, config=raw(b" \n\t "), msg="config"),
    Case("add-broken-json", "ADD", 6, config=raw(b'{"cniVersion": "1.0.0", "name": '), msg="JSON"),
    Case("add-json-array", "ADD", 6, config=raw(b"[1, 2]"), msg="object"),
    Case("add-json-null", "ADD", 6, config=raw(b"null"), msg="object"),
    Case("add-json-string", "ADD", 6, config=raw(b'"smarter"'), msg="object"),
    Case("add-huge-json", "ADD", 6, config=raw(HUGE), msg="MiB"),
    Case("add-deep-json", "ADD", 6, config=raw(b"[" * 200000 + b"]" * 200000)),
    Case("add-not-utf8", "ADD", 6, config=raw(b'{"name": "\xff\xfe"}'), msg="UTF-8"),
    Case("add-nan", "ADD", 6, config=raw(b'{"cniVersion": "1.0.0", "name": "n", "mtu": NaN}')),
    Case("add-trailing-garbage", "ADD", 6, config=raw(b'{"cniVersion": "1.0.0", "name": "n"} xyz')),
    Case("add-bom", "ADD", 6, config=raw(b'\xef\xbb\xbf{"cniVersion": "1.0.0", "name": "n"}')),
    Case("add-nul-bytes", "ADD", 6, config=raw(b"\x00" * 64)),
    # cniVersion
    Case("add-no-version", "ADD", 1, config=cfg(cniVersion=DROP), msg="cniVersion"),
    Case("add-empty-version", "ADD", 1, config=ver(""), msg="cniVersion"),
    Case("add-future-version", "ADD", 1, config=ver("9.9.9"), msg="9.9.9"),
    Case("add-garbage-version", "ADD", 1, config=ver("abc"), msg="abc"),
    Case("add-version-020-bridge", "ADD", 1, config=ver("0.2.0"), msg="0.2.0"),
    Case("add-version-space", "ADD", 1, config=ver("1.0.0 ")),
    Case("add-version-superscript", "ADD", 1, config=ver("².0.0")),
    Case("add-version-number", "ADD", 6, config=ver(1.0), msg="cniVersion"),
    Case("add-version-list", "ADD", 6, config=ver(["1.0.0"]), msg="cniVersion"),
    # wrong types and values in the network config
    Case("add-no-name", "ADD", 7, config=cfg(name=DROP), msg="name"),
    Case("add-name-number", "ADD", 7, config=cfg(name=5), msg="name"),
    Case("add-name-empty", "ADD", 7, config=cfg(name=""), msg="name"),
    Case("add-name-newline", "ADD", 7, config=cfg(name="net\n-A FORWARD -j ACCEPT"), msg="name"),
    Case("add-name-slash", "ADD", 7, config=cfg(name="../net"), msg="name"),
    Case("add-type-number", "ADD", 7, config=cfg(type=5), msg="type"),
    Case("add-type-other", "ADD", 7, config=cfg(type="bridge"), msg="type"),
    Case("add-mode-unknown", "ADD", 7, config=cfg(mode="vxlan"), msg="mode"),
    Case("add-mode-number", "ADD", 7, config=cfg(mode=1), msg="mode"),
    Case("add-bridge-number", "ADD", 7, config=cfg(bridge=5), msg="bridge"),
    Case("add-bridge-slash", "ADD", 7, config=cfg(bridge="br/x"), msg="bridge"),
    Case("add-bridge-long", "ADD", 7, config=cfg(bridge="b" * 16), msg="bridge"),
    Case("add-bridge-empty", "ADD", 7, config=cfg(bridge=""), msg="bridge"),
    Case("add-subnet-number", "ADD", 7, config=cfg(subnet=10), msg="subnet"),
    Case("add-subnet-word", "ADD", 7, config=cfg(subnet="banana"), msg="subnet"),
    Case("add-subnet-prefix-33", "ADD", 7, config=cfg(subnet="10.246.0.0/33"), msg="subnet"),
    Case("add-subnet-prefix-neg", "ADD", 7, config=cfg(subnet="10.246.0.0/-1"), msg="subnet"),
    Case("add-subnet-host-bits", "ADD", 7, config=cfg(subnet="10.246.0.1/24"), msg="subnet"),
    Case("add-subnet-too-small", "ADD", 7, config=cfg(subnet="10.246.0.0/31"), msg="subnet"),
    Case("add-subnet-octet-300", "ADD", 7, config=cfg(subnet="300.0.0.0/8"), msg="subnet"),
    Case("add-subnet-ipv6", "ADD", 7, config=cfg(subnet="fd00::/64"), msg="subnet"),
    Case("add-subnet-superscript-prefix", "ADD", 7, config=cfg(subnet="10.246.0.0/²"), msg="subnet"),
    Case("add-subnet-arabic-digits", "ADD", 7, config=cfg(subnet="١٠.0.0.0/8"), msg="subnet"),
    Case("add-gateway-fullwidth", "ADD", 7, config=cfg(gateway="１0.246.0.1"), msg="gateway"),
    Case("add-gateway-outside", "ADD", 7, config=lambda n: n.base(gateway="192.168.77.1"), msg="gateway"),
    Case("add-gateway-garbage", "ADD", 7, config=cfg(gateway="10.x.0.1"), msg="gateway"),
    Case("add-gateway-broadcast", "ADD", 7,
         config=lambda n: n.base(gateway=n.config["subnet"].replace(".0/24", ".255")), msg="gateway"),
    Case("add-gateway-number", "ADD", 7, config=cfg(gateway=1), msg="gateway"),
    Case("add-range-reversed", "ADD", 7,
         config=lambda n: n.base(rangeStart=n.config["subnet"].replace(".0/24", ".200"),
                                 rangeEnd=n.config["subnet"].replace(".0/24", ".100")), msg="range"),
    Case("add-range-outside", "ADD", 7, config=cfg(rangeStart="192.168.77.10"), msg="rangeStart"),
    Case("add-range-number", "ADD", 7, config=cfg(rangeEnd=5), msg="rangeEnd"),
    Case("add-mtu-string", "ADD", 7, config=cfg(mtu="1500"), msg="mtu"),
    Case("add-mtu-zero", "ADD", 7, config=cfg(mtu=0), msg="mtu"),
    Case("add-mtu-negative", "ADD", 7, config=cfg(mtu=-1), msg="mtu"),
    Case("add-mtu-huge", "ADD", 7, config=cfg(mtu=70000), msg="mtu"),
    Case("add-mtu-bool", "ADD", 7, config=cfg(mtu=True), msg="mtu"),
    Case("add-mtu-float", "ADD", 7, config=cfg(mtu=1500.5), msg="mtu"),
    Case("add-ipmasq-string", "ADD", 7, config=cfg(ipMasq="yes"), msg="ipMasq"),
    Case("add-hairpin-number", "ADD", 7, config=cfg(hairpinMode=1), msg="hairpinMode"),
    Case("add-ipam-string", "ADD", 7, config=cfg(ipam="host-local"), msg="ipam"),
    Case("add-ipam-type-path", "ADD", 7, config=cfg(ipam={"type": "../../bin/sh"}), msg="ipam"),
    Case("add-ipam-type-number", "ADD", 7, config=cfg(ipam={"type": 5}), msg="ipam"),
    Case("add-ipam-type-absent-plugin", "ADD", 104, config=cfg(ipam={"type": "no-such-ipam"}),
         msg="no-such-ipam"),
    Case("add-dns-address-garbage", "ADD", 7, config=cfg(dnsAddress="dns.local"), msg="dnsAddress"),
    Case("add-domain-empty", "ADD", 7, config=cfg(clusterDomain="."), msg="clusterDomain"),
    Case("add-domain-number", "ADD", 7, config=cfg(clusterDomain=5), msg="clusterDomain"),
    Case("add-domain-injection", "ADD", 7, config=cfg(clusterDomain="cluster.local\nevil 1.2.3.4"),
         msg="clusterDomain"),
    # DEL
    Case("del-no-containerid", "DEL", 4, env={"CNI_CONTAINERID": None}, msg="CNI_CONTAINERID"),
    Case("del-no-ifname", "DEL", 4, env={"CNI_IFNAME": None}, msg="CNI_IFNAME"),
    Case("del-ifname-slash", "DEL", 4, env={"CNI_IFNAME": "a/b"}, msg="CNI_IFNAME"),
    Case("del-no-cni-path", "DEL", 4, env={"CNI_PATH": None}, msg="CNI_PATH"),
    Case("del-broken-json", "DEL", 6, config=raw(b"{nope"), msg="JSON"),
    Case("del-huge-json", "DEL", 6, config=raw(HUGE), msg="MiB"),
    Case("del-future-version", "DEL", 1, config=ver("2.0.0"), msg="2.0.0"),
    Case("del-no-version", "DEL", 1, config=cfg(cniVersion=DROP), msg="cniVersion"),
    Case("del-bad-subnet", "DEL", 7, config=cfg(subnet="10.246.0.0/40"), msg="subnet"),
    Case("del-garbage-prevresult", "DEL", None, config=prev("garbage")),
    Case("del-netns-gone", "DEL", None, env={"CNI_NETNS": "/var/run/netns/gone-long-ago"}),
    Case("del-netns-garbage", "DEL", None, env={"CNI_NETNS": "not a path\n"}),
    Case("del-no-netns", "DEL", None, env={"CNI_NETNS": None}),
    # CHECK
    Case("check-version-031", "CHECK", 1, config=lambda n: n.base("0.3.1", prevResult=GOOD_PREV),
         msg="0.4.0"),
    Case("check-no-prevresult", "CHECK", 7, msg="prevResult"),
    Case("check-prevresult-string", "CHECK", 7, config=prev("garbage"), msg="prevResult"),
    Case("check-prevresult-ips-number", "CHECK", 6, config=prev({"ips": 5})),
    Case("check-prevresult-address-number", "CHECK", 6, config=prev({"ips": [{"address": 5}]})),
    Case("check-prevresult-interfaces-garbage", "CHECK", 6, config=prev({"interfaces": [1]})),
    Case("check-prevresult-index-string", "CHECK", 6,
         config=prev({"ips": [{"address": "10.0.0.2/24", "interface": "0"}]}), msg="interface"),
    Case("check-prevresult-route-garbage", "CHECK", 6, config=prev({"routes": [{"dst": 5}]})),
    Case("check-prevresult-dns-string", "CHECK", 6, config=prev({"dns": "8.8.8.8"}), msg="dns"),
    Case("check-unknown-container", "CHECK", 3, config=prev(GOOD_PREV)),
    Case("check-no-netns", "CHECK", 4, config=prev(GOOD_PREV), env={"CNI_NETNS": None}, msg="CNI_NETNS"),
    # STATUS
    Case("status-version-100", "STATUS", 1, config=ver("1.0.0"), msg="1.1.0"),
    Case("status-no-version", "STATUS", 1, config=cfg(cniVersion=DROP), msg="cniVersion"),
    Case("status-broken-json", "STATUS", 6, config=raw(b"{"), msg="JSON"),
    Case("status-no-cni-path", "STATUS", 4, config=ver("1.1.0"), env={"CNI_PATH": None}, msg="CNI_PATH"),
    Case("status-bad-subnet", "STATUS", 7, config=ver("1.1.0", subnet="x"), msg="subnet"),
    Case("status-ok", "STATUS", None, config=ver("1.1.0")),
    # GC
    Case("gc-version-100", "GC", 1, config=ver("1.0.0", **{"cni.dev/valid-attachments": []}), msg="1.1.0"),
    Case("gc-no-list", "GC", 7, config=ver("1.1.0"), msg="valid-attachments"),
    Case("gc-list-string", "GC", 7, config=ver("1.1.0", **{"cni.dev/valid-attachments": "all"})),
    Case("gc-entry-number", "GC", 7, config=ver("1.1.0", **{"cni.dev/valid-attachments": [5]})),
    Case("gc-entry-id-number", "GC", 7,
         config=ver("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": 5, "ifname": "eth0"}]})),
    Case("gc-broken-json", "GC", 6, config=raw(b'{"cniVersion": "1.1.0",'), msg="JSON"),
    Case("gc-keeps-resident", "GC", None, config=lambda n: n.base("1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": n.resident, "ifname": "eth0"}]})),
    # VERSION
    Case("version-broken-json", "VERSION", 6, config=raw(b"{"), msg="JSON"),
    Case("version-huge", "VERSION", 6, config=raw(HUGE), msg="MiB"),
    Case("version-array", "VERSION", 6, config=raw(b"[]"), msg="object"),
    Case("version-empty-stdin", "VERSION", None, config=raw(b"")),
    Case("version-bare-env", "VERSION", None, config=raw(b'{"cniVersion": "1.1.0"}'),
         env={"CNI_PATH": None, "CNI_CONTAINERID": None, "CNI_NETNS": None, "CNI_IFNAME": None}),
    # pod names and annotations people type: ADD works, the name just is not a DNS name
    Case("pod-name-dots", "ADD", None, args=pod_args("web.v1"), pod={"name": ""}),
    Case("pod-name-newline", "ADD", None, args=pod_args("web\nevil 10.0.0.1"), pod={"name": ""}),
    Case("pod-name-unicode", "ADD", None, args=pod_args("wéb-ünïcode"), pod={"name": ""}),
    Case("pod-name-300", "ADD", None, args=pod_args("a" * 300), pod={"name": ""}),
    Case("pod-name-leading-dash", "ADD", None, args=pod_args("-web"), pod={"name": ""}),
    Case("pod-name-uppercase", "ADD", None, args=pod_args("WebApp"), pod={"name": "webapp"}),
    Case("pod-namespace-dots", "ADD", None, args=pod_args("web", namespace="kube.system"),
         pod={"name": "web", "namespace": ""}),
    Case("pod-uid-control", "ADD", None, args=pod_args("web", uid="u\x01id"), pod={"uid": ""}),
    Case("pod-unknown-args", "ADD", None, args="IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=web;X=",
         pod={"name": "web"}),
    Case("pod-hostname-dots", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: {"smarter-cni.io/hostname": "host.example.com"}}),
         pod={"hostname": ""}),
    Case("pod-hostname-newline", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: {"smarter-cni.io/hostname": "h\n10.0.0.1 evil"}}),
         pod={"hostname": ""}),
    Case("pod-hostname-unicode", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: {"smarter-cni.io/hostname": "hôst"}}), pod={"hostname": ""}),
    Case("pod-hostname-300", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: {"smarter-cni.io/hostname": "h" * 300}}), pod={"hostname": ""}),
    Case("pod-hostname-number", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: {"smarter-cni.io/hostname": 42}}), pod={"hostname": ""}),
    Case("pod-annotations-garbage", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig={ANN: "not a map"}), pod={"hostname": ""}),
    Case("pod-name-100k", "ADD", None, args=pod_args("p" * 100_000), pod={"name": ""}),
    Case("config-900k-ok", "ADD", None, config=cfg(padding="x" * 900_000), pod={"name": "web"}),
    Case("pod-runtimeconfig-garbage", "ADD", None, args=pod_args("web"),
         config=cfg(runtimeConfig=["x"]), pod={"name": "web"}),
    Case("add-prevresult-ips-garbage", "ADD", 6, config=prev({"ips": "junk"}), msg="result"),
    Case("add-prevresult-string", "ADD", 6, config=prev("junk"), msg="prevResult"),
]


def _env(node: Node, case: Case, container_id: str) -> dict[str, str]:
    args = pod_args("web") if case.args is None else case.args
    env = node.runner.env(case.command, container_id=container_id, netns=node.target_path,
                          ifname="eth0", args=args)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _config(node: Node, case: Case) -> Any:
    if case.config is None:
        version = "1.1.0" if case.command in ("STATUS", "GC") else V
        return node.base(version)
    return case.config(node)


def _no_traceback(result) -> None:
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, result
        assert 'File "' not in stream, result


def test_table_has_enough_cases() -> None:
    failing = [c for c in CASES if c.code is not None]
    assert len(failing) >= 60
    assert {c.command for c in CASES} >= {"ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(node: Node, case: Case) -> None:
    container_id = run_id("hostile-" + case.id[:40])
    tokens = [host_ifname(container_id, "eth0"), host_ifname(container_id, "lo")]
    if isinstance(case.env.get("CNI_CONTAINERID"), str) and case.env["CNI_CONTAINERID"]:
        tokens.append(host_ifname(case.env["CNI_CONTAINERID"], "eth0"))
    if isinstance(case.env.get("CNI_IFNAME"), str):
        tokens.append(host_ifname(container_id, case.env["CNI_IFNAME"]))
    config = _config(node, case)
    env = _env(node, case, container_id)
    before = snapshot(node, tokens)
    result = node.runner.exec("smarter-cni", env, config)
    try:
        _judge(node, case, container_id, tokens, env, config, before, result)
    finally:
        if case.code is not None and case.command == "ADD" and result.ok:
            # an ADD that should have failed did not: undo it so later cases start clean
            node.runner.exec("smarter-cni", dict(env, CNI_COMMAND="DEL"), config)


def _judge(node: Node, case: Case, container_id: str, tokens: list[str], env: dict, config: Any,
           before: dict, result) -> None:
    _no_traceback(result)

    if case.code is None:
        assert result.ok, result
        assert result.stderr == "", result
        if case.command == "ADD":
            _check_added(node, case, container_id, result)
            deleted = node.runner.exec("smarter-cni", dict(env, CNI_COMMAND="DEL"), config)
            assert deleted.ok, deleted
            # A successful ADD moves the allocator on (freed addresses are reused last);
            # everything else must be as it was.
            before, after = _without_last_reserved(before), _without_last_reserved(snapshot(node, tokens))
            assert_unchanged(before, after, f"{case.id} (and its DEL)")
            return
        assert_unchanged(before, snapshot(node, tokens), f"{case.id} (and its DEL)")
        return

    assert result.returncode != 0, result
    assert isinstance(result.json, dict), result
    assert result.code == case.code, result
    assert result.stdout.count("\n") == 1, "one JSON document on one line expected"
    msg = result.json.get("msg")
    assert isinstance(msg, str) and 10 <= len(msg) <= 600 and msg.isprintable(), result
    assert not msg.startswith("unexpected failure"), result
    assert case.msg.lower() in msg.lower(), result
    assert isinstance(result.json.get("cniVersion"), str), result
    assert_unchanged(before, snapshot(node, tokens), case.id)


def _check_added(node: Node, case: Case, container_id: str, result) -> None:
    records = node.state()["attachments"]
    key = f"{node.config['name']}/{container_id}/eth0"
    assert key in records, records.keys()
    record = records[key]
    assert record["ready"] is True
    for field, wanted in case.pod.items():
        assert record["pod"][field] == wanted, record["pod"]
    for field in ("name", "namespace", "hostname"):
        value = record["pod"][field]
        assert value == "" or re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value), value
    assert result.json["ips"][0]["address"].startswith(node.config["subnet"].rsplit(".", 1)[0])


# ---------------------------------------------------------------- docker mode

DOCKER_CASES = [
    ("network-empty", {"network": ""}, {}, 7),
    ("network-dotdot", {"network": ".."}, {}, 7),
    ("network-slash", {"network": "mynet/../x"}, {}, 7),
    ("network-number", {"network": 5}, {}, 7),
    ("network-newline", {"network": "net\nx"}, {}, 7),
    ("socket-number", {"dockerSocket": 5}, {}, 7),
    ("socket-regular-file", {"dockerSocket": "/etc/hostname"}, {}, 11),
    ("socket-missing", {"dockerSocket": "/run/no-such-docker.sock"}, {}, 11),
    ("version-unknown", {"cniVersion": "7.0.0"}, {}, 1),
    ("netns-not-a-netns", {}, {"CNI_NETNS": "/etc/hostname"}, 4),
    ("unknown-container", {}, {"CNI_CONTAINERID": "0" * 64, "CNI_NETNS": "/proc/self/ns/net"}, 3),
    ("ifname-slash", {}, {"CNI_IFNAME": "a/b"}, 4),
]


@pytest.mark.docker
@pytest.mark.parametrize("case_id,changes,env_changes,code", DOCKER_CASES,
                         ids=[c[0] for c in DOCKER_CASES])
def test_docker_mode_hostile(plugin, docker_network, dockerd, sandboxes, state_dir,
                             case_id, changes, env_changes, code) -> None:
    """Docker mode through the plugin interface: right code, and Docker and the node unchanged."""
    from smarter_cni.dataplane import docker_mode
    from smarter_cni.netconf import parse_netconf

    docker_mode.ensure_network(parse_netconf(docker_network))
    pod = sandboxes.create("hostile-pod")
    config = dict(docker_network, **changes)
    env = plugin.env("ADD", pod.id, pod.netns, "eth0", pod_args("hostile-pod"))
    env.update(env_changes)

    def snap() -> tuple:
        state = (state_dir / "attachments.json")
        return (sorted(pod.networks()), dockerd.network_inspect(docker_network["network"]).get("Containers"),
                state.read_bytes() if state.exists() else None,
                sh("nsenter", f"--net={pod.netns}", "ip", "-o", "link").stdout)

    before = snap()
    result = plugin.exec("smarter-cni", env, config)
    try:
        _no_traceback(result)
        assert result.code == code and result.returncode != 0, result
        msg = result.json["msg"]
        assert 10 <= len(msg) <= 600 and msg.isprintable(), result
        assert not msg.startswith("unexpected failure"), result
        assert snap() == before, f"{case_id} changed the node or Docker"
    finally:
        if result.ok:
            plugin.exec("smarter-cni", dict(env, CNI_COMMAND="DEL"), config)


# ---------------------------------------------------------------- least privilege

def test_state_and_lock_files_not_writable_by_others(node: Node) -> None:
    state_dir = node.runner.state_dir
    for path in [state_dir, *state_dir.iterdir()]:
        mode = path.stat().st_mode
        assert not mode & 0o002, f"{path} is world-writable ({oct(mode)})"
        assert not mode & 0o020, f"{path} is group-writable ({oct(mode)})"
    assert (state_dir / "lock").stat().st_mode & 0o077 == 0


def test_fresh_state_dir_is_private(plugin, bridge_network, netns, state_dir) -> None:
    """The plugin creates its state dir itself (as on a node after boot): 0700, files 0644 or less."""
    fresh = state_dir / "fresh"
    _, path = netns.create()
    env_state = {"SMARTER_CNI_STATE_DIR": str(fresh)}
    old_umask = os.umask(0)  # a careless parent process must not make the files writable
    try:
        added = plugin("ADD", bridge_network, run_id("lp1"), path, extra=env_state)
    finally:
        os.umask(old_umask)
    try:
        assert added.ok, added
        assert fresh.stat().st_mode & 0o777 == 0o700
        for item in fresh.iterdir():
            assert not item.stat().st_mode & 0o022, f"{item} is writable by others"
    finally:
        deleted = plugin("DEL", bridge_network, run_id("lp1"), path, extra=env_state)
        assert deleted.ok, deleted


def _source_files() -> list[Path]:
    return sorted(p for p in (SRC / "smarter_cni").rglob("*.py"))


def test_no_shell_in_source() -> None:
    offenders = []
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.getoutput|"
                         r"\[\s*['\"](?:/bin/)?(?:ba)?sh['\"]\s*,\s*['\"]-c['\"]")
    for path in _source_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_no_predictable_tmp_names_in_source() -> None:
    offenders = []
    pattern = re.compile(r"['\"]/(?:var/)?tmp/|gettempdir\(|mktemp\(")
    for path in _source_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_no_state_left_in_tmp(plugin, bridge_network, netns) -> None:
    """A full ADD/CHECK/DEL leaves nothing new in /tmp or /var/tmp."""
    def listing() -> set[str]:
        out = set()
        for directory in ("/tmp", "/var/tmp"):
            try:
                out |= {f"{directory}/{n}" for n in os.listdir(directory)}
            except OSError:
                pass
        return out

    _, path = netns.create()
    before = listing()
    added = plugin("ADD", bridge_network, run_id("tmpcheck"), path)
    assert added.ok, added
    checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), run_id("tmpcheck"), path)
    deleted = plugin("DEL", bridge_network, run_id("tmpcheck"), path)
    assert checked.ok, checked
    assert deleted.ok, deleted
    new = {name for name in listing() - before if "smarter" in name}
    assert not new, new


def test_kubeconfig_secrets_never_touch_disk_or_logs(plugin, bridge_network, netns, state_dir,
                                                     tmp_path) -> None:
    """With a kubeconfig carrying an embedded client key and a token, a pod-hostname lookup
    (to 127.0.0.1:1, which refuses at once) must not write the key to any file, nor put the
    key or token into the plugin's output or log; the kubeconfig is only read."""
    import base64
    import shutil
    import threading

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
       str(cert), "-subj", "/CN=smarter-cni-test", "-days", "1")
    key_b64 = base64.b64encode(key.read_bytes()).decode()
    cert_b64 = base64.b64encode(cert.read_bytes()).decode()
    token = "tok-" + unique("", 24)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
current-context: test
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
contexts:
- name: test
  context:
    cluster: test
    user: test
users:
- name: test
  user:
    client-certificate-data: {cert_b64}
    client-key-data: {key_b64}
    token: {token}
""")
    original = kubeconfig.read_bytes()
    watched_dirs = ["/tmp", "/var/tmp", "/dev/shm", str(state_dir)]
    seen: set[str] = set()
    before = {d: set(os.listdir(d)) for d in watched_dirs if os.path.isdir(d)}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for directory, old in before.items():
                try:
                    seen.update(f"{directory}/{n}" for n in set(os.listdir(directory)) - old)
                except OSError:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, path = netns.create("kcfg")
    try:
        added = plugin("ADD", dict(bridge_network, kubeconfig=str(kubeconfig)), run_id("kcfgpod"), path,
                       args=pod_args("kcfg-pod"))
    finally:
        done.set()
        watcher.join(5)
    try:
        assert added.ok, added
        record = json.loads((state_dir / "attachments.json").read_bytes())["attachments"]
        assert record[f"{bridge_network['name']}/{run_id('kcfgpod')}/eth0"]["pod"]["hostname"] == ""
        expected_state = {f"{state_dir}/{n}" for n in
                          ("attachments.json", ".attachments.json.tmp", "lock", "smarter-cni.log")}
        # another test session's private state dir (conftest, at its start) is not ours
        unexpected = {p for p in seen - expected_state
                      if "pytest" not in p and "/smarter-cni-test-state." not in p}
        key_files = [p for p in unexpected if "smarter" in p or p.startswith(str(state_dir))]
        assert not key_files, f"files appeared during the lookup: {sorted(key_files)}"
        log = (state_dir / "smarter-cni.log").read_text() if (state_dir / "smarter-cni.log").exists() else ""
        # the client key was loaded (from memory) and the lookup got as far as connecting
        assert "ConnectionRefusedError" in log, log[-500:]
        for secret in (token, key_b64[:40], "PRIVATE KEY"):
            assert secret not in added.stdout + added.stderr + log
        assert kubeconfig.read_bytes() == original
    finally:
        plugin("DEL", bridge_network, run_id("kcfgpod"), path)
