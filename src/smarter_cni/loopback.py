"""A `loopback` CNI plugin, for nodes whose CNI bin dir has none.

containerd (and so k3s) runs `loopback` for every pod before the pod's own
network. The reference plugin is a per-architecture Go binary; this one is
plain Python, so one file serves arm/v7, arm64 and amd64 alike.

ADD brings `lo` up inside the pod's netns and reports its addresses; DEL has
nothing to undo (the netns and its `lo` go away together); CHECK verifies
that `lo` is up. Like `smarter-cni` it is exec'd per pod, so it keeps to
the same light imports (see docs/internals.md) and talks rtnetlink itself
(dataplane/netlink.py: a socket opened inside the pod's netns, this process
never leaving its own) instead of exec'ing nsenter + ip twice; iproute2
remains the fallback where raw netlink or setns(2) cannot be used.
"""

from __future__ import annotations

import os

from .cni import dispatch
from .cni.errors import CHECK_FAILED, DATAPLANE_FAILURE, INVALID_ENVIRONMENT, CNIError
from .cni.result import Interface, IPConfig, Result, from_dict
from .cni.version import ALL_KNOWN, require_supported
from .dataplane import netlink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .cni.request import Request

LAUNCHER_HEADER = "loopback CNI plugin (Python; written by `smarter-cni install`)."


def pod_socket(netns: str) -> netlink.Socket | None:
    """A netlink socket inside `netns` (this process stays in its own), or None: use iproute2.

    The request parser has already made sure `netns` is a network namespace file."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:  # removed since the parser looked
        raise CNIError(INVALID_ENVIRONMENT, f"cannot open CNI_NETNS {netns[:200]}: "
                       f"{err.strerror}") from None
    try:
        if os.environ.get(netlink.FORCE_IPROUTE2):
            return None
        return netlink.pod_socket(fd)
    except netlink.NetlinkUnavailable:
        return None
    finally:
        os.close(fd)


def lo_up(netns: str) -> list[str]:
    """Bring `lo` up in `netns`; its CIDRs (127.0.0.1/8, and ::1/128 where IPv6 is on)."""
    sock = pod_socket(netns)
    if sock is None:
        return _lo_up_iproute2(netns)
    try:
        index, flags = sock.link("lo")
        if not flags & netlink.IFF_UP:
            sock.set_up(index)
        return [f"{address}/{prefix}" for family in (netlink.AF_INET, netlink.AF_INET6)
                for address, prefix in sock.ipv4_addresses(index, family)]
    except OSError as err:
        raise CNIError(DATAPLANE_FAILURE, f"cannot bring lo up in {netns}: {err.strerror}") from None
    finally:
        sock.close()


def lo_is_up(netns: str) -> bool:
    sock = pod_socket(netns)
    if sock is None:
        return _lo_is_up_iproute2(netns)
    try:
        return bool(sock.link("lo")[1] & netlink.IFF_UP)
    except OSError as err:
        raise CNIError(CHECK_FAILED, f"cannot look at lo in {netns}: {err.strerror}") from None
    finally:
        sock.close()


# -- without rtnetlink (no _ctypes, no setns, or SMARTER_CNI_USE_IPROUTE2): nsenter + ip


def _in_netns(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv]


def _lo_up_iproute2(netns: str) -> list[str]:
    from .run import check, run

    check(_in_netns(netns, "ip", "link", "set", "lo", "up"), what=f"bringing lo up in {netns}")
    done = run(_in_netns(netns, "ip", "-o", "addr", "show", "dev", "lo"))
    out = []
    if done.returncode == 0:
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split()
            for i, field in enumerate(fields[:-1]):
                if field in ("inet", "inet6"):
                    out.append(fields[i + 1])
    return out


def _lo_is_up_iproute2(netns: str) -> bool:
    from .run import run

    done = run(_in_netns(netns, "ip", "-o", "link", "show", "dev", "lo"))
    flags = done.stdout.decode("utf-8", "replace").split("<", 1)[-1].split(">", 1)[0]
    return done.returncode == 0 and "UP" in flags.split(",")


# -- the CNI commands


def add(request: Request) -> dict[str, Any] | None:
    version = request.cni_version
    require_supported(version, ALL_KNOWN)
    cidrs = lo_up(request.netns)
    previous = request.config.get("prevResult")
    if previous is not None:  # chained after another plugin: pass its result on unchanged
        return from_dict(previous).to_dict(version)
    result = Result()
    result.interfaces.append(Interface("lo", "00:00:00:00:00:00", request.netns))
    for cidr in cidrs or ["127.0.0.1/8"]:
        result.ips.append(IPConfig(cidr, "", 0))
    return result.to_dict(version)


def delete(request: Request) -> None:
    """Nothing to undo: `lo` lives and dies with the pod's netns."""
    return None


def check_lo(request: Request) -> None:
    if not lo_is_up(request.netns):
        raise CNIError(CHECK_FAILED, f"lo is not up in {request.netns}")


def version(request: Request) -> dict[str, Any]:
    asked = request.config.get("cniVersion") or ALL_KNOWN[-1]
    return {"cniVersion": asked, "supportedVersions": list(ALL_KNOWN)}


def nothing(request: Request) -> None:
    return None


HANDLERS = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check_lo,
    "VERSION": version,
    "STATUS": nothing,
    "GC": nothing,
}


def main() -> int:
    return dispatch.run(HANDLERS)


def write_launcher(dest: str, python: str, package_root: str) -> None:
    """Install the `loopback` executable: the thin client (client.py), named "loopback", so
    the resident server does the work when it runs and this module's HANDLERS otherwise.
    main() below still serves launchers written before that."""
    from .launcher import write

    write(dest, python, package_root, header=LAUNCHER_HEADER, plugin="loopback")
