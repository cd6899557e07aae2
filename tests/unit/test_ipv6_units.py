"""ipv6.py against the standard library's ipaddress, and netconf's subnet6 rules."""

from __future__ import annotations

import ipaddress
import random

import pytest

from smarter_cni import ipv6
from smarter_cni.cni.errors import CNIError
from smarter_cni.ipv4 import AddressError
from smarter_cni.netconf import parse_netconf


def test_text_round_trip_matches_ipaddress():
    rng = random.Random(6)
    for _ in range(3000):
        value = rng.getrandbits(128) & rng.choice(
            [ipv6.ALL, ipv6.mask(64), 0xFFFF0000FFFF0000FFFF0000FFFF0000, 0xFFFF << 112, 1])
        text = str(ipaddress.IPv6Address(value))
        assert ipv6.to_text(value) == text
        assert ipv6.to_int(text) == value
        assert ipv6.to_int(text.upper()) == value


@pytest.mark.parametrize("text", ["", ":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::",
                                  "g::1", "1.2.3.4", "::ffff:1.2.3.4", "fe80::1%eth0",
                                  "1:2:3:4:5:6:7:8::", "١::1"])
def test_bad_addresses_are_refused(text):
    with pytest.raises(AddressError):
        ipv6.to_int(text)


def test_cidr_and_overlap():
    assert ipv6.parse_cidr("fd42::/64") == (0xFD42 << 112, 64)
    with pytest.raises(AddressError, match="did you mean fd42::/64"):
        ipv6.parse_cidr("fd42::5/64")
    assert ipv6.parse_cidr("fd42::5/64", strict=False)[1] == 64
    a, _ = ipv6.parse_cidr("fd42::/48")
    b, _ = ipv6.parse_cidr("fd42:0:0:7::/64")
    assert ipv6.overlaps(a, 48, b, 64) and not ipv6.overlaps(a, 64, b, 64)


def _conf(**extra):
    return parse_netconf({"cniVersion": "1.0.0", "name": "n", "type": "smarter-cni", **extra})


def test_subnet6_gives_gateway_and_range():
    conf = _conf(subnet6="FD42:10:42::/64")
    assert conf.cidr6() == "fd42:10:42::/64"
    assert conf.gateway6_text() == "fd42:10:42::1"
    assert ipv6.to_text(conf.range6_start) == "fd42:10:42::2"
    assert ipv6.to_text(conf.range6_end) == "fd42:10:42:0:ffff:ffff:ffff:fffe"
    assert _conf().subnet6 is None and _conf().cidr6() == ""
    assert _conf(subnet6="").subnet6 is None


@pytest.mark.parametrize("subnet6, words", [
    ("fd42::/121", "/121"), ("fd42::/128", "/128"), ("fd00::/47", "/47"),
    ("fe80::/64", "link-local"), ("ff00::/64", "multicast"), ("::/64", "::/8"),
    ("fec0::/64", "site-local"), ("fd42::1/64", "host bits"), ("nonsense", "IPv6 prefix"),
])
def test_bad_subnet6_is_code_7(subnet6, words):
    with pytest.raises(CNIError) as caught:
        _conf(subnet6=subnet6)
    assert caught.value.code == 7 and words in caught.value.msg


def test_subnet6_in_docker_mode_is_refused():
    with pytest.raises(CNIError) as caught:
        _conf(mode="docker", subnet6="fd42::/64")
    assert caught.value.code == 7 and "fixed-cidr-v6" in caught.value.msg


def _install_opts(*argv: str):
    from smarter_cni.cli import build_parser
    from smarter_cni.node.install import Options

    return Options.from_args(build_parser().parse_args(["install", *argv]))


def test_installer_options_render_into_the_conflist():
    from smarter_cni import conflist
    from smarter_cni.node.install import cluster_dns

    plain = conflist.our_plugin(conflist.render(_install_opts()))
    assert "subnet6" not in plain and "dnsAddress6" not in plain  # IPv4 only costs nothing
    dual = conflist.render(_install_opts("--ipv6"))
    assert conflist.our_plugin(dual)["subnet6"] == "fd00:10:42::/64"
    assert conflist.our_plugin(dual)["dnsAddress6"] == "fd00:169:254::2"
    assert cluster_dns(conflist.netconf_of(dual)) == "169.254.0.2,fd00:169:254::2"
    own = conflist.our_plugin(conflist.render(_install_opts(
        "--subnet6", "fd42:1:2::/64", "--dns-ip6", "fd42:ffff::53")))
    assert (own["subnet6"], own["dnsAddress6"]) == ("fd42:1:2::/64", "fd42:ffff::53")
    with pytest.raises(conflist.ConfigError, match="/128"):
        conflist.render(_install_opts("--subnet6", "fd42::/128"))
    with pytest.raises(conflist.ConfigError, match="inside subnet6"):
        conflist.render(_install_opts("--subnet6", "fd42::/64", "--dns-ip6", "fd42::53"))
    with pytest.raises(conflist.ConfigError, match="fixed-cidr-v6"):
        conflist.render(_install_opts("--mode", "docker", "--ipv6"))
