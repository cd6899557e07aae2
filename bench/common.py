"""Shared pieces of the benchmarks: exec a CNI plugin as a runtime does,
statistics, tables, machine facts and cleanup helpers.

Nothing here imports smarter_cni: the benchmarks measure the plugin from
the outside, through the same exec + env + stdin interface a runtime uses.
"""

from __future__ import annotations

import json
import os
import platform
import random
import select
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
DEBIAN_PYTHON = "/usr/bin/python3"
GNU_TIME = "/usr/bin/time"
TMPFS_DIR = "/dev/shm"
EXEC_TIMEOUT = 60.0


# ---------------------------------------------------------------- exec

class Exec:
    """One finished plugin run: exit code, output, wall time and rusage."""

    __slots__ = ("returncode", "stdout", "stderr", "wall", "cpu", "maxrss_kb")

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, wall: float,
                 cpu: float, maxrss_kb: int) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.wall = wall
        self.cpu = cpu
        self.maxrss_kb = maxrss_kb

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def json(self) -> Any:
        text = self.stdout.strip()
        return json.loads(text) if text else None

    def describe(self) -> str:
        return (f"exit {self.returncode}; stdout {self.stdout[:400]!r}; "
                f"stderr {self.stderr[-400:]!r}")


def exec_plugin(program: str, env: dict[str, str], stdin: bytes,
                timeout: float = EXEC_TIMEOUT, argv: Sequence[str] = ()) -> Exec:
    """posix_spawn `program`, feed stdin, collect output, reap with wait4.

    wait4 gives this child's own CPU time (and that of the processes it
    reaped, e.g. `ip` or `host-local`), so no wrapper is timed. Its ru_maxrss
    is NOT the plugin's: Linux carries the pre-exec high-water mark of the
    spawning (Python) process across exec; use `peak_rss_kb` for memory.
    `argv` replaces [program] as the argument vector when given.
    """
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
               (os.POSIX_SPAWN_DUP2, err_w, 2)]
    start = time.perf_counter()
    try:
        pid = os.posix_spawn(program, list(argv) or [program], env, file_actions=actions)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    try:
        view = memoryview(stdin)
        writers = [in_w] if stdin else []
        if not stdin:
            os.close(in_w)
            in_w = -1
        readers = [out_r, err_r]
        deadline = start + timeout
        while readers or writers:
            left = deadline - time.perf_counter()
            if left <= 0:
                os.kill(pid, 9)
                raise TimeoutError(f"{program} did not finish within {timeout:g} s")
            ready_r, ready_w, _ = select.select(readers, writers, [], left)
            for fd in ready_w:
                try:
                    view = view[os.write(fd, view[:65536]):]
                except BrokenPipeError:
                    view = view[len(view):]
                if not view:
                    writers.remove(fd)
                    os.close(fd)
                    in_w = -1
            for fd in ready_r:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    readers.remove(fd)
    finally:
        for fd in (in_w, out_r, err_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    return Exec(os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]),
                b"".join(chunks[err_r]), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def peak_rss_kb(program: str, env: dict[str, str], stdin: bytes) -> tuple[int, Exec]:
    """Peak RSS of one run measured by GNU time (a small C parent, so the
    number is the plugin's own, max'ed with the children it reaped); 0 when
    /usr/bin/time is missing (apt-get install time)."""
    if not os.path.exists(GNU_TIME):
        return 0, exec_plugin(program, env, stdin)
    fd, report = tempfile.mkstemp(prefix="scb-time-")
    os.close(fd)
    try:
        done = exec_plugin(GNU_TIME, env, stdin,
                           argv=[GNU_TIME, "-f", "%M", "-o", report, program])
        with open(report) as handle:
            lines = handle.read().split()
        return (int(lines[-1]) if lines and lines[-1].isdigit() else 0), done
    finally:
        os.unlink(report)


def cni_env(command: str, bin_dir: Path, container_id: str = "", netns: str = "",
            ifname: str = "eth0", args: str = "", extra: dict[str, str] | None = None
            ) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_COMMAND": command, "CNI_PATH": str(bin_dir)}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    env.update(extra or {})
    return env


def make_bin_dir(directory: Path, python: str, src: Path = SRC) -> Path:
    """CNI_PATH: our launcher (running the package under `src`) as `smarter-cni`,
    plus links to the reference plugins."""
    import sys

    sys.path.insert(0, str(src))
    from smarter_cni import launcher  # the same file `smarter-cni install` writes

    directory.mkdir(parents=True, exist_ok=True)
    launcher.write(str(directory / "smarter-cni"), python, str(src))
    for plugin in REFERENCE_PLUGINS.iterdir():
        target = directory / plugin.name
        if not target.exists():
            target.symlink_to(plugin)
    return directory


def is_tmpfs(path: str) -> bool:
    """Whether `path` is the mount point of a tmpfs (per /proc/self/mounts)."""
    try:
        with open("/proc/self/mounts") as handle:
            return any(line.split()[1:3] == [path, "tmpfs"] for line in handle)
    except OSError:
        return False


