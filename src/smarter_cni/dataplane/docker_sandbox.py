"""The pod's sandbox container in docker mode: finding it, and reading what
Docker made inside it (the pod interface, the host end of its veth).

Reads only: /proc and /sys files and container inspects, no changes.
"""

from __future__ import annotations

import os

from .. import ipv4
from ..cni.errors import DOCKER_FAILURE, INVALID_ENVIRONMENT, UNKNOWN_CONTAINER, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..cni.request import Request
    from ..docker_api import DockerClient


def find_sandbox(docker: DockerClient, request: Request) -> dict[str, Any] | None:
    """The sandbox by its Docker ID, else the running container in CNI_NETNS."""
    container = docker.inspect_container(request.container_id)
    if container is not None:
        return container
    if request.netns and os.path.exists(request.netns):
        return find_by_netns(docker, request.netns)
    return None


RUNNING = "/containers/json?filters=%7B%22status%22%3A%5B%22running%22%5D%7D"


def find_by_netns(docker: DockerClient, netns: str) -> dict[str, Any] | None:
    """The running container whose State.Pid lives in the netns (compared by inode).

    The container ID in the netns pid's cgroup path is tried first; if there
    is none, or it is wrong, every running container is inspected.
    """
    try:
        wanted = inode(netns)
    except OSError:
        return None
    hint = docker_id_from_cgroup(netns)
    if hint:
        container = _in_netns(docker, hint, wanted)
        if container is not None:
            return container
    for entry in docker.get(RUNNING, "list running containers") or []:
        ref = entry.get("Id", "") if isinstance(entry, dict) else ""
        container = _in_netns(docker, ref, wanted) if ref and ref != hint else None
        if container is not None:
            return container
    return None


def _in_netns(docker: DockerClient, ref: str, wanted: tuple[int, int]
              ) -> dict[str, Any] | None:
    container = docker.inspect_container(ref)
    pid = ((container or {}).get("State") or {}).get("Pid") or 0
    return container if pid and same_inode(f"/proc/{pid}/ns/net", wanted) else None


def docker_id_from_cgroup(netns: str) -> str:
    """/proc/<pid>/ns/net -> the 64-hex container ID in that pid's cgroup path, if any."""
    parts = netns.split("/")
    if len(parts) != 5 or parts[1] != "proc" or not parts[2].isdigit():
        return ""
    try:
        with open(f"/proc/{parts[2]}/cgroup") as handle:
            text = handle.read(8192)
    except OSError:
        return ""
    for line in text.splitlines():
        for piece in line.replace(":", "/").replace("-", "/").replace(".", "/").split("/"):
            if len(piece) == 64 and all(c in "0123456789abcdef" for c in piece):
                return piece
    return ""


def inode(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def same_inode(path: str, wanted: tuple[int, int]) -> bool:
    try:
        return inode(path) == wanted
    except OSError:
        return False


def running_pid(container: dict[str, Any]) -> int:
    state = container.get("State") or {}
    pid = state.get("Pid") or 0
    if not state.get("Running") or not pid:
        raise CNIError(UNKNOWN_CONTAINER,
                       f"sandbox container {container.get('Id', '')[:12]} is not running "
                       f"(status {state.get('Status', 'unknown')})")
    return pid


def require_same_netns(netns: str, pid: int, docker_id: str) -> None:
    try:
        wanted = inode(netns)
    except OSError as err:
        raise CNIError(INVALID_ENVIRONMENT, f"cannot open CNI_NETNS {netns}: {err.strerror}"
                       ) from None
    if not same_inode(f"/proc/{pid}/ns/net", wanted):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS {netns} is not the network namespace of container "
                       f"{docker_id[:12]} (pid {pid}); Docker would configure another namespace")


def hostname_of(container: dict[str, Any]) -> str:
    value = (container.get("Config") or {}).get("Hostname", "")
    return value if isinstance(value, str) else ""


def pod_ifname(pid: int, address: str, prefix: int, netns: str) -> str:
    """The interface Docker created in the pod: the one with the subnet's connected route.

    Read from /proc/<pid>/net/route (that process's netns) rather than by
    running `ip` inside the namespace: a file read instead of an exec.
    """
    try:
        network = ipv4.to_int(address) & ipv4.mask(prefix)
    except ipv4.AddressError:
        raise CNIError(DOCKER_FAILURE, f"dockerd reported a bad address {address!r}") from None
    mask = ipv4.mask(prefix)
    try:
        with open(f"/proc/{pid}/net/route") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and le32(fields[1]) == network and le32(fields[7]) == mask:
            return fields[0]
    return _ifname_by_address(netns, address)


def host_veth(pid: int, ifname: str) -> str:
    """The host end of the pod's veth, or '' if it cannot be told.

    The pod's sysfs (mounted by Docker in every container) gives the peer's
    ifindex; `_socket.if_indextoname` turns it into the host name without
    importing `socket`.
    """
    import _socket

    try:
        with open(f"/proc/{pid}/root/sys/class/net/{ifname}/iflink") as handle:
            index = int(handle.read().strip())
        return _socket.if_indextoname(index)
    except (OSError, ValueError):
        return ""


def link_master(name: str) -> str:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        return ""


def link_mac(name: str) -> str:
    try:
        with open(f"/sys/class/net/{name}/address") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def le32(text: str) -> int:
    """/proc/net/route prints addresses as host-order (little-endian) hex."""
    try:
        value = int(text, 16)
    except ValueError:
        return -1
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def _ifname_by_address(netns: str, address: str) -> str:
    from .. import run

    done = run.run(["nsenter", f"--net={netns}", "ip", "-o", "-4", "addr", "show"], timeout=5)
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].split("/")[0] == address:
            return fields[1]
    raise CNIError(DOCKER_FAILURE, f"dockerd reports {address} but no interface in {netns} "
                   "has it")
