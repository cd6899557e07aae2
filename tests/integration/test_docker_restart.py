"""What a dockerd restart does to docker-mode pods, on a dockerd of the test's own.

Without live-restore dockerd stops every container when it stops: the pods
are gone (kubelet/cri-dockerd will DEL them and make new sandboxes), the
network survives, and DEL of the old pods succeeds during and after the
outage. With live-restore the pods keep running, stay connected and keep
their names.
"""

from __future__ import annotations

import json
import uuid

import pytest

from helpers.dockerd import (
    Sandboxes,
    build_busybox_image,
    free_subnet,
    network_config,
    remove_network,
    start_private,
    stop_private,
)
from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytestmark = [pytest.mark.root, pytest.mark.docker]

FAST_STOP = ("--stop-timeout", "1")  # `sleep` as PID 1 ignores SIGTERM


class OwnDockerd:
    """A private dockerd this test may stop and start; everything removed at the end."""

    def __init__(self, extra: tuple[str, ...]) -> None:
        self.daemon = start_private(extra=extra)
        self.root = self.daemon.root
        self.extra = extra
        self.image = build_busybox_image(self.daemon, f"scni-restart/busybox:{uuid.uuid4().hex[:8]}")
        self.sandboxes = Sandboxes(self.daemon, self.image)
        self.network = f"scni-{uuid.uuid4().hex[:10]}"
        self.config = network_config(self.network, free_subnet(self.daemon), self.daemon.socket)
        docker_mode.ensure_network(parse_netconf(self.config))

    def stop(self) -> None:
        stop_private(self.daemon, remove_root=False)

    def start(self) -> None:
        self.daemon = start_private(extra=self.extra, root=self.root)
        self.sandboxes.daemon = self.daemon

    def cleanup(self) -> None:
        try:
            if not self.daemon.pid or self.daemon._proc.poll() is not None:
                self.start()
            self.sandboxes.cleanup()
            remove_network(self.daemon, self.network)  # dockerd leaves bridges behind
        finally:
            stop_private(self.daemon, remove_root=True)


@pytest.fixture
def own_dockerd(request):
    own = OwnDockerd(tuple(request.param))
    try:
        yield own
    finally:
        own.cleanup()


def records(state_dir) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_text())["attachments"] if path.exists() else {}


@pytest.mark.parametrize("own_dockerd", [()], indirect=True)
def test_restart_without_live_restore(plugin, own_dockerd, state_dir):
    own, config = own_dockerd, own_dockerd.config
    a = own.sandboxes.create("old-a", extra=FAST_STOP)
    b = own.sandboxes.create("old-b", extra=FAST_STOP)
    assert plugin("ADD", config, a.id, a.netns, args=pod_args("old-a")).ok
    assert plugin("ADD", config, b.id, b.netns, args=pod_args("old-b")).ok

    own.stop()  # dockerd stops the sandboxes with it
    status = plugin("STATUS", dict(config, cniVersion="1.1.0"), ifname="")
    assert status.code == 50, status
    out = plugin("DEL", config, a.id, a.netns)  # dockerd down, sandbox gone: DEL succeeds
    assert out.ok, out
    assert f"{config['name']}/{a.id}/eth0" not in records(state_dir)

    own.start()
    assert plugin("STATUS", dict(config, cniVersion="1.1.0"), ifname="").ok
    assert own.daemon.network_inspect(own.network) is not None  # the network survives
    check = plugin("CHECK", config, b.id, b.netns, args=pod_args("old-b"))
    assert check.code in (3, 4, 103), check  # 4: the protocol layer sees the netns is gone
    out = plugin("DEL", config, b.id, b.netns)
    assert out.ok, out
    assert records(state_dir) == {}

    # New sandboxes (what cri-dockerd makes next) work as before.
    c = own.sandboxes.create("new-c")
    d = own.sandboxes.create("new-d")
    out = plugin("ADD", config, c.id, c.netns, args=pod_args("new-c"))
    assert out.ok, out
    assert plugin("ADD", config, d.id, d.netns, args=pod_args("new-d")).ok
    proc = d.exec("nslookup", "new-c", "127.0.0.11", timeout=20)
    assert out.json["ips"][0]["address"].split("/")[0] in proc.stdout.decode()


@pytest.mark.parametrize("own_dockerd", [("--live-restore",)], indirect=True)
def test_restart_with_live_restore_keeps_pods(plugin, own_dockerd, state_dir):
    own, config = own_dockerd, own_dockerd.config
    a = own.sandboxes.create("live-a")
    b = own.sandboxes.create("live-b")
    added = plugin("ADD", config, a.id, a.netns, args=pod_args("live-a"))
    assert added.ok, added
    assert plugin("ADD", config, b.id, b.netns, args=pod_args("live-b")).ok

    own.stop()
    own.start()
    check = plugin("CHECK", dict(config, prevResult=added.json), a.id, a.netns,
                   args=pod_args("live-a"))
    assert check.ok, check
    proc = b.exec("nslookup", "live-a", "127.0.0.11", timeout=20)
    assert added.json["ips"][0]["address"].split("/")[0] in proc.stdout.decode(), proc
    assert plugin("DEL", config, a.id, a.netns).ok
    assert plugin("DEL", config, b.id, b.netns).ok
    assert records(state_dir) == {}
