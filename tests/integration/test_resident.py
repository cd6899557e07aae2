"""The thin client and the resident server (issue 16): the work done without an exec,
and every way the server can be missing, slow or killed, with the client falling back.

Root only (network namespaces, bridges). The server runs as the DNS service starts it
(tests/helpers/resident.py), on the test's own state dir.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.netns import link_exists, unique
from helpers.plugin import SRC, pod_args
from helpers.resident import SOCKET, running_server, start_server, stop_server

sys.path.insert(0, str(SRC))
from smarter_cni import client, launcher, resident_request  # noqa: E402
from smarter_cni.dataplane import PAUSE_BEFORE_PLUMB_ENV, PAUSE_ENV  # noqa: E402
from smarter_cni.dataplane.names import host_ifname  # noqa: E402

# Container ids unique to this run: host veth names derive from them and are shared by
# everything on the host, other test runs included.
RUN = unique("rs")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, bridges)")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """These tests start their own servers: never the one SMARTER_CNI_TEST_RESIDENT=1 adds."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def _served(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("resident: ") and
            "serving" not in line and "replacing" not in line]


def _state(state_dir: Path) -> dict:
    path = state_dir / "attachments.json"
    return json.loads(path.read_text()) if path.exists() else {"attachments": {}}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_add_check_del_go_through_the_server(plugin, bridge_network, netns, state_dir, tmp_path):
    log = tmp_path / "server.log"
    with running_server(state_dir, log):
        mode = os.stat(state_dir / SOCKET).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, f"{RUN}-r", path, args=pod_args("web"))
        assert added.ok, added
        address = added.json["ips"][0]["address"]
        record = next(iter(_state(state_dir)["attachments"].values()))
        assert record["ready"] is True and record["ips"] == [address]  # readable by DNS, ready
        out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr", "show", "eth0"],
                             capture_output=True, text=True).stdout
        assert address in out
        checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), f"{RUN}-r", path)
        assert checked.ok and checked.stdout == "", checked
        deleted = plugin("DEL", dict(bridge_network, prevResult=added.json), f"{RUN}-r", path)
        assert deleted.ok and deleted.stdout == "", deleted
        assert not link_exists(added.json["interfaces"][0]["name"])
        bad = plugin("ADD", "{not json", f"{RUN}-x", path)
        assert bad.returncode == 1 and bad.code == 6, bad  # errors come back as the plugin's
    served = _served(log)
    assert [line.split()[1] for line in served] == ["ADD", "CHECK", "DEL", "ADD"], served
    assert not (state_dir / SOCKET).exists()  # a stopped server takes its socket away


def test_a_pod_added_again_right_after_its_del_through_the_server(plugin, bridge_network,
                                                                   netns, state_dir, tmp_path):
    """DEL replies once the veth is unlisted, while the kernel still frees it: the same
    pod added again at once gets the same host veth name, and every DEL leaves nothing."""
    log = tmp_path / "server.log"
    with running_server(state_dir, log):
        ns, path = netns.create()
        for _ in range(5):
            added = plugin("ADD", bridge_network, f"{RUN}-again", path)
            assert added.ok, added
            host = added.json["interfaces"][0]["name"]
            deleted = plugin("DEL", bridge_network, f"{RUN}-again", path)
            assert deleted.ok, deleted
            assert not link_exists(host)
            pod = subprocess.run(["ip", "-n", ns, "link", "show", "eth0"], capture_output=True)
            assert pod.returncode != 0, "the pod's eth0 outlived its DEL"
            assert _state(state_dir)["attachments"] == {}
    assert [line.split()[1] for line in _served(log)] == ["ADD", "DEL"] * 5


