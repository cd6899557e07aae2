"""ADD and DEL of the thin client in each state of the resident server (issue 16).

    sudo /usr/bin/python3 bench/resident_modes.py --rounds 30

Interleaved rounds; in each, one pod is added and deleted in every state:

- warm:    the resident server running in warm mode (the default: each request in its own
           already-imported process, one at a time)
- fork:    the resident server in fork mode (a pre-forked worker per request)
- missing: no socket (service stopped, or never installed): connect fails at once
- stale:   a socket file nobody listens on (the server was killed): connect is refused
- hung:    a listener that never accepts (a stuck server): the first client waits for the
           acknowledgement (client.ACK_TIMEOUT), marks the server unresponsive for
           client.UNRESPONSIVE_HOLD s and does the work itself; later clients skip it

Every state has its own bridge network and state dir, so the five never share a lock.
The smarter-cni exec alone is timed (no loopback). Everything made is removed in `finally`.

    sudo /usr/bin/python3 bench/resident_modes.py --loopback --rounds 60

`--loopback` measures the `loopback` plugin instead, ADD and DEL in a fresh netns (lo
down), interleaved round by round: the Go reference (/usr/lib/cni/loopback), the old
Python one (`--loopback-base`'s loopback.py, default `main`, in a copy of the package:
nsenter + ip execs), the new one in-process (its thin client, no server) and the new one
through a warm resident server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("warm", "fork", "missing", "stale", "hung")
LOOPBACKS = ("go", "python-old", "in-process", "warm")
LOOPBACK_CONFIG = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}


def _ms(values: list[float]) -> str:
    return (f"{common.percentile(values, 50) * 1000:.2f} ({common.percentile(values, 10) * 1000:.2f}"
            f"-{common.percentile(values, 90) * 1000:.2f})")


def _loopback_bin(tmp: Path, python: str, src: Path, base: str) -> dict[str, str]:
    """The four loopback executables: Go, the old module (a package copy), the new client."""
    sys.path.insert(0, str(src))
    from smarter_cni import launcher, loopback

    old_src = tmp / "old-src"
    shutil.copytree(src, old_src, ignore=shutil.ignore_patterns("__pycache__"))
    old = common.sh("git", "-C", str(common.ROOT), "show", f"{base}:src/smarter_cni/loopback.py")
    (old_src / "smarter_cni" / "loopback.py").write_bytes(old.stdout)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    launcher.write(str(bin_dir / "loopback-old"), python, str(old_src),
                   module="smarter_cni.loopback", header=loopback.LAUNCHER_HEADER)
    launcher.write(str(bin_dir / "loopback"), python, str(src), header=loopback.LAUNCHER_HEADER,
                   plugin="loopback")
    new = str(bin_dir / "loopback")
    return {"go": str(common.REFERENCE_PLUGINS / "loopback"),
            "python-old": str(bin_dir / "loopback-old"), "in-process": new, "warm": new}


def loopback_side_by_side(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-loopback-"))
    namespaces = common.Namespaces(f"scl{common.token(6)}")
    server: subprocess.Popen | None = None
    times: dict[str, dict[str, list[float]]] = {v: {"ADD": [], "DEL": []} for v in LOOPBACKS}
    load = [os.getloadavg()[0]]
    served = 0
    try:
        src = args.src.resolve()
        programs = _loopback_bin(tmp, args.python, src, args.loopback_base)
        states = {v: tmp / f"state-{v}" for v in LOOPBACKS}
        for state in states.values():
            state.mkdir(mode=0o700)
        server = common.start_resident(args.python, src, states["warm"], "warm",
                                       tmp / "server.log")
        stdin = json.dumps(LOOPBACK_CONFIG).encode()
        for round_no in range(args.rounds + 1):  # round 0: bytecode and caches, not counted
            order = LOOPBACKS if round_no % 2 else tuple(reversed(LOOPBACKS))
            for variant, path in zip(order, namespaces.create(len(LOOPBACKS))):
                extra = {"SMARTER_CNI_STATE_DIR": str(states[variant])}
                for op in ("ADD", "DEL"):
                    done = common.exec_plugin(programs[variant], common.cni_env(
                        op, tmp, f"l{round_no}", path, "lo", extra=extra), stdin)
                    if not done.ok or (op == "ADD" and "127.0.0.1/8" not in done.stdout.decode()):
                        raise RuntimeError(f"{variant} {op}: {done.describe()}")
                    if round_no:
                        times[variant][op].append(done.wall)
            namespaces.cleanup()
        load.append(os.getloadavg()[0])
        served = len(common.served_requests(tmp / "server.log"))
    finally:
        if server is not None and server.poll() is None:
            server.terminate()  # our own child, by its PID
            server.wait(10)
        namespaces.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    go = {op: common.percentile(times["go"][op], 50) for op in ("ADD", "DEL")}
    rows = [[v, _ms(times[v]["ADD"]), _ms(times[v]["DEL"]),
             common.fmt_ratio(common.ratio(common.percentile(times[v]["ADD"], 50), go["ADD"])),
             common.fmt_ratio(common.ratio(common.percentile(times[v]["DEL"], 50), go["DEL"]))]
            for v in LOOPBACKS]
    print(f"loopback, {args.rounds} interleaved rounds, load {load[0]:.1f} -> {load[-1]:.1f}; "
          "median (p10-p90) ms")
    print(common.table(["loopback", "ADD ms", "DEL ms", "ADD / go", "DEL / go"], rows))
    print(f"served by the warm server: {served} of {2 * (args.rounds + 1)} requests")
    if args.json:
        Path(args.json).write_text(json.dumps({"loopback": times, "load": load,
                                               "served": served}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--python", default=common.DEBIAN_PYTHON if os.path.exists(
        common.DEBIAN_PYTHON) else sys.executable)
    parser.add_argument("--src", type=Path, default=common.SRC)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--loopback", action="store_true",
                        help="the loopback plugin side by side instead (see the docstring)")
    parser.add_argument("--loopback-base", default="main",
                        help="git revision of the old Python loopback.py (default main)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (netns, bridges)")
    if args.loopback:
        return loopback_side_by_side(args)
    run_id = common.token(6)
    tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-modes-"))
    bin_dir = common.make_bin_dir(tmp / "bin", args.python, args.src.resolve())
    namespaces = common.Namespaces(f"scm{run_id}")
    subnets = common.free_subnets(len(MODES), 24)
    confs, states, held = {}, {}, []
    servers: list[subprocess.Popen] = []
    served: dict[str, int] = {}
    times: dict[str, dict[str, list[float]]] = {m: {"ADD": [], "DEL": []} for m in MODES}
    load = [os.getloadavg()[0]]
    try:
        for mode, subnet in zip(MODES, subnets):
            states[mode] = tmp / f"state-{mode}"
            states[mode].mkdir(mode=0o700)
            confs[mode] = {"cniVersion": "1.0.0", "name": f"scm-{mode}-{run_id}",
                           "type": "smarter-cni", "bridge": f"scm{mode[:2]}{run_id}",
                           "subnet": subnet}
        for mode in ("warm", "fork"):
            servers.append(common.start_resident(args.python, args.src.resolve(), states[mode], mode,
                                                 states[mode].parent / f"server-{mode}.log"))
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(states["stale"] / "plugin.sock"))
        stale.close()
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hung.bind(str(states["hung"] / "plugin.sock"))
        hung.listen(1024)
        held.append(hung)
        program = str(bin_dir / "smarter-cni")
        for round_no in range(args.rounds + 1):  # round 0: the network's first ADD, not counted
            order = MODES if round_no % 2 else tuple(reversed(MODES))
            netns = namespaces.create(len(MODES))
            for mode, path in zip(order, netns):
                extra = {"SMARTER_CNI_STATE_DIR": str(states[mode])}
                stdin = json.dumps(confs[mode]).encode()
                cid = f"m{round_no}{mode}{run_id}"  # host veth names derive from it
                added = common.exec_plugin(program, common.cni_env("ADD", bin_dir, cid, path,
                                                                   extra=extra), stdin)
                if not added.ok:
                    raise RuntimeError(f"{mode} ADD: {added.describe()}")
                deleted = common.exec_plugin(program, common.cni_env("DEL", bin_dir, cid, path,
                                                                     extra=extra), stdin)
                if not deleted.ok:
                    raise RuntimeError(f"{mode} DEL: {deleted.describe()}")
                if round_no:
                    times[mode]["ADD"].append(added.wall)
                    times[mode]["DEL"].append(deleted.wall)
            namespaces.cleanup()
        load.append(os.getloadavg()[0])
        for mode in ("warm", "fork"):  # requests the server ran (the rest fell back in-process)
            served[mode] = len(common.served_requests(tmp / f"server-{mode}.log"))
    finally:
        for sock in held:
            sock.close()
        for server in servers:
            if server.poll() is None:
                server.terminate()  # our own child, by its PID
                server.wait(10)
        namespaces.cleanup()
        for mode, conf in confs.items():
            os.environ["SMARTER_CNI_STATE_DIR"] = str(states[mode])
            sys.path.insert(0, str(args.src.resolve()))
            try:
                from smarter_cni.dataplane.bridge_network import teardown_network
                from smarter_cni.netconf import parse_netconf

                teardown_network(parse_netconf(conf))
            except Exception as err:  # keep cleaning
                print(f"teardown {mode}: {err}", file=sys.stderr)
        common.purge_iptables(run_id)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for mode in MODES:
        row = [mode]
        for op in ("ADD", "DEL"):
            values = times[mode][op]
            row.append(f"{common.percentile(values, 50) * 1000:.2f} "
                       f"({common.percentile(values, 10) * 1000:.2f}-"
                       f"{common.percentile(values, 90) * 1000:.2f})")
        rows.append(row)
    print(f"{args.rounds} interleaved rounds, smarter-cni exec alone, load {load[0]:.1f} -> "
          f"{load[-1]:.1f}; median (p10-p90) ms")
    print(common.table(["server", "ADD ms", "DEL ms"], rows))
    total = 2 * (args.rounds + 1)
    counts = ", ".join(f"{mode} {count}" for mode, count in served.items())
    print(f"served by the server (of {total} requests each): {counts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "load": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
