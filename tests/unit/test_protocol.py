"""Unit tests of the protocol layer and its pure helpers (no root, no network).

cni/ (request, dispatch, version, result, jsonfast, errors), netconf, ipv4,
the IPAM allocator and registry label validation.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
sys.path.insert(0, str(SRC))

from smarter_cni import ipv4, registry  # noqa: E402
from smarter_cni.cni import dispatch, jsonfast, version  # noqa: E402
from smarter_cni.cni.errors import CNIError  # noqa: E402
from smarter_cni.cni.request import (  # noqa: E402
    MAX_STDIN,
    is_network_namespace,
    parse_cni_args,
    parse_config,
    parse_request,
    validate_container_id,
    validate_ifname,
)
from smarter_cni.cni.result import Interface, IPConfig, Result, Route, from_dict  # noqa: E402
from smarter_cni.ipam.allocator import next_free  # noqa: E402
from smarter_cni.netconf import parse_netconf  # noqa: E402

CONFIG = {"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/proc/self/ns/net",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}


def code_of(call, *args, **kwargs) -> int:
    with pytest.raises(CNIError) as info:
        call(*args, **kwargs)
    assert info.value.msg and info.value.msg.isprintable()
    return info.value.code


# ---------------------------------------------------------------- request

def test_parse_request_reads_everything() -> None:
    env = dict(ENV, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=prod;X=a=b")
    request = parse_request(env, json.dumps(CONFIG).encode())
    assert request.command == "ADD"
    assert request.container_id == "abc123"
    assert request.ifname == "eth0"
    assert request.netns == "/proc/self/ns/net"
    assert request.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert request.pod_name == "web" and request.pod_namespace == "prod"
    assert request.args["X"] == "a=b"
    assert request.cni_version == "1.0.0"
    assert request.config == CONFIG


@pytest.mark.parametrize("command", ["", "add", "Add", "FOO", "ADD ", "DEL\n"])
def test_bad_commands_are_code_4(command: str) -> None:
    assert code_of(parse_request, dict(ENV, CNI_COMMAND=command), b"{}") == 4


@pytest.mark.parametrize("command,needed", [
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
    ("STATUS", ["CNI_PATH"]),
    ("GC", ["CNI_PATH"]),
])
def test_missing_environment_is_code_4(command: str, needed: list[str]) -> None:
    for name in needed:
        env = dict(ENV, CNI_COMMAND=command)
        del env[name]
        with pytest.raises(CNIError) as info:
            parse_request(env, json.dumps(CONFIG).encode())
        assert info.value.code == 4 and name in info.value.msg
        env[name] = ""
        assert code_of(parse_request, env, json.dumps(CONFIG).encode()) == 4


def test_del_needs_no_netns_and_does_not_check_it() -> None:
    env = dict(ENV, CNI_COMMAND="DEL", CNI_NETNS="/no/such/netns")
    assert parse_request(env, json.dumps(CONFIG).encode()).netns == "/no/such/netns"
    del env["CNI_NETNS"]
    assert parse_request(env, json.dumps(CONFIG).encode()).netns == ""


def test_version_needs_nothing() -> None:
    request = parse_request({"CNI_COMMAND": "VERSION"}, b"")
    assert request.config == {}


@pytest.mark.parametrize("value", ["-abc", "_x", "a/b", "../x", "a b", "a\nb", "a" * 257, "é", "a;b"])
def test_bad_container_ids(value: str) -> None:
    assert code_of(validate_container_id, value) == 4


@pytest.mark.parametrize("value", ["e" * 16, "a/b", "a:b", "a b", "a\tb", ".", "..", "ééééééééé"])
def test_bad_ifnames(value: str) -> None:
    assert code_of(validate_ifname, value) == 4


@pytest.mark.parametrize("value", ["eth0", "e" * 15, "net1", "é" * 7])
def test_good_ifnames(value: str) -> None:
    validate_ifname(value)


def test_netns_must_be_a_network_namespace(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert is_network_namespace("/proc/self/ns/net")
    assert not is_network_namespace(str(plain))
    assert not is_network_namespace("/proc/self/ns/mnt")
    assert not is_network_namespace("/dev/null")
    assert not is_network_namespace(str(tmp_path))
    assert not is_network_namespace(str(tmp_path / "missing"))
    for bad in ("relative/path", str(tmp_path / "missing"), str(plain), "/dev/null"):
        assert code_of(parse_request, dict(ENV, CNI_NETNS=bad), json.dumps(CONFIG).encode()) == 4


def test_netns_check_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not is_network_namespace(str(fifo))  # would block forever if it opened it


def test_cni_args() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("A=1;;B=") == {"A": "1", "B": ""}
    assert parse_cni_args("K8S_POD_NAME=a.b\nc") == {"K8S_POD_NAME": "a.b\nc"}
    assert code_of(parse_cni_args, "A=1;junk") == 4
    assert code_of(parse_cni_args, "=1") == 4


@pytest.mark.parametrize("stdin,code", [
    (b"", 6), (b"   ", 6), (b"{", 6), (b"[]", 6), (b"null", 6), (b"1", 6), (b'"x"', 6),
    (b"\xff", 6), (b'{"name": "n", "cniVersion": 1}', 6), (b"{}", 7), (b'{"name": ""}', 7),
    (b'{"name": 5}', 7), (b'{"name": "a b"}', 7), (b'{"name": "-x"}', 7), (b'{"name": "x/y"}', 7),
    (b"x" * (MAX_STDIN + 1), 6), (b"[" * 100000, 6),
])
def test_parse_config_errors(stdin: bytes, code: int) -> None:
    assert code_of(parse_config, stdin) == code


def test_parse_config_accepts_spec_names() -> None:
    for name in ("smarter", "k8s-pod-network", "a.b_c-1", "0net"):
        assert parse_config(json.dumps({"name": name}).encode())["name"] == name


# ---------------------------------------------------------------- dispatch

def _run(handlers, env, stdin: bytes) -> tuple[int, dict | None, str]:
    out = io.StringIO()
    rc = dispatch.run(handlers, env, stdin, out)
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else None), text


def test_dispatch_success_and_errors() -> None:
    def ok(request):
        return {"cniVersion": request.cni_version}

    def fail(request):
        raise CNIError(7, "bad config", "details here")

    def crash(request):
        raise KeyError("boom")

    stdin = json.dumps(CONFIG).encode()
    assert _run({"ADD": ok}, ENV, stdin)[:2] == (0, {"cniVersion": "1.0.0"})
    rc, answer, _ = _run({"ADD": fail}, ENV, stdin)
    assert rc == 1 and answer == {"cniVersion": "1.0.0", "code": 7, "msg": "bad config",
                                  "details": "details here"}
    rc, answer, text = _run({"ADD": crash}, ENV, stdin)
    assert rc == 1 and answer["code"] == 5 and "Traceback" not in text
    rc, answer, _ = _run({"ADD": ok}, dict(ENV, CNI_COMMAND="GC"), stdin)
    assert rc == 1 and answer["code"] == 4
    rc, answer, _ = _run({"ADD": ok}, ENV, b"{")
    assert rc == 1 and answer["code"] == 6 and answer["cniVersion"] == version.LATEST


# ---------------------------------------------------------------- versions

def test_versions() -> None:
    assert version.parse("1.10.0") == (1, 10, 0)
    assert version.at_least("1.1.0", "1.0.0") and not version.at_least("0.4.0", "1.0.0")
    assert version.at_least("0.10.0", "0.4.0")
    for bad in ("", "1", "1.0", "a.b.c", "1.0.0.0", "1.0.-1", " 1.0.0", "².0.0", "１.0.0"):
        assert code_of(version.parse, bad) == 1
    version.require_supported("1.1.0", version.BRIDGE_VERSIONS)
    assert code_of(version.require_supported, "0.2.0", version.BRIDGE_VERSIONS) == 1
    assert code_of(version.require_supported, "9.9.9", version.BRIDGE_VERSIONS) == 1
    assert set(version.BRIDGE_VERSIONS) == {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


# ---------------------------------------------------------------- results

def sample() -> Result:
    result = Result()
    result.interfaces = [Interface("sm0123456789abc", "02:00:00:00:00:01", mtu=1500),
                         Interface("eth0", "0a:58:0a:2a:00:05", "/var/run/netns/p", 1500)]
    result.ips = [IPConfig("10.42.0.5/16", "10.42.0.1", 1)]
    result.routes = [Route("0.0.0.0/0", "10.42.0.1")]
    result.dns = {"nameservers": ["169.254.0.2"], "search": ["svc.cluster.local"]}
    return result


def test_result_020_is_legacy_ip4() -> None:
    out = sample().to_dict("0.2.0")
    assert out == {"cniVersion": "0.2.0",
                   "ip4": {"ip": "10.42.0.5/16", "gateway": "10.42.0.1",
                           "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}]},
                   "dns": {"nameservers": ["169.254.0.2"], "search": ["svc.cluster.local"]}}


@pytest.mark.parametrize("cni_version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_03x_04x_have_ip_version(cni_version: str) -> None:
    out = sample().to_dict(cni_version)
    assert out["cniVersion"] == cni_version
    assert out["ips"] == [{"version": "4", "address": "10.42.0.5/16", "gateway": "10.42.0.1",
                           "interface": 1}]
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:0a:2a:00:05",
                                    "sandbox": "/var/run/netns/p"}
    assert "mtu" not in out["interfaces"][0]


def test_result_100_drops_ip_version() -> None:
    out = sample().to_dict("1.0.0")
    assert out["ips"] == [{"address": "10.42.0.5/16", "gateway": "10.42.0.1", "interface": 1}]
    assert "mtu" not in out["interfaces"][1]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}]


def test_result_110_has_mtu() -> None:
    out = sample().to_dict("1.1.0")
    assert out["interfaces"][1]["mtu"] == 1500 and out["interfaces"][0]["mtu"] == 1500


@pytest.mark.parametrize("cni_version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_round_trip(cni_version: str) -> None:
    back = from_dict(json.loads(jsonfast.dumps(sample().to_dict(cni_version))))
    assert [ip.address for ip in back.ips] == ["10.42.0.5/16"]
    assert [ip.gateway for ip in back.ips] == ["10.42.0.1"]
    assert [(r.dst, r.gw) for r in back.routes] == [("0.0.0.0/0", "10.42.0.1")]
    if cni_version != "0.2.0":
        assert [i.name for i in back.interfaces] == ["sm0123456789abc", "eth0"]
        assert back.ips[0].interface == 1
        assert back.to_dict(cni_version) == sample().to_dict(cni_version) or cni_version != "1.1.0"


@pytest.mark.parametrize("data", [
    "x", [], None, {"ips": 5}, {"ips": [5]}, {"ips": [{"address": 5}]}, {"ips": [{}]},
    {"interfaces": [1]}, {"interfaces": [{"name": 1}]}, {"routes": [{"gw": "1.2.3.4"}]},
    {"ips": [{"address": "10.0.0.2/24", "interface": True}]}, {"dns": "x"},
    {"ip4": {"gateway": "10.0.0.1"}}, {"interfaces": [{"name": "e", "mtu": "x"}]},
])
def test_from_dict_rejects_garbage(data) -> None:
    assert code_of(from_dict, data) == 6


# ---------------------------------------------------------------- jsonfast

def test_jsonfast_round_trip_and_ascii() -> None:
    value = {"a": [1, 2.5, True, None, "ü\n\"x\""], "b": {}}
    text = jsonfast.dumps(value)
    assert text.isascii() and json.loads(text) == value
    assert jsonfast.loads(text) == value
    assert jsonfast.loads(jsonfast.dumps(value, compact=True)) == value
    assert jsonfast.loads(b"  {\"x\": 1}\n") == {"x": 1}


@pytest.mark.parametrize("text", ["", "  ", "{", "{nope", '"abc', '{"a" 1}', "[1,", "{} {}", "NaN",
                                  '{"a": Infinity}', "[" * 100000, b"\xff\xfe"])
def test_jsonfast_errors(text) -> None:
    with pytest.raises(jsonfast.JSONError) as info:
        jsonfast.loads(text)
    assert str(info.value)


def test_jsonfast_error_without_json_module_loaded() -> None:
    """In the plugin (python -I -S, no `json` imported) _json raised SystemError on most
    syntax errors, which became 'unexpected failure' (code 5) instead of code 6."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from smarter_cni.cni import jsonfast\n"
        "for text in ['{', '{nope', '\"abc', '{\"a\" 1}']:\n"
        "    try:\n"
        "        jsonfast.loads(text)\n"
        "    except jsonfast.JSONError as err:\n"
        "        print('ok', err)\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(SRC)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("ok ") for line in lines), lines
    assert "Expecting ':' delimiter at character 5" in lines[3]


