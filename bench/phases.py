#!/usr/bin/env python3
"""Where one bridge-mode ADD and DEL spend their time, phase by phase (issue 16, "measure first").

    sudo python3 bench/phases.py [--rounds R] [--quick] [--json FILE]

Everything runs against a real bridge and real network namespaces with
unique names, a temp state dir and temp host-local dirs; all of it is
removed in `finally`. Four sections, every one in interleaved rounds
(medians with p10-p90 and min-max, never the best):

1. In-process phases: the plugin's own functions (this checkout's `src/`,
   nothing patched but a timing wrapper around `store.load`/`store.save`)
   driven step by step, the way `bridge.add` and `bridge.delete` call them,
   with `time.perf_counter` around each step; next to it the whole
   `plugin.cmd_add`/`cmd_del` call, so the sum of the steps can be checked
   against the real function.
2. Whole execs as a runtime makes them (env + stdin): smarter-cni through the
   real launcher with a stale and with a fresh reconciler stamp, the same
   through a timing launcher (interpreter start / imports / work / exit, with
   the clock the parent uses), the reference Go chains (loopback + bridge +
   host-local, with and without ipMasq), bare `python3 -IS -c pass` and
   `python3 -c pass`, the Go `bridge VERSION`, and the thin-client floor: a
   `python3 -IS` client that relays env + stdin over a Unix socket to a
   trivial server and prints its reply (the best case of a resident service).
3. `python3 -X importtime` of a real ADD and DEL exec, self time summed per
   module, split into what starts with the interpreter and what the plugin pulls.
4. State I/O against the number of records (one transaction at 0/120/250).

Then a Raspberry Pi estimate: user-space Python time scaled by a CPU factor,
kernel time by a smaller one (both printed; see --pi-factors).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Chain, percentile  # noqa: E402

REQUIRED = ("loopback", "bridge", "host-local")
# (Pi 4, Zero 2 W): (Python user-space factor, kernel factor); see docs/internals.md
DEFAULT_PI_FACTORS = "4:3.0:1.5,zero2w:6.0:2.5"

TIMING_LAUNCHER = """#!{python} -IS
# bench/phases.py timing launcher: the real launcher's lines plus three clock reads
import time
_start = time.monotonic()
import sys
sys.path.insert(0, {root!r})
for _name in {preimport!r}:
    __import__(_name)
_imported = time.monotonic()
from smarter_cni.entry import main
_code = main()
_done = time.monotonic()
_out = __import__("os").environ.get("SCB_PHASES_OUT")
if _out:
    with open(_out, "a") as _handle:
        _handle.write(f"{{_start}} {{_imported}} {{_done}}\\n")
{ending}
"""
# how the timing launcher ends: as the real launcher does, or (a prototype of a leaner exec)
# flushing stdout and leaving through os._exit, which skips the interpreter's teardown
ENDINGS = {"": "sys.exit(_code)",
           "-exit": "sys.stdout.flush()\nsys.stderr.flush()\n__import__('os')._exit(_code)"}

DISCOVER_LAUNCHER = """#!{python} -IS
import sys
_before = list(sys.modules)
sys.path.insert(0, {root!r})
from smarter_cni.entry import main
_code = main()
_out = __import__("os").environ.get("SCB_PHASES_OUT")
if _out:
    with open(_out, "w") as _handle:
        _handle.write("\\n".join(m for m in sys.modules if m not in _before))
sys.exit(_code)
"""

THIN_CLIENT = """#!{python} -IS
# The thin client's floor: relay the CNI_* environment and stdin to a Unix socket, print
# the reply. Only builtins (_socket and posix are built into Debian's python3).
import _socket
import posix
data = b""
while True:
    chunk = posix.read(0, 65536)
    if not chunk:
        break
    data += chunk
env = b"\\0".join(k + b"=" + v for k, v in posix.environ.items() if k.startswith(b"CNI_"))
sock = _socket.socket(1, 1)
sock.settimeout(0.05)
try:
    sock.connect({path!r})
except OSError:  # no service: do the work in-process, as the plugin does today
    import sys
    sys.path.insert(0, {root!r})
    from smarter_cni import plugin
    from smarter_cni.cni import dispatch
    code = dispatch.run(plugin.HANDLERS, stdin=data)
    sys.stdout.flush()
    posix._exit(code)
sock.sendall(len(env).to_bytes(4, "little") + env + data)
sock.shutdown(1)
reply = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    reply += chunk
posix.write(1, reply[1:])
{exit}
"""

TRIVIAL_SERVER = """
import socket, sys
reply = b"\\0" + {reply!r}
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(64)
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    conn, _ = server.accept()
    while conn.recv(65536):
        pass
    conn.sendall(reply)
    conn.close()
