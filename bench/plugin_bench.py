#!/usr/bin/env python3
"""smarter-cni vs the reference CNI chain, side by side, in one run.

    sudo python3 bench/plugin_bench.py [--pods N] [--quick] [--json FILE]

Chains (each exec'd as a runtime does: env + stdin, plugins of the conflist
in order with prevResult on ADD, in reverse on DEL):

  A  smarter-cni   loopback + smarter-cni (bridge mode, built-in IPAM)
  B  reference     loopback + bridge (isGateway, ipMasq) + host-local
  C  ref no-masq   loopback + bridge (isGateway) + host-local

Sections: sequential ADD/DEL latency over N pods (interleaved A B C / C B A
so drift hits every chain alike), 4 and 16 concurrent ADDs/DELs (pods per
second, no repeated address, no leftover host veth), docker mode next to
bridge mode on the real dockerd, and footprint (peak RSS of one run,
import time, VERSION wall time). Everything made is removed in `finally`.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Chain, fmt_ms, fmt_ratio, percentile, ratio, summary  # noqa: E402

MAX_PODS = 1000
MAX_DOCKER_PODS = 60
CONCURRENCY = (4, 16)
REQUIRED = ("loopback", "bridge", "host-local")


# ---------------------------------------------------------------- setup

def _git_head() -> str:
    done = common.sh("git", "-C", str(common.ROOT), "rev-parse", "--short", "HEAD", check=False)
    return done.stdout.decode().strip() if done.returncode == 0 else ""


class Bench:
    """Owns every resource of one run; `cleanup` removes all of them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-bench-"))
        # smarter-cni's state on tmpfs, as /run is on a node (Debian, Raspberry Pi OS);
        # host-local's dataDir stays on disk, as /var/lib/cni/networks is
        self.state_root = self.tmp
        if args.state_tmpfs and common.is_tmpfs(common.TMPFS_DIR):
            self.state_root = Path(tempfile.mkdtemp(prefix="smarter-cni-bench-",
                                                    dir=common.TMPFS_DIR))
        self.run_id = common.token(6)
        self.state_dir = self.state_root / "state"
        self.state_dir.mkdir(mode=0o700)
        self.bin_dir = common.make_bin_dir(self.tmp / "bin", args.python, args.src)
        self.netns = common.Namespaces(f"scb{self.run_id}")
        self.prefix = 24 if args.pods <= 250 else 22
        try:
            subnets = common.free_subnets(4 if args.candidate_src else 3, self.prefix)
        except RuntimeError:
            self._remove_dirs()
            raise
        pod_args_env = {"SMARTER_CNI_STATE_DIR": str(self.state_dir)}
        self.smarter_conf = {"type": "smarter-cni", "bridge": f"scbA{self.run_id}",
                             "subnet": subnets[0]}
        self.chains = {
            "A": Chain("smarter-cni", f"scb-a-{self.run_id}",
                       [{"type": "loopback"}, self.smarter_conf], self.bin_dir, pod_args_env),
            "B": Chain("reference", f"scb-b-{self.run_id}",
                       [{"type": "loopback"}, self._reference(f"scbB{self.run_id}", subnets[1], True)],
                       self.bin_dir),
            "C": Chain("ref no-masq", f"scb-c-{self.run_id}",
                       [{"type": "loopback"}, self._reference(f"scbC{self.run_id}", subnets[2], False)],
                       self.bin_dir),
        }
        self.bridges = {"A": self.smarter_conf["bridge"], "B": f"scbB{self.run_id}",
                        "C": f"scbC{self.run_id}"}
        if args.candidate_src:
            # N: the same plugin from another source tree (a change under evaluation)
            self.candidate_state = self.state_root / "state-candidate"
            self.candidate_state.mkdir(mode=0o700)
            candidate_bin = self.tmp / "bin-candidate"
            candidate_bin.mkdir()
            # the candidate's own launcher (it may differ: issue 16's thin client), written by
            # its own code in a child, since this process already imported another tree's
            subprocess.run([args.python, "-I", "-S", "-c",
                            "import sys; sys.path.insert(0, sys.argv[1]); "
                            "from smarter_cni import launcher; "
                            "launcher.write(sys.argv[2], sys.argv[3], sys.argv[1])",
                            str(args.candidate_src), str(candidate_bin / "smarter-cni"),
                            args.python], check=True)
            (candidate_bin / "loopback").symlink_to(common.REFERENCE_PLUGINS / "loopback")
            self.candidate_conf = {"type": "smarter-cni", "bridge": f"scbN{self.run_id}",
                                   "subnet": subnets[3]}
            self.chains["N"] = Chain("candidate", f"scb-n-{self.run_id}",
                                     [{"type": "loopback"}, self.candidate_conf], candidate_bin,
                                     {"SMARTER_CNI_STATE_DIR": str(self.candidate_state)})
            self.bridges["N"] = self.candidate_conf["bridge"]
        self.resident: subprocess.Popen | None = None
        self.reconciler: subprocess.Popen | None = None
        if args.candidate_src and args.candidate_resident:
            # as on an installed node, whose DNS service runs both: the resident server and
            # the reconciler (whose fresh rules stamp spares each ADD its `iptables-save`)
            self.resident = common.start_resident(args.python, args.candidate_src,
                                                  self.candidate_state,
                                                  log=self.tmp / "resident.log")
            if args.candidate_reconciler:
                try:
                    self.reconciler = common.start_reconciler(
                        args.python, args.candidate_src, self.candidate_state,
                        dict(self.candidate_conf, name=self.chains["N"].name,
                             cniVersion=self.chains["N"].cni_version),
                        self.tmp / "reconciler.log")
                except (RuntimeError, OSError):
                    self._stop(self.resident)
                    self._remove_dirs()
                    raise
        self.candidate_requests = 0  # chain N's smarter-cni ADDs and DELs
        self.stamp_waited = 0.0  # after the warm-up pods, for N's reconciler's first stamp
        # live attachments: (chain key, container id) -> (netns, prevResult)
        self.live: dict[tuple[str, str], tuple[str, Any]] = {}
        self.docker: DockerSide | None = None
        self.results: dict[str, Any] = {"machine": common.machine(), "command": " ".join(sys.argv),
                                        "pods": args.pods, "python": args.python,
                                        "settle_ms": args.settle_ms, "src": str(args.src), "git_head": _git_head(),
                                        "state_dirs": str(self.state_root),
                                        "candidate_src": str(args.candidate_src or ""),
                                        "candidate_resident": self.resident is not None,
                                        "candidate_reconciler": self.reconciler is not None,
                                        "subnets": dict(zip("ABCN", subnets))}

    def _reference(self, bridge: str, subnet: str, masq: bool) -> dict[str, Any]:
        return common.reference_bridge(bridge, subnet, masq, self.tmp / f"host-local-{bridge}")

    # ------------------------------------------------------------ pod operations

    pod_args = staticmethod(common.pod_args)

    def add(self, key: str, container_id: str, netns: str) -> tuple[float, float, Any]:
        self.live[(key, container_id)] = (netns, None)  # DEL it even if ADD fails half-way
        self.candidate_requests += key == "N"
        wall, cpu, result, _ = self.chains[key].add(container_id, netns, self.pod_args(container_id))
        self.live[(key, container_id)] = (netns, result)
        return wall, cpu, result

    def delete(self, key: str, container_id: str) -> tuple[float, float]:
        netns, prev = self.live[(key, container_id)]
        self.candidate_requests += key == "N"
        wall, cpu, _ = self.chains[key].delete(container_id, netns, prev, self.pod_args(container_id))
        del self.live[(key, container_id)]
        return wall, cpu

    # ------------------------------------------------------------ cleanup

    @staticmethod
    def _stop(proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # our own child, by its PID
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def resident_report(self) -> dict[str, Any]:
        """How many of chain N's requests the resident server ran; the rest fell back
        in-process (no acknowledgement within the client's ACK_TIMEOUT: a busy server)."""
        log = self.tmp / "resident.log"
        served = common.served_requests(log)
        work: dict[str, list[float]] = {}
        for line in served:  # "resident: ADD <id> -> 0 (1.80 ms)": the server-side time
            words = line.split()
            if line.endswith(" ms)") and words[-2].lstrip("(").replace(".", "", 1).isdigit():
                work.setdefault(words[1], []).append(float(words[-2].lstrip("(")))
        return {"served": len(served), "requests": self.candidate_requests,
                "work_ms": {command: common.summary(values) for command, values in work.items()},
                "failed": [line for line in (log.read_text().splitlines() if log.exists() else [])
                           if "request failed" in line][-5:]}

    def wait_for_stamp(self) -> float:
        """Seconds until N's reconciler vouched for the rules (it does so once a pod's ADD
        marked the network as set up here, at its next look), as on a node whose DNS
        service has been running; RuntimeError if it never does."""
        started = time.monotonic()
        interval = float(os.environ.get("SMARTER_CNI_RECONCILE_INTERVAL") or 2.0)
        deadline = started + 3 * interval + 5
        while not self.reconciler_report()["stamp_fresh"]:
            if time.monotonic() > deadline or self.reconciler is None \
                    or self.reconciler.poll() is not None:
                raise RuntimeError("chain N's reconciler did not vouch for its rules within "
                                   f"{deadline - started:.0f} s (see its log: "
                                   f"{self.reconciler_report()['log'][-3:]})")
            time.sleep(0.05)
        return time.monotonic() - started

    def reconciler_report(self) -> dict[str, Any]:
        """Whether N's reconciler vouched for the rules (its stamp is fresh) and what it
        logged: repairs or errors would mean it was not idle as on a healthy node."""
        stamp = self.candidate_state / f"verified-{self.chains['N'].name}"
        try:
            fresh = float(stamp.read_text()) > time.time()
        except (OSError, ValueError):
            fresh = False
        try:
            logged = (self.tmp / "reconciler.log").read_text().splitlines()
        except OSError:
            logged = []
        return {"pid": self.reconciler.pid if self.reconciler else None,
                "running": self.reconciler is not None and self.reconciler.poll() is None,
                "stamp_fresh": fresh, "log": logged[-20:]}

    def _remove_dirs(self) -> None:
        for directory in {self.tmp, self.state_root}:
            shutil.rmtree(directory, ignore_errors=True)

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        # the reconciler first: it must not rebuild what the teardown below removes
        self._stop(self.reconciler)
        self._stop(self.resident)
        for (key, container_id), (netns, prev) in list(self.live.items()):
            try:
                self.chains[key].delete(container_id, netns, prev, self.pod_args(container_id))
            except Exception as err:  # keep cleaning
                problems.append(f"DEL {key}/{container_id}: {err}")
        self.live.clear()
        if self.docker is not None:
            problems += self.docker.cleanup()
        problems += self.netns.cleanup()
        networks = [(self.state_dir, self.smarter_conf, self.chains["A"].name)]
        if "N" in self.chains:
            networks.append((self.candidate_state, self.candidate_conf, self.chains["N"].name))
        sys.path.insert(0, str(self.args.src))
        for state_dir, conf, name in networks:
            os.environ["SMARTER_CNI_STATE_DIR"] = str(state_dir)
            try:
                from smarter_cni.dataplane.bridge_network import teardown_network
                from smarter_cni.netconf import parse_netconf

                teardown_network(parse_netconf(dict(conf, name=name, cniVersion="1.0.0")))
            except Exception as err:
                problems.append(f"smarter-cni teardown_network {name}: {err}")
            finally:
                del os.environ["SMARTER_CNI_STATE_DIR"]
        for bridge_name in self.bridges.values():
            common.delete_link(bridge_name)
            if os.path.exists(f"/sys/class/net/{bridge_name}"):
                problems.append(f"bridge {bridge_name} is still there")
        leftover = sum(common.purge_iptables(f"scb-{k}-{self.run_id}") for k in "abcn")
        if leftover:
            problems.append(f"removed {leftover} leftover iptables rules")
        self._remove_dirs()
        return problems


# ---------------------------------------------------------------- 1. sequential latency

def sequential(bench: Bench, keys: list[str]) -> dict[str, Any]:
    pods = bench.args.pods
    spaces = {key: bench.netns.create(pods + 1) for key in keys}
    # Warm-up pod per chain: creates the bridge, NAT rules and page cache; not counted.
    first = {}
    for key in keys:
        wall, _, _ = bench.add(key, f"warm{key}{bench.run_id}", spaces[key][pods])
        first[key] = wall
        bench.delete(key, f"warm{key}{bench.run_id}")
    if bench.reconciler is not None:  # from here on N's ADDs trust the stamp, as on a node
        bench.stamp_waited = bench.wait_for_stamp()
    add_t: dict[str, list[float]] = {k: [] for k in keys}
    del_t: dict[str, list[float]] = {k: [] for k in keys}
    add_cpu: dict[str, list[float]] = {k: [] for k in keys}
    del_cpu: dict[str, list[float]] = {k: [] for k in keys}
    ids = {k: [f"seq{k}{bench.run_id}{i:05d}" for i in range(pods)] for k in keys}
    for i in range(pods):
        for key in (keys if i % 2 == 0 else keys[::-1]):
            wall, cpu, _ = bench.add(key, ids[key][i], spaces[key][i])
            add_t[key].append(wall)
            add_cpu[key].append(cpu)
    settle = bench.args.settle_ms / 1000
    for i in range(pods):
        for key in (keys if i % 2 == 0 else keys[::-1]):
            wall, cpu = bench.delete(key, ids[key][i])
            del_t[key].append(wall)
            del_cpu[key].append(cpu)
            time.sleep(settle)
    tenth = max(1, pods // 10)
    growth = {k: {"first_tenth_cpu": percentile(add_cpu[k][:tenth], 50),
                  "last_tenth_cpu": percentile(add_cpu[k][-tenth:], 50),
                  "first_tenth_wall": percentile(add_t[k][:tenth], 50),
                  "last_tenth_wall": percentile(add_t[k][-tenth:], 50)} for k in keys}
    return {"netns": spaces, "first_add": first, "growth": growth,
            "add": {k: summary(v) for k, v in add_t.items()},
            "del": {k: summary(v) for k, v in del_t.items()},
            "add_cpu": {k: summary(v) for k, v in add_cpu.items()},
            "del_cpu": {k: summary(v) for k, v in del_cpu.items()}}


# ---------------------------------------------------------------- 2. concurrency

def concurrent(bench: Bench, keys: list[str], spaces: dict[str, list[str]],
               workers: int, rounds: int) -> dict[str, Any]:
    pods = bench.args.pods
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = {"add_wall": 0.0, "del_wall": 0.0, "pods": 0, "duplicates": [], "leftovers": [],
                    "add_lat": [], "del_lat": [], "add_cpu": 0.0, "del_cpu": 0.0}
    for rnd in range(rounds):
        for key in (keys if rnd % 2 == 0 else keys[::-1]):
            ids = [f"c{workers}r{rnd}{key}{bench.run_id}{i:05d}" for i in range(pods)]
            results: dict[str, Any] = {}
            lat_add: list[float] = []

            cpu_add: list[float] = []
            cpu_del: list[float] = []

            def add_one(i: int, key: str = key, ids: list[str] = ids, results: dict[str, Any] = results,
                        lat: list[float] = lat_add, cpu: list[float] = cpu_add) -> None:
                wall, used, result = bench.add(key, ids[i], spaces[key][i])
                results[ids[i]] = result
                lat.append(wall)
                cpu.append(used)

            lat_del: list[float] = []

            def del_one(i: int, key: str = key, ids: list[str] = ids, lat: list[float] = lat_del,
                        cpu: list[float] = cpu_del) -> None:
                wall, used = bench.delete(key, ids[i])
                lat.append(wall)
                cpu.append(used)

            add_wall = _pool(workers, add_one, pods)
            addresses = [common.result_ipv4(r) for r in results.values()]
            seen: set[str] = set()
            dupes = sorted({a for a in addresses if a in seen or seen.add(a)})  # type: ignore[func-returns-value]
            if len(addresses) != pods or "" in addresses:
                dupes.append(f"{pods - len([a for a in addresses if a])} pods without an address")
            host_links = [n for r in results.values() for n in common.host_ifnames(r)
                          if n not in bench.bridges.values()]
            del_wall = _pool(workers, del_one, pods)
            leftover = [n for n in host_links if os.path.exists(f"/sys/class/net/{n}")]
            bridge = bench.bridges[key]
            leftover += [f"{bridge} port {p}" for p in common.bridge_ports(bridge)]
            slot = out[key]
            slot["add_wall"] += add_wall
            slot["del_wall"] += del_wall
            slot["pods"] += pods
            slot["duplicates"] += dupes
            slot["leftovers"] += leftover
            slot["add_lat"] += lat_add
            slot["del_lat"] += lat_del
            slot["add_cpu"] += sum(cpu_add)
            slot["del_cpu"] += sum(cpu_del)
    for slot in out.values():
        slot["add_pods_per_s"] = slot["pods"] / slot["add_wall"]
        slot["del_pods_per_s"] = slot["pods"] / slot["del_wall"]
        slot["add_cpu_per_pod"] = slot.pop("add_cpu") / slot["pods"]
        slot["del_cpu_per_pod"] = slot.pop("del_cpu") / slot["pods"]
        slot["add_lat"] = summary(slot["add_lat"])
        slot["del_lat"] = summary(slot["del_lat"])
    return out


def _pool(workers: int, func: Callable[[int], None], count: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(func, i) for i in range(count)]:
            future.result()
    return time.perf_counter() - start


# ---------------------------------------------------------------- 3. docker mode

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


class DockerSide:
    """dockerd (the node's, or a private one started and stopped by PID), a busybox
    image, a Docker network and sandbox containers; all removed at the end."""

    def __init__(self, bench: Bench, subnet: str) -> None:
        self.bench = bench
        self.image = f"smarter-cni-bench/busybox:{bench.run_id}"
        self.network = f"scb-d-{bench.run_id}"
        self.subnet = subnet
        host = os.environ.get("DOCKER_HOST", "")  # the tests point us at their own dockerd
        self.socket = host[len("unix://"):] if host.startswith("unix://") else DEFAULT_DOCKER_SOCKET
        self.daemon: subprocess.Popen | None = None
        self.daemon_root = ""
        self.daemon_bridge = ""
        self.containers: list[str] = []
        self.image_made = False
        self.network_made = False

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.socket}")

    def docker(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        done = common.sh("docker", *args, input=input, check=False, env=self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.decode().strip()}")
        return done.stdout.decode().strip()

    def answers(self) -> bool:
        return common.sh("docker", "version", "--format", "{{.Server.Version}}", check=False,
                         env=self.env, timeout=20).returncode == 0

    def start_daemon(self) -> None:
        """No dockerd on the socket: run our own in a temp dir. Its default bridge is one
        of ours: `--bridge none` would delete the host's docker0 (see tests/helpers/dockerd.py),
        and iptables/ip-forward stay off so the node's DOCKER chains are never rewritten."""
        root = tempfile.mkdtemp(prefix="scb-dockerd-")
        self.daemon_root = root
        self.socket = os.path.join(root, "docker.sock")
        self.daemon_bridge = f"scb-b{self.bench.run_id}"[:15]
        common.sh("ip", "link", "add", self.daemon_bridge, "type", "bridge")
        # An address of its own, or dockerd would take one from its pools (docker0's own
        # 172.17.0.0/16 when docker0 is down).
        gateway = common.free_subnets(1, 24, base="10.248")[0].replace(".0/24", ".1/24")
        common.sh("ip", "addr", "add", gateway, "dev", self.daemon_bridge)
        with open(os.path.join(root, "daemon.json"), "w") as config:  # not /etc/docker's
            json.dump({"deprecated-key-path": f"{root}/key.json"}, config)
        with open(os.path.join(root, "dockerd.log"), "wb") as log:
            self.daemon = subprocess.Popen(
                ["dockerd", "--config-file", f"{root}/daemon.json", "--data-root", f"{root}/data",
                 "--exec-root", f"{root}/exec",
                 "--pidfile", f"{root}/docker.pid", "-H", f"unix://{self.socket}",
                 "--bridge", self.daemon_bridge, "--iptables=false", "--ip6tables=false",
                 "--ip-masq=false", "--ip-forward=false", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.daemon.returncode}")
            if os.path.exists(self.socket) and self.answers():
                return
            time.sleep(0.2)
        raise RuntimeError("private dockerd did not answer within 60 s")

    def prepare(self, count: int) -> list[tuple[str, str]]:
        if not self.answers():
            self.start_daemon()
        root = Path(tempfile.mkdtemp(prefix="scb-rootfs-", dir=self.bench.tmp))
        (root / "bin").mkdir()
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        (root / "bin" / "sleep").symlink_to("busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        for sub in ("etc", "tmp", "proc", "sys", "dev"):
            (root / sub).mkdir()
        tar = common.sh("tar", "-C", str(root), "-c", ".").stdout
        self.docker("import", "-", self.image, input=tar)
        self.image_made = True
        base = self.subnet.rsplit(".", 1)[0]
        self.docker("network", "create", "--driver", "bridge", "--subnet", self.subnet,
                    "--gateway", f"{base}.1", "--aux-address", f"smarter-cni-dns={base}.2",
                    "--label", "io.smarter-cni.managed=true", self.network)
        self.network_made = True
        sandboxes = []
        for i in range(count):
            docker_id = self.docker("run", "-d", "--name", f"scb-{self.bench.run_id}-{i}",
                                    "--network", "none", "--hostname", f"dpod{i}",
                                    "--label", "smarter-cni-bench=1", self.image, "sleep", "3600")
            self.containers.append(docker_id)
            pid = self.docker("inspect", "-f", "{{.State.Pid}}", docker_id)
            sandboxes.append((docker_id, f"/proc/{pid}/ns/net"))
        return sandboxes

    def config(self) -> dict[str, Any]:
        base = self.subnet.rsplit(".", 1)[0]
        return {"type": "smarter-cni", "mode": "docker", "network": self.network,
                "subnet": self.subnet, "dnsAddress": f"{base}.2", "dockerSocket": self.socket}

    def cleanup(self) -> list[str]:
        problems = []
        for docker_id in self.containers:
            if self.docker("rm", "-f", docker_id, check=False) == "" and self.answers():
                problems.append(f"docker rm {docker_id[:12]} failed")
        self.containers.clear()
        if self.network_made:
            self.docker("network", "rm", self.network, check=False)
        if self.image_made:
            self.docker("rmi", "-f", self.image, check=False)
        if self.daemon is not None:
            problems += self._stop_daemon()
        self._remove_bridge()
        return problems

    def _stop_daemon(self) -> list[str]:
        assert self.daemon is not None
        if self.daemon.poll() is None:
            os.kill(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(timeout=10)
        with open("/proc/self/mounts") as handle:
            mounts = [line.split()[1] for line in handle]
        for point in sorted((m for m in mounts if m.startswith(self.daemon_root + "/")), reverse=True):
            common.sh("umount", "-l", point, check=False)
        with open("/proc/self/mounts") as handle:
            if any(line.split()[1].startswith(self.daemon_root + "/") for line in handle):
                return [f"mounts left under {self.daemon_root}; not removing it"]
        shutil.rmtree(self.daemon_root, ignore_errors=True)
        return []

    def _remove_bridge(self) -> None:
        if self.daemon_bridge:
            common.sh("ip", "link", "del", self.daemon_bridge, check=False)


def docker_available(src: Path) -> str:
    """'' when docker mode can be measured, else the reason it cannot."""
    if not (src / "smarter_cni" / "dataplane" / "docker_mode.py").exists():
        return "smarter_cni.dataplane.docker_mode does not exist yet"
    sys.path.insert(0, str(src))
    try:
        import importlib

        importlib.import_module("smarter_cni.dataplane.docker_mode")
    except Exception as err:
        return f"smarter_cni.dataplane.docker_mode does not import: {err}"
    for tool in ("docker", "dockerd"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install docker.io)"
    if not os.path.exists("/bin/busybox"):
        return "busybox-static is not installed (for the sandbox image)"
    return ""


def docker_mode(bench: Bench, spaces: list[str]) -> dict[str, Any]:
    reason = docker_available(bench.args.src)
    if reason:
        return {"skipped": reason}
    count = min(bench.args.docker_pods, len(spaces))
    subnet = common.free_subnets(1, 24)[0]
    side = DockerSide(bench, subnet)
    bench.docker = side
    try:
        sandboxes = side.prepare(count)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        return {"skipped": f"cannot prepare docker sandboxes: {err}"}
    chain = Chain("docker mode", side.network, [{"type": "loopback"}, side.config()],
                  bench.bin_dir, {"SMARTER_CNI_STATE_DIR": str(bench.state_dir)})
    bench.chains["D"] = chain
    add_t: dict[str, list[float]] = {"D": [], "A": []}
    del_t: dict[str, list[float]] = {"D": [], "A": []}
    ids = {"A": [f"dvb{bench.run_id}{i:05d}" for i in range(count)],
           "D": [docker_id for docker_id, _ in sandboxes]}
    netns = {"A": spaces[:count], "D": [ns for _, ns in sandboxes]}
    for i in range(count):
        for key in (("D", "A") if i % 2 == 0 else ("A", "D")):
            wall, _, _ = bench.add(key, ids[key][i], netns[key][i])
            add_t[key].append(wall)
    for i in range(count):
        for key in (("D", "A") if i % 2 == 0 else ("A", "D")):
            wall, _ = bench.delete(key, ids[key][i])
            del_t[key].append(wall)
    return {"pods": count, "add": {k: summary(v) for k, v in add_t.items()},
            "del": {k: summary(v) for k, v in del_t.items()}}


# ---------------------------------------------------------------- 4. footprint

def footprint(bench: Bench, spare: list[str]) -> dict[str, Any]:
    reps = 3 if bench.args.quick else 10
    launcher = str(bench.bin_dir / "smarter-cni")
    bridge = str(bench.bin_dir / "bridge")
    rss: dict[str, list[int]] = {}
    for rep in range(min(reps, len(spare) - 1)):
        for key, program in (("A", launcher), ("B", bridge)):
            chain = bench.chains[key]
            name = os.path.basename(program)
            container_id = f"rss{key}{bench.run_id}{rep}"
            conf = json.dumps(dict(chain.plugins[1], cniVersion=chain.cni_version,
                                   name=chain.name)).encode()
            for command in ("ADD", "DEL"):
                env = common.cni_env(command, bench.bin_dir, container_id, spare[rep], "eth0",
                                     bench.pod_args(container_id), chain.extra_env)
                bench.live[(key, container_id)] = (spare[rep], None)
                kb, done = common.peak_rss_kb(program, env, conf)
                if not done.ok:
                    raise RuntimeError(f"{name} {command} (under GNU time) failed: {done.describe()}")
                if command == "DEL":
                    del bench.live[(key, container_id)]
                if kb:
                    rss.setdefault(f"{name} {command}", []).append(kb)
    version_env = common.cni_env("VERSION", bench.bin_dir, ifname="")
    version_in = b'{"cniVersion":"1.0.0"}'
    python = bench.args.python
    walls: dict[str, list[float]] = {"smarter-cni VERSION": [], "bridge VERSION": [],
                                     f"{python} -IS -c pass": []}
    for _ in range(reps * 3):
        walls["smarter-cni VERSION"].append(common.exec_plugin(launcher, version_env, version_in).wall)
        walls["bridge VERSION"].append(common.exec_plugin(bridge, version_env, version_in).wall)
        walls[f"{python} -IS -c pass"].append(common.exec_plugin(
            python, {"PATH": "/usr/bin:/bin"}, b"", argv=[python, "-IS", "-c", "pass"]).wall)
    return {"maxrss_kb": {k: max(v) for k, v in rss.items()},
            "rss_note": "" if rss else "not measured: /usr/bin/time is missing (apt-get install time)",
            "version_wall": {k: summary(v) for k, v in walls.items()},
            "importtime": importtime(bench, spare[-1])}


def importtime(bench: Bench, netns: str) -> dict[str, Any]:
    """`python3 -X importtime` over a real ADD and DEL of the launcher (stderr is parsed)."""
    out: dict[str, Any] = {}
    python = bench.args.python
    argv = [python, "-IS", "-X", "importtime", str(bench.bin_dir / "smarter-cni")]
    chain = bench.chains["A"]
    container_id = f"imp{bench.run_id}"
    conf = dict(chain.plugins[1], cniVersion=chain.cni_version, name=chain.name)
    for command in ("ADD", "DEL"):
        env = common.cni_env(command, bench.bin_dir, container_id, netns, "eth0",
                             bench.pod_args(container_id), chain.extra_env)
        bench.live[("A", container_id)] = (netns, None)
        done = common.exec_plugin(python, env, json.dumps(conf).encode(), argv=argv)
        if command == "DEL" and done.ok:
            del bench.live[("A", container_id)]
        if not done.ok:
            out[command] = {"error": done.describe()}
            continue
        total = 0
        top: list[tuple[int, str]] = []
        modules = 0
        for line in done.stderr.decode().splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cumulative, name = line[len("import time:"):].split("|", 2)
            total += int(self_us)
            modules += 1
            if not name[1:].startswith(" "):  # top level: one leading space only
                top.append((int(cumulative), name.strip()))
        top.sort(reverse=True)
        out[command] = {"total_ms": total / 1000, "modules": modules,
                        "top": [{"module": n, "cumulative_ms": c / 1000} for c, n in top[:8]]}
    return out


# ---------------------------------------------------------------- report

TARGETS = [
    ("ADD median", "<=", 1.0), ("ADD p99", "<=", 1.5), ("DEL median", "<=", 1.0),
    ("DEL p99", "<=", 1.5), ("16-concurrent ADD pods/s", ">=", 1.0),
    ("16-concurrent DEL pods/s", ">=", 1.0),
]


def report(results: dict[str, Any], keys: list[str]) -> tuple[str, list[dict[str, Any]]]:
    lines = []
    m = results["machine"]
    lines.append(f"smarter-cni plugin bench — {m['date_utc']}, nproc {m['nproc']}, "
                 f"kernel {m['kernel']}, {m['cpu']}, {results['pods']} pods, python {results['python']}")
    lines.append(f"plugin from {results.get('src')} (checkout at {results.get('git_head')}); "
                 f"smarter-cni state under {results.get('state_dirs')}, host-local's on disk")
    lines.append(f"load average at start {m['loadavg_start']}, at end {results.get('loadavg_end')} "
                 "(other work on the machine inflates every number; compare ratios)")
    if results.get("settle_ms"):
        lines.append(f"an untimed {results['settle_ms']:g} ms pause after each sequential DEL")
    if results.get("candidate_src"):
        served = "a resident server" if results.get("candidate_resident") else \
            "in-process (no resident server: the service-down path)"
        lines.append(f"candidate N from {results['candidate_src']}: {served}")
        res = results.get("resident")
        if res is not None:
            lines.append(f"  which ran {res['served']} of N's {res['requests']} ADDs/DELs, "
                         f"{res['served_sequential']} of the {res['requests_sequential']} "
                         "sequential ones (the rest fell back in-process: no acknowledgement "
                         "in time)"
                         + "".join(f"\n    {line}" for line in res["failed"]))
            for command, stats in sorted(res.get("work_ms", {}).items()):
                lines.append(f"  server-side time of a sequential {command} (its work, from its log): median "
                             f"{stats['median']:.2f} ms, p90 {stats['p90']:.2f} ms")
        rec = results.get("reconciler")
        if rec is not None:
            lines.append(f"  and the reconciler (pid {rec['pid']}): its first rules stamp "
                         f"{rec['stamp_waited_s']:.1f} s after the warm-up pods (waited for), "
                         f"{'running' if rec['running'] else 'NOT running'} at the end, stamp "
                         f"{'fresh' if rec['stamp_fresh'] else 'STALE'}; "
                         f"{len(rec['log'])} log line(s)"
                         + ("".join(f"\n    {line}" for line in rec["log"][-5:])))
        elif results.get("candidate_resident"):
            lines.append("  no reconciler (--no-candidate-reconciler): each ADD runs "
                         "`iptables-save` itself")
    seq = results["sequential"]
    labels = {"A": "smarter-cni", "N": "candidate (--candidate-src)",
              "B": "reference (bridge+host-local, ipMasq)",
              "C": "reference, no ipMasq", "D": "smarter-cni docker mode"}
    lines.append("\n1. Sequential latency per pod, whole chain incl. loopback (ms)")
    for op in ("add", "del"):
        rows = []
        for key in keys:
            s = seq[op][key]
            rows.append([f"{op.upper()} {labels[key]}", fmt_ms(s["min"]), fmt_ms(s["median"]),
                         fmt_ms(s["p90"]), fmt_ms(s["p99"]), fmt_ms(s["max"]),
                         fmt_ms(seq[f"{op}_cpu"][key]["median"])])
        lines.append(common.table(["", "min", "median", "p90", "p99", "max", "cpu med"], rows))
    lines.append("first ADD (creates the network), ms: " + ", ".join(
        f"{labels[k]} {fmt_ms(v)}" for k, v in seq["first_add"].items()))
    if "growth" in seq:
        lines.append("ADD as the node fills (median of the first / last tenth of the pods), "
                     "CPU ms: " + ", ".join(
                         f"{labels[k]} {fmt_ms(g['first_tenth_cpu'])} -> {fmt_ms(g['last_tenth_cpu'])}"
                         for k, g in seq["growth"].items()))

    lines.append("\n2. Concurrent ADD/DEL throughput (pods/s)")
    rows = []
    for workers, data in results["concurrency"].items():
        for key in keys:
            d = data[key]
            rows.append([f"{workers} concurrent, {labels[key]}", f"{d['add_pods_per_s']:.1f}",
                         f"{d['del_pods_per_s']:.1f}", fmt_ms(d["add_lat"]["median"]),
                         fmt_ms(d["add_lat"]["p99"]), fmt_ms(d["add_cpu_per_pod"]),
                         fmt_ms(d["del_cpu_per_pod"]),
                         "ok" if not d["duplicates"] else "DUP " + ",".join(d["duplicates"][:3]),
                         "ok" if not d["leftovers"] else "LEFT " + ",".join(d["leftovers"][:3])])
    lines.append(common.table(["", "ADD/s", "DEL/s", "ADD med ms", "ADD p99 ms", "ADD cpu ms",
                               "DEL cpu ms", "unique IPs", "no leftover"], rows))

    lines.append("\n3. Docker mode vs bridge mode (ms)")
    dock = results["docker"]
    if "skipped" in dock:
        lines.append(f"skipped: {dock['skipped']}")
    else:
        rows = []
        for op in ("add", "del"):
            for key in ("D", "A"):
                s = dock[op][key]
                rows.append([f"{op.upper()} {labels[key]}", fmt_ms(s["min"]), fmt_ms(s["median"]),
                             fmt_ms(s["p90"]), fmt_ms(s["p99"]), fmt_ms(s["max"])])
        lines.append(f"{dock['pods']} sandboxes on the real dockerd")
        lines.append(common.table(["", "min", "median", "p90", "p99", "max"], rows))

    lines.append("\n4. Footprint")
    foot = results["footprint"]
    rows = [[k, f"{v / 1024:.1f}"] for k, v in foot["maxrss_kb"].items()]
    if rows:
        lines.append(common.table(["peak RSS of one plugin run (GNU time %M)", "MB"], rows))
    else:
        lines.append(f"peak RSS: {foot['rss_note']}")
    rows = [[k, fmt_ms(v["min"]), fmt_ms(v["median"]), fmt_ms(v["p90"])]
            for k, v in foot["version_wall"].items()]
    lines.append(common.table(["wall time", "min ms", "median ms", "p90 ms"], rows))
    for command, data in foot["importtime"].items():
        if "error" in data:
            lines.append(f"importtime {command}: {data['error']}")
            continue
        tops = ", ".join(f"{t['module']} {t['cumulative_ms']:.1f}" for t in data["top"][:6])
        lines.append(f"-X importtime {command}: {data['total_ms']:.1f} ms in {data['modules']} "
                     f"modules; top: {tops}")

    ratios = ratios_of(results)
    lines.append("\nRatios smarter-cni / reference (B = bridge+host-local with ipMasq; "
                 "C = without) and targets")
    rows = [[r["metric"], fmt_ratio(r["vs_B"]) if "MB" not in r["metric"] else f"{r['vs_B']:.1f}",
             fmt_ratio(r.get("vs_C", float("nan"))),
             f"{r['op']} {r['target']}" if r.get("target") is not None else "-",
             ("PASS" if r["pass"] else "MISS") if r.get("pass") is not None else "-"]
            for r in ratios]
    lines.append(common.table(["ratio", "vs B", "vs C", "target", ""], rows))
    return "\n".join(lines), ratios


def ratios_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    seq = results["sequential"]
    out = []
    targets = {name: (op, value) for name, op, value in TARGETS}

    def row(metric: str, a: float, b: float, c: float) -> None:
        entry: dict[str, Any] = {"metric": metric, "vs_B": ratio(a, b), "vs_C": ratio(a, c)}
        if metric in targets:
            op, value = targets[metric]
            entry.update(op=op, target=value,
                         **{"pass": entry["vs_B"] <= value if op == "<=" else entry["vs_B"] >= value})
        else:
            entry.update(op="", target=None)
        out.append(entry)

    for op in ("add", "del"):
        for stat in ("median", "p90", "p99"):
            row(f"{op.upper()} {stat}", seq[op]["A"][stat], seq[op]["B"][stat], seq[op]["C"][stat])
        cpu = seq[f"{op}_cpu"]
        row(f"{op.upper()} CPU time median", cpu["A"]["median"], cpu["B"]["median"], cpu["C"]["median"])
    for workers, data in results["concurrency"].items():
        for op in ("add", "del"):
            row(f"{workers}-concurrent {op.upper()} pods/s", data["A"][f"{op}_pods_per_s"],
                data["B"][f"{op}_pods_per_s"], data["C"][f"{op}_pods_per_s"])
    if "N" in seq["add"]:  # the candidate source tree, against the same reference runs
        for op in ("add", "del"):
            for stat in ("median", "p99"):
                row(f"candidate {op.upper()} {stat}", seq[op]["N"][stat], seq[op]["B"][stat],
                    seq[op]["C"][stat])
            row(f"candidate {op.upper()} CPU time median", seq[f"{op}_cpu"]["N"]["median"],
                seq[f"{op}_cpu"]["B"]["median"], seq[f"{op}_cpu"]["C"]["median"])
        data = results["concurrency"].get("16")
        if data:
            for op in ("add", "del"):
                row(f"candidate 16-concurrent {op.upper()} pods/s", data["N"][f"{op}_pods_per_s"],
                    data["B"][f"{op}_pods_per_s"], data["C"][f"{op}_pods_per_s"])
    rss = results["footprint"]["maxrss_kb"]
    if "smarter-cni ADD" in rss and "bridge ADD" in rss:
        row("peak RSS of one ADD", rss["smarter-cni ADD"], rss["bridge ADD"], float("nan"))
        mb = rss["smarter-cni ADD"] / 1024
        out.append({"metric": "peak RSS of one ADD, MB (absolute)", "vs_B": mb,
                    "vs_C": float("nan"), "op": "<=", "target": 25, "pass": mb <= 25})
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=120, help="pods per chain (default 120)")
    parser.add_argument("--quick", action="store_true", help="a few pods, for smoke tests")
    parser.add_argument("--settle-ms", type=float, default=0.0,
                        help="untimed pause after each sequential DEL, so the kernel's deferred "
                             "veth freeing (an RCU grace period that a DEL replying once the veth "
                             "is unlisted leaves running) ends before the next chain's DEL")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per concurrency level")
    parser.add_argument("--docker-pods", type=int, default=30,
                        help=f"sandbox containers for docker mode (max {MAX_DOCKER_PODS})")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker mode section")
    parser.add_argument("--state-tmpfs", action=argparse.BooleanOptionalAction, default=True,
                        help=f"smarter-cni's state dirs on tmpfs ({common.TMPFS_DIR}), as /run is on "
                             "a node; host-local's files stay on disk either way (default: on)")
    parser.add_argument("--python", default=common.DEBIAN_PYTHON if os.path.exists(
        common.DEBIAN_PYTHON) else sys.executable, help="interpreter for the plugin launcher")
    parser.add_argument("--priority", type=int, metavar="NICE", default=None,
                        help="on a shared machine: set the CPU weight of this session's "
                             "scheduler autogroup to NICE (e.g. -10) for the run, so other "
                             "sessions' load distorts less; restored afterwards")
    parser.add_argument("--src", type=Path, default=common.SRC,
                        help="directory holding the smarter_cni package to measure (default: this "
                             "checkout's src/; e.g. a `git archive` snapshot while others edit)")
    parser.add_argument("--candidate-src", type=Path, default=None, metavar="DIR",
                        help="also measure the plugin from this source tree (a change under "
                             "evaluation) as chain N, interleaved with the others")
    parser.add_argument("--candidate-resident", action="store_true",
                        help="serve chain N through a resident plugin server (the candidate's "
                             "smarter_cni.resident, as the DNS service runs it) on N's state dir")
    parser.add_argument("--candidate-reconciler", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="with --candidate-resident, also run the DNS service's reconciler "
                             "for N's network on N's state dir, as an installed node does: its "
                             "rules stamp spares each ADD an `iptables-save` (default: on)")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--append-results", metavar="MD",
                        help="append the command and the printed report to this markdown file "
                             "(bench/RESULTS.md)")
    args = parser.parse_args(argv)
    args.src = args.src.resolve()
    if not (args.src / "smarter_cni" / "launcher.py").exists():
        parser.error(f"--src {args.src} holds no smarter_cni package")
    if args.candidate_src is not None:
        args.candidate_src = args.candidate_src.resolve()
        if not (args.candidate_src / "smarter_cni" / "plugin.py").exists():
            parser.error(f"--candidate-src {args.candidate_src} holds no smarter_cni package")
    if args.quick:
        args.pods = min(args.pods, 6) if "--pods" in argv else 6
        args.rounds = 1
        args.docker_pods = min(args.docker_pods, 3)
    if not 2 <= args.pods <= MAX_PODS:
        parser.error(f"--pods must be within 2..{MAX_PODS}")
    args.docker_pods = max(1, min(args.docker_pods, MAX_DOCKER_PODS))
    return args


AUTOGROUP = "/proc/self/autogroup"


def set_priority(nice: int) -> int | None:
    """Set this session's autogroup nice (with sched_autogroup, a process's own nice
    only ranks it inside its session); returns the previous value, None if unsupported."""
    try:
        with open(AUTOGROUP) as handle:
            previous = int(handle.read().split("nice")[1])
        with open(AUTOGROUP, "w") as handle:
            handle.write(str(nice))
    except (OSError, ValueError, IndexError) as err:
        print(f"plugin_bench: cannot set the autogroup priority: {err}", file=sys.stderr)
        return None
    return previous


def preflight() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, iptables): run with sudo"
    missing = [p for p in REQUIRED if not (common.REFERENCE_PLUGINS / p).exists()]
    if missing:
        return (f"reference plugins {', '.join(missing)} are missing from "
                f"{common.REFERENCE_PLUGINS} (apt-get install containernetworking-plugins)")
    for tool in ("ip", "iptables"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return ""


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so `finally` cleans up on SIGTERM too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = preflight()
    if problem:
        print(f"plugin_bench: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    previous = set_priority(args.priority) if args.priority is not None else None
    try:
        return run(args)
    finally:
        if previous is not None:
            set_priority(previous)


def run(args: argparse.Namespace) -> int:
    keys = ["A", "B", "C"] + (["N"] if args.candidate_src else [])
    try:
        bench = Bench(args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        print(f"plugin_bench: cannot set up: {err}", file=sys.stderr)
        return 1
    results = bench.results
    status = 0
    started = time.monotonic()
    try:
        print(f"plugin_bench: {args.pods} pods per chain, interleaved; "
              f"bin dir {bench.bin_dir} ...", flush=True)
        seq = sequential(bench, keys)
        after_sequential = bench.resident_report() if bench.resident is not None else {}
        spaces = seq.pop("netns")
        results["sequential"] = seq
        results["concurrency"] = {}
        for workers in CONCURRENCY:
            results["concurrency"][str(workers)] = concurrent(bench, keys, spaces, workers,
                                                              args.rounds)
        results["docker"] = ({"skipped": "--no-docker"} if args.no_docker
                             else docker_mode(bench, spaces["A"]))
        results["footprint"] = footprint(bench, spaces["C"])
        if bench.resident is not None:
            results["resident"] = dict(bench.resident_report(),
                                       served_sequential=after_sequential["served"],
                                       requests_sequential=after_sequential["requests"],
                                       work_ms=after_sequential["work_ms"])
        if bench.reconciler is not None:
            results["reconciler"] = dict(bench.reconciler_report(),
                                         stamp_waited_s=round(bench.stamp_waited, 2))
        results["seconds"] = round(time.monotonic() - started, 1)
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        text, ratios = report(results, keys)
        results["ratios"] = ratios
        print(text)
        if args.append_results:
            with open(args.append_results, "a") as handle:
                handle.write(f"\n### plugin_bench, {results['machine']['date_utc']}\n\n"
                             f"`sudo python3 bench/{Path(sys.argv[0]).name} "
                             f"{' '.join(sys.argv[1:])}`\n\n```\n{text}\n```\n")
        bad = [f"{k}/{n}" for n, data in results["concurrency"].items() for k in keys
               if data[k]["duplicates"] or data[k]["leftovers"]]
        if bad:
            print(f"plugin_bench: correctness problems under concurrency: {', '.join(bad)}",
                  file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        print("plugin_bench: interrupted; cleaning up", file=sys.stderr)
        status = 130
    except Exception as err:
        print(f"plugin_bench: failed: {err}", file=sys.stderr)
        status = 1
    finally:
        problems = bench.cleanup()
        for problem in problems:
            print(f"plugin_bench cleanup: {problem}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"plugin_bench: done in {time.monotonic() - started:.1f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
