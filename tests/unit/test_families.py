"""Reinstalling with other address families, without touching the node: the refusal while
pods are attached (over a real state file in a private state dir), the families of a
config, and status' pool size for an IPv6 /64 (the reinstalls themselves, for real:
tests/integration/test_ipv6.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smarter_cni.cli import build_parser
from smarter_cni.conflist import netconf_of
from smarter_cni.node.console import CLIError
from smarter_cni.node.families import (
    check_family_change,
    dropped_dns_addresses,
    families,
    previous_conf,
)
from smarter_cni.node.install import Options, render_conflist
from smarter_cni.node.status import readable_count

SRC = Path(__file__).resolve().parents[2] / "src"


def conf_of(*argv: str):
    opts = Options.from_args(build_parser().parse_args(["install", "--network", "famnet",
                                                        *argv]))
    return netconf_of(render_conflist(opts))


V4 = ("--subnet", "10.77.0.0/24", "--dns-ip", "169.254.77.2")
DUAL = (*V4, "--subnet6", "fd42:77:1::/64", "--dns-ip6", "fd42:77:53::2")
V6 = ("--ipv6-only", "--subnet6", "fd42:77:1::/64", "--dns-ip6", "fd42:77:53::2")


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    directory = tmp_path / "state"
    directory.mkdir()
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(directory))
    return directory


def attach(state_dir: Path, *networks: str) -> None:
    records = {f"c{i}/eth0": {"network": network, "name": f"pod{i}", "namespace": "edge",
                              "address": f"10.77.0.{i + 2}", "ready": True}
               for i, network in enumerate(networks)}
    (state_dir / "attachments.json").write_text(json.dumps(
        {"attachments": records, "networks": {}}))


def test_families_of_each_kind_of_config():
    assert families(conf_of(*V4)) == ["IPv4"]
    assert families(conf_of(*DUAL)) == ["IPv4", "IPv6"]
    assert families(conf_of(*V6)) == ["IPv6"]


@pytest.mark.parametrize("before, after, words", [
    (V6, V4, "which is IPv6; reinstalling it IPv4"),
    (DUAL, V4, "which is IPv4 and IPv6; reinstalling it IPv4"),
    (V4, V6, "which is IPv4; reinstalling it IPv6"),
    (V4, DUAL, "which is IPv4; reinstalling it IPv4 and IPv6"),
])
def test_a_family_change_with_attached_pods_is_refused(state_dir, before, after, words):
    attach(state_dir, "famnet", "famnet", "othernet")
    with pytest.raises(CLIError) as caught:
        check_family_change(conf_of(*before), conf_of(*after))
    text = f"{caught.value.message} {caught.value.fix}"
    assert "2 pod(s) are attached to network famnet" in text, text  # not othernet's
    assert words in text and "drain" in text and "nothing was changed" in text, text


def test_a_family_change_without_pods_or_the_same_families_passes(state_dir):
    check_family_change(conf_of(*V6), conf_of(*V4))  # no state file at all
    attach(state_dir, "othernet")
    check_family_change(conf_of(*DUAL), conf_of(*V4))  # pods of another network only
    attach(state_dir, "famnet")
    check_family_change(conf_of(*V4), conf_of("--subnet", "10.78.0.0/24"))  # same family
    check_family_change(None, conf_of(*V6))  # no earlier install


def test_previous_conf_reads_the_record_or_its_config_file(tmp_path):
    from smarter_cni.conflist import plugin_config

    conflist = render_conflist(Options.from_args(build_parser().parse_args(
        ["install", "--network", "famnet", *DUAL])))
    assert previous_conf({"plugin_config": plugin_config(conflist)}).cidr6() == \
        "fd42:77:1::/64"
    path = tmp_path / "10-smarter-cni.conflist"
    path.write_text(json.dumps(conflist))
    assert previous_conf({"config": str(path)}).cidr6() == "fd42:77:1::/64"
    assert previous_conf({}) is None and previous_conf({"config": str(tmp_path / "no")}) is None


def test_dropped_dns_addresses_are_those_the_new_config_lacks():
    dual = {"dns_address": "169.254.77.2", "dns_address6": "fd42:77:53::2"}
    assert dropped_dns_addresses(dual, conf_of(*V4)) == ["fd42:77:53::2"]
    assert dropped_dns_addresses(dual, conf_of(*V6)) == ["169.254.77.2"]
    assert dropped_dns_addresses(dual, conf_of(*DUAL)) == []
    assert dropped_dns_addresses({"dns_address": "fd42:77:53::2", "dns_address6": None},
                                 conf_of(*V4)) == ["fd42:77:53::2"]


@pytest.mark.parametrize("count, text", [
    (0, "0"), (253, "253"), (65534, "65534"), (999_999, "999999"),
    (2 ** 20 - 2, "~2^20 (1.0e6)"), (1_500_000, "1.5e6"),
    (2 ** 64 - 2, "~2^64 (1.8e19)"), (2 ** 56, "~2^56 (7.2e16)"),
])
def test_readable_count(count, text):
    assert readable_count(count) == text


def test_status_shows_a_64_pool_readably_and_json_keeps_the_number(tmp_path):
    """Status over files only (the DNS address is not on this node: nothing is sent)."""
    from test_install_ipv6_only import status_of_files

    status = status_of_files(tmp_path, "--ipv6-only", "--subnet6", "fd42:7:8::/64",
                             "--dns-ip6", "fd42:7:53::3", "--bridge", "brnone0y")
    pool = json.loads(status("--json").stdout)["pool"]
    assert isinstance(pool["size"], int) and 2 ** 63 < pool["size"] <= 2 ** 64, pool
    lines = [line for line in status().stdout.splitlines() if line.startswith("pool")]
    assert lines == ["pool      0/~2^64 (1.8e19) addresses used (0.0%)"], lines