"""


SETNS_PROBE = """#!{python} -IS
import sys, time
sys.path.insert(0, {root!r})
from smarter_cni.dataplane import netlink
start = time.perf_counter()
netlink._load_setns()
print(time.perf_counter() - start)
"""


def stats(values: list[float]) -> dict[str, float]:
    """Milliseconds: median, p10, p90, min, max (inputs in seconds)."""
    ms = [v * 1000 for v in values]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median": percentile(ms, 50), "p10": percentile(ms, 10),
            "p90": percentile(ms, 90), "min": min(ms), "max": max(ms)}


def fmt(stat: dict[str, float]) -> str:
    if not stat.get("n"):
        return "-"
    return f"{stat['median']:.2f} ({stat['p10']:.2f}-{stat['p90']:.2f})"


def fs_type(path: str) -> str:
    """The file system type of the mount holding `path` (from /proc/self/mounts)."""
    best, kind = "", "?"
    try:
        with open("/proc/self/mounts") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 2 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def tmpfs_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and fs_type("/dev/shm") == "tmpfs" else ""


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- resources

class Run:
    """Owns everything made; `cleanup` removes all of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-phases-"))
        self.run_id = common.token(6)
        # A node's state dir (/run) is tmpfs; here /run may be on disk, so use /dev/shm
        self.shm = Path(tempfile.mkdtemp(prefix="smarter-cni-phases-", dir=tmpfs_dir())) \
            if tmpfs_dir() else None
        self.state_dir = (self.shm or self.tmp) / "state"
        self.state_dir.mkdir(mode=0o700)
        self.scratch = {"tmpfs": self.shm / "scratch"} if self.shm else {}
        self.scratch[f"disk ({fs_type(str(self.tmp))} {self.tmp.parent})"] = self.tmp / "scratch"
        for directory in self.scratch.values():
            directory.mkdir(mode=0o700)
        self.src = Path(args.src).resolve()
        self.bin_dir = common.make_bin_dir(self.tmp / "bin", args.python, self.src)
        self.netns = common.Namespaces(f"scp{self.run_id}")
        try:
            subnets = common.free_subnets(3, 24)
        except RuntimeError:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.shm:
                shutil.rmtree(self.shm, ignore_errors=True)
            raise
        self.network = f"scp-s-{self.run_id}"
        self.bridge = f"scpS{self.run_id}"
        self.conf = {"type": "smarter-cni", "bridge": self.bridge, "subnet": subnets[0]}
        env = {"SMARTER_CNI_STATE_DIR": str(self.state_dir)}
        self.env = env
        self.chains = {
            "S": Chain("smarter-cni", self.network, [{"type": "loopback"}, self.conf],
                       self.bin_dir, env),
            "B": Chain("reference, ipMasq", f"scp-b-{self.run_id}",
                       [{"type": "loopback"}, self._reference(f"scpB{self.run_id}", subnets[1], True)],
                       self.bin_dir),
            "C": Chain("reference, no ipMasq", f"scp-c-{self.run_id}",
                       [{"type": "loopback"}, self._reference(f"scpC{self.run_id}", subnets[2], False)],
                       self.bin_dir),
        }
        self.bridges = [self.bridge, f"scpB{self.run_id}", f"scpC{self.run_id}"]
        self.live: dict[str, tuple[str, str, Any]] = {}  # container id -> (chain, netns, prev)
        self.server_pid = 0
        self.inprocess_live: dict[str, str] = {}  # container id -> netns (in-process pods)

    def _reference(self, bridge: str, subnet: str, masq: bool) -> dict[str, Any]:
        return common.reference_bridge(bridge, subnet, masq, self.tmp / f"host-local-{bridge}")

    pod_args = staticmethod(common.pod_args)

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.server_pid:
            try:
                os.kill(self.server_pid, signal.SIGTERM)
                os.waitpid(self.server_pid, 0)
            except OSError:
                pass
            self.server_pid = 0
        for container_id, (key, netns, prev) in list(self.live.items()):
            try:
                self.chains[key].delete(container_id, netns, prev, self.pod_args(container_id))
            except Exception as err:  # keep cleaning
                problems.append(f"DEL {key}/{container_id}: {err}")
        self.live.clear()
        os.environ["SMARTER_CNI_STATE_DIR"] = str(self.state_dir)
        try:
            sys.path.insert(0, str(self.src))
            from smarter_cni.dataplane import links, names
            from smarter_cni.netconf import parse_netconf

            for container_id in list(self.inprocess_live):
                links.delete(names.host_ifname(container_id, "eth0"))
            dataplane_function("teardown_network")(parse_netconf(dict(
                self.conf, name=self.network, cniVersion="1.0.0")))
        except Exception as err:
            problems.append(f"teardown_network {self.network}: {err}")
        problems += self.netns.cleanup()
        for name in self.bridges:
            common.delete_link(name)
            if os.path.exists(f"/sys/class/net/{name}"):
                problems.append(f"bridge {name} is still there")
        leftover = sum(common.purge_iptables(f"scp-{k}-{self.run_id}") for k in "sbc")
        if leftover:
            problems.append(f"removed {leftover} leftover iptables rules")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.shm:
            shutil.rmtree(self.shm, ignore_errors=True)
        return problems


# ---------------------------------------------------------------- 1. in-process phases