# ---------------------------------------------------------------- ipv4

def test_ipv4() -> None:
    assert ipv4.to_int("10.42.0.1") == (10 << 24) | (42 << 16) | 1
    assert ipv4.to_text(ipv4.to_int("255.255.255.255")) == "255.255.255.255"
    assert ipv4.parse_cidr("10.42.0.0/16") == (ipv4.to_int("10.42.0.0"), 16)
    assert ipv4.parse_cidr("10.42.0.5/16", strict=False) == (ipv4.to_int("10.42.0.5"), 16)
    assert ipv4.mask(0) == 0 and ipv4.mask(32) == 0xFFFFFFFF and ipv4.mask(24) == 0xFFFFFF00
    net, prefix = ipv4.parse_cidr("192.168.1.0/24")
    assert ipv4.contains(net, prefix, ipv4.to_int("192.168.1.200"))
    assert not ipv4.contains(net, prefix, ipv4.to_int("192.168.2.1"))
    assert ipv4.to_text(ipv4.broadcast(net, prefix)) == "192.168.1.255"


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.-4",
                                  "a.b.c.d", "1.2.3.4 ", "١.٢.٣.٤", "1..2.3", "².1.1.1"])
def test_ipv4_rejects(text: str) -> None:
    with pytest.raises(ipv4.AddressError):
        ipv4.to_int(text)


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/x",
                                  "10.0.0.1/24", "10.0.0.0/ 8", "10.0.0.0/²", "10.0.0.0/３", 5, None])
