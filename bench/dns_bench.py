#!/usr/bin/env python3
"""smarter-cni's node DNS vs dnsmasq serving the same names, side by side, in one run.

    sudo python3 bench/dns_bench.py [--pods 250] [--seconds 5] [--quick] [--json FILE]

Both servers run on loopback with the same 250 pods (every name form:
name, name.ns, name.ns.svc.cluster.local): ours reads the registry the
plugin writes; dnsmasq reads a hosts file (--addn-hosts) and answers the
rest of cluster.local itself (--local=/cluster.local/). Both forward other
names to a third server (a dnsmasq on loopback answering from TEST-NET-1
with TTL 300), so forwarded names are served from each one's cache.

Sections:
  throughput   queries/s for pod names, unknown cluster names (NXDOMAIN) and
               forwarded names (dnsperf when installed, else the built-in UDP
               generator), in interleaved rounds: the servers alternate
               (ours first in odd rounds, dnsmasq first in even ones), every
               figure is the median of the rounds with the min-max spread
  latency      p50/p99 at a paced 1000 queries/s, one query at a time
  memory       RSS idle (no pods) and with the pods registered and asked
  freshness    time from a record being written (store.save returned, as when
               ADD returns) to its first successful answer, asking again until
               it comes; dnsmasq: after a hosts line is appended and SIGHUP
               sent, and after a new file is renamed into --hostsdir (inotify)

Every process it starts is stopped by PID in `finally`; files live in a
temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from smarter_cni import store  # noqa: E402
from smarter_cni.registry import pod_identity  # noqa: E402

DNSMASQ = "/usr/sbin/dnsmasq"
MAX_PODS = 1000
MAX_SECONDS = 30
DOMAIN = "cluster.local"


# ---------------------------------------------------------------- wire helpers

def encode(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"


def query_body(name: str, qtype: int = 1) -> bytes:
    """A query without its 2-byte ID: flags RD, one question, no EDNS (as glibc sends)."""
    return struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0) + encode(name) + struct.pack("!HH", qtype, 1)


def rcode_and_answers(data: bytes) -> tuple[int, int]:
    return data[3] & 0x0F, struct.unpack_from("!H", data, 6)[0]


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def ask(port: int, body: bytes, timeout: float = 1.0) -> bytes | None:
    qid = random.randint(1, 0xFFFF)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(struct.pack("!H", qid) + body, ("127.0.0.1", port))
            while True:
                data = sock.recv(65535)
                if data[:2] == struct.pack("!H", qid):
                    return data
        except OSError:
            return None


def wait_answering(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        if ask(port, query_body("probe." + DOMAIN), 0.2) is not None:
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} does not answer on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Procs:
    """Processes this run started; `stop_all` ends each by its PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


# ---------------------------------------------------------------- load

