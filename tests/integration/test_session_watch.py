"""The session watchdog (helpers/session_watch.py) cleans up after a killed pytest.

A child pytest runs a generated test file with the suite's real conftest and
fixtures (private state dir, private dockerd on its own socket, as the main
suite): it starts the session dockerd, runs containers on a Docker network of
its own, makes a netns, a veth, a bridge and iptables/ip6tables rules and a
chain carrying its tokens, then sleeps. It is SIGKILLed by its PID: no
fixture runs. Within 20 s its dockerd (by PID and start time), containers,
netns, links, rules, chain and temp dirs must be gone, while a netns, bridge
and rules made beforehand with other unique tokens (standing in for a
concurrent run) are untouched. A child that ends normally leaves the watcher
exiting with nothing removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import session_watch
from helpers.cri_containerd import CONTAINERD
from helpers.netns import sh, unique
from smarter_cni.dataplane.names import chain_name

pytestmark = pytest.mark.root

TESTS = Path(__file__).resolve().parents[1]
BOUND = 20.0  # seconds from the kill until everything must be gone

CHILD = '''
import json, os, subprocess, time
from helpers import session_watch
from helpers.cri_containerd import CONTAINERD
from helpers.netns import sh, unique
from smarter_cni.dataplane.names import chain_name


def test_hold(dockerd, busybox_image, sandboxes, docker_network, netns):
    info = {"dockerd_pid": dockerd.pid, "dockerd_root": dockerd.root,
            "dockerd_start": session_watch.proc_start_time(dockerd.pid),
            "dockerd_bridge": dockerd.bridge, "watcher": session_watch.watcher_pid(),
            "state_dir": os.environ["SMARTER_CNI_STATE_DIR"]}
    net = docker_network["name"]
    dockerd.cli("network", "create", "--subnet", docker_network["subnet"], net)
    net_id = dockerd.network_inspect(net)["Id"]
    boxes = [sandboxes.create("h1", network=net), sandboxes.create("h2", network=net),
             sandboxes.create("h3")]
    name, _ = netns.create()
    veth, token = unique("swv"), unique("t")
    bridge = f"br{token[:10]}"  # as the bridge_network fixture names it: a token prefix
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "link", "set", veth, "master", bridge)
    loose = unique("swp")  # a veth on no bridge, its peer in the netns too
    sh("ip", "link", "add", loose, "type", "veth", "peer", "name", "eth1", "netns", name)
    # a process in the netns keeps it alive past `ip netns del`, and with it the veth
    holder = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
    mark = ["-m", "comment", "--comment", f"smarter-cni net-{token}"]
    chain = chain_name(f"net-{token}")
    sh("iptables", "-w", "10", "-I", "FORWARD", "-i", bridge, *mark, "-j", "ACCEPT")
    sh("ip6tables", "-w", "10", "-I", "FORWARD", "-i", bridge, *mark, "-j", "ACCEPT")
    sh("iptables", "-w", "10", "-t", "nat", "-N", chain)
    sh("iptables", "-w", "10", "-t", "nat", "-A", chain, "-j", "RETURN")
    sh("iptables", "-w", "10", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", *mark,
       "-j", chain)
    info.update(network=net, network_bridge=f"br-{net_id[:12]}", netns=name, veth=veth, loose=loose,
                bridge=bridge, token=token, chain=chain,
                containers=[box.id for box in boxes], pids=[box.pid for box in boxes],
                holder=holder.pid, holder_start=session_watch.proc_start_time(holder.pid))
    path = os.environ["CHILD_INFO"]
    with open(path + ".tmp", "w") as handle:
        json.dump(info, handle)
    os.rename(path + ".tmp", path)
    if os.environ.get("CHILD_HOLD") == "1":
        time.sleep(600)  # killed here
    holder.kill()
    holder.wait()
    sh("ip", "link", "del", bridge)
    sh("ip", "link", "del", veth)
    sh("ip", "link", "del", loose)
    sh("iptables", "-w", "10", "-D", "FORWARD", "-i", bridge, *mark, "-j", "ACCEPT")
    sh("ip6tables", "-w", "10", "-D", "FORWARD", "-i", bridge, *mark, "-j", "ACCEPT")
    sh("iptables", "-w", "10", "-t", "nat", "-D", "POSTROUTING", "-s", "192.0.2.0/24", *mark,
       "-j", chain)
    sh("iptables", "-w", "10", "-t", "nat", "-F", chain)
    sh("iptables", "-w", "10", "-t", "nat", "-X", chain)
    for box in boxes:
        sandboxes.remove(box)
'''

CHILD_CRI = '''
import json, os, shutil, tempfile, time
from pathlib import Path
from helpers import session_watch
from helpers.cri_containerd import read_calls
from helpers.cri_node import CriNode, free_link_local, free_subnet
from helpers.netns import unique
from helpers.plugin import teardown_bridge_network


def test_hold_cri(tmp_path):
    name = unique("c")
    network = {"cniVersion": "1.0.0", "name": f"net-{name}", "type": "smarter-cni",
               "bridge": f"br{name[:10]}", "subnet": free_subnet(27)}
    base = tempfile.mkdtemp(prefix="scni-sw-")  # socket paths must stay short
    session_watch.note("dir", base)  # the watchdog removes it if the session is killed
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    cri = CriNode(Path(base), network, free_link_local(), state_dir)
    try:
        cri.start()
        pods = [cri.run_pod(unique("p")), cri.run_pod(unique("p"))]
        info = {"containerd_pid": cri.containerd.pid, "marker": str(cri.containerd.base),
                "containerd_start": session_watch.proc_start_time(cri.containerd.pid),
                "bridge": network["bridge"], "token": name, "veths": cri.host_veths(),
                "netns": sorted({c.netns for c in read_calls(cri.records) if c.netns}),
                "pods": [pod.ip for pod in pods], "watcher": session_watch.watcher_pid(),
                "base": base}
        path = os.environ["CHILD_INFO"]
        with open(path + ".tmp", "w") as handle:
            json.dump(info, handle)
        os.rename(path + ".tmp", path)
        time.sleep(600)  # killed here
    finally:
        cri.cleanup()
        teardown_bridge_network(network, state_dir)
        shutil.rmtree(base, ignore_errors=True)
'''


def _rules() -> str:
    out = []
    for program in ("iptables-save", "ip6tables-save"):
        for table in session_watch.TABLES:
            out.append(sh(program, "-t", table, check=False).stdout.decode())
    return "\n".join(out)


def _netns() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.decode().splitlines()
            if line.strip()}


def _link(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


class Foreign:
    """A netns, a bridge and rules named with tokens of another run (ours, not the child's)."""

    def __init__(self) -> None:
        self.token = unique("t")
        self.netns = unique("scni-", 24)
        self.bridge = f"br{self.token[:10]}"
        self.rule = ["FORWARD", "-i", self.bridge, "-m", "comment", "--comment",
                     f"smarter-cni net-{self.token}", "-j", "ACCEPT"]
        self.chain = chain_name(f"net-{self.token}")
        self.jump = ["POSTROUTING", "-s", "192.0.2.0/24", "-m", "comment", "--comment",
                     f"smarter-cni net-{self.token}", "-j", self.chain]

    def make(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("iptables", "-w", "10", "-A", *self.rule)
        sh("ip6tables", "-w", "10", "-A", *self.rule)
        sh("iptables", "-w", "10", "-t", "nat", "-N", self.chain)
        sh("iptables", "-w", "10", "-t", "nat", "-A", self.chain, "-j", "RETURN")
        sh("iptables", "-w", "10", "-t", "nat", "-A", *self.jump)

    def intact(self) -> list[str]:
        rules = _rules()
        return [what for what, there in (
            (f"netns {self.netns}", self.netns in _netns()),
            (f"bridge {self.bridge}", _link(self.bridge)),
            ("iptables/ip6tables rules", rules.count(f"net-{self.token}") == 3),
            (f"chain {self.chain}", f"-A {self.chain} -j RETURN" in rules)) if not there]

    def remove(self) -> None:
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        sh("iptables", "-w", "10", "-D", *self.rule, check=False)
        sh("ip6tables", "-w", "10", "-D", *self.rule, check=False)
        sh("iptables", "-w", "10", "-t", "nat", "-D", *self.jump, check=False)
        sh("iptables", "-w", "10", "-t", "nat", "-F", self.chain, check=False)
        sh("iptables", "-w", "10", "-t", "nat", "-X", self.chain, check=False)


def _run_child(tmp_path: Path, hold: bool, code: str = CHILD) -> tuple[subprocess.Popen, Path, Path]:
    (tmp_path / "test_child.py").write_text(code)
    info, watch = tmp_path / "info.json", tmp_path / "watch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTER_CNI_TEST_")}
    env.update(PYTHONPATH=f"{TESTS}{os.pathsep}{TESTS.parent / 'src'}",
               SMARTER_CNI_TEST_DOCKERD="private",  # never the node's dockerd
               SMARTER_CNI_TEST_WATCH_DIR=str(watch), CHILD_INFO=str(info),
               CHILD_HOLD="1" if hold else "0")
    env.pop("SMARTER_CNI_STATE_DIR", None)  # the child's conftest makes its own private one
    with open(tmp_path / "child.out", "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
             "--rootdir", str(tmp_path), "-c", os.devnull,
             "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_child.py")],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True)
    return child, info, watch


