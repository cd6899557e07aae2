"""The Docker network's shape, without Docker: compatibility, the DNS reservation,
the recreate request and the messages that tell the operator what to do.

The same functions run against a real dockerd in
tests/integration/test_docker_migration.py.
"""

from __future__ import annotations

import pytest

from smarter_cni.dataplane import docker_mode, docker_network
from smarter_cni.dataplane.docker_network import (
    dns_exposed,
    dns_holder,
    install_command,
    network_conflicts,
    recreate_body,
    refusal,
    unreserved_dns_error,
)
from smarter_cni.netconf import parse_netconf


def conf(**extra):
    config = {"cniVersion": "1.0.0", "name": "mynet", "type": "smarter-cni", "mode": "docker"}
    config.update(extra)
    return parse_netconf(config)


def network(subnet="172.38.0.0/16", gateway="172.38.0.1", aux=None, driver="bridge",
            ip_range=None, **more):
    pool = {"Subnet": subnet}
    if gateway is not None:
        pool["Gateway"] = gateway
    if aux is not None:
        pool["AuxiliaryAddresses"] = aux
    if ip_range is not None:
        pool["IPRange"] = ip_range
    return {"Name": "mynet", "Id": "f" * 64, "Driver": driver,
            "IPAM": {"Driver": "default", "Options": {}, "Config": [pool]}, **more}


# What `docker network create --subnet=172.38.0.0/16 --gateway=172.38.0.1 mynet` (the
# original smarter-cni's install.sh) leaves, as dockerd 20.10 reports it, with the
# original's dnsmasq container `mydns` started on it with --ip=172.38.0.2.
ORIGINAL = {
    "Name": "mynet", "Id": "a" * 64, "Scope": "local", "Driver": "bridge", "EnableIPv6": False,
    "IPAM": {"Driver": "default", "Options": {},
             "Config": [{"Subnet": "172.38.0.0/16", "Gateway": "172.38.0.1"}]},
    "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
    "ConfigOnly": False, "Options": {}, "Labels": {},
    "Containers": {"b" * 64: {"Name": "mydns", "EndpointID": "c" * 64,
                              "MacAddress": "02:42:ac:26:00:02",
                              "IPv4Address": "172.38.0.2/16", "IPv6Address": ""}},
}


def test_defaults_match_the_original():
    c = conf()
    assert (c.cidr(), c.gateway_text(), c.dns_address) == ("172.38.0.0/16", "172.38.0.1",
                                                          "172.38.0.2")
    assert docker_network.dns_reservable(c)


def test_installer_names_stay_importable_from_docker_mode():
    assert docker_mode.ensure_network is docker_network.ensure_network
    assert docker_mode.network_conflicts is docker_network.network_conflicts
    assert docker_mode.MANAGED_LABEL == docker_network.MANAGED_LABEL == "io.smarter-cni.managed"


def test_compatible_network_has_no_conflicts():
    assert network_conflicts(network(aux={"dns": "172.38.0.2"}), conf()) == []
    # Docker's default gateway (.1) counts when the pool does not name one.
    assert network_conflicts(network(gateway=None, aux={"x": "172.38.0.2"}), conf()) == []


@pytest.mark.parametrize("net, words", [
    (network(subnet="172.39.0.0/16", aux={"d": "172.39.0.2"}), "subnet is 172.39.0.0/16"),
    (network(gateway="172.38.0.254", aux={"d": "172.38.0.2"}), "gateway is 172.38.0.254"),
    (network(), "not reserved"),
    (network(aux={"d": "172.38.0.2"}, driver="macvlan"), "driver is 'macvlan'"),
    (network(aux={"d": "172.38.0.2"}, Internal=True), "internal"),
])
def test_conflicts_are_named(net, words):
    problems = network_conflicts(net, conf())
    assert any(words in p for p in problems), problems


def test_unreserved_dns_is_left_to_the_migration_when_asked():
    assert network_conflicts(network(), conf(), dns=False) == []
    assert network_conflicts(ORIGINAL, conf(), dns=False) == []


def test_dns_address_outside_the_subnet_needs_no_reservation():
    c = conf(subnet="10.245.3.0/24", dnsAddress="169.254.0.2")
    assert not docker_network.dns_reservable(c)
    assert network_conflicts(network("10.245.3.0/24", "10.245.3.1"), c) == []