def test_cidr_rejects(text) -> None:
    with pytest.raises(ipv4.AddressError):
        ipv4.parse_cidr(text)


# ---------------------------------------------------------------- allocator

def test_allocator() -> None:
    assert next_free(10, 14, set()) == 10
    assert next_free(10, 14, {10, 11}) == 12
    assert next_free(10, 14, {10, 11, 12, 13, 14}) is None
    assert next_free(10, 14, set(), last_reserved=12) == 13
    assert next_free(10, 14, {13}, last_reserved=12) == 14
    assert next_free(10, 14, {14}, last_reserved=13) == 10  # wraps round once
    assert next_free(10, 14, {10, 11}, last_reserved=14) == 12
    assert next_free(10, 14, set(), last_reserved=99) == 10  # outside the range: start over
    assert next_free(10, 9, set()) is None
    assert next_free(7, 7, set()) == 7 and next_free(7, 7, {7}) is None


def test_allocator_visits_every_address_once() -> None:
    taken: set[int] = set()
    last = None
    for _ in range(256):
        address = next_free(1000, 1255, taken, last)
        assert address is not None and address not in taken
        taken.add(address)
        last = address
    assert next_free(1000, 1255, taken, last) is None
    assert taken == set(range(1000, 1256))


# ---------------------------------------------------------------- registry labels

