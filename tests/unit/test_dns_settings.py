"""`smarter-cni dns` settings: which network config it picks, and its upstreams."""

from __future__ import annotations

import json

import pytest

from smarter_cni.dns import service


def write(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_first_smarter_cni_config_in_name_order(tmp_path):
    write(tmp_path / "05-other.conflist",
          {"cniVersion": "1.0.0", "name": "flannel", "plugins": [{"type": "flannel"}]})
    write(tmp_path / "10-smarter.conflist",
          {"cniVersion": "1.0.0", "name": "smarter",
           "plugins": [{"type": "smarter-cni", "subnet": "10.50.0.0/16"}, {"type": "portmap"}]})
    write(tmp_path / "20-late.conf", {"cniVersion": "1.0.0", "name": "late", "type": "smarter-cni"})
    write(tmp_path / "00-broken.conflist", "{not json")
    path, config = service.find_netconf(str(tmp_path))
    assert path.endswith("10-smarter.conflist")
    assert config["name"] == "smarter" and config["subnet"] == "10.50.0.0/16"


def test_c2d_config_is_docker_mode_on_the_original_address(tmp_path):
    conf = write(tmp_path / "c2d.conf", {"cniVersion": "0.2.0", "name": "mynet", "type": "c2d"})
    args = service.build_parser().parse_args(["--config", conf])
    _, netconf = service.load_netconf(args)
    assert netconf.mode == "docker" and netconf.dns_address == "172.38.0.2"
    assert netconf.docker_network == "mynet" and netconf.cidr() == "172.38.0.0/16"


def test_bridge_defaults(tmp_path):
    conf = write(tmp_path / "b.conflist", {"cniVersion": "1.0.0", "name": "smarter",
                                           "plugins": [{"type": "smarter-cni"}]})
    _, netconf = service.load_netconf(service.build_parser().parse_args(["--config", conf]))
    assert netconf.mode == "bridge" and netconf.dns_address == "169.254.0.2"
    assert netconf.domain == "cluster.local"


def test_invalid_configs_are_settings_errors(tmp_path):
    bad = write(tmp_path / "bad.conflist", {"name": "x", "plugins": [
        {"type": "smarter-cni", "subnet": "10.0.0.0/31"}]})
    with pytest.raises(service.SettingsError, match="subnet"):
        service.load_netconf(service.build_parser().parse_args(["--config", bad]))
    none = write(tmp_path / "none.conflist", {"name": "x", "plugins": [{"type": "bridge"}]})
    with pytest.raises(service.SettingsError, match="no plugin of type"):
        service.load_netconf(service.build_parser().parse_args(["--config", none]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(service.SettingsError, match="no smarter-cni network config"):
        service.find_netconf(str(empty))


def test_upstreams_from_options_or_resolv_conf(tmp_path):
    resolv = write(tmp_path / "resolv.conf", "nameserver 169.254.0.2\nnameserver 192.0.2.53\n")
    args = service.build_parser().parse_args(["--resolv-conf", resolv])
    assert service.choose_upstreams(args, "169.254.0.2", 53) == [("192.0.2.53", 53)]
    args = service.build_parser().parse_args(["--upstream", "127.0.0.1:5353",
                                              "--upstream", "192.0.2.1"])
    assert service.choose_upstreams(args, "169.254.0.2", 53) == [("127.0.0.1", 5353),
                                                                 ("192.0.2.1", 53)]
    args = service.build_parser().parse_args(["--upstream", "169.254.0.2"])
    with pytest.raises(service.SettingsError, match="itself"):
        service.choose_upstreams(args, "169.254.0.2", 53)


def test_metrics_address_defaults_to_the_dns_address_port_9153():
    assert service.metrics_address(None, "169.254.0.2") == ("169.254.0.2", 9153)
    assert service.metrics_address("9253", "169.254.0.2") == ("169.254.0.2", 9253)
    assert service.metrics_address("127.0.0.1:9100", "169.254.0.2") == ("127.0.0.1", 9100)
    assert service.metrics_address("127.0.0.1", "169.254.0.2") == ("127.0.0.1", 9153)
    assert service.metrics_address("off", "169.254.0.2") is None
    for bad in ("nonsense:1", "1.2.3.4:99999", "1.2.3.4:x"):
        with pytest.raises(service.SettingsError):
            service.metrics_address(bad, "169.254.0.2")


def test_the_default_interface_is_the_address_modules():
    from smarter_cni.dns import address

    assert service.DEFAULT_INTERFACE == address.DEFAULT_INTERFACE
