"""A PATH of logging wrappers around the real iptables/ip programs, to count a step's execs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterable

WRAPPED = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
           "ip6tables-restore", "nft", "ip")
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def make_wrappers(directory: Path, omit: Iterable[str] = (),
                  failing: Iterable[str] = ()) -> tuple[Path, Path]:
    """(wrapper dir, log file): each wrapper logs its name and arguments, then execs the
    real one; `omit`: no wrapper for those; `failing`: those log and exit 1, running nothing."""
    wrappers, log = directory / "wrappers", directory / "execs.log"
    wrappers.mkdir()
    log.touch()
    for name in WRAPPED:
        real = shutil.which(name, path=PLAIN_PATH)
        if real is None or name in omit:
            continue
        tail = "exit 1" if name in failing else f'exec {real} "$@"'
        script = wrappers / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{tail}\n')
        script.chmod(0o755)
    return wrappers, log


def execs(log: Path, prefix: str) -> list[str]:
    """The logged execs of `prefix` (iptables or ip6tables) and its -save/-restore."""
    return [line for line in log.read_text().splitlines()
            if line.split(" ", 1)[0] in (prefix, f"{prefix}-save", f"{prefix}-restore")]


def programs(log: Path) -> list[str]:
    """The names of the logged programs, in order."""
    return [line.split(" ", 1)[0] for line in log.read_text().splitlines()]


def ours(config: dict, program: str = "iptables-save") -> list[str]:
    """The network's lines in the listing, in order: its FORWARD and POSTROUTING rules (by
    comment), its NAT chain's declaration and rules."""
    from smarter_cni.dataplane.names import chain_name

    chain = chain_name(config["name"])
    out = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if (line.startswith(("-A FORWARD ", "-A POSTROUTING "))
                and f'"smarter-cni {config["name"]}"' in line) or line.startswith(f"-A {chain} ")
            or line.startswith(f":{chain} ")]
