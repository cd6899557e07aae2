#!/usr/bin/env python3
"""Per-exec start of the plugin launcher on each candidate interpreter.

install.sh builds the program's venv on one interpreter, and the plugin's
launcher (`#!VENV/bin/python -IS`) starts it on every pod ADD and DEL. This
builds a venv (without pip) on each interpreter given, writes the launcher
`smarter-cni install` writes into a bin dir per venv, and execs, in
interleaved rounds: `smarter-cni` with CNI_COMMAND=VERSION (interpreter start,
the thin client's imports, the reply, exit: no server, no network) and
`VENV/bin/python -I -S -c pass` (the bare floor). Results in
docs/internals.md, "Which interpreter the venv is built on".

    sudo python3 bench/interpreters.py                       # /usr/bin/python3 and PATH's python3
    sudo python3 bench/interpreters.py --python /usr/bin/python3 --python /opt/py/bin/python3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def real_interpreter(python: str) -> str:
    """The binary `python` runs (a pyenv shim or a venv's python resolved)."""
    code = ("import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', '') "
            "or sys.executable))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def candidates(given: list[str]) -> list[str]:
    if given:
        return given
    found = [common.DEBIAN_PYTHON]
    on_path = shutil.which("python3")
    if on_path and real_interpreter(on_path) != real_interpreter(common.DEBIAN_PYTHON):
        found.append(on_path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="an interpreter to build a venv on (repeat; default: "
                             "/usr/bin/python3 and python3 on PATH when it is another)")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds (default 200)")
    args = parser.parse_args(argv)
    pythons = candidates(args.python)
    work = Path(tempfile.mkdtemp(prefix="scni-interp-"))
    try:
        runs: dict[str, dict[str, object]] = {}
        for n, python in enumerate(pythons):
            venv = work / f"venv{n}"
            subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
            bin_dir = common.make_bin_dir(work / f"bin{n}", str(venv / "bin" / "python"))
            runs[python] = {"real": real_interpreter(str(venv / "bin" / "python")),
                            "venv": venv, "bin": bin_dir, "version": [], "pass": []}
        state = work / "state"  # empty: no resident server, the client runs VERSION itself
        state.mkdir()
        for _ in range(args.rounds):
            for run in runs.values():
                env = common.cni_env("VERSION", run["bin"],
                                     extra={"SMARTER_CNI_STATE_DIR": str(state)})
                done = common.exec_plugin(str(run["bin"] / "smarter-cni"), env,
                                          b'{"cniVersion": "1.0.0"}')
                if not done.ok or b"supportedVersions" not in done.stdout:
                    raise RuntimeError(f"VERSION failed: {done.describe()}")
                run["version"].append(done.wall)
                python = str(run["venv"] / "bin" / "python")
                done = common.exec_plugin(python, {"PATH": "/usr/bin:/bin"}, b"",
                                          argv=[python, "-I", "-S", "-c", "pass"])
                run["pass"].append(done.wall)
        print(f"launcher start per interpreter - {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
              f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, {args.rounds} interleaved rounds")
        rows = []
        for python, run in runs.items():
            for what in ("version", "pass"):
                values = run[what]
                rows.append([f"{python} ({run['real']})",
                             "smarter-cni VERSION" if what == "version" else "python -I -S -c pass",
                             ms(common.percentile(values, 50)),
                             ms(common.percentile(values, 10)),
                             ms(common.percentile(values, 90))])
        print(common.table(["venv built on", "exec", "median ms", "p10", "p90"], rows))
        if len(runs) > 1:
            first, *others = runs.values()
            for run in others:
                for what in ("version", "pass"):
                    deltas = sorted(b - a for a, b in zip(first[what], run[what]))
                    print(f"{run['real']} - {first['real']}, {what}: per-round difference median "
                          f"{ms(common.percentile(deltas, 50))} ms "
                          f"(p10 {ms(common.percentile(deltas, 10))}, "
                          f"p90 {ms(common.percentile(deltas, 90))})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