def test_a_missing_refusing_or_silent_server_means_the_client_works_alone(
        plugin, bridge_network, netns, state_dir):
    _, path = netns.create()
    # missing socket
    added = plugin("ADD", bridge_network, f"{RUN}-1", path)
    assert added.ok, added
    assert plugin("DEL", bridge_network, f"{RUN}-1", path).ok
    # a stale socket file: connect is refused
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / SOCKET))
    stale.close()
    added = plugin("ADD", bridge_network, f"{RUN}-2", path)
    assert added.ok, added
    assert plugin("DEL", bridge_network, f"{RUN}-2", path).ok
    # a server that accepts connections but never answers (hung): the ack times out
    os.unlink(state_dir / SOCKET)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(state_dir / SOCKET))
    silent.listen(16)
    try:
        started = time.monotonic()
        added = plugin("ADD", bridge_network, f"{RUN}-3", path)
        took = time.monotonic() - started
        assert added.ok, added
        deleted = plugin("DEL", bridge_network, f"{RUN}-3", path)
        assert deleted.ok, deleted
        assert took < 5, took  # the ack timeout, then the usual exec; never a long wait
    finally:
        silent.close()
    assert _state(state_dir)["attachments"] == {}


def test_a_request_the_client_gave_up_on_is_never_run(bridge_network, netns, state_dir, tmp_path,
                                                      bin_dir):
    """No "go" after the ack: the server drops the request, so the work is done once."""
    _, path = netns.create()
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": f"{RUN}-g".encode(), b"CNI_NETNS": path.encode(),
           b"CNI_IFNAME": b"eth0", b"CNI_PATH": str(bin_dir).encode(),
           b"SMARTER_CNI_STATE_DIR": str(state_dir).encode(), b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin"}
    log = tmp_path / "server.log"
    with running_server(state_dir, log):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(state_dir / SOCKET))
        sock.sendall(client.encode_request(env, json.dumps(bridge_network).encode()))
        assert sock.recv(1) == b"A"
        sock.close()  # as a client whose ack came too late
        time.sleep(0.5)
        # the same request with "go" is served
        answer = client.ask_resident(env, json.dumps(bridge_network).encode(), ack_timeout=5)
        assert answer is not None and answer[0] == 0, answer
        state = _state(state_dir)["attachments"]
        assert len(state) == 1, state
        del_env = {**env, b"CNI_COMMAND": b"DEL"}
        assert client.ask_resident(del_env, json.dumps(bridge_network).encode(), ack_timeout=5)[0] == 0
    assert [line.split()[1] for line in _served(log)] == ["ADD", "DEL"]


def test_sixteen_concurrent_adds_and_dels_through_the_server(plugin, bridge_network, netns,
                                                             state_dir, tmp_path):
    log = tmp_path / "server.log"
    pods = [netns.create() for _ in range(16)]
    with running_server(state_dir, log):
        with ThreadPoolExecutor(16) as pool:
            added = list(pool.map(lambda i: plugin("ADD", bridge_network, f"{RUN}-{i}", pods[i][1]),
                                  range(16)))
        assert all(a.ok for a in added), [a for a in added if not a.ok]
        addresses = [a.json["ips"][0]["address"] for a in added]
        assert len(set(addresses)) == 16
        with ThreadPoolExecutor(16) as pool:
            deleted = list(pool.map(lambda i: plugin("DEL", bridge_network, f"{RUN}-{i}", pods[i][1]),
                                    range(16)))
        assert all(d.ok for d in deleted), [d for d in deleted if not d.ok]
    assert _state(state_dir)["attachments"] == {}
    assert not any(link_exists(a.json["interfaces"][0]["name"]) for a in added)
    assert _served(log)  # some went through the server (under load a late ack falls back)


