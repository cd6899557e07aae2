"""Link, address and route operations: over rtnetlink (netlink.py) where the plugin's
pod path and its checks need speed, else through `ip` (iproute2), batched to save execs."""

from __future__ import annotations

import os

from ..cni import jsonfast
from ..cni.errors import DATAPLANE_FAILURE, INTERFACE_EXISTS, CNIError
from ..run import check, run
from . import netlink

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


def is_up(name: str) -> bool:
    """The administrative IFF_UP flag, from sysfs."""
    try:
        with open(f"/sys/class/net/{name}/flags") as handle:
            return bool(int(handle.read(), 16) & 1)
    except (OSError, ValueError):
        return False


def ipv4_addresses(name: str, family: int = 4) -> list[tuple[str, int]]:
    """(address, prefix) of each IPv4 (family 6: IPv6) address on `name`: one netlink dump,
    else one `ip`."""
    if not os.environ.get(FORCE_IPROUTE2):
        try:
            sock = netlink.host_socket()
            try:
                return sock.ipv4_addresses(ifindex(name),
                                           netlink.AF_INET6 if family == 6 else netlink.AF_INET)
            finally:
                sock.close()
        except (netlink.NetlinkUnavailable, OSError):
            pass
    try:
        entries = show_json([f"-{family}", "addr", "show", "dev", name])
    except CNIError:
        return []
    return [(i.get("local"), i.get("prefixlen")) for e in entries for i in e.get("addr_info", [])]


def attach(name: str, bridge: str, hairpin: bool) -> None:
    """Make `name` a port of `bridge` again (a rebuilt bridge), up, hairpin as configured."""
    if not os.environ.get(FORCE_IPROUTE2):
        try:
            sock = netlink.host_socket()
            try:
                sock.set_master(ifindex(name), ifindex(bridge))
                if hairpin:
                    sock.set_hairpin(ifindex(name))
                return
            finally:
                sock.close()
        except (netlink.NetlinkUnavailable, OSError):
            pass
    lines = [f"link set {name} master {bridge} up"]
    if hairpin:
        lines.append(f"link set {name} type bridge_slave hairpin on")
    batch(lines, what=f"attach {name} to {bridge}")


NAMED_NETNS_DIRS = ("/var/run/netns", "/run/netns")
FORCE_IPROUTE2 = netlink.FORCE_IPROUTE2  # set (to anything): no rtnetlink (tests run both paths)


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
    if not name or not exists(name):
        return False
    if not os.environ.get(FORCE_IPROUTE2):
        try:
            sock = netlink.host_socket()
            try:
                return sock.delete_link(name)
            finally:
                sock.close()
        except (netlink.NetlinkUnavailable, OSError):
            pass  # iproute2 below reports the reason
    done = run(["ip", "link", "del", name])
    if done.returncode != 0 and exists(name):
        raise CNIError(DATAPLANE_FAILURE, f"cannot delete link {name}: {done.error_text}")
    return True


def delete_unlisted(name: str) -> bool:
    """Delete a link if present and return once the kernel has taken both ends of it
    out of its tables: names and indexes free, bridge port detached, sysfs entry gone.

    The kernel acknowledges RTM_DELLINK only after it has also waited for an RCU
    grace period to free the device (15-35 ms here), most of a DEL's time, and nothing
    a runtime can observe. A thread waits for that acknowledgement instead; the
    caller goes on once the link is unlisted. True when something was removed."""
    if not name or not exists(name):
        return False
    if os.environ.get(FORCE_IPROUTE2):
        return delete(name)
    try:
        sock = netlink.host_socket()
    except netlink.NetlinkUnavailable:
        return delete(name)
    import _thread

    done = _thread.allocate_lock()
    done.acquire()
    outcome: list[bool | OSError] = []
    _thread.start_new_thread(_delete_and_signal, (sock, name, outcome, done))
    entry = f"/sys/class/net/{name}"
    while not done.acquire(timeout=UNLISTED_POLL):
        if not os.path.exists(entry):
            return True
    if isinstance(outcome[0], OSError):
        if exists(name):
            raise CNIError(DATAPLANE_FAILURE, f"cannot delete link {name}: {outcome[0].strerror}")
        return True
    return outcome[0]


UNLISTED_POLL = 0.0002  # seconds between looks at sysfs while the kernel unlists a link


def _delete_and_signal(sock: netlink.Socket, name: str, outcome: list, done: Any) -> None:
    try:
        outcome.append(sock.delete_link(name))
    except OSError as err:
        outcome.append(err)
    finally:
        sock.close()
        done.release()


def show_json(args: Sequence[str], netns: str = "") -> Any:
    argv = [*ip_argv(netns), "-j", *args]
    done = run(argv)
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"{' '.join(argv[-4:])} failed: {done.error_text}")
    text = done.stdout.strip()
    return jsonfast.loads(text) if text else []


