"""Crashes: the plugin killed with SIGKILL at random points of ADD and DEL.

After every kill, the runtime's clean-up DEL (with or without CNI_NETNS,
never with prevResult) must succeed on its first try and leave no host
link, no pod interface and no record; the state file must parse at every
instant (a reader thread checks it all the time); the next ADD must work;
no address is ever handed out twice.

The kill lands after a random delay spread over the whole ADD (not only
its first 40 ms, which is mostly interpreter start-up), so every phase is
hit: before the reservation, between the two store transactions (record
with "ready": false), during plumbing, after completion. Where a random
kill lands depends on the machine's load (a loaded one once put 0 of 40
between the transactions), so the ADD test adds kills that land there by
construction: the ADD waits at the test hook between its transactions
(PAUSE_ENV) and is SIGKILLed there by its PID. Half the kills hit
only the plugin's PID (an OOM kill: its `ip` child runs on as an orphan),
half its whole process group (a cgroup kill). Before the clean-up DEL the
test waits for orphans of the killed plugin to exit, as any runtime's DEL
comes after the failed ADD has returned.

CI size: ~40 random + 6 paused ADD kills, 16 DEL kills, 6 first-ADD kills, 5 GC kills,
10 docker-mode kills; SMARTER_CNI_LONG=1: 300 + 30, 100, 30, 30, 100.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.netns import link_exists, run_id, sh, unique  # noqa: E402
from helpers.plugin import SRC, PluginRunner, pod_args, state_dir_env  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni.dataplane import PAUSE_ENV  # noqa: E402
from smarter_cni.dataplane.names import chain_name, host_ifname  # noqa: E402

pytest_plugins = ("helpers.dockerd",)  # fixtures: dockerd, busybox_image, sandboxes, docker_network
pytestmark = pytest.mark.root

LONG = os.environ.get("SMARTER_CNI_LONG") == "1"
ADD_KILLS, DEL_KILLS, FIRST_ADD_KILLS = (300, 100, 30) if LONG else (40, 16, 6)
PAUSED_ADD_KILLS = 30 if LONG else 6   # on top of ADD_KILLS, between the transactions
DOCKER_KILLS = 100 if LONG else 10
GC_KILLS = 30 if LONG else 5
RESIDENTS = 3


# ---------------------------------------------------------------- helpers

class StateWatcher(threading.Thread):
    """Reads the state file without a lock as fast as it can; every read must parse."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.bad: list[str] = []
        self.duplicates: list[list[str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                time.sleep(0.001)
                continue
            self.reads += 1
            try:
                state = json.loads(data)
                ips = [ip for r in state["attachments"].values() for ip in r.get("ips") or []]
                if len(ips) != len(set(ips)):
                    self.duplicates.append(sorted(ips))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                self.bad.append(f"{err}: {data[:80]!r} ({len(data)} bytes)")
            time.sleep(0.0005)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def spawn_and_kill(runner: PluginRunner, env: dict, config: dict, delay: float,
                   whole_group: bool) -> int | None:
    """Start the plugin, SIGKILL it after `delay` s; the exit code when it finished first."""
    proc = subprocess.Popen([str(runner.bin_dir / "smarter-cni")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    time.sleep(delay)
    finished = proc.poll()
    if whole_group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's group, by its id
        except ProcessLookupError:
            pass
    elif finished is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    _wait_orphans(proc.pid)
    return finished


def _wait_orphans(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert not _group_alive(pgid), "orphans of the killed plugin did not finish"


def _reader_of(fifo: Path, candidates: list[int]) -> int:
    """The PID among `candidates` that has `fifo` open: the process waiting in the pause."""
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo):
                    return pid
            except OSError:
                continue
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def pause_and_kill(runner: PluginRunner, env: dict, config: dict, fifo: Path,
                   whole_group: bool) -> int:
    """Start an ADD that waits between its two store transactions (the PAUSE_ENV hook) and
    SIGKILL the process waiting there by its PID; returns that PID if it was not the exec.

    That process is the plugin exec, or with a resident server (the state_dir fixture's
    under SMARTER_CNI_TEST_RESIDENT=1, a child of this process) the worker serving it:
    the client then gets no reply and ends by itself (its own ADD meets the half-made
    record and refuses it). `whole_group` kills the exec's process group.
    """
    os.mkfifo(fifo, 0o600)
    # through a server: a loaded machine must not send the ADD local on a late ack
    env = dict(env, **{PAUSE_ENV: str(fifo), "SMARTER_CNI_CLIENT_ACK_TIMEOUT": "5"})
    proc = subprocess.Popen([str(runner.bin_dir / "smarter-cni")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    writer = -1
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        deadline = time.monotonic() + 30
        victim = 0
        while not victim:  # our open succeeds once the plugin waits in its own open()
            assert time.monotonic() < deadline, "the ADD never reached the pause"
            assert proc.poll() is None, f"the ADD ended before the pause: {proc.stderr.read()!r}"
            if writer < 0:
                try:
                    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as err:
                    if err.errno != errno.ENXIO:
                        raise
            if writer >= 0:
                servers = [pid for pid in _children(os.getpid()) if pid != proc.pid]
                candidates = [proc.pid] + [w for pid in servers for w in _children(pid)]
                victim = _reader_of(fifo, candidates)
            if not victim:
                time.sleep(0.002)
        if whole_group and victim == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's group, by its id
        else:
            os.kill(victim, signal.SIGKILL)  # the exec, or the worker of our own server
        proc.wait(30)
    finally:
        if writer >= 0:
            os.close(writer)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
        fifo.unlink()
    _wait_orphans(proc.pid)
    return victim if victim != proc.pid else 0


def load_state(state_dir: Path) -> dict:
    path = state_dir / "attachments.json"
    if not path.exists():
        return {"attachments": {}, "networks": {}}
    data = path.read_bytes()
    assert data.strip(), "state file is empty"
    return json.loads(data)


def assert_no_duplicates(state: dict) -> None:
    ips = [ip for r in state["attachments"].values() for ip in r.get("ips") or []]
    assert len(ips) == len(set(ips)), f"duplicate addresses: {sorted(ips)}"


def stray_temp_files(state_dir: Path) -> list[str]:
    """Temp files no live process is writing (`.NAME.PID.tmp` of a running writer, such
    as the resident server's plugin.pool, is a write in progress, not a leftover)."""
    return [p.name for p in state_dir.iterdir()
            if p.name.endswith(".tmp") and not _writer_alive(p.name)]


def _writer_alive(name: str) -> bool:
    pid = name[:-len(".tmp")].rpartition(".")[2]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def firewall_lines(config: dict) -> list[str]:
    tokens = (f"smarter-cni {config['name']}", chain_name(config["name"]))
    text = sh("iptables-save", check=False).stdout.decode()
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                  if any(t in line for t in tokens))


def measure(plugin, config: dict, netns_path: str) -> tuple[float, float]:
    """Median (ADD, DEL) durations on this node right now, to spread the kills over."""
    adds, dels = [], []
    for i in range(3):
        cid = f"probe{i}-{unique('', 8)}"
        start = time.monotonic()
        assert plugin("ADD", config, cid, netns_path).ok
        middle = time.monotonic()
        assert plugin("DEL", config, cid, netns_path).ok
        adds.append(middle - start)
        dels.append(time.monotonic() - middle)
    return statistics.median(adds), statistics.median(dels)


class KillWindow:
    """The random delay's upper bound, steered so kills keep landing inside the operation.

    A fixed 0-40 ms mostly hits interpreter start-up on a loaded machine, or misses
    the operation entirely on an idle one; grow the window after a kill that came
    too early, shrink it after one that came too late.
    """

    def __init__(self, typical: float) -> None:
        self.upper = max(0.040, typical * 1.5)
        self.seen: list[float] = []

    def draw(self, rng: random.Random) -> float:
        self.seen.append(self.upper)
        return rng.uniform(0, self.upper)

    def too_early(self) -> None:
        self.upper = min(self.upper * 1.08, 3.0)

    def too_late(self) -> None:
        self.upper = max(self.upper * 0.85, 0.020)

    def describe(self) -> str:
        return f"0-{min(self.seen) * 1000:.0f}..{max(self.seen) * 1000:.0f} ms"


def cleanup_del(plugin, config: dict, cid: str, netns_name: str, netns_path: str,
                with_netns: bool, state_dir: Path) -> None:
    """The runtime's DEL after the failed operation: must work on the first try and clean everything."""
    deleted = plugin("DEL", config, cid, netns_path if with_netns else "")
    assert deleted.ok, f"first DEL after a kill failed: {deleted!r}"
    host = host_ifname(cid, "eth0")
    assert not link_exists(host), f"host link {host} left behind"
    links = sh("ip", "-n", netns_name, "-o", "link").stdout.decode()
    assert "eth0" not in links, f"pod interface left in {netns_name}: {links}"
    state = load_state(state_dir)
    assert not [k for k in state["attachments"] if f"/{cid}/" in k], "record left behind"
    assert_no_duplicates(state)


def next_add_works(plugin, config: dict, netns_name: str, netns_path: str, residents: set[str],
                   state_dir: Path) -> None:
    cid = f"next-{unique('', 10)}"
    added = plugin("ADD", config, cid, netns_path, args=pod_args("next"))
    assert added.ok, f"ADD after a kill failed: {added!r}"
    address = added.json["ips"][0]["address"]
    assert address not in residents
    assert_no_duplicates(load_state(state_dir))
    deleted = plugin("DEL", config, cid, netns_path)
    assert deleted.ok, deleted


# ---------------------------------------------------------------- tests

@pytest.fixture
def watched(state_dir: Path):
    watcher = StateWatcher(state_dir / "attachments.json")
    watcher.start()
    yield watcher
    watcher.stop()


def _add_residents(plugin, config, netns) -> tuple[list[tuple[str, str]], set[str]]:
    residents = []
    addresses = set()
    for i in range(RESIDENTS):
        name, path = netns.create("res")
        cid = f"resident{i}-{unique('', 8)}"
        added = plugin("ADD", config, cid, path, args=pod_args(f"resident-{i}"))
        assert added.ok, added
        residents.append((cid, path))
        addresses.add(added.json["ips"][0]["address"])
    return residents, addresses


def test_kill_add_at_random_points(plugin, bridge_network, netns, state_dir, watched,
                                   tmp_path) -> None:
    config = bridge_network
    rng = random.Random()
    residents, resident_addresses = _add_residents(plugin, config, netns)
    name, path = netns.create("kill")
    add_time, _ = measure(plugin, config, path)
    rules = firewall_lines(config)
    phases: Counter = Counter()
    window = KillWindow(add_time)
    # the paused kills, spread among the random ones (so they meet varied states)
    every = ADD_KILLS // PAUSED_ADD_KILLS
    paused = workers = 0
    for i in range(ADD_KILLS):
        if i % every == every - 1 and paused < PAUSED_ADD_KILLS:
            cid = f"pauseadd{paused}-{unique('', 8)}"
            env = plugin.env("ADD", cid, path, "eth0", pod_args(f"paused-{paused}"))
            spawned = pause_and_kill(plugin, env, config, tmp_path / f"pause{paused}.fifo",
                                     whole_group=paused % 2 == 0)
            workers += spawned != 0
            state = load_state(state_dir)
            assert_no_duplicates(state)
            record = state["attachments"].get(f"{config['name']}/{cid}/eth0")
            assert record is not None and record["ready"] is False, record
            assert link_exists(host_ifname(cid, "eth0")), "the paused ADD had made its veth"
            paused += 1
            cleanup_del(plugin, config, cid, name, path, with_netns=paused % 3 != 0,
                        state_dir=state_dir)
            next_add_works(plugin, config, name, path, resident_addresses, state_dir)
        cid = f"killadd{i}-{unique('', 8)}"
        env = plugin.env("ADD", cid, path, "eth0", pod_args(f"victim-{i}"))
        finished = spawn_and_kill(plugin, env, config, window.draw(rng), whole_group=i % 2 == 0)
        state = load_state(state_dir)  # parses, never empty
        assert_no_duplicates(state)
        record = state["attachments"].get(f"{config['name']}/{cid}/eth0")
        if finished is not None:
            phases["completed before the kill"] += 1
            window.too_late()
        elif record is None:
            phases["killed before the reservation"] += 1
            window.too_early()
        elif not record["ready"]:
            phases["killed between the store transactions"] += 1
        else:
            phases["killed after the record was ready"] += 1
        cleanup_del(plugin, config, cid, name, path, with_netns=i % 3 != 0, state_dir=state_dir)
        next_add_works(plugin, config, name, path, resident_addresses, state_dir)
    for cid, rpath in residents:
        assert plugin("DEL", config, cid, rpath).ok
    assert load_state(state_dir)["attachments"] == {}
    assert firewall_lines(config) == rules
    assert not watched.bad, watched.bad[:3]
    assert not watched.duplicates, watched.duplicates[:1]
    strays = stray_temp_files(state_dir)
    assert not strays, f"temp files of killed writers left in the state dir: {strays}"
    print(f"\nADD kills: {ADD_KILLS} random (ADD median {add_time * 1000:.0f} ms, kill window "
          f"{window.describe()}): {dict(phases)}; {paused} paused between the store "
          f"transactions and killed there ({workers} of them in a resident server's worker); "
          f"first-try DEL failures 0, leftovers 0, "
          f"duplicates 0; state file read {watched.reads} times, 0 torn")
    assert paused == PAUSED_ADD_KILLS


def test_kill_del_at_random_points(plugin, bridge_network, netns, state_dir, watched) -> None:
    config = bridge_network
    rng = random.Random()
    residents, resident_addresses = _add_residents(plugin, config, netns)
    name, path = netns.create("kdel")
    _, del_time = measure(plugin, config, path)
    window = KillWindow(del_time)
    outcomes: Counter = Counter()
    for i in range(DEL_KILLS):
        cid = f"killdel{i}-{unique('', 8)}"
        added = plugin("ADD", config, cid, path, args=pod_args(f"victim-{i}"))
        assert added.ok, added
        env = plugin.env("DEL", cid, path if i % 2 else "", "eth0")
        finished = spawn_and_kill(plugin, env, config, window.draw(rng), whole_group=i % 2 == 1)
        state = load_state(state_dir)
        assert_no_duplicates(state)
        gone = f"{config['name']}/{cid}/eth0" not in state["attachments"]
        if finished is not None:
            window.too_late()
        elif not gone:
            window.too_early()
        outcomes["completed" if finished is not None else ("killed after" if gone else "killed before")
                 + " forgetting the record"] += 1
        cleanup_del(plugin, config, cid, name, path, with_netns=i % 3 != 0, state_dir=state_dir)
        next_add_works(plugin, config, name, path, resident_addresses, state_dir)
    for cid, rpath in residents:
        assert plugin("DEL", config, cid, rpath).ok
    assert not watched.bad, watched.bad[:3]
    assert not stray_temp_files(state_dir)
    print(f"\nDEL kills: {DEL_KILLS} (DEL median {del_time * 1000:.0f} ms, kill window "
          f"{window.describe()}): {dict(outcomes)}; first-try DEL failures 0, leftovers 0")


def test_kill_first_add_of_a_network(plugin, bridge_network, netns, state_dir, watched) -> None:
    """Killed while creating the bridge and its rules: the next ADD completes the set-up, once."""
    from smarter_cni.dataplane.bridge_network import teardown_network
    from smarter_cni.netconf import parse_netconf

    config = bridge_network
    rng = random.Random()
    name, path = netns.create("kfirst")
    conf = parse_netconf(config)
    for i in range(FIRST_ADD_KILLS):
        with state_dir_env(state_dir):
            teardown_network(conf)
        assert not link_exists(config["bridge"])
        cid = f"kfirst{i}-{unique('', 8)}"
        env = plugin.env("ADD", cid, path, "eth0")
        spawn_and_kill(plugin, env, config, rng.uniform(0.02, 0.25), whole_group=i % 2 == 0)
        cleanup_del(plugin, config, cid, name, path, with_netns=True, state_dir=state_dir)
        cid2 = f"kfirst-next{i}-{unique('', 6)}"
        added = plugin("ADD", config, cid2, path)
        assert added.ok, added
        shown = sh("ip", "-4", "-o", "addr", "show", "dev", config["bridge"]).stdout.decode()
        assert shown.count(" inet ") == 1 and config["subnet"].replace(".0/24", ".1/24") in shown, shown
        rules = firewall_lines(config)
        assert len(rules) == len(set(rules)), rules
        ping = subprocess.run(["ip", "netns", "exec", name, "ping", "-c1", "-W2",
                               added.json["ips"][0]["gateway"]], capture_output=True, timeout=10)
        assert ping.returncode == 0
        assert plugin("DEL", config, cid2, path).ok
    assert not watched.bad, watched.bad[:3]
    print(f"\nfirst-ADD kills: {FIRST_ADD_KILLS}; first-try DEL failures 0, leftovers 0, "
          "one gateway address and no duplicate rule after each")


def test_kill_gc_at_random_points(plugin, bridge_network, netns, state_dir, watched) -> None:
    """GC killed half-way (some links gone, records still there): the runtime's next GC
    finishes the job, removing exactly the invalid attachments."""
    config = dict(bridge_network, cniVersion="1.1.0")
    rng = random.Random()
    spaces = [netns.create("kgc") for _ in range(4)]
    window = KillWindow(0.150)
    outcomes: Counter = Counter()
    for round_no in range(GC_KILLS):
        ids = [f"kgc{round_no}-{i}-{unique('', 6)}" for i in range(4)]
        for i in range(4):
            assert plugin("ADD", config, ids[i], spaces[i][1]).ok
        valid = [{"containerID": cid, "ifname": "eth0"} for cid in ids[:2]]
        gc_config = dict(config, **{"cni.dev/valid-attachments": valid})
        finished = spawn_and_kill(plugin, plugin.env("GC", ifname=""), gc_config, window.draw(rng),
                                  whole_group=round_no % 2 == 0)
        removed = sum(not link_exists(host_ifname(cid, "eth0")) for cid in ids[2:])
        if finished is not None:
            outcomes["completed"] += 1
            window.too_late()
        else:
            outcomes[f"killed with {removed} of 2 links removed"] += 1
            if removed == 0:
                window.too_early()
        again = plugin("GC", gc_config, ifname="")
        assert again.ok, f"GC after a killed GC failed: {again!r}"
        names = set(load_state(state_dir)["attachments"])
        assert names == {f"{config['name']}/{cid}/eth0" for cid in ids[:2]}
        for cid in ids[:2]:
            assert link_exists(host_ifname(cid, "eth0"))
        for i in (2, 3):
            assert not link_exists(host_ifname(ids[i], "eth0"))
            assert "eth0" not in sh("ip", "-n", spaces[i][0], "-o", "link").stdout.decode()
        for i in range(4):
            assert plugin("DEL", config, ids[i], spaces[i][1]).ok
    assert load_state(state_dir)["attachments"] == {}
    assert not watched.bad, watched.bad[:3]
    print(f"\nGC kills: {GC_KILLS} (window {window.describe()}): {dict(outcomes)}; "
          "the next GC removed exactly the invalid attachments every time")


def test_del_while_lock_held_by_killed_process(plugin, bridge_network, netns, state_dir) -> None:
    """A process that dies holding the flock does not wedge the node: the kernel drops the lock."""
    name, path = netns.create("lock")
    added = plugin("ADD", bridge_network, run_id("lockpod"), path)
    assert added.ok, added
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n", str(state_dir / "lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        pending = subprocess.Popen([str(plugin.bin_dir / "smarter-cni")],
                                   env=plugin.env("DEL", run_id("lockpod"), path, "eth0"),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pending.stdin.write(json.dumps(bridge_network).encode())
        pending.stdin.close()
        time.sleep(0.3)
        assert pending.poll() is None, "DEL did not wait for the lock"
        holder.kill()
        holder.wait(5)
        assert pending.wait(10) == 0, pending.stdout.read()
        pending.stdout.close()
        pending.stderr.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        holder.stdout.close()
    assert not link_exists(host_ifname(run_id("lockpod"), "eth0"))
    assert load_state(state_dir)["attachments"] == {}


def test_record_whose_link_was_deleted_by_someone_else(plugin, bridge_network, netns, state_dir) -> None:
    """An operator (or a crashed runtime) removed the veth: CHECK says so, DEL and a new ADD work."""
    name, path = netns.create("gone")
    added = plugin("ADD", bridge_network, run_id("gonepod"), path)
    assert added.ok, added
    sh("ip", "link", "del", host_ifname(run_id("gonepod"), "eth0"))
    checked = plugin("CHECK", dict(bridge_network, prevResult=added.json), run_id("gonepod"), path)
    assert checked.code == 103 and "missing" in checked.json["msg"], checked
    again = plugin("ADD", bridge_network, run_id("gonepod"), path)  # runtime retries the same sandbox
    assert again.ok, again
    assert again.json["ips"][0]["address"] == added.json["ips"][0]["address"]
    assert plugin("DEL", bridge_network, run_id("gonepod"), path).ok
    assert plugin("DEL", bridge_network, run_id("gonepod"), path).ok
    assert load_state(state_dir)["attachments"] == {}


@pytest.mark.docker
def test_kill_docker_mode_add(plugin, docker_network, dockerd, sandboxes, state_dir, watched) -> None:
    """Docker mode: a kill may land while dockerd is connecting the sandbox; the runtime's DEL
    must still leave the sandbox disconnected, with no record and no interface but lo."""
    from smarter_cni.dataplane import docker_mode
    from smarter_cni.netconf import parse_netconf

    config = docker_network
    docker_mode.ensure_network(parse_netconf(config))
    rng = random.Random()
    resident = sandboxes.create("dresident")
    added = plugin("ADD", config, resident.id, resident.netns, args=pod_args("dresident"))
    assert added.ok, added
    resident_address = added.json["ips"][0]["address"]
    pod = sandboxes.create("dvictim")
    start = time.monotonic()
    assert plugin("ADD", config, pod.id, pod.netns).ok
    add_time = time.monotonic() - start
    assert plugin("DEL", config, pod.id, pod.netns).ok
    phases: Counter = Counter()
    window = KillWindow(add_time)
    for i in range(DOCKER_KILLS):
        env = plugin.env("ADD", pod.id, pod.netns, "eth0", pod_args(f"dvictim-{i}"))
        finished = spawn_and_kill(plugin, env, config, window.draw(rng), whole_group=i % 2 == 0)
        state = load_state(state_dir)
        assert_no_duplicates(state)
        record = state["attachments"].get(f"{config['name']}/{pod.id}/eth0")
        if finished is not None:
            window.too_late()
        elif record is None:
            window.too_early()
        phases["completed" if finished is not None else
               "no record" if record is None else f"record ready={record['ready']}"] += 1
        deleted = plugin("DEL", config, pod.id, pod.netns if i % 3 else "")
        assert deleted.ok, f"first DEL after a kill failed: {deleted!r}"
        assert config["network"] not in pod.networks(), "sandbox still connected after DEL"
        links = sh("nsenter", f"--net={pod.netns}", "ip", "-o", "link").stdout.decode()
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"], links
        assert not [k for k in load_state(state_dir)["attachments"] if pod.id in k]
        again = plugin("ADD", config, pod.id, pod.netns)
        assert again.ok, again
        assert again.json["ips"][0]["address"] != resident_address
        assert plugin("DEL", config, pod.id, pod.netns).ok
    assert plugin("DEL", config, resident.id, resident.netns).ok
    assert load_state(state_dir)["attachments"] == {}
    assert not watched.bad, watched.bad[:3]
    print(f"\ndocker-mode ADD kills: {DOCKER_KILLS} (ADD {add_time * 1000:.0f} ms, window "
          f"{window.describe()}): {dict(phases)}; "
          f"first-try DEL failures 0, leftovers 0")
