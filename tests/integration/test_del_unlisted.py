"""DEL returns once the kernel has unlisted the pod's veth, not after the kernel has
freed it (links.delete_unlisted): what a runtime can see must already be gone.

Root only: real veths, a real bridge and network namespaces, all with this run's names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.netns import link_exists, run_id, unique
from helpers.plugin import SRC

sys.path.insert(0, str(SRC))
from smarter_cni.cni.errors import DATAPLANE_FAILURE  # noqa: E402
from smarter_cni.dataplane import links, netlink  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, veths, bridges)")

ENODEV = 19
ROUNDS = 20


@pytest.fixture
def bridge():
    name = unique("tdu")
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def _pod_link_gone(pod: netlink.Socket, name: str) -> bool:
    try:
        pod.link(name)
    except OSError as err:
        return err.errno == ENODEV
    return False


def test_both_ends_are_gone_and_the_name_free_when_it_returns(bridge, netns):
    host = netlink.host_socket()
    try:
        master = host.ifindex(bridge)
        for _ in range(ROUNDS):
            ns, path = netns.create()
            veth = unique("tdv")
            fd = os.open(path, os.O_RDONLY)
            try:
                host.create_veth(veth, "02:00:00:00:00:01", "eth0", "02:00:00:00:00:02", fd,
                                 1500, master)
                pod = netlink.pod_socket(fd)
            finally:
                os.close(fd)
            try:
                assert pod.link("eth0")[0] > 0
                assert links.delete_unlisted(veth) is True
                # checked at once, before anything else can run
                assert _pod_link_gone(pod, "eth0"), "the pod end is still listed"
                assert not link_exists(veth), "the host end is still in sysfs"
                assert not os.path.exists(f"/sys/class/net/{bridge}/brif/{veth}"), \
                    "the host end is still a port of the bridge"
                # the name is free again: a pod re-created at once gets the same host name
                fd = os.open(path, os.O_RDONLY)
                try:
                    host.create_veth(veth, "02:00:00:00:00:03", "eth1", "02:00:00:00:00:04", fd,
                                     1500, master)
                finally:
                    os.close(fd)
                assert links.delete_unlisted(veth) is True
            finally:
                pod.close()
                subprocess.run(["ip", "link", "del", veth], capture_output=True)
            netns.cleanup()
    finally:
        host.close()
    assert links.delete_unlisted(unique("tdm")) is False  # nothing to delete: no error


def test_a_link_the_kernel_will_not_delete_is_a_clear_error(netns):
    """Inside the test's own netns: the kernel refuses to delete `lo`."""
    ns, _ = netns.create()
    code = (f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
            "from smarter_cni.dataplane import links\n"
            "from smarter_cni.cni.errors import CNIError\n"
            "try:\n"
            "    links.delete_unlisted('lo')\n"
            "except CNIError as err:\n"
            "    print(err.code, err.msg)\n")
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{DATAPLANE_FAILURE} cannot delete link lo: "), done.stdout
    still = subprocess.run(["ip", "-n", ns, "link", "show", "lo"], capture_output=True)
    assert still.returncode == 0


def test_gc_of_many_stale_pods_leaves_none_of_their_links(plugin, bridge_network, netns):
    """GC deletes every stale veth the same way (each returns once unlisted): all of them
    are gone when GC returns, and the valid pods keep theirs."""
    pods = []
    for i in range(12):
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, run_id(f"gc{i}"), path)
        assert added.ok, added
        pods.append((run_id(f"gc{i}"), ns, added.json["interfaces"][0]["name"]))
    keep = pods[:2]
    config = dict(bridge_network, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": cid, "ifname": "eth0"} for cid, _, _ in keep]})
    collected = plugin("GC", config, ifname="")
    assert collected.ok, collected
    for cid, ns, host in pods:
        pod_side = subprocess.run(["ip", "-n", ns, "link", "show", "eth0"], capture_output=True)
        kept = (cid, ns, host) in keep
        assert link_exists(host) == kept, host
        assert (pod_side.returncode == 0) == kept, ns
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    assert sorted(r["container_id"] for r in state["attachments"].values()) == \
        sorted(cid for cid, _, _ in keep)
    for cid, ns, _ in keep:
        assert plugin("DEL", bridge_network, cid, f"/var/run/netns/{ns}").ok