def generate(port: int, bodies: list[bytes], seconds: float, window: int = 64
             ) -> tuple[float, int]:
    """Built-in load: keep `window` queries in flight on one UDP socket.
    Returns (answers per second, queries lost)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.5)
    packets = [struct.pack("!H", i & 0xFFFF) + bodies[i % len(bodies)] for i in range(65536)]
    send, recv = sock.send, sock.recv
    sent = answered = lost = 0
    for _ in range(window):
        send(packets[sent & 0xFFFF])
        sent += 1
    start = time.perf_counter()
    end = start + seconds
    try:
        while True:
            try:
                recv(4096)
            except socket.timeout:  # (an alias of TimeoutError only from 3.10)
                lost += window
                for _ in range(window):
                    send(packets[sent & 0xFFFF])
                    sent += 1
                continue
            answered += 1
            if answered & 1023 == 0 and time.perf_counter() >= end:
                break
            send(packets[sent & 0xFFFF])
            sent += 1
    finally:
        elapsed = time.perf_counter() - start
        sock.close()
    return answered / elapsed, lost


def dnsperf(port: int, names: list[tuple[str, str]], seconds: float, workdir: Path
            ) -> tuple[float, int] | None:
    binary = shutil.which("dnsperf")
    if not binary:
        return None
    data = workdir / f"dnsperf-{random.getrandbits(32):x}.txt"
    data.write_text("".join(f"{name} {rtype}\n" for name, rtype in names))
    done = subprocess.run([binary, "-s", "127.0.0.1", "-p", str(port), "-d", str(data),
                           "-l", str(seconds), "-c", "1", "-q", "200", "-t", "2"],
                          capture_output=True, text=True, timeout=seconds + 30)
    qps = lost = None
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("Queries per second:"):
            qps = float(line.split()[-1])
        elif line.startswith("Queries lost:"):
            lost = int(line.split()[2])
    if qps is None:
        return None
    return qps, lost or 0


def paced_latency(port: int, bodies: list[bytes], rate: int, count: int) -> dict[str, float]:
    """One query at a time at `rate`/s; per-query round trip in microseconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    samples = []
    lost = 0
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for index in range(count):
        packet = struct.pack("!H", index & 0xFFFF) + bodies[index % len(bodies)]
        while time.perf_counter() < next_at:
            pass  # spin: sleep() granularity would distort the pacing
        next_at += interval
        start = time.perf_counter()
        sock.send(packet)
        try:
            while sock.recv(4096)[:2] != packet[:2]:
                pass
        except socket.timeout:
            lost += 1
            continue
        samples.append((time.perf_counter() - start) * 1e6)
    sock.close()
    samples.sort()
    if not samples:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "lost": lost}
    return {"p50_us": samples[len(samples) // 2],
            "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))], "lost": lost}


# ---------------------------------------------------------------- the setup

def pod_names(index: int) -> list[str]:
    base = f"pod-{index}"
    return [base, f"{base}.default", f"{base}.default.svc.{DOMAIN}"]


def pod_ip(index: int) -> str:
    return f"10.99.{index // 250}.{index % 250 + 2}"


def write_registry(state_dir: Path, pods: int, extra: dict[str, str] | None = None) -> None:
    state = store.empty_state()
    for index in range(pods):
        state["attachments"][f"bench/c{index}/eth0"] = {
            "network": "bench", "mode": "bridge", "container_id": f"c{index}", "ifname": "eth0",
            "ips": [pod_ip(index) + "/16"], "pod": pod_identity(f"pod-{index}", "default"),
            "domain": DOMAIN, "ready": True, "created": 1700000000.0 + index}
    for name, ip in (extra or {}).items():
        state["attachments"][f"bench/{name}/eth0"] = {
            "network": "bench", "mode": "bridge", "container_id": name, "ifname": "eth0",
            "ips": [ip + "/16"], "pod": pod_identity(name, "default"), "domain": DOMAIN,
            "ready": True, "created": 1700000000.0}
    store.save(state, str(state_dir))


def hosts_lines(pods: int) -> str:
    return "".join(f"{pod_ip(i)} {' '.join(pod_names(i))}\n" for i in range(pods))


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Procs()
        self.state_dir = workdir / "state"
        self.state_dir.mkdir()
        self.results: dict[str, Any] = {"pods": args.pods, "seconds": args.seconds,
                                        "rounds": args.rounds,
                                        "loadavg": round(os.getloadavg()[0], 1),
                                        "generator": "dnsperf" if shutil.which("dnsperf")
                                        and not args.builtin else "builtin"}

    # -- servers

    def start_upstream(self, forwarded: list[str]) -> int:
        port = free_port()
        argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
                f"--port={port}", "--pid-file=", "--user=root", "--local-ttl=300"]
        argv += [f"--host-record={name},192.0.2.{i % 250 + 1}" for i, name in enumerate(forwarded)]
        wait_answering(port, self.procs.start(argv), "upstream dnsmasq")
        return port

    def start_ours(self, upstream: int) -> tuple[int, subprocess.Popen]:
        # Bytecode in place, as `pip install` leaves it: compiling from source
        # would add ~1.8 MB to the service's memory (PYTHONDONTWRITEBYTECODE in
        # the caller's environment would otherwise keep it from being written).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC / "smarter_cni")],
                       env=env, stdout=subprocess.DEVNULL, check=False, timeout=120)
        port = free_port()
        conf = self.workdir / "bench.conflist"
        conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "bench", "plugins": [
            {"type": "smarter-cni", "subnet": "10.99.0.0/16"}]}))
        argv = [sys.executable, "-m", "smarter_cni.dns", "--config", str(conf), "--listen",
                "127.0.0.1", "--port", str(port), "--state-dir", str(self.state_dir),
                "--upstream", f"127.0.0.1:{upstream}", "--no-address-setup",
                "--metrics", f"127.0.0.1:{free_port()}"]  # as deployed: metrics on
        proc = self.procs.start(argv, dict(os.environ, PYTHONPATH=str(SRC)))
        wait_answering(port, proc, "smarter-cni dns")
        return port, proc

    def start_dnsmasq(self, upstream: int, hosts: Path, hostsdir: Path | None = None
                      ) -> tuple[int, subprocess.Popen]:
        port = free_port()
        argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
                f"--port={port}", "--pid-file=", "--user=root", f"--addn-hosts={hosts}",
                f"--local=/{DOMAIN}/", f"--server=127.0.0.1#{upstream}", "--cache-size=1000",
                "--local-ttl=5"]
        if hostsdir is not None:
            argv.append(f"--hostsdir={hostsdir}")
        proc = self.procs.start(argv)
        wait_answering(port, proc, "dnsmasq")
        return port, proc

    # -- sections

    def throughput(self, port: int, kind: str, names: list[str], rtype: str = "A") -> float:
        bodies = [query_body(name, 28 if rtype == "AAAA" else 1) for name in names]
        for body in bodies:  # warm every cache
            ask(port, body)
        if self.results["generator"] == "dnsperf":
            measured = dnsperf(port, [(n, rtype) for n in names], self.args.seconds, self.workdir)
        else:
            measured = None
        if measured is None:
            measured = generate(port, bodies, self.args.seconds)
        return measured[0]

    def run(self) -> dict[str, Any]:
        pods = self.args.pods
        forwarded = [f"fwd-{i}.test" for i in range(min(pods, 250))]
        upstream = self.start_upstream(forwarded)

        write_registry(self.state_dir, 0)
        ours, ours_proc = self.start_ours(upstream)
        time.sleep(0.3)
        self.results["rss_idle_kib"] = {"smarter-cni": rss_kib(ours_proc.pid)}

        write_registry(self.state_dir, pods)
        time.sleep(1.0)  # the idle tick reloads the registry: idle with the pods
        self.results["rss_idle_pods_kib"] = {"smarter-cni": rss_kib(ours_proc.pid)}
        hosts = self.workdir / "pods.hosts"
        hosts.write_text(hosts_lines(pods))
        hostsdir = self.workdir / "hostsdir"
        hostsdir.mkdir()
        theirs, theirs_proc = self.start_dnsmasq(upstream, hosts, hostsdir)

        pod_queries = [n for i in range(pods) for n in pod_names(i)]
        nx_queries = [f"nope-{i}.default.svc.{DOMAIN}" for i in range(min(pods, 250))]
        sets = {"pod names": (pod_queries, "A"), "unknown names (NXDOMAIN)": (nx_queries, "A"),
                "forwarded (cached)": (forwarded, "A")}
        for label, (names, _) in sets.items():
            for body in [query_body(n) for n in names]:
                answer = ask(ours, body)
                if answer is None or rcode_and_answers(answer)[0] not in (0, 3):
                    raise SystemExit(f"smarter-cni dns gave no good answer for {label}")

        self.results["throughput_qps"] = {}
        self.results["throughput_rounds"] = {}
        self.results["queries_per_cpu_second"] = {}
        self.results["cpu_rounds"] = {}
        self.results["latency_1k_qps"] = {}
        servers = [("smarter-cni", ours, ours_proc.pid), ("dnsmasq", theirs, theirs_proc.pid)]
        for label, (names, rtype) in sets.items():
            rounds: dict[str, list[float]] = {"smarter-cni": [], "dnsmasq": []}
            cpu_rounds: dict[str, list[float]] = {"smarter-cni": [], "dnsmasq": []}
            for index in range(self.args.rounds):
                # alternate who goes first: drift in the machine's load hits both alike
                for server, port, pid in (servers if index % 2 == 0 else servers[::-1]):
                    cpu = cpu_seconds(pid)
                    qps = self.throughput(port, label, names, rtype)
                    used = cpu_seconds(pid) - cpu
                    rounds[server].append(round(qps))
                    # answers per second of the server's own CPU: holds up on a busy machine
                    if used > 0:
                        cpu_rounds[server].append(round(qps * self.args.seconds / used))
            self.results["throughput_rounds"][label] = rounds
            self.results["cpu_rounds"][label] = cpu_rounds
            self.results["throughput_qps"][label] = {s: median(v) for s, v in rounds.items()}
            self.results["queries_per_cpu_second"][label] = {
                s: (median(v) if v else None) for s, v in cpu_rounds.items()}
            lat = {}
            bodies = [query_body(n) for n in names]
            for server, port in (("smarter-cni", ours), ("dnsmasq", theirs)):
                lat[server] = paced_latency(port, bodies, 1000, self.args.latency_queries)
            self.results["latency_1k_qps"][label] = lat

        self.results["loadavg_end"] = round(os.getloadavg()[0], 1)
        self.results["rss_idle_kib"]["dnsmasq"] = None  # dnsmasq started with its hosts file
        self.results["rss_pods_kib"] = {"smarter-cni": rss_kib(ours_proc.pid),
                                        "dnsmasq": rss_kib(theirs_proc.pid)}
        self.results["freshness_ms"] = self.freshness(ours, theirs, theirs_proc, hosts, hostsdir,
                                                      pods)
        return self.results

    def freshness(self, ours: int, theirs: int, theirs_proc: subprocess.Popen, hosts: Path,
                  hostsdir: Path, pods: int) -> dict[str, Any]:
        rounds = self.args.fresh_rounds
        results: dict[str, list[tuple[float, int]]] = {"smarter-cni (registry write)": [],
                                           "dnsmasq (hosts + SIGHUP)": [],
                                           "dnsmasq (--hostsdir inotify)": []}
        extra: dict[str, str] = {}
        for index in range(rounds):
            name = f"fresh-{index}"
            extra[name] = f"10.99.200.{index + 2}"
            write_registry(self.state_dir, pods, extra)  # what ADD does before it returns
            start = time.perf_counter()
            results["smarter-cni (registry write)"].append(
                until_answered(ours, f"{name}.default.svc.{DOMAIN}", start))

            name = f"sighup-{index}"
            with open(hosts, "a") as handle:
                handle.write(f"10.99.201.{index + 2} {name}.default.svc.{DOMAIN}\n")
            os.kill(theirs_proc.pid, signal.SIGHUP)
            start = time.perf_counter()
            results["dnsmasq (hosts + SIGHUP)"].append(
                until_answered(theirs, f"{name}.default.svc.{DOMAIN}", start))

            name = f"inotify-{index}"
            temp = hostsdir / f".{name}.tmp"
            temp.write_text(f"10.99.202.{index + 2} {name}.default.svc.{DOMAIN}\n")
            os.replace(temp, hostsdir / name)
            start = time.perf_counter()
            results["dnsmasq (--hostsdir inotify)"].append(
                until_answered(theirs, f"{name}.default.svc.{DOMAIN}", start))
        out: dict[str, Any] = {}
        for label, pairs in results.items():
            values = sorted(ms for ms, _ in pairs)
            out[label] = {"median": round(values[len(values) // 2], 3), "max": round(values[-1], 3),
                          "first_try": sum(1 for _, tries in pairs if tries == 1),
                          "rounds": len(pairs)}
        return out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return round((ordered[middle - 1] + ordered[middle]) / 2)


def spread(values: list[float]) -> str:
    """'median (min-max)'."""
    if not values:
        return "-"
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def until_answered(port: int, name: str, start: float, limit: float = 5.0
                   ) -> tuple[float, int]:
    """Ask until NOERROR with an answer: (ms since `start`, queries it took)."""
    body = query_body(name)
    tries = 0
    while True:
        tries += 1
        answer = ask(port, body, 0.5)
        if answer is not None and rcode_and_answers(answer) == (0, 1):
            return (time.perf_counter() - start) * 1000, tries
        if time.perf_counter() - start > limit:
            return limit * 1000, tries


# ---------------------------------------------------------------- report

def report(results: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(f"\nsmarter-cni dns vs dnsmasq: {results['pods']} pods, "
        f"{results['rounds']} interleaved rounds of {results['seconds']} s per server and "
        f"query set, load: {results['generator']}, machine load average "
        f"{results['loadavg']} at the start, {results.get('loadavg_end', '-')} at the end")
    out(f"{'':28}{'smarter-cni':>26}{'dnsmasq':>26}{'ratio':>8}")
    out("throughput (queries/s): median (min-max) of the rounds")
    for label, rounds in results["throughput_rounds"].items():
        ours, theirs = rounds["smarter-cni"], rounds["dnsmasq"]
        ratio = median(ours) / median(theirs) if theirs and median(theirs) else 0
        out(f"  {label:26}{spread(ours):>26}{spread(theirs):>26}{ratio:>7.2f}x")
    out("answers per CPU-second of the server (~ queries/s per core; load-independent)")
    for label, rounds in results["cpu_rounds"].items():
        ours, theirs = rounds["smarter-cni"], rounds["dnsmasq"]
        ratio = median(ours) / median(theirs) if ours and theirs else 0
        out(f"  {label:26}{spread(ours):>26}{spread(theirs):>26}{ratio:>7.2f}x")
    out("latency at 1000 q/s: p50 / p99 (us)")
    for label, row in results["latency_1k_qps"].items():
        cells = [f"{row[s]['p50_us']:.0f} / {row[s]['p99_us']:.0f}" for s in
                 ("smarter-cni", "dnsmasq")]
        out(f"  {label:26}{cells[0]:>14}{cells[1]:>14}")
    out("memory (RSS, KiB)")
    out(f"  {'idle, no pods':26}{results['rss_idle_kib']['smarter-cni']:>14,}{'-':>14}")
    out(f"  {'idle, with the pods':26}{results['rss_idle_pods_kib']['smarter-cni']:>14,}"
        f"{'-':>14}")
    out(f"  {'with the pods, after load':26}{results['rss_pods_kib']['smarter-cni']:>14,}"
        f"{results['rss_pods_kib']['dnsmasq']:>14,}")
    out("record written -> first successful answer (ms): median / max, answered by 1st query")
    for label, row in results["freshness_ms"].items():
        out(f"  {label:34}{row['median']:>8.2f} / {row['max']:<8.2f}"
            f"{row['first_try']}/{row['rounds']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--seconds", type=int, default=5, help="per throughput run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per query set (at least 3 for a published "
                             "figure; default %(default)s)")
    parser.add_argument("--latency-queries", type=int, default=3000)
    parser.add_argument("--fresh-rounds", type=int, default=20)
    parser.add_argument("--builtin", action="store_true",
                        help="use the built-in load generator even when dnsperf is installed")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (a few seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.pods, args.seconds, args.latency_queries, args.fresh_rounds = 20, 1, 200, 3
        args.rounds = min(args.rounds, 2)
    if not 1 <= args.pods <= MAX_PODS or not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--pods must be 1..{MAX_PODS} and --seconds 1..{MAX_SECONDS}")
    args.latency_queries = max(10, min(args.latency_queries, 20000))
    args.fresh_rounds = max(1, min(args.fresh_rounds, 100))
    args.rounds = max(1, min(args.rounds, 20))
    if not os.path.exists(DNSMASQ):
        print("needs dnsmasq: apt-get install -y dnsmasq-base", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dns-bench-"))
    bench = Bench(args, workdir)
    try:
        results = bench.run()
    finally:
        bench.procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