def _wait_for(info: Path, child: subprocess.Popen, tmp_path: Path, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while not info.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            out = (tmp_path / "child.out").read_text(errors="replace")[-3000:]
            pytest.fail(f"child pytest did not get ready (rc={child.poll()}): {out}")
        time.sleep(0.2)
    return json.loads(info.read_text())


def _leftovers(info: dict) -> list[str]:
    rules = _rules()
    left = []
    if session_watch.proc_start_time(info["dockerd_pid"]) == info["dockerd_start"]:
        left.append(f"dockerd {info['dockerd_pid']}")
    left += [f"container process {pid}" for pid in info.get("pids", []) if os.path.exists(f"/proc/{pid}")]
    if info.get("netns") in _netns():
        left.append(f"netns {info['netns']}")
    for key in ("veth", "loose", "bridge", "dockerd_bridge", "network_bridge"):
        if info.get(key) and _link(info[key]):
            left.append(f"link {info[key]}")
    for needle in (info.get("token"), info.get("chain"), info["dockerd_bridge"]):
        if needle and needle in rules:
            left.append(f"rule with {needle}")
    for key in ("dockerd_root", "state_dir"):
        if os.path.exists(info[key]):
            left.append(f"dir {info[key]}")
    return left


def _fallback_cleanup(child: subprocess.Popen, watch: Path) -> None:
    """If the watcher failed the test, what it should have removed goes anyway."""
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)  # our own child, by PID
        child.wait(10)
    session_watch.sweep(session_watch.load(watch / session_watch.REGISTRY),
                        session_watch.Log(watch / "fallback.log"))


