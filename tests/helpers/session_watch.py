"""A session watchdog: cleans up after a test session that was killed outright.

Fixtures remove what tests make, also when tests fail; but a pytest that is
SIGKILLed (OOM killer, CI timeout, `kill -9`) runs no fixture, and its
private dockerd (own session, so a Ctrl-C does not hit it), containers,
netns, links and iptables rules stay on the host.

At session start (tests/conftest.py, as root) `start()` spawns this file as a
small watcher process in a session of its own. It blocks on the read end of a
pipe whose write end only pytest holds (the fd is close-on-exec, so no
subprocess inherits it): EOF means every thread of pytest is gone, whatever
killed it -- no polling. PR_SET_PDEATHSIG was the other option; it tracks the
*thread* that forked the child (a fixture running in a helper thread would
trigger it early), arrives as a signal to handle, and needs prctl via ctypes.

While the session runs, the helpers note what it makes in a registry file in
the session's watch dir: the run's tokens (helpers.netns: SESSION, unique()
parts, adopted runtime IDs), exact names (a dockerd's bridge), processes it
started (PID and kernel start time, so a reused PID is never hit), temp dirs.
A normal end writes "done" down the pipe at pytest_unconfigure, after every
fixture; the watcher then still sweeps (so a fixture's leak is reported) and,
finding nothing, exits quietly and removes its own watch dir.

The sweep (`python session_watch.py --dir D --fd N`):
 1. each tracked dockerd still alive: note its networks' names and bridges,
    `docker rm -f` its containers, SIGTERM it by PID, SIGKILL after 15 s;
    then any process whose command line names its temp root (its containerd,
    shims) and their descendants; other tracked processes: SIGTERM, SIGKILL.
 2. the ports of this run's bridges (pod veths) and the named netns their
    peers live in (a killed containerd's cni-<uuid>); network namespaces
    whose name carries a token, and the host ends of veths whose peers live
    in them;
 3. host links whose name carries a token or is a noted name (never lo,
    docker0, smarter0, smarter-dns);
 4. iptables/ip6tables rules (filter, nat, mangle, raw) whose text carries a
    token or noted name, chains whose name does, and chains only those rules
    jumped to once nothing else refers to them;
 5. noted temp dirs (mounts under them unmounted first).
"Carries a token": the token is a substring, or the name ends in 9+ hex
digits that start a token (a bridge name keeps only a prefix: "br" + "t" +
9 of its digits); hash names (sm<13 hex>, br-<id>) are only ever exact.
Everything removed is logged to D/watch.log and stderr.

No import of pytest or of the project. Measured: `start()` costs pytest under
1 ms; a clean-end sweep takes ~0.1 s, after pytest has exited.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGISTRY = "registry.jsonl"
LOG = "watch.log"
PROTECTED_LINKS = frozenset({"lo", "docker0", "smarter0", "smarter-dns", "cni0"})
DOCKER_BUILTIN_NETWORKS = frozenset({"bridge", "host", "none"})
MIN_NAME = 8  # shorter noted names are not matched as substrings
PREFIX = 9  # digits of a token a truncated name must keep to count as ours
TRAILING_HEX = re.compile(rf"[0-9a-f]{{{PREFIX},}}$")
HASH_NAME = re.compile(r"^(sm[0-9a-f]{13}|br-[0-9a-f]{12}|veth[0-9a-f]{7})$")
TABLES = ("filter", "nat", "mangle", "raw")

# ---------------------------------------------------------------- pytest side

_STATE: dict[str, object] = {"registry": None, "fd": None, "proc": None, "dir": None}
_PENDING: list[dict] = []


def note(kind: str, value: str, **extra: object) -> None:
    """Record something this session made (kind: token, name, dir, mounts, proc)."""
    entry = {"k": kind, "v": value, **extra}
    registry = _STATE["registry"]
    if registry is None:
        _PENDING.append(entry)
        return
    with open(registry, "a") as handle:  # type: ignore[arg-type]
        handle.write(json.dumps(entry) + "\n")


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): PID and this
    together name one process, never a later one that got the same PID."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def track_process(pid: int, marker: str = "", docker_socket: str = "") -> None:
    """A process this session started (by PID), to end if the session is killed.

    `marker`: a path only this process's command line (and its helpers', e.g.
    dockerd's containerd and shims) contains. `docker_socket`: it is a dockerd."""
    start = proc_start_time(pid)
    if start is not None:
        note("proc", str(pid), start=start, marker=marker, docker=docker_socket)


