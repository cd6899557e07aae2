#!/usr/bin/env python3
"""What a default smarter-cni install (and the node's Docker) looks like, to compare.

Records, for the defaults only (`install.sh` with no options): the installed
files with their sha256, the PATH link, the DNS service's unit/pidfile and
whether its process lives, the real state dir's files, the links `smarter0`,
`smarter-dns` and `docker0` with their IPv4 addresses, the iptables (or nft)
lines of the network `smarter` (10.42.0.0/16) and of `docker0`, and, when
169.254.0.2 is an address of this node, the node DNS's answer for a pod
name that does not exist. Nothing here changes the node; the one packet
sent goes to 169.254.0.2 only when that address is the node's own.

Plain python3, no dependencies: used by tests/conftest.py (a session guard)
and by .ci/run:

    python3 tests/helpers/node_snapshot.py save FILE
    python3 tests/helpers/node_snapshot.py compare BEFORE AFTER   # exit 1 on a change
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys

FILES = (
    "/opt/cni/bin/smarter-cni",
    "/opt/cni/bin/c2d",
    "/opt/cni/bin/loopback",
    "/etc/cni/net.d/10-smarter-cni.conflist",
    "/opt/smarter-cni/install.json",
    "/etc/systemd/system/smarter-cni-dns.service",
    "/run/smarter-cni/attachments.json",
)
DIRS = ("/etc/cni/net.d", "/opt/cni/bin", "/run/smarter-cni")
PATH_LINK = "/usr/local/bin/smarter-cni"
PIDFILE = "/run/smarter-cni/dns-supervisor.pid"
UNIT = "smarter-cni-dns.service"
LINKS = ("smarter0", "smarter-dns", "docker0")
# iptables lines that belong to the default networks or to the node's Docker.
RULE_MARKERS = ('"smarter-cni smarter"', "10.42.0.0/16", '"smarter-cni mynet"',
                "172.38.0.0/16", "docker0")
DOCKER_CHAINS = ("DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2")
DNS_ADDRESS = "169.254.0.2"
ADDRESSES = (DNS_ADDRESS, "172.38.0.2")
DNS_PROBE_NAME = "no-such-pod-snapshot.default.svc.cluster.local"


def _run(*argv: str) -> str:
    if not shutil.which(argv[0]):
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def file_entry(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()[:16]
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return "absent"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return f"sha256:{digest} mode {mode:04o}"


def dir_entry(path: str) -> str:
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return "absent"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    # The DNS service's own log grows on its own; its presence is what counts. Its
    # reconciler rewrites `verified-<network>` after every clean look (a stamp, not
    # a change of the node); `repairs.json` appearing does count: something broke.
    names = [name for name in names if not name.startswith("verified-")]
    return " ".join(names) if names else "(empty)"


def link_entry(name: str) -> str:
    base = f"/sys/class/net/{name}"
    if not os.path.exists(base):
        return "absent"
    try:
        with open(f"{base}/flags") as handle:
            up = int(handle.read().strip(), 16) & 1
    except (OSError, ValueError):
        up = 0
    out = _run("ip", "-4", "-o", "addr", "show", "dev", name)
    addresses = sorted(line.split()[3] for line in out.splitlines() if len(line.split()) > 3)
    return f"{'up' if up else 'down'} {','.join(addresses) or 'no-ipv4'}"


def address_entry(address: str) -> str:
    """Which interface carries the address (the DNS address sits on lo without dummy links)."""
    out = _run("ip", "-4", "-o", "addr", "show", "to", f"{address}/32")
    devices = sorted(line.split()[1] for line in out.splitlines() if len(line.split()) > 1)
    return f"on {','.join(devices)}" if devices else "absent"


def path_link_entry(path: str) -> str:
    if os.path.islink(path):
        return f"-> {os.readlink(path)}"
    return file_entry(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def service_entry() -> str:
    """The node DNS service: systemd's view where systemd runs, else the supervisor pidfile."""
    parts = []
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        state = _run("systemctl", "show", "-p", "ActiveState", "-p", "MainPID", UNIT).split()
        parts.append("systemd " + " ".join(state))
    try:
        with open(PIDFILE) as handle:
            pid = int(handle.read().strip())
        parts.append(f"supervisor pid {pid} {'alive' if _pid_alive(pid) else 'dead'}")
    except FileNotFoundError:
        parts.append("no supervisor pidfile")
    except (OSError, ValueError):
        parts.append("unreadable supervisor pidfile")
    return "; ".join(parts)