@pytest.mark.parametrize("net, exposed", [
    (ORIGINAL, True),
    (network(), True),
    (network(gateway=None), True),
    (network(aux={"smarter-cni-dns": "172.38.0.2"}), False),
    (network(aux={"other": "172.38.0.9"}), True),
    # Docker allocates from IPRange only: a range that leaves .2 out reserves it too.
    (network(ip_range="172.38.1.0/24"), False),
    (network(ip_range="172.38.0.0/24"), True),
    (network(gateway="172.38.0.2"), False),           # the bridge itself has it
    (network(subnet="10.9.0.0/16", gateway="10.9.0.1"), False),   # not in the pool at all
    ({"Name": "mynet", "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}, False),
    ({"Name": "mynet", "IPAM": {"Config": None}}, False),
])
def test_dns_exposed(net, exposed):
    assert dns_exposed(net, "172.38.0.2") is exposed


def test_dns_holder():
    assert dns_holder(ORIGINAL, "172.38.0.2") == f"mydns ({'b' * 12})"
    assert dns_holder(ORIGINAL, "172.38.0.3") == ""
    assert dns_holder(network(), "172.38.0.2") == ""


def test_add_error_is_code_106_and_names_the_fix_and_the_holder():
    err = unreserved_dns_error(ORIGINAL, conf())
    assert err is not None and err.code == 106
    assert "docker network mynet does not reserve the node DNS address 172.38.0.2" in err.msg
    assert "`sudo smarter-cni install --mode docker`" in err.msg
    assert f"container mydns ({'b' * 12}) already holds it" in err.msg
    bare = unreserved_dns_error(network(), conf())
    assert bare is not None and "already holds" not in bare.msg
    assert unreserved_dns_error(network(aux={"d": "172.38.0.2"}), conf()) is None


def test_install_command_carries_only_what_differs_from_the_defaults():
    assert install_command(conf()) == "sudo smarter-cni install --mode docker"
    c = conf(network="edge", subnet="10.247.3.0/24", dnsAddress="10.247.3.2")
    assert install_command(c) == ("sudo smarter-cni install --mode docker --network edge "
                                  "--subnet 10.247.3.0/24 --dns-ip 10.247.3.2")
    c = conf(subnet="10.247.3.0/24", gateway="10.247.3.254", dnsAddress="10.247.3.2")
    assert "--gateway 10.247.3.254" in install_command(c)


def test_recreate_body_keeps_the_network_and_adds_the_reservation():
    original = network(ip_range="172.38.0.0/17", aux={"printer": "172.38.200.1"},
                       Options={"com.docker.network.driver.mtu": "1400",
                                "com.docker.network.bridge.name": "br-edge"},
                       Labels={"owner": "ops"}, EnableIPv6=True, Attachable=True)
    original["IPAM"]["Config"].append({"Subnet": "fd00:38::/64", "Gateway": "fd00:38::1"})
    original["IPAM"]["Options"] = {"x": "y"}
    body = recreate_body(original, "172.38.0.2")
    assert body["Name"] == "mynet" and body["Driver"] == "bridge" and body["CheckDuplicate"]
    assert body["Options"] == original["Options"]
    assert body["Labels"] == {"owner": "ops", docker_network.MIGRATED_LABEL: "172.38.0.2"}
    assert docker_network.MANAGED_LABEL not in body["Labels"]
    assert (body["EnableIPv6"], body["Attachable"], body["Internal"]) == (True, True, False)
    assert body["IPAM"] == {"Driver": "default", "Options": {"x": "y"}, "Config": [
        {"Subnet": "172.38.0.0/16", "IPRange": "172.38.0.0/17", "Gateway": "172.38.0.1",
         "AuxiliaryAddresses": {"printer": "172.38.200.1", "smarter-cni-dns": "172.38.0.2"}},
        {"Subnet": "fd00:38::/64", "Gateway": "fd00:38::1"},
    ]}
    # The input is not changed (it is what a failed recreate puts back).
    assert original["IPAM"]["Config"][0]["AuxiliaryAddresses"] == {"printer": "172.38.200.1"}
    assert recreate_body(original, "")["Labels"] == {"owner": "ops"}


def test_recreate_body_of_the_original_network():
    body = recreate_body(ORIGINAL, "172.38.0.2")
    assert body["IPAM"]["Config"] == [{"Subnet": "172.38.0.0/16", "Gateway": "172.38.0.1",
                                       "AuxiliaryAddresses": {"smarter-cni-dns": "172.38.0.2"}}]
    assert not dns_exposed(dict(ORIGINAL, IPAM=body["IPAM"]), "172.38.0.2")


def test_recreate_body_never_overwrites_an_auxiliary_name():
    body = recreate_body(network(aux={"smarter-cni-dns": "172.38.9.9"}), "172.38.0.2")
    aux = body["IPAM"]["Config"][0]["AuxiliaryAddresses"]
    assert aux["smarter-cni-dns"] == "172.38.9.9" and "172.38.0.2" in aux.values()


def test_refusal_lists_every_user_and_the_steps():
    users = [
        {"id": "1" * 64, "name": "k8s_POD_web_shop_x", "state": "running",
         "address": "172.38.0.3", "pod": "shop/web"},
        {"id": "2" * 64, "name": "mydns", "state": "running", "address": "172.38.0.2",
         "pod": ""},
        {"id": "3" * 64, "name": "old-job", "state": "exited", "address": "", "pod": ""},
    ]
    err = refusal(conf(), users)
    assert err.code == 106
    msg = err.msg
    assert "In use by 3:" in msg
    assert f"k8s_POD_web_shop_x ({'1' * 12}, running, 172.38.0.3, pod shop/web)" in msg
    assert f"mydns ({'2' * 12}, running, 172.38.0.2, holds the DNS address)" in msg
    assert f"old-job ({'3' * 12}, exited)" in msg
    assert "1) move the pods off this node: kubectl drain NODE" in msg
    assert "2) remove the other containers: docker rm -f mydns old-job" in msg
    assert "docker network disconnect -f mynet NAME" in msg
    assert "mydns is replaced by the node DNS service" in msg
    assert "3) run `sudo smarter-cni install --mode docker` again" in msg
    assert "4) kubectl uncordon NODE" in msg


def test_refusal_without_pods_has_no_drain_step():
    users = [{"id": "2" * 64, "name": "web", "state": "running", "address": "172.38.0.5",
              "pod": ""}]
    msg = refusal(conf(), users).msg
    assert "drain" not in msg and "uncordon" not in msg and "mydns" not in msg
    assert "1) remove the other containers: docker rm -f web" in msg
    assert "2) run `sudo smarter-cni install --mode docker` again" in msg