def _end_holder(info_path: Path) -> None:
    """The child's netns holder: not tracked by the watcher (see the README), ended here
    by its PID and start time."""
    if not info_path.exists():
        return
    info = json.loads(info_path.read_text())
    if session_watch.proc_start_time(info["holder"]) == info["holder_start"]:
        os.kill(info["holder"], signal.SIGKILL)


def _watcher_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or \
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_killed_session_is_cleaned_up_and_other_runs_untouched(tmp_path: Path) -> None:
    foreign = Foreign()
    child = watch = None
    try:
        foreign.make()
        child, info_path, watch = _run_child(tmp_path, hold=True)
        info = _wait_for(info_path, child, tmp_path)
        assert len(_leftovers(info)) >= 8, _leftovers(info)
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)  # no fixture, no hook runs after this
        child.wait(10)
        assert _watcher_gone(info["watcher"], BOUND), f"watcher still running after {BOUND:g} s"
        took = time.monotonic() - killed
        left = _leftovers(info)
        log = (watch / session_watch.LOG).read_text()
        assert left == [], f"left after the kill: {left}\n{log}"
        assert foreign.intact() == [], f"another run's things were touched\n{log}"
        for what in (f"removed netns {info['netns']}", f"removed link {info['bridge']}",
                     f"removed link {info['veth']} (a port of bridge {info['bridge']})",
                     f"removed link {info['loose']} (its peer was in a removed netns)",
                     f"removed link {info['network_bridge']}", f"chain {info['chain']}",
                     "removed 3 container(s)", f"removed dir {info['dockerd_root']}"):
            assert what in log, f"{what!r} not in the log:\n{log}"
        assert "session-watch" in (tmp_path / "child.out").read_text()  # and on stderr
        print(f"cleanup after the kill took {took:.1f} s")
    finally:
        if child is not None and watch is not None:
            _fallback_cleanup(child, watch)
            _end_holder(tmp_path / "info.json")
        foreign.remove()