def rules_entry() -> str:
    """Sorted iptables lines (all tables, no counters) of the default networks and docker0;
    with the chains those lines jump to and Docker's own chains."""
    if shutil.which("iptables-save"):
        lines = _run("iptables-save").splitlines()
        tagged: list[str] = []
        table = ""
        for line in lines:
            if line.startswith("*"):
                table = line
            if any(marker in line for marker in RULE_MARKERS):
                tagged.append(f"{table} {line}")
        jumps = {part.split()[0] for line in tagged for part in line.split(" -j ")[1:]}
        jumps |= set(DOCKER_CHAINS)
        table = ""
        for line in lines:
            if line.startswith("*"):
                table = line
            words = line.split()
            if line.startswith(":") and line[1:].split()[0] in jumps:
                tagged.append(f"{table} {words[0]}")  # the chain exists (policy/counters dropped)
            elif len(words) > 1 and words[0] == "-A" and words[1] in jumps and \
                    words[1] not in DOCKER_CHAINS:
                tagged.append(f"{table} {line}")
        return "\n".join(sorted(set(tagged))) or "(none)"
    if shutil.which("nft"):
        lines = _run("nft", "list", "ruleset").splitlines()
        return "\n".join(sorted({" ".join(line.split()) for line in lines
                                 if "smarter" in line or "10.42.0.0/16" in line})) or "(none)"
    return "(no iptables or nft)"


def _is_local(address: str) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, 0))
        return True
    except OSError:  # EADDRNOTAVAIL: not ours; anything else: do not send either
        return False
    finally:
        sock.close()


def dns_entry(address: str = DNS_ADDRESS, name: str = DNS_PROBE_NAME) -> str:
    """rcode and AA flag of an A query for a pod name nobody has, e.g. 'NXDOMAIN aa'."""
    if not _is_local(address):
        return f"{address} is not an address of this node"
    qid = random.randint(1, 0xFFFF)
    question = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    try:
        for _ in range(3):
            sock.sendto(packet, (address, 53))
            try:
                data, _peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            if len(data) >= 12 and data[:2] == packet[:2]:
                flags = struct.unpack("!H", data[2:4])[0]
                rcode = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}.get(
                    flags & 0xF, f"rcode {flags & 0xF}")
                return f"{rcode}{' aa' if flags & 0x0400 else ''}"
        return "no answer"
    except OSError as err:
        return f"error ({err.strerror})"
    finally:
        sock.close()


def take(dns: bool = True) -> dict[str, str]:
    snap: dict[str, str] = {}
    for path in FILES:
        snap[f"file {path}"] = file_entry(path)
    for path in DIRS:
        snap[f"dir {path}"] = dir_entry(path)
    snap[f"link {PATH_LINK}"] = path_link_entry(PATH_LINK)
    snap["dns service"] = service_entry()
    for name in LINKS:
        snap[f"interface {name}"] = link_entry(name)
    for address in ADDRESSES:
        snap[f"address {address}"] = address_entry(address)
    snap["iptables (smarter, 10.42.0.0/16, mynet, docker0)"] = rules_entry()
    if dns:
        snap[f"dns @{DNS_ADDRESS} {DNS_PROBE_NAME.split('.')[0]}"] = dns_entry()
    return snap


def _short(value: str, width: int = 44) -> str:
    lines = value.splitlines()
    if len(lines) > 1:
        digest = hashlib.sha256(value.encode()).hexdigest()[:8]
        return f"{len(lines)} lines ({digest})"
    return value if len(value) <= width else value[:width - 3] + "..."


def compare(before: dict[str, str], after: dict[str, str]) -> tuple[bool, str]:
    """(same, a printable before/after table with the differing lines spelled out)."""
    keys = list(before) + [k for k in after if k not in before]
    rows = [("resource", "before", "after", "")]
    details = []
    same = True
    for key in keys:
        old, new = before.get(key, "(not recorded)"), after.get(key, "(not recorded)")
        verdict = "same" if old == new else "CHANGED"
        same &= old == new
        rows.append((key, _short(old), _short(new), verdict))
        if old != new and ("\n" in old or "\n" in new or len(old) > 44 or len(new) > 44):
            gone = sorted(set(old.splitlines()) - set(new.splitlines()))
            came = sorted(set(new.splitlines()) - set(old.splitlines()))
            details.append(f"{key}:\n" + "\n".join([f"  - {line}" for line in gone]
                                                   + [f"  + {line}" for line in came]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return same, "\n".join(lines + details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    save = sub.add_parser("save", help="record the node now into FILE (JSON)")
    save.add_argument("file")
    save.add_argument("--no-dns", action="store_true", help="do not query the node DNS")
    cmp = sub.add_parser("compare", help="print a before/after table; exit 1 if anything changed")
    cmp.add_argument("before")
    cmp.add_argument("after")
    show = sub.add_parser("show", help="print the node's snapshot now")
    show.add_argument("--no-dns", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "save":
        with open(args.file, "w") as handle:
            json.dump(take(dns=not args.no_dns), handle, indent=1)
        return 0
    if args.command == "show":
        for key, value in take(dns=not args.no_dns).items():
            print(f"{key}: {value}")
        return 0
    with open(args.before) as handle:
        before = json.load(handle)
    with open(args.after) as handle:
        after = json.load(handle)
    same, table = compare(before, after)
    print(table)
    print("node unchanged" if same else "NODE CHANGED: see the rows marked CHANGED above")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