def reference_bridge(bridge: str, subnet: str, masq: bool, data_dir: Path) -> dict[str, Any]:
    """The reference `bridge` + `host-local` plugin entry of a chain (B: masq, C: without)."""
    conf: dict[str, Any] = {"type": "bridge", "bridge": bridge, "isGateway": True,
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                                     "dataDir": str(data_dir)}}
    if masq:
        conf["ipMasq"] = True
    return conf


def pod_args(container_id: str) -> str:
    """CNI_ARGS as kubelet passes them, for a bench pod."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{container_id[-10:]};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}")


def served_requests(log: Path) -> list[str]:
    """The request lines of a resident server's --verbose log ("resident: ADD <id> -> 0
    (1.80 ms)"), one per request a worker ran; [] when there is no log."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if line.startswith("resident: ") and " -> " in line]


def start_resident(python: str, src: Path, state_dir: Path, mode: str = "",
                   log: Path | None = None) -> subprocess.Popen:
    """The resident plugin server of `src` (issue 16) on `state_dir`, up (its socket there)
    when this returns. `mode` "warm"/"fork" ("": the server's default); `log`: its
    --verbose lines go there."""
    boot = (f"import sys; sys.path.insert(0, {str(src)!r}); "
            "from smarter_cni.resident import main; sys.exit(main(sys.argv[1:]))")
    argv = [python, "-I", "-S", "-c", boot, "--state-dir", str(state_dir)]
    argv += (["--mode", mode] if mode else []) + (["--verbose"] if log else [])
    with open(log or os.devnull, "wb") as err:
        proc = subprocess.Popen(argv, stderr=err if log else None,
                                env=dict(os.environ, SMARTER_CNI_STATE_DIR=str(state_dir)))
    deadline = time.monotonic() + 20
    while not (state_dir / "plugin.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the resident plugin server did not start")
        time.sleep(0.01)
    return proc


# Run by start_reconciler: the DNS service's reconciler thread (reconcile.start, the
# service's own hook: interval from SMARTER_CNI_RECONCILE_INTERVAL) without the DNS part
# (no address to watch, no listener to probe), until SIGTERM or SIGINT.
RECONCILER_BOOT = """
import json, signal, sys
sys.path.insert(0, sys.argv[1])
from smarter_cni import reconcile
from smarter_cni.netconf import parse_netconf
conf = parse_netconf(json.loads(sys.argv[2]))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # the thread too
thread = reconcile.start(conf, sys.argv[3], "", 53, None)
if thread is None:
    sys.exit("the reconciler is off (SMARTER_CNI_RECONCILE_INTERVAL=0)")
print("up", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
thread.stop()
thread.join(10)
"""


def start_reconciler(python: str, src: Path, state_dir: Path, config: dict[str, Any],
                     log: Path | None = None) -> subprocess.Popen:
    """The node DNS service's reconciler of `src` for the network of `config` (a plugin
    config with name and cniVersion) on `state_dir`, as a process of its own, running when
    this returns. It is what writes the `verified-<network>` stamp an ADD trusts instead of
    its own `iptables-save` (bridge_network.rules_verified), once the network is marked
    as set up here (the first ADD). Stop it with terminate() (SIGTERM); `log`: its
    log lines (repairs, errors) go there."""
    argv = [python, "-I", "-S", "-c", RECONCILER_BOOT, str(src), json.dumps(config),
            str(state_dir)]
    with open(log or os.devnull, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                env=dict(os.environ, SMARTER_CNI_STATE_DIR=str(state_dir)))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready or proc.stdout.readline().strip() != b"up":
        if proc.poll() is None:
            proc.kill()  # our own child, by its PID
        proc.wait(10)
        raise RuntimeError("the reconciler did not start" + (f" (see {log})" if log else ""))
    return proc


class Chain:
    """A conflist: plugins called in order with prevResult on ADD, reversed on DEL."""

    def __init__(self, label: str, name: str, plugins: list[dict[str, Any]], bin_dir: Path,
                 extra_env: dict[str, str] | None = None, cni_version: str = "1.0.0") -> None:
        self.label = label
        self.name = name
        self.plugins = plugins
        self.bin_dir = bin_dir
        self.extra_env = extra_env or {}
        self.cni_version = cni_version

    def _config(self, plugin: dict[str, Any], prev: Any) -> bytes:
        conf = dict(plugin, cniVersion=self.cni_version, name=self.name)
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def add(self, container_id: str, netns: str, args: str = "") -> tuple[float, float, Any, list[Exec]]:
        """Returns (wall seconds, cpu seconds, final result, per-plugin execs)."""
        prev = None
        runs = []
        for plugin in self.plugins:
            env = cni_env("ADD", self.bin_dir, container_id, netns, "eth0", args, self.extra_env)
            done = exec_plugin(str(self.bin_dir / plugin["type"]), env, self._config(plugin, prev))
            runs.append(done)
            if not done.ok:
                raise RuntimeError(f"{self.label}: {plugin['type']} ADD failed: {done.describe()}")
            prev = done.json()
        return sum(r.wall for r in runs), sum(r.cpu for r in runs), prev, runs

    def delete(self, container_id: str, netns: str, prev: Any, args: str = ""
               ) -> tuple[float, float, list[Exec]]:
        runs = []
        for plugin in reversed(self.plugins):
            env = cni_env("DEL", self.bin_dir, container_id, netns, "eth0", args, self.extra_env)
            done = exec_plugin(str(self.bin_dir / plugin["type"]), env, self._config(plugin, prev))
            runs.append(done)
            if not done.ok:
                raise RuntimeError(f"{self.label}: {plugin['type']} DEL failed: {done.describe()}")
        return sum(r.wall for r in runs), sum(r.cpu for r in runs), runs