@pytest.mark.parametrize("text,label", [
    ("web", "web"), ("Web-0", "web-0"), ("a" * 63, "a" * 63), ("a" * 64, ""), ("web.v1", ""),
    ("web\nx", ""), ("wéb", ""), ("-web", ""), ("web-", ""), ("", ""), ("a_b", ""), ("a b", ""),
    ("x" * 300, ""), (5, ""), (None, ""), ("ＷＥＢ", ""), ("web\x00", ""), ("K", "k"),
])
def test_clean_label(text, label: str) -> None:
    assert registry.clean_label(text) == label
    if label:
        assert registry.is_label(label)


def test_pod_identity_drops_unusable_names() -> None:
    pod = registry.pod_identity("web.v1", "kube-system", "uid\n1", "host\nname")
    assert pod == {"name": "", "namespace": "kube-system", "uid": "", "hostname": ""}
    pod = registry.pod_identity("Web", "Prod", "0f3c-11", "web-0")
    assert pod == {"name": "web", "namespace": "prod", "uid": "0f3c-11", "hostname": "web-0"}
    assert registry.pod_identity("a", "b", "u" * 129)["uid"] == ""


def test_names_and_tables_never_carry_injected_text() -> None:
    good = {"ready": True, "ips": ["10.42.0.5/16"],
            "pod": {"name": "web", "namespace": "prod", "hostname": "web-0"}}
    evil = {"ready": True, "ips": ["10.42.0.6/16"],
            "pod": {"name": "x\n10.42.0.9 evil", "namespace": "prod.evil", "hostname": "a.b"}}
    pending = {"ready": False, "ips": ["10.42.0.7/16"], "pod": {"name": "late", "namespace": "prod"}}
    forward, reverse = registry.build_tables([good, evil, pending, "junk", {"ready": True}],
                                             "cluster.local")
    assert forward == {"web": ["10.42.0.5"], "web.prod": ["10.42.0.5"],
                       "web.prod.svc.cluster.local": ["10.42.0.5"], "web-0": ["10.42.0.5"],
                       "web-0.prod": ["10.42.0.5"], "web-0.prod.svc.cluster.local": ["10.42.0.5"]}
    assert reverse["10.42.0.5"] == ["web.prod.svc.cluster.local", "web-0.prod.svc.cluster.local"]
    assert not reverse.get("10.42.0.6") and "10.42.0.7" not in reverse
    for name in forward:
        assert all(registry.is_label(part) for part in name.split("."))