class Clock:
    """Named laps; `store.load`/`store.save` time is booked to 'state read'/'state write'."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.io = {"read": 0.0, "write": 0.0}

    def add(self, name: str, seconds: float) -> None:
        self.laps[name] = self.laps.get(name, 0.0) + seconds

    def lap(self, name: str, func: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args)
        finally:
            self.add(name, time.perf_counter() - start)

    def tx(self, name: str, store: Any, body: Callable[[Any], None]) -> None:
        """A store.Transaction split into lock, read, logic, write (+ unlock)."""
        self.io = {"read": 0.0, "write": 0.0}
        start = time.perf_counter()
        tx = store.Transaction()
        tx.__enter__()
        entered = time.perf_counter()
        try:
            body(tx)
        except BaseException:
            tx.__exit__(*sys.exc_info())
            raise
        logic = time.perf_counter()
        tx.__exit__(None, None, None)
        end = time.perf_counter()
        self.add(f"{name}: lock", entered - start - self.io["read"])
        self.add(f"{name}: read state", self.io["read"])
        self.add(f"{name}: logic", logic - entered)
        self.add(f"{name}: write state + unlock", end - logic)


def dataplane_function(name: str) -> Any:
    """A bridge-mode function by name, wherever the data plane keeps it (bridge.py, or the
    module it was split into), so the bench survives moves between modules."""
    import importlib
    import pkgutil

    from smarter_cni.dataplane import bridge

    if hasattr(bridge, name):
        return getattr(bridge, name)
    import smarter_cni.dataplane as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("docker"):
            continue
        module = importlib.import_module(f"smarter_cni.dataplane.{info.name}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"no {name} in smarter_cni.dataplane")


class InProcess:
    """The plugin's functions imported from the checkout, driven step by step."""

    def __init__(self, run: Run) -> None:
        os.environ["SMARTER_CNI_STATE_DIR"] = str(run.state_dir)
        sys.path.insert(0, str(run.src))
        from smarter_cni import ipv4, plugin, registry, store
        from smarter_cni.cni import jsonfast
        from smarter_cni.cni import request as request_mod
        from smarter_cni.cni import result as result_mod
        from smarter_cni.dataplane import bridge, firewall, links, names, netlink

        self.run = run
        self.plugin, self.registry, self.store = plugin, registry, store
        self.jsonfast, self.request_mod, self.result_mod = jsonfast, request_mod, result_mod
        self.bridge, self.firewall, self.links = bridge, firewall, links
        self.names, self.netlink, self.ipv4 = names, netlink, ipv4
        self.clock: Clock | None = None
        real_load, real_save = store.load, store.save

        def timed_load(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return real_load(*a, **k)
            finally:
                if self.clock:
                    self.clock.io["read"] += time.perf_counter() - start

        def timed_save(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return real_save(*a, **k)
            finally:
                if self.clock:
                    self.clock.io["write"] += time.perf_counter() - start

        store.load, store.save = timed_load, timed_save  # a timing wrapper, same behaviour

    def fn(self, name: str) -> Any:
        return dataplane_function(name)

    def new_record(self, request: Any, conf: Any, host: str, address: int, pod: dict) -> Any:
        """ADD's new record: store.new_attachment where the package has it, else the older
        data plane's own _new_record (a --src snapshot from before the Attachment type)."""
        builder = getattr(self.store, "new_attachment", None)
        if builder is None:
            return self.fn("_new_record")(request, conf, host, address, conf.prefix, conf.gateway, pod)
        return builder(request, conf.name, "bridge", pod, conf.domain, host_ifname=host,
                       ips=[self.names.address_text(address, conf.prefix)],
                       gateway=self.ipv4.to_text(conf.gateway))

    def _request(self, command: str, container_id: str, netns: str) -> tuple[dict[str, str], bytes]:
        env = common.cni_env(command, self.run.bin_dir, container_id, netns, "eth0",
                             self.run.pod_args(container_id))
        prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": netns}],
                "ips": [{"interface": 0, "address": "127.0.0.1/8"}], "dns": {}}
        config = dict(self.run.conf, cniVersion="1.0.0", name=self.run.network)
        if command == "ADD":
            config["prevResult"] = prev
        return env, json.dumps(config).encode()

    def set_stamp(self, fresh: bool) -> None:
        path = self.run.state_dir / f"verified-{self.run.network}"
        if fresh:
            path.write_text(str(time.time() + 3600))
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def add_steps(self, container_id: str, netns: str, stale: bool) -> dict[str, float]:
        """bridge.add, one step at a time (the steady state: the network is ready)."""
        clock = self.clock = Clock()
        links, netlink, store = self.links, self.netlink, self.store
        env, raw = self._request("ADD", container_id, netns)
        self.set_stamp(not stale)
        total = time.perf_counter()
        request = clock.lap("parse request (env + stdin JSON)", self.request_mod.parse_request, env, raw)
        conf = clock.lap("parse config (netconf + version)", self.plugin._prepare, request)
        key = store.attachment_key(conf.name, request.container_id, request.ifname)
        host = clock.lap("names (host veth)", self.names.host_ifname, request.container_id, request.ifname)
        previous = clock.lap("prevResult + pod identity", self.fn("_previous_result"), request)
        pod = clock.lap("prevResult + pod identity", lambda: self.registry.pod_identity(
            request.pod_name, request.pod_namespace, request.args.get("K8S_POD_UID", ""),
            self.fn("pod_hostname")(request, conf)))
        verified = clock.lap("network look: stamp read", self.fn("rules_verified"), conf)
        problems = clock.lap("network look: sysfs + addr dump + forwarding",
                             self.fn("network_problems"), conf, None, False)
        if not verified:
            problems += clock.lap("network look: iptables-save (stale stamp)",
                                  self.firewall.present, conf)
        if problems:
            raise RuntimeError(f"network not whole in steady state: {problems}")
        holder: dict[str, Any] = {}

        def first(tx: Any) -> None:
            existing = tx.attachments.get(key)
            if existing and links.exists(existing.get("host_ifname", host)):
                raise RuntimeError("interface exists")
            if not self.fn("network_ready")(conf, tx.networks):
                raise RuntimeError("network marker not ready in steady state")
            address = self.fn("_reserve")(tx, conf, key, existing)
            record = self.new_record(request, conf, host, address, pod)
            tx.attachments[key] = record
            tx.dirty = True
            holder.update(address=address, record=record)

        clock.tx("state tx 1 (reserve)", store, first)
        address, record = holder["address"], holder["record"]
        # _plumb -> links.plumb_pod -> _plumb_netlink, step by step
        peer_mac = self.names.pod_mac(address)
        host_mac = self.names.random_mac()
        gateway_text = conf.gateway_text()
        pod_address = ".".join(str((address >> s) & 255) for s in (24, 16, 8, 0))
        if clock.lap("netlink: pre-checks (sysfs)", links.exists, host):
            raise RuntimeError(f"{host} exists")
        netns_fd = clock.lap("netlink: open netns fd", os.open, request.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            host_sock = clock.lap("netlink: host socket", netlink.host_socket)
            clock.lap("setns: load setns (_ctypes)", netlink._load_setns)
            pod_sock = clock.lap("setns: into pod netns + socket + back", netlink.pod_socket, netns_fd)
            try:
                bridge_index = clock.lap("netlink: pre-checks (sysfs)", links.ifindex, conf.bridge)
                clock.lap("netlink: create veth (peer in pod netns, on bridge, up)",
                          host_sock.create_veth, host, host_mac, request.ifname, peer_mac, netns_fd,
                          conf.mtu, bridge_index)
                if conf.hairpin:
                    index = clock.lap("netlink: pre-checks (sysfs)", links.ifindex, host)
                    clock.lap("netlink: hairpin", host_sock.set_hairpin, index)
                peer = clock.lap("netlink: pod side (ifindex, lo up, address, up, route)",
                                 pod_sock.ifindex, request.ifname)
                clock.lap("netlink: pod side (ifindex, lo up, address, up, route)", pod_sock.set_up, 1)
                clock.lap("netlink: pod side (ifindex, lo up, address, up, route)",
                          pod_sock.add_ipv4, peer, pod_address, conf.prefix)
                clock.lap("netlink: pod side (ifindex, lo up, address, up, route)", pod_sock.set_up, peer)
                clock.lap("netlink: pod side (ifindex, lo up, address, up, route)",
                          pod_sock.add_default_route, peer, gateway_text)
            finally:
                clock.lap("netlink: close sockets + fd", pod_sock.close)
                clock.lap("netlink: close sockets + fd", host_sock.close)
        finally:
            clock.lap("netlink: close sockets + fd", os.close, netns_fd)
        result_mod = self.result_mod

        def build() -> Any:
            result = result_mod.Result()
            result.interfaces = [result_mod.Interface(host, host_mac, mtu=conf.mtu),
                                 result_mod.Interface(request.ifname, peer_mac, request.netns, conf.mtu)]
            result.ips = [result_mod.IPConfig(f"{pod_address}/{conf.prefix}", gateway_text, 1)]
            result.routes = [result_mod.Route("0.0.0.0/0", gateway_text)]
            result.dns = conf.dns_result(request.pod_namespace)
            return self.fn("_after_previous")(previous, result)

        result = clock.lap("result: build + merge prevResult", build)

        def second(tx: Any) -> None:
            current = tx.attachments.get(key)
            if current is None or current.get("created") != record["created"]:
                raise RuntimeError("record vanished")
            record["ready"] = True
            record["mac"] = result.interfaces[-1].mac
            tx.attachments[key] = record
            tx.dirty = True

        clock.tx("state tx 2 (ready)", store, second)
        clock.lap("result: encode (to_dict + JSON)",
                  lambda: self.jsonfast.dumps(result.to_dict(request.cni_version)) + "\n")
        clock.add("(sum of steps)", sum(clock.laps.values()))
        clock.add("(whole, incl. bench overhead)", time.perf_counter() - total)
        self.run.inprocess_live[container_id] = netns
        self.clock = None
        return clock.laps

    def del_steps(self, container_id: str, netns: str) -> dict[str, float]:
        """bridge.delete, one step at a time."""
        clock = self.clock = Clock()
        store = self.store
        env, raw = self._request("DEL", container_id, netns)
        total = time.perf_counter()
        request = clock.lap("parse request (env + stdin JSON)", self.request_mod.parse_request, env, raw)
        conf = clock.lap("parse config (netconf + version)", self.plugin._prepare, request)
        key = store.attachment_key(conf.name, request.container_id, request.ifname)
        record = clock.lap("state read without lock (store.load)", store.load)["attachments"].get(key) or {}
        host = record.get("host_ifname") or self.names.host_ifname(request.container_id, request.ifname)
        if clock.lap("netlink: pre-checks (sysfs)", self.links.exists, host):
            # The kernel's acknowledgement follows an RCU grace period; a thread waits for it
            # (an exec's exit still does: see "exit" above).
            clock.lap("netlink: delete veth until unlisted (kernel)", self.links.delete_unlisted, host)
        if record:
            def drop(tx: Any) -> None:
                if tx.attachments.pop(key, None) is not None:
                    tx.dirty = True

            clock.tx("state tx (remove)", store, drop)
        clock.add("(sum of steps)", sum(clock.laps.values()))
        clock.add("(whole, incl. bench overhead)", time.perf_counter() - total)
        self.run.inprocess_live.pop(container_id, None)
        self.clock = None
        return clock.laps

    def whole(self, command: str, container_id: str, netns: str, stale: bool = True) -> float:
        """plugin.cmd_add / cmd_del as dispatch calls them, plus the request parse and the output."""
        env, raw = self._request(command, container_id, netns)
        self.set_stamp(not stale)
        start = time.perf_counter()
        request = self.request_mod.parse_request(env, raw)
        if command == "ADD":
            self.run.inprocess_live[container_id] = netns
            self.jsonfast.dumps(self.plugin.cmd_add(request))
        else:
            self.plugin.cmd_del(request)
            self.run.inprocess_live.pop(container_id, None)
        return time.perf_counter() - start

    def setns_pair(self, netns: str) -> float:
        """setns into the pod's netns and straight back: the two syscalls alone."""
        setns = self.netlink._load_setns()
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            start = time.perf_counter()
            if setns(fd, 0x40000000) != 0:
                raise RuntimeError("setns into the pod failed")
            if setns(home, 0x40000000) != 0:
                os.write(2, b"phases: cannot return to the host netns\n")
                os._exit(70)
            return time.perf_counter() - start
        finally:
            os.close(fd)
            os.close(home)

    def state_io_all(self, sizes: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
        out = []
        for where, directory in self.run.scratch.items():
            for row in self.state_io(directory, sizes, repeats):
                out.append(dict(row, where=where))
        return out

    def state_io(self, scratch: Path, sizes: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
        """One transaction (lock, read, write, unlock) with N attachments in the file, the
        sizes interleaved round by round (each in its own scratch dir)."""
        store = self.store
        self.clock = None
        dirs = {}
        for records in sizes:
            directory = scratch / str(records)
            directory.mkdir(mode=0o700)
            state = store.empty_state()
            for i in range(records):
                cid = f"{i:064x}"
                state["attachments"][f"net/{cid}/eth0"] = {
                    "network": "net", "mode": "bridge", "container_id": cid, "ifname": "eth0",
                    "netns": f"/var/run/netns/cni-{i:08x}-aaaa-bbbb-cccc-dddddddddddd",
                    "host_ifname": f"sm{i:013x}", "ips": [f"10.42.{i // 250}.{i % 250 + 2}/16"],
                    "gateway": "10.42.0.1", "mac": "0a:58:0a:2a:00:05",
                    "pod": {"name": f"pod-{i}", "namespace": "default", "uid": f"{i:032x}",
                            "hostname": ""}, "domain": "cluster.local", "ready": True,
                    "created": 1732790000.0 + i}
            store.save(state, str(directory))
            dirs[records] = str(directory)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(repeats):
            for records in (sizes if r % 2 == 0 else sizes[::-1]):
                start = time.perf_counter()
                with store.Transaction(dirs[records]) as tx:
                    tx.dirty = True
                times[records].append(time.perf_counter() - start)
        return [{"records": n, "bytes": os.path.getsize(store.records_path(dirs[n])),
                 "tx": stats(times[n])} for n in sizes]


# ---------------------------------------------------------------- 2. execs

def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def discover_imports(run: Run, netns: str) -> dict[str, list[str]]:
    """The modules a real ADD and DEL import after the interpreter is up, in import order."""
    script = write_script(run.tmp / "discover", DISCOVER_LAUNCHER.format(
        python=run.args.python, root=str(run.src)))
    out = run.tmp / "discover.out"
    found = {}
    container_id = f"disc{run.run_id}"
    conf = dict(run.conf, cniVersion="1.0.0", name=run.network)
    for command in ("ADD", "DEL"):
        env = common.cni_env(command, run.bin_dir, container_id, netns, "eth0",
                             run.pod_args(container_id), dict(run.env, SCB_PHASES_OUT=str(out)))
        if command == "ADD":
            run.live[container_id] = ("S", netns, None)
        done = common.exec_plugin(str(script), env, json.dumps(conf).encode())
        if not done.ok:
            raise RuntimeError(f"discovery {command} failed: {done.describe()}")
        if command == "DEL":
            run.live.pop(container_id, None)
        # the package's modules (they pull their stdlib imports in the natural order) and the
        # C modules it imports lazily; importing stdlib modules by list can break their cycles
        found[command] = [m for m in out.read_text().split("\n")
                          if m.startswith("smarter_cni") or m in ("_ctypes", "_socket")]
    return found


class Execs:
    """Interleaved exec rounds; each variant's samples in seconds."""

    def __init__(self, run: Run, preimport: dict[str, list[str]]) -> None:
        self.run = run
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.timing_out = run.tmp / "timing.out"
        self.timing_bin = run.tmp / "bin-timing"
        self.timing_bin.mkdir()
        for command in ("ADD", "DEL"):
            for suffix, ending in ENDINGS.items():
                write_script(self.timing_bin / f"smarter-cni-{command}{suffix}", TIMING_LAUNCHER.format(
                    python=run.args.python, root=str(run.src), preimport=preimport[command],
                    ending=ending))
        # the per-module cost of an import: 24 empty modules against 1
        self.modules = run.tmp / "empty-modules"
        self.modules.mkdir()
        for i in range(24):
            (self.modules / f"scpempty{i}.py").write_text("")
        self.import_lines = {
            "1": f"import sys; sys.path.insert(0, {str(self.modules)!r}); import scpempty0",
            "24": f"import sys; sys.path.insert(0, {str(self.modules)!r}); "
                  + "; ".join(f"import scpempty{i}" for i in range(24))}
        for line in self.import_lines.values():  # writes the bytecode caches
            subprocess.run([run.args.python, "-I", "-S", "-c", line], check=True)
        self.clients = {
            how: write_script(run.tmp / f"thin-client-{n}", THIN_CLIENT.format(
                python=run.args.python, path=str(run.tmp / "service.sock"), exit=line,
                root=str(run.src)))
            for n, (how, line) in enumerate((("raise SystemExit", "raise SystemExit(reply[0])"),
                                              ("posix._exit, no teardown", "posix._exit(reply[0])")))}
        # the same client with its service down (no socket): the in-process fallback
        self.fallback_client = write_script(run.tmp / "thin-client-fallback", THIN_CLIENT.format(
            python=run.args.python, path=str(run.tmp / "no-service.sock"),
            exit="posix._exit(reply[0])", root=str(run.src)))
        self.setns_probe = write_script(run.tmp / "setns-probe", SETNS_PROBE.format(
            python=run.args.python, root=str(run.src)))
        reply = json.dumps({"cniVersion": "1.0.0", "interfaces": [], "ips": [], "dns": {}}).encode()
        server = write_script(run.tmp / "trivial-server.py", TRIVIAL_SERVER.format(reply=reply))
        proc = subprocess.Popen([run.args.python, "-I", "-S", str(server), str(run.tmp / "service.sock")],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        run.server_pid = proc.pid
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("trivial server did not start")
        self.server = proc

    def note(self, name: str, wall: float, cpu: float = 0.0) -> None:
        self.samples.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def _env(self, command: str, container_id: str, netns: str, extra: dict[str, str]) -> dict[str, str]:
        return common.cni_env(command, self.run.bin_dir, container_id, netns, "eth0",
                              self.run.pod_args(container_id), extra)

    def smarter(self, label: str, command: str, container_id: str, netns: str,
                fresh: bool, timing: bool, ending: str = "", program: str = "") -> None:
        """loopback (ADD first / DEL last) + smarter-cni, as a runtime calls them."""
        run = self.run
        stamp = run.state_dir / f"verified-{run.network}"
        if command == "ADD":
            if fresh:
                stamp.write_text(str(time.time() + 3600))
            elif stamp.exists():
                stamp.unlink()
        conf = dict(run.conf, cniVersion="1.0.0", name=run.network)
        loop_conf = {"type": "loopback", "cniVersion": "1.0.0", "name": run.network}
        program = program or (str(self.timing_bin / f"smarter-cni-{command}{ending}") if timing
                              else str(run.bin_dir / "smarter-cni"))
        extra = dict(run.env, SCB_PHASES_OUT=str(self.timing_out)) if timing else dict(run.env)
        loop = None
        if command == "ADD":
            loop = common.exec_plugin(str(run.bin_dir / "loopback"),
                                      self._env("ADD", container_id, netns, {}),
                                      json.dumps(loop_conf).encode())
            conf["prevResult"] = loop.json()
            run.live[container_id] = ("S", netns, None)
        if timing and self.timing_out.exists():
            self.timing_out.unlink()
        spawned = time.monotonic()
        done = common.exec_plugin(program, self._env(command, container_id, netns, extra),
                                  json.dumps(conf).encode())
        reaped = spawned + done.wall
        if not done.ok:
            raise RuntimeError(f"smarter-cni {command} ({label}) failed: {done.describe()}")
        if command == "DEL":
            loop = common.exec_plugin(str(run.bin_dir / "loopback"),
                                      self._env("DEL", container_id, netns, {}),
                                      json.dumps(loop_conf).encode())
            run.live.pop(container_id, None)
        else:
            run.live[container_id] = ("S", netns, done.json())
        assert loop is not None and loop.ok, loop.describe() if loop else "no loopback"
        self.note(f"{command} {label}", done.wall, done.cpu)
        self.note(f"{command} {label} + loopback", done.wall + loop.wall, done.cpu + loop.cpu)
        if timing and not ending:
            start, imported, finished = (float(x) for x in self.timing_out.read_text().split())
            self.note(f"{command} exec: interpreter start (spawn -> launcher's first line)",
                      start - spawned)
            self.note(f"{command} exec: imports (launcher's imports + the plugin's)", imported - start)
            self.note(f"{command} exec: plugin work (main())", finished - imported)
            self.note(f"{command} exec: exit (interpreter teardown, reap)", reaped - finished)

    def reference(self, key: str, command: str, container_id: str, netns: str) -> None:
        run = self.run
        chain = run.chains[key]
        if command == "ADD":
            run.live[container_id] = (key, netns, None)
            wall, cpu, result, runs = chain.add(container_id, netns, run.pod_args(container_id))
            run.live[container_id] = (key, netns, result)
        else:
            prev = run.live[container_id][2]
            wall, cpu, runs = chain.delete(container_id, netns, prev, run.pod_args(container_id))
            run.live.pop(container_id, None)
        self.note(f"{command} {chain.label} (incl. loopback)", wall, cpu)

    def footprint(self) -> dict[str, int]:
        """Peak RSS (GNU time) of the thin client and of smarter-cni VERSION; 0 without time."""
        env = self._env("ADD", f"rss{self.run.run_id}", "/var/run/netns/none", {})
        conf = json.dumps(dict(self.run.conf, cniVersion="1.0.0", name=self.run.network)).encode()
        client, _ = common.peak_rss_kb(str(self.clients["posix._exit, no teardown"]), env, conf)
        version, _ = common.peak_rss_kb(str(self.run.bin_dir / "smarter-cni"), common.cni_env(
            "VERSION", self.run.bin_dir, extra=self.run.env), b'{"cniVersion": "1.0.0"}')
        return {"thin client": client, "smarter-cni VERSION": version}

    def floors(self) -> None:
        python = self.run.args.python
        for label, argv in (("python3 -I -S -c pass (the launcher's flags)", [python, "-I", "-S", "-c", "pass"]),
                            ("python3 -c pass (site imported)", [python, "-c", "pass"]),
                            ("python3 -I -S -c 'import os'", [python, "-I", "-S", "-c", "import os"]),
                            ("python3 -I -S -c 'import posix; posix._exit(0)' (no teardown)",
                             [python, "-I", "-S", "-c", "import posix; posix._exit(0)"])):
            done = common.exec_plugin(python, {"PATH": "/usr/bin:/bin"}, b"", argv=argv)
            self.note(f"floor: {label}", done.wall, done.cpu)
        for count, line in self.import_lines.items():
            done = common.exec_plugin(python, {"PATH": "/usr/bin:/bin"}, b"",
                                      argv=[python, "-I", "-S", "-c", line])
            self.note(f"floor: python3 -I -S importing {count} empty module(s)", done.wall, done.cpu)
        env = common.cni_env("VERSION", self.run.bin_dir)
        done = common.exec_plugin(str(self.run.bin_dir / "bridge"), env,
                                  b'{"cniVersion": "1.0.0"}')
        self.note("floor: Go bridge VERSION", done.wall, done.cpu)
        env = self._env("ADD", f"thin{self.run.run_id}", "/var/run/netns/none", {})
        conf = json.dumps(dict(self.run.conf, cniVersion="1.0.0", name=self.run.network)).encode()
        for how, client in self.clients.items():
            done = common.exec_plugin(str(client), env, conf)
            if not done.ok or b"cniVersion" not in done.stdout:
                raise RuntimeError(f"thin client failed: {done.describe()}")
            self.note(f"floor: thin client -> Unix socket -> trivial server -> reply ({how})",
                      done.wall, done.cpu)
        done = common.exec_plugin(str(self.setns_probe), {"PATH": "/usr/bin:/bin"}, b"")
        if not done.ok:
            raise RuntimeError(f"setns probe failed: {done.describe()}")
        self.note("cold: setns first use in a fresh process (import _ctypes + C function types)",
                  float(done.stdout.split()[0]), float(done.stdout.split()[0]))
        done = common.exec_plugin(str(self.run.bin_dir / "smarter-cni"), common.cni_env(
            "VERSION", self.run.bin_dir, extra=self.run.env), b'{"cniVersion": "1.0.0"}')
        self.note("floor: smarter-cni VERSION", done.wall, done.cpu)


def importtime(run: Run, netns: str, repeats: int) -> dict[str, Any]:
    """-X importtime of real ADD/DEL execs: self time per module, medians over `repeats`."""
    python = run.args.python
    base = common.exec_plugin(python, {"PATH": "/usr/bin:/bin"}, b"",
                              argv=[python, "-I", "-S", "-X", "importtime", "-c", "pass"])
    at_start = set()
    for line in base.stderr.decode().splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            at_start.add(line.split("|", 2)[2].strip())
    argv = [python, "-I", "-S", "-X", "importtime", str(run.bin_dir / "smarter-cni")]
    conf = dict(run.conf, cniVersion="1.0.0", name=run.network)
    out: dict[str, Any] = {}
    per: dict[str, dict[str, list[float]]] = {"ADD": {}, "DEL": {}}
    for i in range(repeats):
        container_id = f"imp{i}{run.run_id}"
        for command in ("ADD", "DEL"):
            env = common.cni_env(command, run.bin_dir, container_id, netns, "eth0",
                                 run.pod_args(container_id), run.env)
            if command == "ADD":
                run.live[container_id] = ("S", netns, None)
            done = common.exec_plugin(python, env, json.dumps(conf).encode(), argv=argv)
            if not done.ok:
                raise RuntimeError(f"importtime {command}: {done.describe()}")
            if command == "DEL":
                run.live.pop(container_id, None)
            seen: dict[str, float] = {}
            for line in done.stderr.decode().splitlines():
                if not line.startswith("import time:") or "self [us]" in line:
                    continue
                self_us, _, name = line[len("import time:"):].split("|", 2)
                seen[name.strip()] = int(self_us) / 1e6
            for name, value in seen.items():
                per[command].setdefault(name, []).append(value)
    for command, modules in per.items():
        rows = []
        for name, values in modules.items():
            rows.append({"module": name, "self_ms": percentile(values, 50) * 1000,
                         "at_interpreter_start": name in at_start})
        rows.sort(key=lambda r: -r["self_ms"])
        ours = sum(r["self_ms"] for r in rows if r["module"].startswith("smarter_cni"))
        stdlib = sum(r["self_ms"] for r in rows
                     if not r["module"].startswith("smarter_cni") and not r["at_interpreter_start"])
        start = sum(r["self_ms"] for r in rows if r["at_interpreter_start"])
        out[command] = {"modules": rows, "smarter_cni_ms": ours, "stdlib_after_start_ms": stdlib,
                        "interpreter_start_ms": start, "count": len(rows),
                        "smarter_cni_count": sum(1 for r in rows if r["module"].startswith("smarter_cni"))}
    return out


# ---------------------------------------------------------------- main

def measure(run: Run) -> dict[str, Any]:
    args = run.args
    rounds = args.rounds
    results: dict[str, Any] = {"machine": common.machine(), "command": " ".join(sys.argv),
                               "rounds": rounds, "python": args.python, "src": str(run.src),
                               "git_head": common.sh("git", "-C", str(common.ROOT), "rev-parse",
                                                     "--short", "HEAD", check=False).stdout.decode().strip(),
                               "load": {"start": loadavg()}}
    spaces = run.netns.create(10)
    # warm-up: creates every chain's bridge and rules (the cold first ADD, reported)
    first = {}
    for key in ("S", "B", "C"):
        container_id = f"warm{key}{run.run_id}"
        run.live[container_id] = (key, spaces[0], None)
        wall, _, result, _ = run.chains[key].add(container_id, spaces[0], run.pod_args(container_id))
        run.live[container_id] = (key, spaces[0], result)
        first[key] = wall * 1000
        run.chains[key].delete(container_id, spaces[0], result, run.pod_args(container_id))
        run.live.pop(container_id)
    results["first_add_ms"] = first
    preimport = discover_imports(run, spaces[0])
    results["preimported"] = preimport
    inproc = InProcess(run)
    execs = Execs(run, preimport)
    add_laps: list[dict[str, float]] = []
    del_laps: list[dict[str, float]] = []
    add_laps_fresh: list[dict[str, float]] = []
    whole: dict[str, list[float]] = {"ADD": [], "DEL": []}
    setns: list[float] = []
    # one warm in-process pass so the first round is not a cold one
    inproc.add_steps(f"ipw{run.run_id}", spaces[7], True)
    inproc.del_steps(f"ipw{run.run_id}", spaces[7])
    results["load"]["after_setup"] = loadavg()
    for r in range(rounds):
        order = ["S", "F", "T", "X", "D", "B", "C", "I", "J", "W"]
        ids = {k: f"r{r}{k}{run.run_id}" for k in order}
        ns = dict(zip(order, spaces))
        if r % 2:
            order.reverse()

        def op(key: str, command: str) -> None:
            cid, space = ids[key], ns[key]  # noqa: B023 (called within this round only)
            if key == "D":
                execs.smarter("smarter-cni, thin client, service down (in-process fallback), "
                              "stale stamp", command, cid, space, False, False,
                              program=str(execs.fallback_client))
            elif key in "SFTX":
                label = {"S": "smarter-cni, stale stamp", "F": "smarter-cni, fresh stamp",
                         "T": "smarter-cni via timing launcher, stale stamp",
                         "X": "smarter-cni, launcher ending in os._exit (prototype), stale stamp"}[key]
                execs.smarter(label, command, cid, space, key == "F", key in "TX",
                              "-exit" if key == "X" else "")
            elif key in "BC":
                execs.reference(key, command, cid, space)
            elif key in "IJ" and command == "ADD":
                (add_laps if key == "I" else add_laps_fresh).append(
                    inproc.add_steps(cid, space, key == "I"))
            elif key == "I":
                del_laps.append(inproc.del_steps(cid, space))
            elif key == "J":
                inproc.del_steps(cid, space)
            else:
                whole[command].append(inproc.whole(command, cid, space))

        for key in order:
            op(key, "ADD")
        setns.append(inproc.setns_pair(ns["I"]))
        execs.floors()
        for key in order:
            op(key, "DEL")
    results["load"]["after_rounds"] = loadavg()

    def laps_stats(laps: list[dict[str, float]]) -> dict[str, Any]:
        names: list[str] = []
        for lap in laps:
            for name in lap:
                if name not in names:
                    names.append(name)
        return {name: stats([lap.get(name, 0.0) for lap in laps]) for name in names}

    results["inprocess"] = {"ADD stale stamp": laps_stats(add_laps),
                            "ADD fresh stamp": laps_stats(add_laps_fresh),
                            "DEL": laps_stats(del_laps),
                            "whole plugin.cmd_add (stale stamp)": stats(whole["ADD"]),
                            "whole plugin.cmd_del": stats(whole["DEL"]),
                            "setns pair (into the pod netns and back)": stats(setns)}
    results["execs"] = {name: {"wall": stats(v), "cpu": stats(execs.cpu[name])}
                        for name, v in execs.samples.items()}
    results["ratios"] = paired_ratios(execs.samples)
    results["importtime"] = importtime(run, spaces[0], max(1, min(9, rounds)))
    results["peak_rss_kb"] = execs.footprint()
    results["state_io"] = inproc.state_io_all((0, 120, 250), max(9, rounds))
    results["state_dir"] = f"{run.state_dir} ({fs_type(str(run.state_dir))})"
    results["load"]["end"] = loadavg()
    results["pi_factors"] = parse_factors(args.pi_factors)
    return results


RATIOS = [
    (f"{op} smarter-cni {variant} / reference {ref} (both incl. loopback)",
     f"{op} smarter-cni, {variant} + loopback", f"{op} reference, {ref} (incl. loopback)")
    for op, variants in (("ADD", ("stale stamp", "fresh stamp",
                                  "launcher ending in os._exit (prototype), stale stamp",
                                  "thin client, service down (in-process fallback), stale stamp")),
                         ("DEL", ("stale stamp", "launcher ending in os._exit (prototype), stale stamp",
                                  "thin client, service down (in-process fallback), stale stamp")))
    for variant in variants for ref in ("no ipMasq", "ipMasq")]


def paired_ratios(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Round-by-round ratios (each round ran every variant once, interleaved)."""
    out = {}
    for label, ours, theirs in RATIOS:
        a, b = samples.get(ours, []), samples.get(theirs, [])
        values = [x / y for x, y in zip(a, b) if y > 0]
        if values:
            out[label] = {"n": len(values), "median": percentile(values, 50),
                          "p10": percentile(values, 10), "p90": percentile(values, 90),
                          "ratio_of_medians": percentile(a, 50) / percentile(b, 50)}
    return out


def parse_factors(text: str) -> dict[str, dict[str, float]]:
    out = {}
    for part in text.split(","):
        name, cpu, kernel = part.split(":")
        out[name] = {"python": float(cpu), "kernel": float(kernel)}
    return out


# ---------------------------------------------------------------- report

# Which phases are Python user-space (scale with the CPU) and which are kernel work.
KERNEL_WORDS = ("netlink: create", "netlink: delete", "netlink: pod side", "netlink: hairpin",
                "setns:", "iptables-save", "netlink: host socket", "netlink: open netns",
                "netlink: close")


def is_kernel(name: str) -> bool:
    return any(word in name for word in KERNEL_WORDS)


def phase_table(results: dict[str, Any], command: str) -> tuple[list[list[str]], dict[str, float]]:
    """Rows: phase, median (p10-p90) here, Pi estimates; medians of the exec phases +
    in-process work split by step (scaled to the exec's measured work)."""
    execs = results["execs"]
    factors = results["pi_factors"]
    label = "ADD stale stamp" if command == "ADD" else "DEL"
    laps = results["inprocess"][label]
    rows: list[list[str]] = []
    here: dict[str, float] = {}

    def row(name: str, stat: dict[str, float], kernel: bool) -> None:
        med = stat["median"]
        here[name] = med
        pis = [f"{med * (f['kernel'] if kernel else f['python']):.1f}" for f in factors.values()]
        rows.append([name, fmt(stat), "kernel" if kernel else "python", *pis])

    prefix = f"{command} exec: "
    for name, data in execs.items():
        if name.startswith(prefix) and "plugin work" not in name:
            row(name[len(prefix):], data["wall"], False)
        elif name.startswith(prefix):
            work = data["wall"]
    for name, stat in laps.items():
        if name.startswith("("):
            continue
        row(f"  work: {name}", stat, is_kernel(name))
    rows.append(["  work, whole (exec, cold caches)", fmt(work), "", *["" for _ in factors]])
    rows.append(["  work, sum of the steps (in-process, warm)", fmt(laps["(sum of steps)"]), "",
                 *["" for _ in factors]])
    return rows, here


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"smarter-cni phase bench — {m['date_utc']}, nproc {m['nproc']}, kernel {m['kernel']}, "
             f"{m['cpu']}, plugin python {results['python']}, bench python {m['python']}, "
             f"{results['rounds']} rounds",
             f"plugin from {results['src']} (checkout at {results['git_head']}); "
             f"state dir {results['state_dir']}",
             "load average: " + ", ".join(f"{k} {v}" for k, v in results["load"].items()),
             "All times ms: median (p10-p90) over interleaved rounds.", ""]
    factors = results["pi_factors"]
    pi_heads = [f"Pi {name} est." for name in factors]
    lines.append("Pi estimate factors: " + "; ".join(
        f"Pi {n}: python x{f['python']:g}, kernel x{f['kernel']:g}" for n, f in factors.items()))
    for command in ("ADD", "DEL"):
        rows, _ = phase_table(results, command)
        lines.append(f"\n1. One bridge-mode {command} by phase (exec split by the timing launcher; "
                     "work split in-process)")
        lines.append(common.table(["phase", "here", "kind", *pi_heads], rows))
    lines.append("\nIn-process, ADD with a fresh reconciler stamp (no iptables-save):")
    fresh = results["inprocess"]["ADD fresh stamp"]
    lines.append(f"  sum of steps {fmt(fresh['(sum of steps)'])}; "
                 f"stale: {fmt(results['inprocess']['ADD stale stamp']['(sum of steps)'])}")
    for name in ("whole plugin.cmd_add (stale stamp)", "whole plugin.cmd_del",
                 "setns pair (into the pod netns and back)"):
        lines.append(f"  {name}: {fmt(results['inprocess'][name])}")

    lines.append("\n2. Whole execs (env + stdin, as a runtime makes them)")
    rows = []
    for name, data in results["execs"].items():
        if " exec: " in name:
            continue
        wall, cpu = data["wall"], data["cpu"]
        ests = []
        for f in factors.values():
            c = cpu.get("median", 0.0)
            w = wall["median"]
            ests.append(f"{min(c, w) * f['python'] + max(0.0, w - c) * f['kernel']:.1f}")
        rows.append([name, fmt(wall), f"{wall['min']:.1f}-{wall['max']:.1f}",
                     f"{cpu.get('median', 0):.1f}", *ests])
    lines.append(common.table(["exec", "wall", "min-max", "cpu", *pi_heads], rows))
    lines.append("(Pi estimate of a whole exec: its CPU time x the python factor, the rest x the kernel factor)")
    lines.append("\nRatios, round by round: median (p10-p90); and the ratio of the medians")
    lines.append(common.table(["ratio", "per round", "of medians"], [
        [name, f"{r['median']:.2f}x ({r['p10']:.2f}-{r['p90']:.2f})", f"{r['ratio_of_medians']:.2f}x"]
        for name, r in results["ratios"].items()]))
    lines.append("peak RSS (GNU time), MB: " + ", ".join(
        f"{k} {v / 1024:.1f}" for k, v in results.get("peak_rss_kb", {}).items()))
    lines.append("first ADD (creates the network), ms: " + ", ".join(
        f"{k} {v:.1f}" for k, v in results["first_add_ms"].items()))

    lines.append("\n3. -X importtime of real execs (self time, median)")
    for command, data in results["importtime"].items():
        lines.append(f"{command}: interpreter's own start-up imports {data['interpreter_start_ms']:.1f} ms; "
                     f"stdlib pulled by the plugin {data['stdlib_after_start_ms']:.1f} ms; "
                     f"smarter_cni {data['smarter_cni_ms']:.1f} ms in {data['smarter_cni_count']} modules")
        top = [r for r in data["modules"] if not r["at_interpreter_start"]][:14]
        lines.append("  " + ", ".join(f"{r['module']} {r['self_ms']:.2f}" for r in top))
    lines.append("\n4. State I/O: one transaction (lock, read, write, unlock) by records in the file")
    lines.append(common.table(["where", "records", "bytes", "tx ms"],
                              [[s["where"], s["records"], s["bytes"], fmt(s["tx"])]
                               for s in results["state_io"]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--quick", action="store_true", help="3 rounds (the smoke test)")
    parser.add_argument("--python", default=common.DEBIAN_PYTHON)
    parser.add_argument("--src", default=str(common.SRC), help="the package tree to measure")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--append-results", help="append the command and report to this file")
    parser.add_argument("--pi-factors", default=DEFAULT_PI_FACTORS,
                        help="NAME:PYTHON:KERNEL,... slow-down factors for the Pi estimate "
                             f"(default {DEFAULT_PI_FACTORS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    if not 1 <= args.rounds <= 200:
        parser.error("--rounds must be 1..200")
    if os.geteuid() != 0:
        print("phases: needs root (network namespaces, bridges, iptables)", file=sys.stderr)
        return 2
    missing = [p for p in REQUIRED if not (common.REFERENCE_PLUGINS / p).exists()]
    if missing:
        print(f"phases: reference plugins missing in {common.REFERENCE_PLUGINS}: {missing} "
              "(apt-get install containernetworking-plugins)", file=sys.stderr)
        return 2
    parse_factors(args.pi_factors)
    run = Run(args)
    try:
        results = measure(run)
    finally:
        problems = run.cleanup()
        for problem in problems:
            print(f"phases: cleanup: {problem}", file=sys.stderr)
    results["cleanup_problems"] = problems
    text = report(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.append_results:
        with open(args.append_results, "a") as handle:
            handle.write(f"\n### phases, {results['machine']['date_utc']}\n\n"
                         f"`{results['command']}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
