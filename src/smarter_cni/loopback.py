"""A `loopback` CNI plugin, for nodes whose CNI bin dir has none.

containerd (and so k3s) runs `loopback` for every pod before the pod's own
network. The reference plugin is a per-architecture Go binary; this one is
plain Python, so one file serves arm/v7, arm64 and amd64 alike.

ADD brings `lo` up inside the pod's netns and reports its addresses; DEL has
nothing to undo (the netns and its `lo` go away together); CHECK verifies
that `lo` is up. Like `smarter-cni` it is exec'd per pod, so it keeps to
the same light imports (see docs/internals.md).
"""

from __future__ import annotations

from .cni import dispatch
from .cni.errors import CHECK_FAILED, CNIError
from .cni.result import Interface, IPConfig, Result, from_dict
from .cni.version import ALL_KNOWN, require_supported
from .run import check, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .cni.request import Request

LAUNCHER_HEADER = "loopback CNI plugin (Python; written by `smarter-cni install`)."


def _in_netns(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv]


def _lo_addresses(netns: str) -> list[str]:
    """The CIDRs on `lo` inside the netns (127.0.0.1/8, and ::1/128 where IPv6 is on)."""
    done = run(_in_netns(netns, "ip", "-o", "addr", "show", "dev", "lo"))
    out = []
    if done.returncode == 0:
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split()
            for i, field in enumerate(fields[:-1]):
                if field in ("inet", "inet6"):
                    out.append(fields[i + 1])
    return out


def add(request: Request) -> dict[str, Any] | None:
    version = request.cni_version
    require_supported(version, ALL_KNOWN)
    check(_in_netns(request.netns, "ip", "link", "set", "lo", "up"),
          what=f"bringing lo up in {request.netns}")
    previous = request.config.get("prevResult")
    if previous is not None:  # chained after another plugin: pass its result on unchanged
        return from_dict(previous).to_dict(version)
    result = Result()
    result.interfaces.append(Interface("lo", "00:00:00:00:00:00", request.netns))
    for cidr in _lo_addresses(request.netns) or ["127.0.0.1/8"]:
        result.ips.append(IPConfig(cidr, "", 0))
    return result.to_dict(version)


def delete(request: Request) -> None:
    """Nothing to undo: `lo` lives and dies with the pod's netns."""
    return None


def check_lo(request: Request) -> None:
    done = run(_in_netns(request.netns, "ip", "-o", "link", "show", "dev", "lo"))
    flags = done.stdout.decode("utf-8", "replace").split("<", 1)[-1].split(">", 1)[0]
    if done.returncode != 0 or "UP" not in flags.split(","):
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
    """Install the `loopback` executable (the plugin's launcher, pointed at this module)."""
    from .launcher import write

    write(dest, python, package_root, module=__name__, header=LAUNCHER_HEADER)