def result_ipv4(result: Any, ifname: str = "eth0") -> str:
    """The pod's IPv4 address on `ifname` (a chained result may also carry lo's 127.0.0.1)."""
    interfaces = (result or {}).get("interfaces", [])
    for ip in (result or {}).get("ips", []):
        address = ip.get("address", ":")
        index = ip.get("interface")
        if ":" in address or address.startswith("127."):
            continue
        if isinstance(index, int) and 0 <= index < len(interfaces) and \
                interfaces[index].get("name") != ifname:
            continue
        return address.split("/")[0]
    return ""


def host_ifnames(result: Any) -> list[str]:
    """Host-side interfaces of a result (no sandbox), bridges excluded by the caller."""
    return [i["name"] for i in (result or {}).get("interfaces", []) if not i.get("sandbox")]


# ---------------------------------------------------------------- statistics

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values) if values else float("nan"),
            "median": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan")}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# ---------------------------------------------------------------- machine, names, cleanup

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version()}


def sh(*argv: str, check: bool = True, input: bytes | None = None,
       env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, input=input, timeout=timeout,
                          env=env)


def token(length: int = 6) -> str:
    return os.urandom(8).hex()[:length]


def free_subnets(count: int, prefix: int, base: str = "10.246") -> list[str]:
    """`count` distinct /prefix subnets of base.0.0/16 that no route on this host covers."""
    step = 1 << max(0, 24 - prefix)
    routes = sh("ip", "-4", "route", "show", "table", "all", check=False).stdout.decode()
    used = set()
    for line in routes.split("\n"):
        word = line.split(" ", 1)[0]
        if word.startswith(base + "."):
            used.add(int(word.split(".")[2]))
    candidates = [o for o in range(0, 256, step) if not any(o <= u < o + step for u in used)]
    random.shuffle(candidates)
    if len(candidates) < count:
        raise RuntimeError(f"not enough free /{prefix} subnets in {base}.0.0/16")
    return [f"{base}.{o}.0/{prefix}" for o in candidates[:count]]


class Namespaces:
    """Named netns under /var/run/netns, all deleted by `cleanup`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def create(self, count: int) -> list[str]:
        paths = []
        for _ in range(count):
            name = f"{self.prefix}-{token(10)}"
            sh("ip", "netns", "add", name)
            self.names.append(name)
            paths.append(f"/var/run/netns/{name}")
        return paths

    def cleanup(self) -> list[str]:
        problems = []
        for name in self.names:
            done = sh("ip", "netns", "del", name, check=False)
            if done.returncode != 0 and os.path.exists(f"/var/run/netns/{name}"):
                problems.append(f"netns {name}: {done.stderr.decode().strip()}")
        self.names.clear()
        return problems


def delete_link(name: str) -> None:
    if os.path.exists(f"/sys/class/net/{name}"):
        sh("ip", "link", "del", name, check=False)


def bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))
    except OSError:
        return []


def purge_iptables(marker: str, tables: Iterable[str] = ("nat", "filter")) -> int:
    """Delete rules whose comment mentions `marker`, then the CNI-* chains they jumped to.

    A safety net for the reference bridge plugin's per-pod masquerade chains
    in case a DEL did not run; returns how many rules were removed.
    """
    removed = 0
    for table in tables:
        listing = sh("iptables", "-w", "5", "-t", table, "-S", check=False).stdout.decode()
        chains = set()
        for line in listing.splitlines():
            if not line.startswith("-A ") or marker not in line:
                continue
            words = shlex.split(line)
            if "-j" in words:
                target = words[words.index("-j") + 1]
                if target.startswith("CNI-"):
                    chains.add(target)
            if sh("iptables", "-w", "5", "-t", table, "-D", *words[1:], check=False).returncode == 0:
                removed += 1
        for chain in chains:
            sh("iptables", "-w", "5", "-t", table, "-F", chain, check=False)
            sh("iptables", "-w", "5", "-t", table, "-X", chain, check=False)
    return removed


# ---------------------------------------------------------------- output

def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def fmt_ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