def _processes_naming(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and marker + "/" in cmd:
            found.append(f"{entry} {cmd[:100]}")
    return found


@pytest.mark.skipif(not (os.path.exists(CONTAINERD) and os.path.exists("/bin/busybox")),
                    reason="needs containerd (with its CRI plugin) and busybox-static")
def test_killed_cri_session_ends_containerd_and_its_pods(tmp_path: Path) -> None:
    """A killed session's containerd, its shims and pods, their pinned netns (cni-<uuid>,
    no token in the name) and host veths (on the run's bridge), and the bridge's rules."""
    child, info_path, watch = _run_child(tmp_path, hold=True, code=CHILD_CRI)
    try:
        info = _wait_for(info_path, child, tmp_path)
        assert len(info["veths"]) == 2 and len(info["netns"]) == 2, info
        assert _processes_naming(info["marker"]), "no shim names the containerd dir"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        killed = time.monotonic()
        assert _watcher_gone(info["watcher"], BOUND), f"watcher still running after {BOUND:g} s"
        took = time.monotonic() - killed
        log = (watch / session_watch.LOG).read_text()
        rules = _rules()
        left = [f"link {name}" for name in [info["bridge"], *info["veths"]] if _link(name)]
        left += [f"netns {path}" for path in info["netns"] if os.path.exists(path)]
        left += _processes_naming(info["marker"])
        left += [f"rule with {info['token']}"] if info["token"] in rules else []
        left += [f"dir {info['base']}"] if os.path.exists(info["base"]) else []
        if session_watch.proc_start_time(info["containerd_pid"]) == info["containerd_start"]:
            left.append(f"containerd {info['containerd_pid']}")
        assert left == [], f"left after the kill: {left}\n{log}"
        print(f"cleanup after the kill took {took:.1f} s")
    finally:
        _fallback_cleanup(child, watch)


def test_normal_end_leaves_nothing_to_remove(tmp_path: Path) -> None:
    child, info_path, watch = _run_child(tmp_path, hold=False)
    try:
        rc = child.wait(240)
        out = (tmp_path / "child.out").read_text(errors="replace")
        assert rc == 0, out[-3000:]
        info = json.loads(info_path.read_text())
        assert _watcher_gone(info["watcher"], BOUND)
        log = (watch / session_watch.LOG).read_text()
        assert "ended normally" in log and "0 thing(s) removed" in log, log
        assert " removed " not in log.replace("0 thing(s) removed", ""), log
        assert "session-watch" not in out  # quiet on stderr
        assert _leftovers(info) == []
    finally:
        _fallback_cleanup(child, watch)
