"""ipranges: the node's own range narrows the pods' subnet, not the network (no root)."""

from __future__ import annotations

import pytest

from smarter_cni.cni.errors import CNIError
from smarter_cni.netconf import parse_netconf

BASE = {"cniVersion": "1.0.0", "name": "n", "type": "smarter-cni", "subnet": "10.42.0.0/16"}


def test_a_range_inside_the_subnet_keeps_the_network_cidr():
    conf = parse_netconf({**BASE, "runtimeConfig": {"ipRanges": [[{"subnet": "10.42.7.0/24"}]]}})
    assert (conf.cidr(), conf.subnet_text(), conf.gateway_text()) == \
        ("10.42.0.0/16", "10.42.7.0/24", "10.42.7.1")
    assert conf.range_source == "runtimeConfig.ipRanges"


def test_podcidrs_from_a_template_and_ipranges_first():
    conf = parse_netconf({**BASE, "podCIDRs": ["fd00::/64", "10.42.9.0/24"]})
    assert (conf.cidr(), conf.subnet_text(), conf.range_source) == \
        ("10.42.0.0/16", "10.42.9.0/24", "podCIDRs")
    both = parse_netconf({**BASE, "podCIDRs": ["10.42.9.0/24"],
                          "runtimeConfig": {"ipRanges": [[{"subnet": "10.42.8.0/24"}]]}})
    assert both.subnet_text() == "10.42.8.0/24"


def test_a_range_outside_moves_the_network_and_docker_mode_ignores_ranges():
    conf = parse_netconf({**BASE, "runtimeConfig": {"ipRanges": [[{"subnet": "192.168.5.0/24"}]]}})
    assert conf.cidr() == conf.subnet_text() == "192.168.5.0/24"
    docker = parse_netconf({**BASE, "mode": "docker", "subnet": "172.38.0.0/16",
                            "runtimeConfig": {"ipRanges": [[{"subnet": "10.1.0.0/24"}]]}})
    assert docker.subnet_text() == "172.38.0.0/16"


def test_no_ranges_change_nothing():
    plain = parse_netconf(dict(BASE))
    for runtime in ({}, {"ipRanges": []}, {"ipRanges": None}, {"portMappings": []}):
        conf = parse_netconf({**BASE, "runtimeConfig": runtime})
        assert (conf.cidr(), conf.subnet_text(), conf.gateway, conf.range_start, conf.range_end) \
            == (plain.cidr(), plain.subnet_text(), plain.gateway, plain.range_start,
                plain.range_end)


def test_the_dns_service_acl_covers_the_network_not_only_the_range(tmp_path):
    import argparse
    import json

    from smarter_cni.dns.service import load_netconf

    path = tmp_path / "10-containerd-net.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "smarter-cni", "subnet": "10.42.0.0/16", "podCIDRs": ["10.42.3.0/24"]}]}))
    _, conf = load_netconf(argparse.Namespace(config=str(path), cni_conf_dir=""))
    assert (conf.net_subnet, conf.net_prefix) == (0x0A2A0000, 16)


def test_bad_keys_are_code_7():
    with pytest.raises(CNIError) as caught:
        parse_netconf({**BASE, "runtimeConfig": {"IPRANGES": [[{"SUBNET": "10.42.0.5/24"}]]}})
    assert caught.value.code == 7 and "did you mean 10.42.0.0/24" in caught.value.msg


def test_as_recorded_gives_the_reconciler_the_range_add_set_up():
    from smarter_cni.reconcile import as_recorded

    configured = parse_netconf(dict(BASE))
    ranged = parse_netconf({**BASE, "runtimeConfig": {"ipRanges": [[{"subnet": "10.42.7.0/24"}]]}})
    marker = {"bridge": "smarter0", "cidr": ranged.cidr(), "gateway": ranged.gateway_text(),
              "pods": ranged.subnet_text()}
    got = as_recorded(configured, marker)
    assert (got.cidr(), got.subnet_text(), got.gateway_text()) == \
        ("10.42.0.0/16", "10.42.7.0/24", "10.42.7.1")
    assert configured.subnet_text() == "10.42.0.0/16", "the original is untouched"
    assert as_recorded(configured, {**marker, "cidr": "10.9.0.0/16"}) is configured
    assert as_recorded(configured, None) is configured
    plain = {"cidr": "10.42.0.0/16", "gateway": "10.42.0.1", "pods": "10.42.0.0/16"}
    assert as_recorded(configured, plain) is configured
