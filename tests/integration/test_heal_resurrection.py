"""No resurrected records: a DEL or GC between ADD's two store transactions wins.

The plugin is the real executable, paused by the test hook
SMARTER_CNI_TEST_PAUSE_FIFO exactly between its two transactions (the pod is
plumbed, the record says "ready": false). The test runs a real DEL or GC
there, then lets the ADD finish. The ADD must fail with code 3 (the runtime
needs no clean-up DEL), and leave no record, no link, no address in use
and, with host-local, no IPAM allocation.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import link_exists, run_id, unique  # noqa: E402
from helpers.plugin import SRC, Invocation, pod_args  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane import PAUSE_ENV  # noqa: E402
from smarter_cni.dataplane.names import host_ifname  # noqa: E402

pytestmark = pytest.mark.root


class PausedAdd:
    """An ADD run in the background that stops between its two transactions."""

    def __init__(self, plugin, config: dict, container: str, netns: str, fifo: Path) -> None:
        os.mkfifo(fifo, 0o600)
        self.fifo = fifo
        env = plugin.env("ADD", container, netns, args=pod_args(f"pod-{container[-6:]}"),
                         extra={PAUSE_ENV: str(fifo)})
        self.result: Invocation | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "result", plugin.exec("smarter-cni", env, config)),
            daemon=True)
        self.thread.start()
        self.writer = self._wait_paused()

    def _wait_paused(self, timeout: float = 30.0) -> int:
        """Opening the FIFO for writing succeeds once the plugin has opened it for reading."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
            if not self.thread.is_alive():
                raise AssertionError(f"ADD ended before the pause: {self.result!r}")
            time.sleep(0.005)
        raise AssertionError("the ADD never reached the pause between its transactions")

    def finish(self) -> Invocation:
        os.close(self.writer)  # EOF: the plugin goes on to its second transaction
        self.thread.join(60)
        assert self.result is not None
        return self.result


def _state(state_dir: Path) -> dict:
    return json.loads((state_dir / "attachments.json").read_text())


def _host_local_ips(data_dir: Path) -> list[str]:
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name[0].isdigit() and path.name.count(".") == 3:
            found.append(path.name)
    return found


@pytest.fixture(params=["builtin", "host-local"])
def network(request, bridge_network, tmp_path):
    if request.param == "host-local":
        if not Path("/usr/lib/cni/host-local").exists():
            pytest.skip("host-local (containernetworking-plugins) is not installed")
        data = tmp_path / "host-local"
        return dict(bridge_network, ipam={
            "type": "host-local", "dataDir": str(data),
            "ranges": [[{"subnet": bridge_network["subnet"]}]]}), data
    return bridge_network, None


@pytest.mark.parametrize("between", ["DEL", "DEL-no-netns", "GC"])
def test_a_del_or_gc_between_adds_transactions_is_not_undone(plugin, network, netns, state_dir,
                                                             tmp_path, between):
    config, host_local = network
    # a resident pod so the GC has something valid to keep
    _, resident_path = netns.create()
    resident = plugin("ADD", config, run_id("resident-1"), resident_path, args=pod_args("resident"))
    assert resident.ok, resident
    ns, path = netns.create()
    container = unique("paused-", 15)
    paused = PausedAdd(plugin, config, container, path, tmp_path / "pause")
    try:
        key = f"{config['name']}/{container}/eth0"
        record = _state(state_dir)["attachments"][key]
        assert record["ready"] is False  # really between the two transactions
        assert link_exists(host_ifname(container, "eth0"))  # already plumbed
        if between == "GC":
            gc = dict(config, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
                {"containerID": run_id("resident-1"), "ifname": "eth0"}]})
            done = plugin("GC", gc)
        else:
            done = plugin("DEL", config, container, "" if between == "DEL-no-netns" else path)
        assert done.ok, done
        assert key not in _state(state_dir)["attachments"]
    finally:
        added = paused.finish()

    assert added.code == 3, added
    assert "deleted (DEL or GC) while its ADD was running" in added.json["msg"]
    state = _state(state_dir)
    assert key not in state["attachments"], "the record was resurrected"
    assert not link_exists(host_ifname(container, "eth0"))
    inside = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True,
                            text=True).stdout
    assert "eth0" not in inside
    used = [ip for r in state["attachments"].values() for ip in r.get("ips") or []]
    assert used == [resident.json["ips"][0]["address"]]  # the paused pod's address is free
    if host_local is not None:
        assert _host_local_ips(host_local) == [resident.json["ips"][0]["address"].split("/")[0]]
    # the resident is untouched and the network still takes new pods
    assert _state(state_dir)["attachments"][f"{config['name']}/{run_id('resident-1')}/eth0"]["ready"]
    _, again = netns.create()
    readded = plugin("ADD", config, container, again, args=pod_args("again"))
    assert readded.ok, readded
    assert plugin("DEL", config, container, again).ok
    assert plugin("DEL", config, run_id("resident-1"), resident_path).ok


def test_a_paused_add_with_nothing_in_between_completes(plugin, bridge_network, netns, state_dir,
                                                        tmp_path):
    """The control: the hook alone changes nothing."""
    _, path = netns.create()
    paused = PausedAdd(plugin, bridge_network, run_id("lonely-1"), path, tmp_path / "pause")
    added = paused.finish()
    assert added.ok, added
    key = f"{bridge_network['name']}/{run_id('lonely-1')}/eth0"
    assert _state(state_dir)["attachments"][key]["ready"] is True
    assert plugin("DEL", bridge_network, run_id("lonely-1"), path).ok