def start(watch_dir: str = "") -> str:
    """Spawn the watcher; returns its dir (a fresh temp dir unless `watch_dir`)."""
    own = not watch_dir
    path = Path(watch_dir or tempfile.mkdtemp(prefix="scni-session-"))
    path.mkdir(parents=True, exist_ok=True)
    registry = path / REGISTRY
    with open(registry, "a") as handle:
        for entry in _PENDING:
            handle.write(json.dumps(entry) + "\n")
    _PENDING.clear()
    _STATE["registry"] = str(registry)
    read_end, write_end = os.pipe()  # both close-on-exec (PEP 446)
    argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--dir", str(path),
            "--fd", str(read_end), *(["--own-dir"] if own else [])]
    proc = subprocess.Popen(argv, pass_fds=(read_end,), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(read_end)
    _STATE.update(fd=write_end, proc=proc, dir=str(path))
    return str(path)


def watcher_pid() -> int:
    proc = _STATE["proc"]
    return proc.pid if isinstance(proc, subprocess.Popen) else 0


def finish() -> None:
    """Normal end (after every fixture): tell the watcher, then let it go."""
    fd = _STATE["fd"]
    if isinstance(fd, int):
        try:
            os.write(fd, b"done\n")
        finally:
            os.close(fd)
            _STATE["fd"] = None
    proc = _STATE["proc"]
    if isinstance(proc, subprocess.Popen):
        proc.returncode = 0  # it outlives us on purpose: no "still running" warning


# ---------------------------------------------------------------- watcher side


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def __call__(self, text: str, quiet: bool = False) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        self.lines.append(line)
        try:
            with open(self.path, "a") as handle:
                handle.write(line + "\n")
        except OSError:
            pass
        if not quiet:
            try:
                sys.stderr.write(f"session-watch[{os.getpid()}]: {text}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # the terminal may be gone


def _run(*argv: str, timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(argv, 1, "", str(err))


class Owned:
    """What carries this run's mark: tokens (random parts) and exact names."""

    def __init__(self, tokens: set[str], names: set[str]) -> None:
        self.tokens = {t for t in tokens if len(t) >= 6}
        self.names = {n for n in names if n}

    def name(self, text: str) -> bool:
        """A netns, link or chain name (or one word of a rule)."""
        if text in self.names or any(token in text for token in self.tokens):
            return True
        # A name cut to 15 bytes ends with the start of a token ("br" + "t" + 9 digits;
        # the run may begin with hex letters of the prefix: "brc" + ...). Hash names
        # (our plugin's sm<13 hex> veths, Docker's br-<id>) never carry one: skipped, so
        # the node's pod veths can never match by chance.
        if HASH_NAME.match(text):
            return False
        run = TRAILING_HEX.search(text)
        if not run:
            return False
        digits = run.group(0)
        return any(token.startswith(digits[i:]) for i in range(len(digits) - PREFIX + 1)
                   for token in self.tokens)

    def text(self, text: str) -> bool:
        """A rule's text: a token or noted name anywhere, or a word that is a name of ours."""
        if any(name in text for name in self.names if len(name) >= MIN_NAME):
            return True
        return any(self.name(word.strip("'\"")) for word in text.split())


def load(registry: Path) -> list[dict]:
    entries = []
    try:
        lines = registry.read_text().splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by the kill
    return entries


def _alive(pid: int, start: str) -> bool:
    return proc_start_time(pid) == start


def _end(pid: int, start: str, log: Log, grace: float) -> None:
    """SIGTERM the process (if it is still the one we started), SIGKILL after `grace`."""
    if not _alive(pid, start):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid, start):
            log(f"ended process {pid} (SIGTERM)")
            return
        time.sleep(0.1)
    if _alive(pid, start):
        os.kill(pid, signal.SIGKILL)
        log(f"ended process {pid} (SIGKILL after {grace:g} s)")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmd)
    return table


def _end_marked(marker: str, log: Log) -> None:
    """SIGKILL processes whose command line names `marker` (a temp root of ours), and
    their descendants: helpers our process started (containerd, shims, containers)."""
    if len(marker) < MIN_NAME:
        return
    table = _processes()
    named = re.compile(re.escape(marker.rstrip("/")) + r"(?=[/\s]|$)")
    doomed = {pid for pid, (_, cmd) in table.items() if named.search(cmd) and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in doomed} - doomed
        doomed |= more
        grew = bool(more)
    for pid in sorted(doomed):
        try:
            os.kill(pid, signal.SIGKILL)
            log(f"ended process {pid} (SIGKILL, started under {marker}): {table[pid][1][:120]}")
        except OSError:
            pass


def _docker_networks(socket: str) -> set[str]:
    """Names, IDs and Linux bridges of the dockerd's own networks (not the built-in ones)."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{socket}")
    ids = _run("docker", "network", "ls", "-q", env=env).stdout.split()
    if not ids:
        return set()
    found: set[str] = set()
    try:
        nets = json.loads(_run("docker", "network", "inspect", *ids, env=env).stdout or "[]")
    except ValueError:
        return found
    for net in nets:
        if net.get("Name") in DOCKER_BUILTIN_NETWORKS:
            continue
        found.add(net.get("Name", ""))
        found.add(net.get("Id", ""))
        if net.get("Driver") == "bridge":
            found.add((net.get("Options") or {}).get("com.docker.network.bridge.name")
                      or f"br-{net.get('Id', '')[:12]}")
    return found


def _stop_dockerd(entry: dict, names: set[str], log: Log) -> None:
    pid, start, socket = int(entry["v"]), entry["start"], entry["docker"]
    if _alive(pid, start):
        env = dict(os.environ, DOCKER_HOST=f"unix://{socket}")
        nets = _docker_networks(socket)
        names |= nets
        ids = _run("docker", "ps", "-aq", env=env).stdout.split()
        if ids:
            done = _run("docker", "rm", "-f", *ids, timeout=60, env=env)
            log(f"removed {len(ids)} container(s) of dockerd {pid}"
                + ("" if done.returncode == 0 else f" (docker rm: {done.stderr.strip()[:200]})"))
        _end(pid, start, log, grace=15)
    _end_marked(entry.get("marker", ""), log)


def _end_processes(entries: list[dict], names: set[str], log: Log) -> None:
    for entry in entries:
        if entry["k"] != "proc":
            continue
        if entry.get("docker"):
            _stop_dockerd(entry, names, log)
        else:
            _end(int(entry["v"]), entry["start"], log, grace=5)
            _end_marked(entry.get("marker", ""), log)


def _netns_ids() -> dict[str, str]:
    """netnsid (as the host sees it) -> name, for named netns that have an id."""
    found = {}
    for line in _run("ip", "netns", "list").stdout.splitlines():
        match = re.search(r"^(\S+) \(id: (\d+)\)", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def _remove_bridge_ports(owned: Owned, log: Log) -> set[str]:
    """Remove links enslaved to a bridge of this run (pod veths, e.g. of a killed
    containerd's pods); returns the named netns their peers live in (containerd's
    cni-<uuid>), which are this run's too."""
    try:
        links = json.loads(_run("ip", "-d", "-j", "link", "show").stdout or "[]")
    except ValueError:
        return set()
    bridges = {link["ifname"] for link in links
               if (link.get("linkinfo") or {}).get("info_kind") == "bridge"
               and link.get("ifname") not in PROTECTED_LINKS and owned.name(link["ifname"])}
    ports = [link for link in links if link.get("master") in bridges
             and link.get("ifname") not in PROTECTED_LINKS]
    if not ports:
        return set()
    names, peers = _netns_ids(), set()
    for port in ports:
        done = _run("ip", "link", "del", port["ifname"])
        if done.returncode == 0:
            log(f"removed link {port['ifname']} (a port of bridge {port['master']})")
        if str(port.get("link_netnsid", "")) in names:
            peers.add(names[str(port["link_netnsid"])])
    return peers


def _remove_netns(owned: Owned, log: Log, also: set[str]) -> None:
    """Named netns carrying a token (or in `also`), and host veths peered into them."""
    listing = _run("ip", "netns", "list").stdout.splitlines()
    ours: dict[str, str] = {}
    for line in listing:
        words = line.split()
        if not words or not (owned.name(words[0]) or words[0] in also):
            continue
        match = re.search(r"\(id: (\d+)\)", line)
        ours[words[0]] = match.group(1) if match else ""
    if not ours:
        return
    ids = {nsid for nsid in ours.values() if nsid}
    peers = []
    try:
        for link in json.loads(_run("ip", "-j", "link", "show").stdout or "[]"):
            if str(link.get("link_netnsid", "")) in ids and link.get("ifname") not in PROTECTED_LINKS:
                peers.append(link["ifname"])
    except ValueError:
        pass
    for name in ours:
        done = _run("ip", "netns", "del", name)
        log(f"removed netns {name}" if done.returncode == 0
            else f"could not remove netns {name}: {done.stderr.strip()}")
    for ifname in peers:
        if os.path.exists(f"/sys/class/net/{ifname}") and \
                _run("ip", "link", "del", ifname).returncode == 0:
            log(f"removed link {ifname} (its peer was in a removed netns)")


def _remove_links(owned: Owned, log: Log) -> None:
    try:
        links = json.loads(_run("ip", "-d", "-j", "link", "show").stdout or "[]")
    except ValueError:
        return
    # veths before bridges: a bridge goes last, once nothing is enslaved to it
    links.sort(key=lambda link: (link.get("linkinfo", {}) or {}).get("info_kind") == "bridge")
    for link in links:
        name = link.get("ifname", "")
        if not name or name in PROTECTED_LINKS or not owned.name(name):
            continue
        if not os.path.exists(f"/sys/class/net/{name}"):
            continue  # went with its peer
        done = _run("ip", "link", "del", name)
        log(f"removed link {name}" if done.returncode == 0
            else f"could not remove link {name}: {done.stderr.strip()}")


def _targets(words: list[str]) -> list[str]:
    return [words[i + 1] for i in range(len(words) - 1) if words[i] in ("-j", "-g", "--jump", "--goto")]


def plan_table(save: str, owned: Owned) -> tuple[list[list[str]], list[str]]:
    """From one table's `iptables-save`: the rules to delete (words, "-A" dropped) and
    the user chains to flush and delete.

    A rule goes when its text carries a token or noted name, or it sits in or jumps
    to a doomed chain; a user chain goes when its name carries a token, or when every
    rule that jumps to it goes (then it was only this run's). Built-in chains never."""
    user: set[str] = set()
    rules: list[list[str]] = []
    for line in save.splitlines():
        if line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if policy == "-":
                user.add(chain)
        elif line.startswith("-A "):
            try:
                rules.append(shlex.split(line))
            except ValueError:
                continue
    chains = {chain for chain in user if owned.name(chain)}
    doomed: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, words in enumerate(rules):
            if index not in doomed and (words[1] in chains or set(_targets(words)) & chains
                                        or owned.text(shlex.join(words))):
                doomed.add(index)
                changed = True
        for chain in user - chains:
            refs = [i for i, words in enumerate(rules) if chain in _targets(words)]
            if refs and all(i in doomed for i in refs):
                chains.add(chain)
                changed = True
    # rules inside a doomed chain go with its flush
    return ([rules[i][1:] for i in sorted(doomed) if rules[i][1] not in chains], sorted(chains))


def _sweep_table(program: str, table: str, owned: Owned, log: Log) -> None:
    save = _run(f"{program}-save", "-t", table)
    if save.returncode != 0:
        return
    rules, chains = plan_table(save.stdout, owned)
    tool = [program, "-w", "10", "-t", table]
    for words in rules:
        text = "-A " + shlex.join(words)
        done = _run(*tool, "-D", *words)
        log(f"removed {program} -t {table} rule: {text}" if done.returncode == 0
            else f"could not remove {program} -t {table} rule {text}: {done.stderr.strip()}")
    for chain in chains:
        _run(*tool, "-F", chain)
    for chain in chains:
        done = _run(*tool, "-X", chain)
        log(f"removed {program} -t {table} chain {chain}" if done.returncode == 0
            else f"could not remove {program} -t {table} chain {chain}: {done.stderr.strip()}")


def _remove_rules(owned: Owned, log: Log) -> None:
    for program in ("iptables", "ip6tables"):
        if shutil.which(f"{program}-save"):
            for table in TABLES:
                _sweep_table(program, table, owned, log)


def _unmount_under(root: str, log: Log) -> bool:
    """Lazily unmount every mount below `root`; True when none is left."""
    def below() -> list[str]:
        with open("/proc/self/mounts") as handle:
            points = [line.split()[1] for line in handle]
        return [p for p in points if p == root or p.startswith(root.rstrip("/") + "/")]

    for point in sorted(below(), reverse=True):
        if _run("umount", "-l", point).returncode == 0:
            log(f"unmounted {point}")
    return not below()


def _remove_dirs(entries: list[dict], log: Log) -> None:
    for entry in entries:
        path = entry["v"]
        if entry["k"] not in ("dir", "mounts") or len(path) < MIN_NAME or not os.path.isdir(path):
            continue
        if _unmount_under(path, log) and entry["k"] == "dir":
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed dir {path}")


def sweep(entries: list[dict], log: Log) -> None:
    """Each step on its own: one that fails (logged) does not stop the next."""
    tokens = {e["v"] for e in entries if e["k"] == "token"}
    names = {e["v"] for e in entries if e["k"] == "name"}
    owned = Owned(tokens, names)
    also: set[str] = set()

    def ports() -> None:
        also.update(_remove_bridge_ports(owned, log))

    steps = [lambda: _end_processes(entries, names, log),
             lambda: owned.names.update(names),  # the dockerds' networks, learnt above
             ports, lambda: _remove_netns(owned, log, also),
             lambda: _remove_links(owned, log), lambda: _remove_rules(owned, log),
             lambda: _remove_dirs(entries, log)]
    for step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - keep going, say what failed
            log(f"step failed: {type(err).__name__}: {err}")


def main(argv: list[str]) -> int:
    args = dict(zip(argv[::2], argv[1::2]))
    path = Path(args["--dir"])
    fd = int(args["--fd"])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    said = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        said += chunk
    normal = b"done" in said
    log = Log(path / LOG)
    log("pytest ended normally; checking that nothing of the run is left" if normal
        else "pytest is gone without ending its session (killed?): cleaning up its run",
        quiet=normal)
    start = time.monotonic()
    entries = load(path / REGISTRY)
    sweep(entries, log)
    removed = sum(1 for line in log.lines if line.split(" ", 2)[1] in ("removed", "ended", "unmounted"))
    log(f"done in {time.monotonic() - start:.1f} s: {removed} thing(s) removed"
        + (" (left behind by the session's fixtures)" if normal and removed else ""),
        quiet=normal and not removed)
    if normal and not removed and "--own-dir" in argv:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
