"""Reboot and drift: lost state, stale links and rules, a bridge changed behind our back, GC, STATUS.

/run/smarter-cni is a tmpfs: after a reboot the state is gone while rules
restored by iptables-persistent (or a bridge made by the OS) may still be
there. The plugin must reconcile what it finds instead of tripping over it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import delete_link, link_exists, run_id, sh, unique  # noqa: E402
from helpers.plugin import SRC, pod_args, teardown_bridge_network  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane.names import chain_name, host_ifname  # noqa: E402

pytestmark = pytest.mark.root


def records(state_dir: Path) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_bytes())["attachments"] if path.exists() else {}


def wipe(state_dir: Path) -> None:
    """What a reboot does to /run/smarter-cni (the directory itself is recreated by the plugin)."""
    shutil.rmtree(state_dir)


def bridge_addresses(bridge: str) -> list[str]:
    out = sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout.decode()
    return re.findall(r"inet (\S+)", out)


def firewall_lines(config: dict) -> list[str]:
    tokens = (f"smarter-cni {config['name']}", chain_name(config["name"]))
    text = sh("iptables-save", check=False).stdout.decode()
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                  if any(t in line for t in tokens))


def ping(netns_name: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns_name, "ping", "-c1", "-W2", address],
                          capture_output=True, timeout=10).returncode == 0


def gateway(config: dict) -> str:
    return config["subnet"].replace(".0/24", ".1")


def add_pods(plugin, config, netns, count: int, prefix: str) -> list[tuple[str, str, str, str]]:
    """(container ID, netns name, netns path, address) for `count` new pods."""
    pods = []
    for i in range(count):
        name, path = netns.create(prefix)
        cid = f"{prefix}{i}-{unique('', 8)}"
        added = plugin("ADD", config, cid, path, args=pod_args(f"{prefix}-{i}"))
        assert added.ok, added
        pods.append((cid, name, path, added.json["ips"][0]["address"]))
    return pods


def test_state_wiped_with_stale_pods_left(plugin, bridge_network, netns, state_dir) -> None:
    """State lost while the bridge and old pods remain: new ADDs work on the same bridge and
    never get a surviving pod's address, and the runtime's DELs of the old pods (which the
    plugin no longer knows) clean them up and free their addresses."""
    # Six addresses (.2-.7): the last three ADDs can only succeed if the survivors' are free.
    config = dict(bridge_network, rangeEnd=bridge_network["subnet"].replace(".0/24", ".7"))
    old = add_pods(plugin, config, netns, 3, "old")
    index = Path(f"/sys/class/net/{config['bridge']}/ifindex").read_text()
    rules = firewall_lines(config)
    wipe(state_dir)

    new = add_pods(plugin, config, netns, 3, "new")
    old_addresses = {p[3] for p in old}
    assert not old_addresses & {p[3] for p in new}, "a new pod got a surviving pod's address"
    for _, name, _, _ in old:  # the survivors keep working
        assert ping(name, gateway(config))
    assert Path(f"/sys/class/net/{config['bridge']}/ifindex").read_text() == index, "bridge rebuilt"
    assert bridge_addresses(config["bridge"]) == [f"{gateway(config)}/24"]
    assert firewall_lines(config) == rules, "rules duplicated or changed after the state wipe"
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    assert len(records(state_dir)) == 3
    for _, name, _, _ in new:
        assert ping(name, gateway(config))

    for cid, _, path, _ in old:  # kubelet eventually tears the old sandboxes down
        deleted = plugin("DEL", config, cid, path)
        assert deleted.ok, deleted
        assert not link_exists(host_ifname(cid, "eth0"))
    assert len(records(state_dir)) == 3
    again = add_pods(plugin, config, netns, 3, "again")  # the survivors' addresses are free again
    assert {p[3] for p in again} == old_addresses
    for cid, _, path, _ in new + again:
        assert plugin("DEL", config, cid, path).ok
    assert records(state_dir) == {}
    assert os.listdir(f"/sys/class/net/{config['bridge']}/brif") == []


def test_reboot_with_persisted_rules(plugin, bridge_network, netns, state_dir) -> None:
    """A real reboot: netns, veths, bridge and state gone, the firewall rules restored from disk."""
    config = bridge_network
    pods = add_pods(plugin, config, netns, 2, "boot")
    rules = firewall_lines(config)
    netns.cleanup()  # the pods' namespaces are gone: their veths go with them
    delete_link(config["bridge"])
    wipe(state_dir)
    assert not link_exists(config["bridge"])
    assert firewall_lines(config) == rules

    after = add_pods(plugin, config, netns, 2, "boot2")
    assert bridge_addresses(config["bridge"]) == [f"{gateway(config)}/24"]
    assert firewall_lines(config) == rules, "restored rules were duplicated"
    for _, name, _, _ in after:
        assert ping(name, gateway(config))
    for cid, _, path, _ in pods:  # DEL of pods from before the reboot: nothing left to do, success
        deleted = plugin("DEL", config, cid, path)
        assert deleted.ok, deleted
    for cid, _, path, _ in after:
        assert plugin("DEL", config, cid, path).ok
    assert records(state_dir) == {}


@pytest.mark.parametrize("drift", ["other-address", "extra-address", "down", "no-address"])
def test_bridge_address_drift_is_corrected(plugin, bridge_network, netns, state_dir, drift) -> None:
    """The bridge exists with the wrong address (the reference bridge plugin fails with
    'already has an IP address different from ...'): ADD on a fresh state dir corrects it."""
    config = bridge_network
    bridge = config["bridge"]
    sh("ip", "link", "add", bridge, "type", "bridge")
    wrong = config["subnet"].replace(".0/24", ".77/24")
    if drift in ("other-address", "extra-address"):
        sh("ip", "addr", "add", wrong, "dev", bridge)
    if drift == "extra-address":
        sh("ip", "addr", "add", f"{gateway(config)}/24", "dev", bridge)
    if drift != "down":
        sh("ip", "link", "set", bridge, "up")
    else:
        sh("ip", "addr", "add", f"{gateway(config)}/24", "dev", bridge)

    (pod,) = add_pods(plugin, config, netns, 1, "drift")
    assert bridge_addresses(bridge) == [f"{gateway(config)}/24"]
    assert "UP" in Path(f"/sys/class/net/{bridge}/operstate").read_text().upper() or \
        "up" in sh("ip", "link", "show", bridge).stdout.decode()
    assert ping(pod[1], gateway(config))
    assert plugin("DEL", config, pod[0], pod[2]).ok


def test_bridge_deleted_behind_our_back(plugin, bridge_network, netns, state_dir) -> None:
    """Someone deleted the bridge while the state says the network is set up: the next ADD rebuilds it."""
    config = bridge_network
    (first,) = add_pods(plugin, config, netns, 1, "gone")
    delete_link(config["bridge"])  # takes the pod's host veth with it
    (second,) = add_pods(plugin, config, netns, 1, "back")
    assert bridge_addresses(config["bridge"]) == [f"{gateway(config)}/24"]
    assert ping(second[1], gateway(config))
    assert plugin("DEL", config, first[0], first[2]).ok
    assert plugin("DEL", config, second[0], second[2]).ok
    assert records(state_dir) == {}


def test_name_taken_by_a_non_bridge(plugin, bridge_network, netns, state_dir) -> None:
    config = bridge_network
    peer = unique("tp")
    sh("ip", "link", "add", config["bridge"], "type", "veth", "peer", "name", peer)
    try:
        name, path = netns.create("dummy")
        before = sh("ip", "-o", "link", "show", config["bridge"]).stdout
        added = plugin("ADD", config, run_id("notabridge"), path)
        assert added.code == 7 and "not a bridge" in added.json["msg"], added
        assert sh("ip", "-o", "link", "show", config["bridge"]).stdout == before
        assert not link_exists(host_ifname(run_id("notabridge"), "eth0"))
        assert records(state_dir) == {}
        assert "eth0" not in sh("ip", "-n", name, "-o", "link").stdout.decode()
    finally:
        delete_link(config["bridge"])


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_removes_exactly_the_others(plugin, bridge_network, netns, state_dir, key) -> None:
    config = bridge_network
    other = dict(config, name=config["name"] + "-b", bridge=config["bridge"][:12] + "gcb",
                 subnet=config["subnet"].replace(".0/24", ".0/25"))
    other["subnet"] = config["subnet"].replace(".0/24", ".128/25")
    config = dict(config, subnet=config["subnet"].replace(".0/24", ".0/25"))
    try:
        pods = add_pods(plugin, config, netns, 5, "gc")
        bystanders = add_pods(plugin, other, netns, 2, "gcother")
        keep = [pods[0], pods[2], pods[4]]
        doomed = [pods[1], pods[3]]
        kept_records = {k: v for k, v in records(state_dir).items()
                        if any(f"/{p[0]}/" in k for p in keep + bystanders)}
        kept_addrs = {p[1]: sh("ip", "-n", p[1], "-o", "addr").stdout for p in keep + bystanders}
        rules = firewall_lines(config) + firewall_lines(other)
        valid = [{"containerID": p[0], "ifname": "eth0"} for p in keep]
        valid.append({"containerID": run_id("never-seen"), "ifname": "eth0"})
        gc = plugin("GC", dict(config, cniVersion="1.1.0", **{key: valid}))
        assert gc.ok, gc

        assert records(state_dir) == kept_records, "GC removed the wrong records"
        for cid, name, _, _ in doomed:
            assert not link_exists(host_ifname(cid, "eth0"))
            assert "eth0" not in sh("ip", "-n", name, "-o", "link").stdout.decode()
        for cid, name, _, _ in keep + bystanders:
            assert link_exists(host_ifname(cid, "eth0"))
            assert sh("ip", "-n", name, "-o", "addr").stdout == kept_addrs[name]
        for _, name, _, _ in keep:
            assert ping(name, config["subnet"].replace(".0/25", ".1"))
        assert firewall_lines(config) + firewall_lines(other) == rules

        # the freed addresses are reusable, the kept ones are not handed out again
        (fresh,) = add_pods(plugin, config, netns, 1, "gcnew")
        assert fresh[3] not in {p[3] for p in keep}
        again = plugin("GC", dict(config, cniVersion="1.1.0", **{key: valid}))  # idempotent
        assert again.ok, again
        assert not link_exists(host_ifname(fresh[0], "eth0"))
        for cid, _, path, _ in pods + [fresh]:
            assert plugin("DEL", config, cid, path).ok
        for cid, _, path, _ in bystanders:
            assert plugin("DEL", other, cid, path).ok
        assert records(state_dir) == {}
    finally:
        for conf in (config, other):
            teardown_bridge_network(conf, state_dir)


@pytest.mark.parametrize("version,code", [("1.1.0", None), ("1.0.0", 1), ("0.4.0", 1), ("0.3.1", 1)])
def test_status_needs_110(plugin, bridge_network, netns, state_dir, version, code) -> None:
    result = plugin("STATUS", dict(bridge_network, cniVersion=version))
    if code is None:
        assert result.ok and result.stdout == "", result
    else:
        assert result.code == code and "1.1.0" in result.json["msg"], result
    assert records(state_dir) == {}


def test_status_on_a_wiped_node(plugin, bridge_network, state_dir) -> None:
    """STATUS right after boot (no state dir yet) must report ready, or containerd marks the node NotReady."""
    wipe(state_dir)
    result = plugin("STATUS", dict(bridge_network, cniVersion="1.1.0"))
    assert result.ok, result


def test_gc_with_a_record_that_names_no_link(plugin, bridge_network, netns, state_dir) -> None:
    """A record without a host link name (half-written by an older version, or edited by hand)
    must not make GC try to delete '/sys/class/net/' itself and fail the whole GC."""
    (pod,) = add_pods(plugin, bridge_network, netns, 1, "gcodd")
    path = state_dir / "attachments.json"
    state = json.loads(path.read_bytes())
    key = f"{bridge_network['name']}/{run_id('odd-container')}/eth0"
    state["attachments"][key] = dict(next(iter(state["attachments"].values())),
                                     container_id=run_id("odd-container"), host_ifname="", ips=[])
    path.write_text(json.dumps(state))
    gc = plugin("GC", dict(bridge_network, cniVersion="1.1.0",
                           **{"cni.dev/valid-attachments": [{"containerID": pod[0], "ifname": "eth0"}]}))
    assert gc.ok, gc
    assert list(records(state_dir)) == [f"{bridge_network['name']}/{pod[0]}/eth0"]
    assert link_exists(host_ifname(pod[0], "eth0"))
    assert plugin("DEL", bridge_network, pod[0], pod[2]).ok


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"version": 1}', b"[]"])
def test_corrupt_state_file_is_reported_and_touches_nothing(plugin, bridge_network, netns, state_dir,
                                                             content) -> None:
    """Writes are atomic, so only outside interference corrupts the file: every command then
    names the file (code 5) instead of guessing, and ADD plumbs nothing."""
    name, path = netns.create("corrupt")
    state_file = state_dir / "attachments.json"
    state_file.write_bytes(content)
    try:
        added = plugin("ADD", bridge_network, run_id("corruptpod"), path)
        assert added.code == 5 and "attachments.json" in added.json["msg"], added
        assert not added.json["msg"].startswith("unexpected failure"), added
        assert "Traceback" not in added.stdout + added.stderr
        assert not link_exists(host_ifname(run_id("corruptpod"), "eth0"))
        assert not link_exists(bridge_network["bridge"])
        assert "eth0" not in sh("ip", "-n", name, "-o", "link").stdout.decode()
        assert state_file.read_bytes() == content
    finally:
        state_file.unlink()  # the fixture's teardown needs a readable state


@pytest.mark.parametrize("where", ["a-file", "missing-parent", "read-only"])
def test_unusable_state_dir(plugin, bridge_network, netns, state_dir, tmp_path, where) -> None:
    """A state dir that cannot be used: ADD says which path and why (code 5), STATUS says the
    node cannot serve ADD (code 50); nothing is plumbed."""
    if where == "a-file":
        target = tmp_path / "file"
        target.write_text("x")
    elif where == "missing-parent":
        target = tmp_path / "no" / "such" / "dir"
    else:
        target = tmp_path / "ro"
        target.mkdir()
        sh("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target))
    try:
        name, path = netns.create("nostate")
        extra = {"SMARTER_CNI_STATE_DIR": str(target)}
        added = plugin("ADD", bridge_network, run_id("nostatepod"), path, extra=extra)
        assert added.code == 5 and str(target) in added.json["msg"], added
        assert not added.json["msg"].startswith("unexpected failure"), added
        assert not link_exists(host_ifname(run_id("nostatepod"), "eth0"))
        assert "eth0" not in sh("ip", "-n", name, "-o", "link").stdout.decode()
        status = plugin("STATUS", dict(bridge_network, cniVersion="1.1.0"), extra=extra)
        assert status.code == 50, status
    finally:
        if where == "read-only":
            sh("umount", str(target), check=False)