# ---------------------------------------------------------------- netconf

def test_netconf_defaults() -> None:
    conf = parse_netconf(dict(CONFIG))
    assert conf.mode == "bridge" and conf.bridge == "smarter0"
    assert conf.cidr() == "10.42.0.0/16" and conf.gateway_text() == "10.42.0.1"
    assert conf.mtu == 1500 and conf.ip_masq and conf.domain == "cluster.local"
    assert ipv4.to_text(conf.range_start) == "10.42.0.1"
    assert ipv4.to_text(conf.range_end) == "10.42.255.254"
    docker = parse_netconf({"name": "mynet", "type": "c2d"})
    assert docker.mode == "docker" and docker.cidr() == "172.38.0.0/16"


@pytest.mark.parametrize("changes", [
    {"type": "bridge"}, {"mode": "x"}, {"bridge": ""}, {"bridge": "b" * 16}, {"bridge": 1},
    {"subnet": "10.0.0.0/31"}, {"subnet": "10.0.0.1/24"}, {"subnet": []},
    {"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, {"subnet": "10.0.0.0/24", "gateway": "10.0.0.0"},
    {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.10"},
    {"mtu": 575}, {"mtu": 65536}, {"mtu": True}, {"mtu": "9000"}, {"ipMasq": 1},
    {"ipam": []}, {"ipam": {"type": "../x"}}, {"ipam": {"type": ""}}, {"dnsAddress": "::1"},
    {"clusterDomain": ""}, {"clusterDomain": "a..b"}, {"clusterDomain": "clu ster.local"},
    {"clusterDomain": "c\nevil"}, {"clusterDomain": "x" * 201},
])
def test_netconf_rejects(changes: dict) -> None:
    assert code_of(parse_netconf, dict(CONFIG, **changes)) == 7


@pytest.mark.parametrize("network", ["", "..", "a/b", "-x", "net\nx", "x?y", "n" * 256])
def test_netconf_rejects_docker_network_names(network: str) -> None:
    assert code_of(parse_netconf, dict(CONFIG, mode="docker", network=network)) == 7


def test_netconf_docker_network_names() -> None:
    assert parse_netconf(dict(CONFIG, mode="docker", network="my_net-1.x")).docker_network == "my_net-1.x"
    assert parse_netconf({"name": "mynet", "type": "c2d"}).docker_network == "mynet"


def test_netconf_domain_normalised() -> None:
    assert parse_netconf(dict(CONFIG, clusterDomain="Cluster.Local.")).domain == "cluster.local"


# ---------------------------------------------------------------- plugin or command line

RUNTIME_ENV = {"CNI_CONTAINERID": "abc123", "CNI_NETNS": "/proc/self/ns/net",
               "CNI_IFNAME": "eth0"}


@pytest.mark.parametrize("present", [
    {"CNI_COMMAND": ""},                          # set but empty
    dict(RUNTIME_ENV),                            # a runtime that forgot CNI_COMMAND
    {"CNI_PATH": "/opt/cni/bin"},                 # any one CNI_* variable is enough
])
def test_missing_cni_command_is_a_code_4_error_on_stdout(plugin, bin_dir, present) -> None:
    """Exec'd as a runtime does (env + stdin, no argument): a spec error, never argparse's
    usage (which exited 2 with nothing on stdout)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "SMARTER_CNI_STATE_DIR": str(plugin.state_dir), **present}
    for name in ("smarter-cni", "c2d"):
        out = plugin.exec(name, env, dict(CONFIG, cniVersion="0.4.0"))
        assert out.returncode != 0 and out.code == 4, out
        assert "CNI_COMMAND" in out.json["msg"], out
        assert out.json["cniVersion"] == "0.4.0", out  # answered in the config's version
        assert "usage" not in out.stdout + out.stderr, out
        assert ("is not set" if "CNI_COMMAND" not in present else "is empty") in out.json["msg"]


def test_operator_command_line_without_cni_variables(bin_dir) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    launcher = str(bin_dir / "smarter-cni")
    done = subprocess.run([launcher, "--version"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("smarter-cni "), done
    # No argument and no CNI_* variable: the operator's usage, as before.
    done = subprocess.run([launcher], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "usage" in (done.stdout + done.stderr).lower(), done
    # An operator with CNI_PATH exported still gets the command line for a command.
    done = subprocess.run([launcher, "--version"], env=dict(env, CNI_PATH="/opt/cni/bin"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("smarter-cni "), done


def test_plugin_or_command_line_rule() -> None:
    from smarter_cni.entry import invoked_as_plugin

    assert invoked_as_plugin({"CNI_COMMAND": "ADD"}, ["status"])
    assert invoked_as_plugin({"CNI_COMMAND": ""}, [])
    assert invoked_as_plugin({"CNI_NETNS": "/x"}, [])
    assert not invoked_as_plugin({"CNI_NETNS": "/x"}, ["status"])
    assert not invoked_as_plugin({"PATH": "/bin", "SMARTER_CNI_STATE_DIR": "/x"}, [])