def _paused_add(plugin, config: dict, container: str, path: str,
                fifo: Path) -> tuple[subprocess.Popen, int]:
    """An ADD exec that pauses between its two transactions on `fifo`: (the process, our
    end of the FIFO once the ADD waits there; closing it lets the ADD go on)."""
    os.mkfifo(fifo, 0o600)
    env = plugin.env("ADD", container, path, extra={PAUSE_ENV: str(fifo),
                                                    # a loaded machine must not send it local
                                                    "SMARTER_CNI_CLIENT_ACK_TIMEOUT": "5"})
    proc = subprocess.Popen([str(plugin.bin_dir / "smarter-cni")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    return proc, _wait_paused(fifo)


def _holds(pid: int, target: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(target):
                return True
        except OSError:
            continue
    return False


def _busy_workers(server_pid: int, fifo: Path) -> list[int]:
    """The server's workers that hold `fifo` open (idle ones wait in accept())."""
    return [pid for pid in _children(server_pid) if _holds(pid, fifo)]


def _finish(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    proc.wait(timeout=60)
    return proc.stdout.read(), proc.stderr.read()


def _wait_paused(fifo: Path, timeout: float = 30) -> int:
    """Our end of the FIFO the paused ADD reads. The open succeeds as soon as the reader
    waits in its own open(), before that open returns: the reader's fd may show up in
    /proc a moment later (callers looking for it wait with _wait_for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    raise AssertionError("the ADD never reached its pause")


def test_a_killed_server_finishes_the_adds_it_started(plugin, bridge_network, netns, state_dir,
                                                     tmp_path):
    _, path = netns.create()
    server = start_server(state_dir, tmp_path / "server.log", mode="fork")
    try:
        proc, writer = _paused_add(plugin, bridge_network, f"{RUN}-k", path, tmp_path / "fifo")
        assert _wait_for(lambda: _busy_workers(server.pid, tmp_path / "fifo"), timeout=5)
        busy = _busy_workers(server.pid, tmp_path / "fifo")
        idle = [pid for pid in _children(server.pid) if pid not in busy]
        assert idle  # workers wait in accept() before any request comes
        stop_server(server, signal.SIGKILL)  # mid-ADD, between its two transactions
        # idle workers of a dead server leave (they notice within a second)
        assert _wait_for(lambda: not any(os.path.exists(f"/proc/{pid}/cmdline") and
                                         Path(f"/proc/{pid}/cmdline").read_bytes() for pid in idle),
                         timeout=5), idle
        os.close(writer)
        out, err = _finish(proc)
        assert proc.returncode == 0, (out, err)
        result = json.loads(out)
        record = next(iter(_state(state_dir)["attachments"].values()))
        assert record["ready"] is True and record["ips"] == [result["ips"][0]["address"]]
        # a restarted server replaces the dead one's socket and serves the DEL
        server = start_server(state_dir, tmp_path / "server.log")
        assert plugin("DEL", bridge_network, f"{RUN}-k", path).ok
        assert _state(state_dir)["attachments"] == {}
    finally:
        stop_server(server)


def test_a_worker_killed_mid_add_leaves_nothing_after_del(plugin, bridge_network, netns, state_dir,
                                                         tmp_path):
    """The client sees the connection end without a reply and does the ADD itself: the
    half-made attachment answers as a killed plugin's does today, and DEL clears it."""
    _, path = netns.create()
    with running_server(state_dir, tmp_path / "server.log", mode="fork") as server:
        proc, writer = _paused_add(plugin, bridge_network, f"{RUN}-w", path, tmp_path / "fifo")
        assert _wait_for(lambda: _busy_workers(server.pid, tmp_path / "fifo"), timeout=5)
        workers = _busy_workers(server.pid, tmp_path / "fifo")
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)  # the server's own child, by its PID
        out, err = _finish(proc)
        os.close(writer)
        answer = json.loads(out)
        # the fallback ran and met the half-made attachment as a retried ADD after a killed
        # plugin does today: "exists, DEL it first" (code 101); the runtime's DEL clears it
        assert proc.returncode == 1 and answer["code"] == 101, answer
        assert "DEL it" in answer["msg"]
        assert plugin("DEL", bridge_network, f"{RUN}-w", path).ok
        assert _state(state_dir)["attachments"] == {}
        assert server.poll() is None  # the server itself carries on


def _dns_service(tmp_path: Path, state_dir: Path, config: dict, extra_env: dict | None = None):
    from test_dns_helpers import DnsService, unique_loopback, write_conflist

    conf = write_conflist(tmp_path, subnet=config["subnet"], name=config["name"],
                          bridge=config["bridge"])
    service = DnsService(tmp_path, unique_loopback(), state_dir, conf, extra=[
        "--no-address-setup", "--verbose", "--resolv-conf", str(tmp_path / "empty-resolv.conf")])
    (tmp_path / "empty-resolv.conf").write_text("")
    return service


def _wait_for(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_the_dns_service_runs_the_server_restarts_it_and_names_resolve_at_adds_return(
        plugin, bridge_network, netns, state_dir, tmp_path, monkeypatch):
    from test_dns_helpers import DIG, dig, is_local

    if not os.path.exists(DIG):
        pytest.skip("needs dig (dnsutils)")
    monkeypatch.setenv("SMARTER_CNI_RESIDENT", "1")  # off by default; the service inherits it
    service = _dns_service(tmp_path, state_dir, bridge_network)
    sock = state_dir / SOCKET
    try:
        service.start()
        assert is_local(service.listen)
        assert _wait_for(sock.exists)
        ns, path = netns.create()
        added = plugin("ADD", bridge_network, f"{RUN}-d", path, args=pod_args("resident-web"))
        assert added.ok, added
        answer = dig(service.listen, "resident-web.default.svc.cluster.local")
        assert answer.values() == [added.json["ips"][0]["address"].split("/")[0]], answer.stdout
        assert _wait_for(lambda: "resident: ADD" in service.log_path.read_text())
        # the server dies: the client works alone meanwhile, the service starts a new one
        servers = [pid for pid in _children(service.pid)
                   if b"smarter_cni.resident" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(servers) == 1, servers
        old_inode = sock.stat().st_ino
        os.kill(servers[0], signal.SIGKILL)  # the service's child, found by its PID
        deleted = plugin("DEL", bridge_network, f"{RUN}-d", path)
        assert deleted.ok, deleted
        assert _wait_for(lambda: sock.exists() and sock.stat().st_ino != old_inode)
        added = plugin("ADD", bridge_network, f"{RUN}-e", path, args=pod_args("resident-two"))
        assert added.ok, added
        assert dig(service.listen, "resident-two.default.svc.cluster.local").values() == [
            added.json["ips"][0]["address"].split("/")[0]]
        assert plugin("DEL", bridge_network, f"{RUN}-e", path).ok
        assert _wait_for(lambda: "resident: DEL" in service.log_path.read_text())
    finally:
        service.stop()
    assert not sock.exists()  # stopped with the service
    assert _state(state_dir)["attachments"] == {}


ENDS_LIKE_A_WORKER = """
import posix, signal, sys
sys.path.insert(0, {src!r})
from smarter_cni import resident_request
from smarter_cni.client import read_all, run_local
# SIGUSR1 here does what SIGIO does in a pool worker whose client is gone
signal.signal(signal.SIGUSR1, lambda *_: resident_request.leave("client gone mid-request"))
posix._exit(run_local(read_all(0)))
"""


def test_a_worker_whose_client_died_gives_back_a_link_made_after_the_del(
        plugin, bridge_network, netns, state_dir, tmp_path):
    """A pool worker can go on for a moment after its client died (it learns of it by a
    signal) while the runtime's DEL already runs; a killed plugin's process cannot. Here
    exactly that order: the ADD records its attachment and stops, the DEL runs to the
    end, the ADD makes the veth and stops again, then ends the way such a worker ends
    (resident_request.leave from a signal handler). The veth must not stay behind."""
    _, path = netns.create()
    before, between = tmp_path / "before-plumb", tmp_path / "between"
    os.mkfifo(before, 0o600)
    os.mkfifo(between, 0o600)
    cid = f"{RUN}-gone"
    env = plugin.env("ADD", cid, path, extra={PAUSE_BEFORE_PLUMB_ENV: str(before),
                                               PAUSE_ENV: str(between)})
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", ENDS_LIKE_A_WORKER.format(src=str(SRC))],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    fds = []
    try:
        proc.stdin.write(json.dumps(bridge_network).encode())
        proc.stdin.close()
        fds.append(_wait_paused(before))
        assert [r["ready"] for r in _state(state_dir)["attachments"].values()] == [False]
        deleted = plugin("DEL", bridge_network, cid, path)
        assert deleted.ok, deleted
        assert _state(state_dir)["attachments"] == {}
        host = host_ifname(cid, "eth0")
        assert not link_exists(host)
        os.close(fds.pop())  # the ADD goes on: its veth comes after the DEL
        fds.append(_wait_paused(between))
        assert _wait_for(lambda: _holds(proc.pid, between))
        assert link_exists(host), "the ADD did not make its veth after the DEL"
        proc.send_signal(signal.SIGUSR1)  # our own child, by its PID
        _, err = _finish(proc)
        assert proc.returncode == resident_request.LEFT_CODE, err
        assert b"client gone mid-request" in err
        assert not link_exists(host), "a veth made after the DEL outlived its worker"
        assert _state(state_dir)["attachments"] == {}
    finally:
        for fd in fds:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()  # our own child, by its PID
            proc.wait(10)


def test_a_killed_client_ends_its_worker_and_del_leaves_nothing(plugin, bridge_network, netns,
                                                              state_dir, tmp_path):
    """As with the plugin's own process: kill the exec and its work stops there."""
    _, path = netns.create()
    with running_server(state_dir, tmp_path / "server.log", mode="fork") as server:
        proc, writer = _paused_add(plugin, bridge_network, f"{RUN}-c", path, tmp_path / "fifo")
        assert _wait_for(lambda: len(_busy_workers(server.pid, tmp_path / "fifo")) == 1, timeout=5)
        proc.kill()  # our own child, by its PID
        proc.wait(10)
        assert _wait_for(lambda: not _busy_workers(server.pid, tmp_path / "fifo"), timeout=5), \
            "worker outlived its client"
        os.close(writer)
        record = next(iter(_state(state_dir)["attachments"].values()))
        assert record["ready"] is False  # stopped between the transactions, as a killed plugin
        assert plugin("DEL", bridge_network, f"{RUN}-c", path).ok
        assert _state(state_dir)["attachments"] == {}
        assert not link_exists(record["host_ifname"])


def test_the_dns_service_runs_a_warm_server_by_default_and_0_turns_it_off(
        bridge_network, state_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SMARTER_CNI_RESIDENT", raising=False)
    monkeypatch.delenv("SMARTER_CNI_RESIDENT_MODE", raising=False)
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    service = _dns_service(tmp_path / "on", state_dir, bridge_network)
    try:
        service.start()
        assert _wait_for((state_dir / SOCKET).exists)
        servers = [pid for pid in _children(service.pid)
                   if b"smarter_cni.resident" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(servers) == 1, servers
        assert _wait_for(lambda: len(_children(servers[0])) == 1)  # warm: one spare worker
    finally:
        service.stop()
    assert not (state_dir / SOCKET).exists()
    monkeypatch.setenv("SMARTER_CNI_RESIDENT", "0")
    service = _dns_service(tmp_path / "off", state_dir, bridge_network)
    try:
        service.start()
        time.sleep(0.5)
        assert not (state_dir / SOCKET).exists()
        assert not [pid for pid in _children(service.pid)
                    if b"smarter_cni.resident" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    finally:
        service.stop()


# --- warm mode: a pool of forked workers, each serving many requests one at a time ------


def test_warm_a_killed_client_ends_its_worker_and_del_leaves_nothing(
        plugin, bridge_network, netns, state_dir, tmp_path):
    """The worker stops the ADD where the killed plugin would have (it leaves at once),
    so the runtime's DEL never races it; the pool forks a fresh worker and serves on."""
    _, path = netns.create()
    log = tmp_path / "server.log"
    with running_server(state_dir, log, mode="warm") as server:
        inode = (state_dir / SOCKET).stat().st_ino
        proc, writer = _paused_add(plugin, bridge_network, f"{RUN}-wc", path, tmp_path / "fifo")
        # a warm worker runs the ADD (its open of the FIFO returns just after ours)
        assert _wait_for(lambda: _busy_workers(server.pid, tmp_path / "fifo"), timeout=5)
        worker = _busy_workers(server.pid, tmp_path / "fifo")[0]
        assert not _holds(server.pid, tmp_path / "fifo")  # the server itself runs no request
        proc.kill()  # our own child, by its PID
        proc.wait(10)
        assert _wait_for(lambda: worker not in _children(server.pid), timeout=10)
        os.close(writer)
        assert server.poll() is None and (state_dir / SOCKET).stat().st_ino == inode
        assert "client gone" in log.read_text()
        record = next(iter(_state(state_dir)["attachments"].values()))
        assert record["ready"] is False  # stopped between the transactions, as a killed plugin
        assert plugin("DEL", bridge_network, f"{RUN}-wc", path).ok
        assert _state(state_dir)["attachments"] == {}
        assert not link_exists(record["host_ifname"])
        added = plugin("ADD", bridge_network, f"{RUN}-wd", path)
        assert added.ok, added
        assert plugin("DEL", bridge_network, f"{RUN}-wd", path).ok
        assert [line.split()[1] for line in _served(log)][-2:] == ["ADD", "DEL"], _served(log)
        # what `smarter-cni status` shows of it: four requests taken (the killed ADD, DEL,
        # ADD, DEL), one worker ended
        from smarter_cni.node.status import resident_status, resident_summary

        assert _wait_for(lambda: resident_status(str(state_dir)).get("served") == 4, timeout=5), \
            json.dumps(resident_status(str(state_dir)))
        pool = resident_status(str(state_dir))
        assert pool["running"] and pool["pid"] == server.pid and pool["ended"] == 1, pool
        assert "4 requests served, 1 worker(s) ended mid-request" in resident_summary(pool)
    assert resident_status(str(state_dir)) == {"running": False}  # stopped: its file is gone
    assert "not running" in resident_summary({"running": False})


def test_warm_the_watchdog_ends_a_worker_stuck_in_a_request(
        plugin, bridge_network, netns, state_dir, tmp_path):
    """A request longer than SMARTER_CNI_RESIDENT_WATCHDOG: its worker leaves; the client
    sees no reply and does the ADD itself, which meets the half-made record (code 101)."""
    _, path = netns.create()
    log = tmp_path / "server.log"
    with running_server(state_dir, log, mode="warm",
                        env={"SMARTER_CNI_RESIDENT_WATCHDOG": "1"}) as server:
        proc, writer = _paused_add(plugin, bridge_network, f"{RUN}-ww", path, tmp_path / "fifo")
        assert _wait_for(lambda: "longer than 1 s" in log.read_text(), timeout=15)
        assert server.poll() is None
        os.close(writer)  # the client's own ADD may pause on the FIFO too: let it through
        out, err = _finish(proc)
        answer = json.loads(out)
        assert proc.returncode == 1 and answer["code"] == 101, answer
        assert plugin("DEL", bridge_network, f"{RUN}-ww", path).ok
        assert _state(state_dir)["attachments"] == {}


def test_warm_workers_serve_many_requests_and_a_storm_grows_the_pool_within_its_limit(
        plugin, bridge_network, netns, state_dir, tmp_path):
    log = tmp_path / "server.log"
    pods = [netns.create()[1] for _ in range(12)]
    with running_server(state_dir, log, mode="warm",
                        env={"SMARTER_CNI_RESIDENT_WORKERS": "3",
                             "SMARTER_CNI_RESIDENT_IDLE_EXIT": "1"}) as server:
        assert _wait_for(lambda: len(_children(server.pid)) == 1, timeout=5)  # SPARE idle
        first = _children(server.pid)
        for i in range(2):
            assert plugin("ADD", bridge_network, f"{RUN}-p{i}", pods[i]).ok
        peak = [len(_children(server.pid))]
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(plugin, "ADD", bridge_network, f"{RUN}-p{i}", pods[i])
                       for i in range(2, 12)]
            while not all(f.done() for f in futures):
                peak.append(len(_children(server.pid)))
                time.sleep(0.002)
            assert all(f.result().ok for f in futures)
        assert max(peak) <= 3, peak  # never more workers than SMARTER_CNI_RESIDENT_WORKERS
        assert max(peak) >= 2, peak  # the storm grew the pool
        assert set(first) & set(_children(server.pid))  # a worker outlives its requests
        # idle beyond SMARTER_CNI_RESIDENT_IDLE_EXIT: the pool shrinks back to its one spare
        assert _wait_for(lambda: len(_children(server.pid)) == 1, timeout=10), \
            _children(server.pid)
        for i in range(12):
            assert plugin("DEL", bridge_network, f"{RUN}-p{i}", pods[i]).ok
    assert len(_served(log)) >= 4
    assert _state(state_dir)["attachments"] == {}


def test_warm_a_hung_server_costs_one_wait_then_clients_skip_it(plugin, bridge_network, netns,
                                                                state_dir):
    """A listener that never accepts: the first exec waits ACK_TIMEOUT and marks it; the
    next ones do not connect at all until the mark expires."""
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(state_dir / SOCKET))
    hung.listen(16)
    try:
        pods = [netns.create()[1] for _ in range(3)]
        for i, path in enumerate(pods):
            assert plugin("ADD", bridge_network, f"{RUN}-h{i}", path).ok
        mark = state_dir / client.UNRESPONSIVE_NAME
        assert mark.stat().st_mtime > time.time() + client.UNRESPONSIVE_HOLD / 2
        hung.setblocking(False)
        connections = []
        while True:
            try:
                connections.append(hung.accept()[0])
            except BlockingIOError:
                break
        assert len(connections) == 1  # only the first exec tried
        for conn in connections:
            conn.close()
        for i, path in enumerate(pods):
            assert plugin("DEL", bridge_network, f"{RUN}-h{i}", path).ok
    finally:
        hung.close()
    assert _state(state_dir)["attachments"] == {}


def test_warm_an_idle_server_clears_the_mark_and_serves_again(plugin, bridge_network, netns,
                                                              state_dir, tmp_path):
    log = tmp_path / "server.log"
    mark = state_dir / client.UNRESPONSIVE_NAME
    with running_server(state_dir, log, mode="warm"):
        mark.touch()
        until = time.time() + 60
        os.utime(mark, (until, until))
        assert _wait_for(lambda: not mark.exists(), timeout=5)
        _, path = netns.create()
        assert plugin("ADD", bridge_network, f"{RUN}-m", path).ok
        assert plugin("DEL", bridge_network, f"{RUN}-m", path).ok
        assert [line.split()[1] for line in _served(log)][-2:] == ["ADD", "DEL"], _served(log)


# --- the loopback launcher: the same client, named "loopback" ------------------------------

LOOPBACK_CONFIG = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}


@pytest.fixture
def loopback_plugin(tmp_path: Path, state_dir: Path):
    """Our loopback launcher alone in a bin dir (the session's bin dir holds the reference one)."""
    from helpers.plugin import PluginRunner
    from smarter_cni import loopback

    directory = tmp_path / "loopback-bin"
    directory.mkdir()
    for name in ("loopback", "bogus"):  # "bogus": a launcher naming a plugin nobody knows
        launcher.write(str(directory / name), sys.executable, str(SRC),
                       header=loopback.LAUNCHER_HEADER, plugin=name)
    return PluginRunner(directory, state_dir)


def _lo_up(netns, name: str) -> bool:
    shown = netns.exec(name, "ip", "-o", "link", "show", "lo").stdout.decode()
    return "UP" in shown.split("<", 1)[1].split(">", 1)[0].split(",")


def _loopback_round(loopback_plugin, netns, container: str, extra: dict | None = None) -> None:
    """ADD (lo down before, up after, its addresses), CHECK, chained ADD, DEL, VERSION."""
    name, path = netns.create("lo")
    netns.exec(name, "ip", "link", "set", "lo", "down")
    added = loopback_plugin("ADD", LOOPBACK_CONFIG, container, path, ifname="lo",
                            plugin="loopback", extra=extra)
    assert added.ok, added
    assert added.json["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00",
                                         "sandbox": path}], added
    assert added.json["ips"][0] == {"address": "127.0.0.1/8", "interface": 0}, added
    assert _lo_up(netns, name)
    assert netns.exec(name, "ping", "-c1", "-W1", "127.0.0.1", check=False).returncode == 0
    checked = loopback_plugin("CHECK", dict(LOOPBACK_CONFIG, prevResult=added.json), container,
                              path, ifname="lo", plugin="loopback", extra=extra)
    assert checked.ok and checked.stdout == "", checked
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": path}],
            "ips": [{"address": "10.42.0.9/16", "gateway": "10.42.0.1", "interface": 0}]}
    chained = loopback_plugin("ADD", dict(LOOPBACK_CONFIG, prevResult=prev), container, path,
                              ifname="lo", plugin="loopback", extra=extra)
    assert chained.ok and chained.json["ips"] == prev["ips"], chained
    netns.exec(name, "ip", "link", "set", "lo", "down")
    down = loopback_plugin("CHECK", LOOPBACK_CONFIG, container, path, ifname="lo",
                           plugin="loopback", extra=extra)
    assert down.returncode == 1 and down.code == 103 and "lo is not up" in down.json["msg"], down
    deleted = loopback_plugin("DEL", LOOPBACK_CONFIG, container, path, ifname="lo",
                              plugin="loopback", extra=extra)
    assert deleted.ok and deleted.stdout == "", deleted
    version = loopback_plugin("VERSION", {"cniVersion": "0.4.0"}, plugin="loopback", extra=extra)
    assert version.ok and version.json["cniVersion"] == "0.4.0", version


@pytest.mark.parametrize("mode", ["warm", "fork"])
def test_loopback_goes_through_the_server(loopback_plugin, netns, state_dir, tmp_path, mode):
    log = tmp_path / "server.log"
    with running_server(state_dir, log, mode=mode) as server:
        # a runtime's own SMARTER_CNI_PLUGIN never changes which plugin the launcher is
        _loopback_round(loopback_plugin, netns, f"{RUN}-lo",
                        extra={"SMARTER_CNI_PLUGIN": "smarter-cni",
                               "SMARTER_CNI_CLIENT_ACK_TIMEOUT": "5"})  # a busy machine
        assert server.poll() is None
    # VERSION is always answered in-process; everything else was the server's
    assert [line.split()[1] for line in _served(log)] == ["ADD", "CHECK", "ADD", "CHECK", "DEL"]
    assert _state(state_dir)["attachments"] == {}  # loopback keeps no state


def test_loopback_works_alone_with_the_server_down(loopback_plugin, netns, state_dir, tmp_path):
    # no socket at all
    _loopback_round(loopback_plugin, netns, f"{RUN}-l1")
    # a dead server's socket file: connect is refused
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / SOCKET))
    stale.close()
    _loopback_round(loopback_plugin, netns, f"{RUN}-l2")
    # a server that was stopped: its socket is gone, the client works alone again
    log = tmp_path / "server.log"
    os.unlink(state_dir / SOCKET)
    with running_server(state_dir, log):
        pass
    _loopback_round(loopback_plugin, netns, f"{RUN}-l3")
    assert _served(log) == []


def test_an_unknown_plugin_name_is_a_clean_error_from_the_server_and_in_process(
        loopback_plugin, netns, state_dir, tmp_path):
    _, path = netns.create("lo")
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": f"{RUN}-u".encode(),
           b"CNI_NETNS": path.encode(), b"CNI_IFNAME": b"lo", b"CNI_PATH": b"/nonexistent",
           b"SMARTER_CNI_STATE_DIR": str(state_dir).encode(), client.PLUGIN_ENV: b"bogus"}
    log = tmp_path / "server.log"
    with running_server(state_dir, log) as server:
        answer = client.ask_resident(env, json.dumps(LOOPBACK_CONFIG).encode(), ack_timeout=5)
        assert answer is not None, "the server did not answer"
        out = json.loads(answer[1])
        assert answer[0] == 1 and out["code"] == 4 and "unknown plugin 'bogus'" in out["msg"], out
        assert "Traceback" not in answer[1].decode()
        # the launcher naming it: the client never sends it, the in-process answer is the same
        local = loopback_plugin("ADD", LOOPBACK_CONFIG, f"{RUN}-u", path, ifname="lo",
                                plugin="bogus")
        assert local.returncode == 1 and local.code == 4, local
        assert "unknown plugin 'bogus'" in local.json["msg"] and "Traceback" not in local.stderr
        # and the server serves the next request as usual
        assert loopback_plugin("ADD", LOOPBACK_CONFIG, f"{RUN}-u", path, ifname="lo",
                               plugin="loopback").ok
        assert server.poll() is None
    assert [line.split()[1] for line in _served(log)] == ["ADD", "ADD"]
