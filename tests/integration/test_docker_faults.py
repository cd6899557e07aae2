"""A dockerd that goes slow half-way through ADD: nothing may be left half-done.

A small proxy sits between the plugin and the real dockerd socket. It
forwards every request, but after dockerd has carried out a chosen call (the
network connect) it holds the answer back, as a daemon wedged at the worst
moment would. The plugin must give up with code 11 in its time budget and
undo the connect itself. If even the undo hangs, it must leave a record
that DEL then cleans up.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class WithholdingProxy:
    """Forward requests to dockerd; after the first one matching `trigger`, hold answers.

    hold: "trigger" holds only that answer; "all" also holds
    every later one (a daemon that stays wedged).
    """

    def __init__(self, path: str, upstream: str, trigger: bytes, hold: str) -> None:
        self.upstream = upstream
        self.trigger = trigger
        self.hold = hold
        self.tripped = False
        self.held: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        request = _read_request(conn)
        if self.tripped and self.hold == "all":
            self.held.append(conn)
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
            up.settimeout(30)
            up.connect(self.upstream)
            up.sendall(request)
            answer = b""
            while chunk := up.recv(65536):
                answer += chunk
        first_line = request.split(b"\r\n", 1)[0]
        if self.trigger in first_line and not self.tripped:
            self.tripped = True
            self.held.append(conn)  # dockerd did it; the plugin never hears so
            return
        conn.sendall(answer)
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def net(docker_network):
    docker_mode.ensure_network(parse_netconf(docker_network))
    return docker_network


@pytest.fixture
def proxy(dockerd, tmp_path):
    made = []

    def start(trigger: bytes, hold: str) -> str:
        path = str(tmp_path / f"proxy{len(made)}.sock")
        made.append(WithholdingProxy(path, dockerd.socket, trigger, hold))
        return path

    try:
        yield start
    finally:
        for item in made:
            item.close()


def records(state_dir) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_text())["attachments"] if path.exists() else {}


def test_connect_answer_lost_is_undone(plugin, net, sandboxes, dockerd, proxy, state_dir):
    pod = sandboxes.create("slow-connect")
    config = dict(net, dockerSocket=proxy(b"/connect", "trigger"), dockerTimeout=2, dockerConnectTimeout=2)
    start = time.monotonic()
    out = plugin("ADD", config, pod.id, pod.netns, args=pod_args("slow-connect"))
    elapsed = time.monotonic() - start
    assert out.code == 11, out
    assert elapsed < 2 + docker_mode.CLEANUP_TIMEOUT + 1.5
    # dockerd did connect; the plugin's undo disconnected it again.
    endpoint = pod.networks().get(net["network"]) or {}
    assert not endpoint.get("IPAddress"), endpoint
    assert records(state_dir) == {}


def test_wedged_for_good_leaves_a_record_that_del_cleans(plugin, net, sandboxes, dockerd,
                                                          proxy, state_dir):
    pod = sandboxes.create("wedged-for-good")
    config = dict(net, dockerSocket=proxy(b"/connect", "all"), dockerTimeout=2, dockerConnectTimeout=2)
    out = plugin("ADD", config, pod.id, pod.netns, args=pod_args("wedged-for-good"))
    assert out.code == 11, out
    # Connected by dockerd, unknown to the plugin: kept as a not-ready record.
    assert pod.networks()[net["network"]]["IPAddress"]
    (record,) = records(state_dir).values()
    assert record["ready"] is False and record["docker_id"] == pod.id
    # Not served as a name while not ready; the runtime's DEL (dockerd healthy again)
    # removes both the connection and the record.
    out = plugin("DEL", net, pod.id, pod.netns)
    assert out.ok, out
    assert not (pod.networks().get(net["network"]) or {}).get("IPAddress")
    assert records(state_dir) == {}
