"""The containerd conf_template through containerd's own CRI (kubelet's path).

A private containerd 1.6 (tests/helpers/cri_*.py from branch `cri`) gets
`conf_template` = the file `smarter-cni install --containerd-template` writes
(node/containerd.py renders it from the same conflist the test node uses).
kubelet's UpdateRuntimeConfig with the node's pod CIDR makes containerd render
it into 10-containerd-net.conflist; RunPodSandbox then gets an address from
that CIDR, while the network (NAT, DNS ACL) stays the configured subnet.
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from helpers.netns import unique
from helpers.plugin import teardown_bridge_network

cri_node = pytest.importorskip(
    "helpers.cri_node", reason="tests/helpers/cri_node.py comes with branch cri (on main): "
    "this test runs once both branches are merged")
cri = pytest.importorskip("helpers.cri")

pytestmark = pytest.mark.root


def test_update_runtime_config_renders_the_template_and_the_pod_gets_the_node_range(
        tmp_path):
    from smarter_cni.node import containerd as template

    subnet, dns_address = cri_node.free_subnet(24), cri_node.free_link_local()
    if not subnet or not dns_address:
        pytest.skip("no free 10.244.x.0/24 or 169.254.x.y on this host")
    node_range = subnet.replace(".0/24", ".128/25")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    name = unique("t")
    network = {"cniVersion": "1.0.0", "name": f"net-{name}", "type": "smarter-cni",
               "bridge": f"br{name[:10]}", "subnet": subnet}
    node = cri_node.CriNode(tmp_path / "node", network, dns_address, state_dir)
    template_path = tmp_path / template.TEMPLATE_NAME
    ours_only = dict(node.conflist, plugins=node.conflist["plugins"][:1])  # no portmap here
    template_path.write_text(template.template_text(ours_only))
    config = node.containerd.config.read_text()
    assert "    max_conf_num = 1\n" in config
    node.containerd.config.write_text(config.replace(
        "    max_conf_num = 1\n", f'    max_conf_num = 1\n    conf_template = "{template_path}"\n'))
    made = []
    try:
        node.start()  # the helper waits for a ready CRI, which needs a config at first
        # containerd renders the template only while no CNI config is loaded: the installer
        # keeps its own beside the template; the test node's goes now (containerd's conf
        # syncer notices, and the network is "not ready" until the rendering lands)
        node.conf_path.unlink()
        time.sleep(1.0)
        rendered = node.conf_dir / template.RENDERED_NAME
        assert not rendered.exists()
        node.client.call("UpdateRuntimeConfig",
                         runtime_config={"network_config": {"pod_cidr": node_range}})
        deadline = time.monotonic() + 10
        while not rendered.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rendered.exists(), node.containerd.log_tail(15)
        conflist = json.loads(rendered.read_text())
        assert conflist["plugins"][0]["podCIDRs"] == [node_range]
        assert conflist["plugins"][0]["subnet"] == subnet
        time.sleep(1.0)  # containerd reloads its CNI config on the file event
        for n in range(2):
            pod = node.run_pod(f"tpl{n}-{name[:6]}")
            made.append(pod)
        addresses = [pod.ip for pod in made]
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(node_range)
                   for a in addresses), addresses
        base = node_range.rsplit(".", 1)[0]
        assert addresses == [f"{base}.130", f"{base}.131"], "gateway .129, then in order"
        add = next(c for c in node.calls(made[0]) if c.command == "ADD")
        assert add.stdin["podCIDRs"] == [node_range] and "ipRanges" not in add.runtime_config
        record = node.attachment_of(made[0])
        assert record["ips"] == [f"{base}.130/25"] and record["gateway"] == f"{base}.129"
        print(f"\nUpdateRuntimeConfig(pod_cidr={node_range}) -> containerd rendered "
              f"{rendered.name}; pods got {addresses} via gateway {base}.129")
    finally:
        for pod in made:
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                try:
                    node.client.call(method, pod_sandbox_id=pod.id)
                except cri.CRIError:
                    pass
        left = node.cleanup()
        teardown_bridge_network(network, state_dir)
        assert not left, left