class PodLink:
    """The veth pair of one pod: host end on the bridge, peer inside the pod's netns.
    `address6`/`prefix6`/`gateway6`: the pod's IPv6 side on a dual-stack network, else ""."""

    __slots__ = ("host", "host_mac", "peer", "peer_mac", "netns", "mtu", "bridge", "hairpin",
                 "address6", "prefix6", "gateway6")

    def __init__(self, host: str, host_mac: str, peer: str, peer_mac: str, netns: str, mtu: int,
                 bridge: str, hairpin: bool) -> None:
        self.host, self.host_mac, self.peer, self.peer_mac = host, host_mac, peer, peer_mac
        self.netns, self.mtu, self.bridge, self.hairpin = netns, mtu, bridge, hairpin
        self.address6, self.prefix6, self.gateway6 = "", 0, ""


def plumb_pod(link: PodLink, address: str, prefix: int, gateway: str) -> None:
    """The pair, the pod's address and default route, lo up: over rtnetlink when this
    Python can (no exec at all), else with two `ip -batch` execs."""
    if exists(link.host):
        raise CNIError(INTERFACE_EXISTS, f"host interface {link.host} already exists; "
                       "the runtime must DEL this container before adding it again")
    if not os.environ.get(FORCE_IPROUTE2):
        try:
            _plumb_netlink(link, address, prefix, gateway)
            return
        except netlink.NetlinkUnavailable:
            pass
    _create_veth_iproute2(link)
    lines = ["link set lo up"] + ([f"addr add {address}/{prefix} dev {link.peer}"] if address else [])
    if link.address6:
        lines.append(f"addr add {link.address6}/{link.prefix6} dev {link.peer} nodad")
    lines.append(f"link set {link.peer} up")
    if address:
        lines.append(f"route add default via {gateway} dev {link.peer}")
    if link.address6:
        lines.append(f"route add ::/0 via {link.gateway6} dev {link.peer}")
    batch(lines, netns=link.netns, what=f"configure {link.peer} in {link.netns}")


def _plumb_netlink(link: PodLink, address: str, prefix: int, gateway: str) -> None:
    netns_fd = os.open(link.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        host = netlink.host_socket()
        try:
            pod = netlink.pod_socket(netns_fd)  # NetlinkUnavailable here: nothing changed yet
            try:
                try:
                    host.create_veth(link.host, link.host_mac, link.peer, link.peer_mac, netns_fd,
                                     link.mtu, ifindex(link.bridge))
                except OSError as err:
                    if err.errno == 17:  # EEXIST: the host name was free, so the pod's is taken
                        raise _peer_exists(link) from None
                    raise CNIError(DATAPLANE_FAILURE, f"cannot create veth {link.host}/{link.peer}: "
                                   f"{err.strerror}") from None
                try:
                    if link.hairpin:
                        host.set_hairpin(ifindex(link.host))
                    index = pod.ifindex(link.peer)
                    pod.set_up(1)  # lo is ifindex 1 in every netns
                    if address:  # "" for an IPv6-only pod
                        pod.add_ipv4(index, address, prefix)
                    if link.address6:
                        pod.add_ipv6(index, link.address6, link.prefix6)
                    pod.set_up(index)
                    if address:
                        pod.add_default_route(index, gateway)
                    if link.address6:
                        pod.add_default_route6(index, link.gateway6)
                except OSError as err:
                    raise CNIError(DATAPLANE_FAILURE, f"cannot configure {link.peer} in "
                                   f"{link.netns}: {err.strerror}") from None
            finally:
                pod.close()
        finally:
            host.close()
    finally:
        os.close(netns_fd)


def _create_veth_iproute2(link: PodLink) -> None:
    """Create the pair with `ip`, the peer born inside the netns, then enslave the host end."""
    lines = [
        f"link add {link.host} mtu {link.mtu} address {link.host_mac} type veth peer name "
        f"{link.peer} netns {link.netns} address {link.peer_mac} mtu {link.mtu}",
        f"link set {link.host} master {link.bridge} up",
    ]
    if link.hairpin:
        lines.append(f"link set {link.host} type bridge_slave hairpin on")
    done = run(["ip", "-batch", "-"], ("\n".join(lines) + "\n").encode())
    if done.returncode == 0:
        return
    delete(link.host)
    if "File exists" in done.error_text:
        raise _peer_exists(link)
    raise CNIError(DATAPLANE_FAILURE, f"cannot create veth {link.host}/{link.peer}: {done.error_text}")


def _peer_exists(link: PodLink) -> CNIError:
    return CNIError(INTERFACE_EXISTS, f"interface {link.peer} already exists in {link.netns}; "
                    "a runtime must not ADD the same interface twice")
