"""Link, address and route operations through iproute2, batched to save execs."""

from __future__ import annotations

import os

from ..cni import jsonfast
from ..cni.errors import DATAPLANE_FAILURE, INTERFACE_EXISTS, CNIError
from ..run import check, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence



def exists(name: str) -> bool:
    # "" or a name with "/" would test /sys/class/net itself or another path: never a link
    return bool(name) and "/" not in name and os.path.exists(f"/sys/class/net/{name}")


def ifindex(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/ifindex") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 0


def master_of(name: str) -> str:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        return ""


NAMED_NETNS_DIRS = ("/var/run/netns", "/run/netns")


def ip_argv(netns: str = "") -> list[str]:
    """`ip` run inside `netns`: `ip -n NAME` for a named netns (containerd and
    CRI-O use those; one exec), else through nsenter (e.g. /proc/PID/ns/net)."""
    if not netns:
        return ["ip"]
    directory, name = os.path.split(netns)
    if directory in NAMED_NETNS_DIRS and name and not name.startswith("."):
        return ["ip", "-n", name]
    return ["nsenter", f"--net={netns}", "ip"]


def batch(lines: Sequence[str], netns: str = "", what: str = "") -> None:
    """Run several `ip` commands in one exec (inside `netns` when given)."""
    script = ("\n".join(lines) + "\n").encode()
    check([*ip_argv(netns), "-batch", "-"], script, what or "ip")


def delete(name: str) -> bool:
    """Delete a link if present; True when something was removed."""
    if not exists(name):
        return False
    done = run(["ip", "link", "del", name])
    if done.returncode != 0 and exists(name):
        raise CNIError(DATAPLANE_FAILURE, f"cannot delete link {name}: {done.error_text}")
    return True


def show_json(args: Sequence[str], netns: str = "") -> Any:
    argv = [*ip_argv(netns), "-j", *args]
    done = run(argv)
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"{' '.join(argv[-4:])} failed: {done.error_text}")
    text = done.stdout.strip()
    return jsonfast.loads(text) if text else []


def create_veth(host: str, peer: str, netns: str, peer_mac: str, host_mac: str, mtu: int,
                bridge: str, hairpin: bool) -> None:
    """Create the pair with the peer born inside `netns`, then enslave the host end."""
    if exists(host):
        raise CNIError(INTERFACE_EXISTS, f"host interface {host} already exists; "
                       "the runtime must DEL this container before adding it again")
    lines = [
        f"link add {host} mtu {mtu} address {host_mac} type veth peer name {peer} "
        f"netns {netns} address {peer_mac} mtu {mtu}",
        f"link set {host} master {bridge} up",
    ]
    if hairpin:
        lines.append(f"link set {host} type bridge_slave hairpin on")
    script = ("\n".join(lines) + "\n").encode()
    done = run(["ip", "-batch", "-"], script)
    if done.returncode == 0:
        return
    delete(host)
    if "File exists" in done.error_text:
        raise CNIError(INTERFACE_EXISTS, f"interface {peer} already exists in {netns}; "
                       "a runtime must not ADD the same interface twice")
    raise CNIError(DATAPLANE_FAILURE, f"cannot create veth {host}/{peer}: {done.error_text}")
