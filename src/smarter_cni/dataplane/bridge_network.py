"""Bridge mode's network: the bridge, its gateway address, forwarding and NAT.

Set up once per network and remembered in the state file (the marker);
looked at cheaply by every ADD and CHECK and by the reconciler, which
repair it; claimed by the installer, torn down by uninstall. The pods'
ADD/DEL/CHECK/STATUS/GC are in bridge.py.
"""

from __future__ import annotations

import os
import time

from .. import ipv4, ipv6, store
from ..cni.errors import DATAPLANE_FAILURE, INVALID_NETWORK_CONFIG, CNIError
from ..paths import state_dir
from ..run import run
from . import links
from .names import address_text, pod_mac

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..netconf import NetConf


def _firewall() -> Any:
    """Imported on first use: DEL, GC and the pod's own steps never need it."""
    from . import firewall

    return firewall


def network_marker(conf: NetConf) -> dict[str, Any]:
    marker = {"bridge": conf.bridge, "cidr": conf.cidr(), "gateway": conf.gateway_text(),
              "ipMasq": conf.ip_masq, "mtu": conf.mtu, "ifindex": links.ifindex(conf.bridge),
              "pods": conf.subnet_text()}
    if conf.subnet6 is not None:  # absent for IPv4 only: an existing node's marker still holds
        marker["cidr6"] = conf.cidr6()
    return marker


def network_ready(conf: NetConf, networks: dict[str, Any]) -> bool:
    marker = networks.get(conf.name)
    return bool(marker) and links.exists(conf.bridge) and marker == network_marker(conf)


def bridge_mac(conf: NetConf) -> str:
    """The bridge's MAC: fixed per gateway address (never a pod's, see pod_mac), so a bridge
    rebuilt after a deletion keeps the MAC the running pods have in their ARP caches."""
    return pod_mac(conf.gateway if conf.ipv4 else conf.gateway6 & 0xFFFFFFFF)


VERIFIED_PREFIX = "verified-"


def verified_path(conf: NetConf, directory: str | None = None) -> str:
    return os.path.join(directory or state_dir(), VERIFIED_PREFIX + conf.name)


def rules_verified(conf: NetConf) -> bool:
    """The reconciler of the node DNS service found the rules whole moments ago.

    It writes a "valid until" time (two of its intervals ahead) after each
    clean look, so while it runs ADD needs no `iptables-save` of its own;
    when it is not running the stamp goes stale and ADD looks itself.
    """
    try:
        with open(verified_path(conf), "rb") as handle:
            return float(handle.read()) > time.time()
    except (OSError, ValueError):
        return False


def network_problems(conf: NetConf, attachments: dict[str, Any] | None = None,
                     rules: bool = True) -> list[str]:
    """What is missing from the network, [] when whole: a few sysfs reads, one netlink
    dump and (with `rules`) one `iptables-save`: ~0.1 ms, ~2 ms with the rules. With
    `attachments`, also the pods' host veths that are no longer ports of the bridge."""
    problems = []
    if not links.exists(conf.bridge):
        problems.append(f"bridge {conf.bridge} is missing")
    elif not os.path.exists(f"/sys/class/net/{conf.bridge}/bridge"):
        problems.append(f"{conf.bridge} is not a bridge")
    else:
        if not links.is_up(conf.bridge):
            problems.append(f"bridge {conf.bridge} is down")
        wanted = (conf.gateway_text(), conf.prefix)
        if conf.ipv4 and wanted not in links.ipv4_addresses(conf.bridge):
            problems.append(f"bridge {conf.bridge} lacks its address {address_text(conf.gateway, conf.prefix)}")
        if conf.subnet6 is not None and \
                (conf.gateway6_text(), conf.prefix6) not in links.ipv4_addresses(conf.bridge, 6):
            problems.append(f"bridge {conf.bridge} lacks its IPv6 address "
                            f"{conf.gateway6_text()}/{conf.prefix6}")
        if attachments:
            loose = detached_ports(conf, attachments)
            if loose:
                problems.append(f"{len(loose)} pod veth(s) not on {conf.bridge}: {', '.join(loose[:5])}")
    firewall = _firewall()
    if conf.ipv4 and not firewall.forwarding_enabled():
        problems.append("IPv4 forwarding is off (net.ipv4.ip_forward=0)")
    if conf.subnet6 is not None and not firewall.forwarding_enabled(6):
        problems.append("IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0)")
    if rules:
        problems += firewall.present(conf)
    return problems


def detached_ports(conf: NetConf, attachments: dict[str, Any]) -> list[str]:
    """Host veths of this network's pods that exist but hang on no bridge (or another)."""
    loose = []
    for record in attachments.values():
        host = record.get("host_ifname") or ""
        if record.get("network") == conf.name and record.get("mode", "bridge") == "bridge" \
                and record.get("ready") and links.exists(host) \
                and links.master_of(host) != conf.bridge:
            loose.append(host)
    return loose


def setup_network(conf: NetConf, attachments: dict[str, Any] | None = None) -> list[str]:
    """Create or correct the bridge, its gateway address, forwarding and NAT; put the pods'
    host veths back on a rebuilt bridge. Returns the rules that were missing (firewall.ensure)."""
    if conf.subnet6 is not None:
        _refuse_overlap6(conf)  # before anything changes
    if links.exists(conf.bridge) and not os.path.exists(f"/sys/class/net/{conf.bridge}/bridge"):
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"{conf.bridge} exists but is not a bridge; choose another \"bridge\" name")
    if not _bridge_over_netlink(conf):
        _bridge_over_iproute2(conf)
    if attachments:
        for host in detached_ports(conf, attachments):
            try:
                links.attach(host, conf.bridge, conf.hairpin)
            except CNIError:
                pass  # deleted meanwhile (a DEL in flight): nothing to put back
    return _firewall().ensure(conf)


def _bridge_over_netlink(conf: NetConf) -> bool:
    """The bridge, its addresses and its up state over rtnetlink (no `ip` exec: ~4 execs
    saved on a network's first ADD). False when netlink cannot be used or a step failed:
    the iproute2 path then picks up from whatever state this left (it corrects any)."""
    from . import netlink

    if os.environ.get(netlink.FORCE_IPROUTE2):
        return False
    try:
        sock = netlink.host_socket()
    except netlink.NetlinkUnavailable:
        return False
    try:
        if not links.exists(conf.bridge):
            try:
                sock.create_bridge(conf.bridge, bridge_mac(conf))
            except OSError as err:
                if err.errno != 17:  # EEXIST: made meanwhile (checked to be a bridge below)
                    raise
            if not os.path.exists(f"/sys/class/net/{conf.bridge}/bridge"):
                return False
        index = sock.ifindex(conf.bridge)
        if conf.ipv4:
            wanted = (conf.gateway_text(), conf.prefix)
            current = sock.ipv4_addresses(index)
            keep = kept_gateways(conf, address_text(conf.gateway, conf.prefix))
            stale = [a for a in current if a != wanted and f"{a[0]}/{a[1]}" not in keep]
            for address, prefix in stale:
                sock.delete_address(index, address, prefix)
            if stale or wanted not in current:
                # replace, not add: deleting a primary also drops the secondaries of its subnet
                sock.replace_address(index, *wanted)
        if conf.subnet6 is not None:
            wanted6 = (conf.gateway6_text(), conf.prefix6)
            current6 = sock.ipv4_addresses(index, netlink.AF_INET6)
            stale6 = [a for a in current6 if a != wanted6 and not a[0].startswith("fe80:")]
            for address, prefix in stale6:
                sock.delete_address(index, address, prefix)
            if stale6 or wanted6 not in current6:
                sock.replace_address(index, *wanted6)
        sock.set_up(index)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _bridge_over_iproute2(conf: NetConf) -> None:
    """`_bridge_over_netlink` through `ip` (SMARTER_CNI_USE_IPROUTE2, or no rtnetlink)."""
    if not links.exists(conf.bridge):
        done = run(["ip", "link", "add", conf.bridge, "address", bridge_mac(conf), "type", "bridge"])
        if done.returncode != 0 and not links.exists(conf.bridge):
            raise CNIError(DATAPLANE_FAILURE,
                           f"cannot create bridge {conf.bridge}: {done.error_text}")
    elif not os.path.exists(f"/sys/class/net/{conf.bridge}/bridge"):
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"{conf.bridge} exists but is not a bridge; choose another \"bridge\" name")
    _correct_bridge_address(conf)
    links.batch([f"link set {conf.bridge} up"], what=f"bring {conf.bridge} up")


def _correct_bridge_address(conf: NetConf) -> None:
    """Give the bridge exactly the gateway address (a stale one is replaced, not tripped over)."""
    if not conf.ipv4:
        _correct_bridge_address6(conf)
        return
    wanted = address_text(conf.gateway, conf.prefix)
    current = []
    for entry in links.show_json(["-4", "addr", "show", "dev", conf.bridge]):
        for info in entry.get("addr_info", []):
            current.append(f"{info.get('local')}/{info.get('prefixlen')}")

    keep = kept_gateways(conf, wanted)
    lines = [f"addr del {cidr} dev {conf.bridge}" for cidr in current
             if cidr != wanted and cidr not in keep]
    if lines or wanted not in current:
        # `replace`, not `add`: deleting a primary address also drops the secondaries of
        # its subnet, so a wanted address that was there as a secondary is gone by now.
        lines.append(f"addr replace {wanted} dev {conf.bridge}")
    if lines:
        links.batch(lines, what=f"set address {wanted} on {conf.bridge}")
    if conf.subnet6 is not None:
        _correct_bridge_address6(conf)


def _correct_bridge_address6(conf: NetConf) -> None:
    """The IPv6 gateway on the bridge (nodad: pods can reach it at once); the bridge's other
    global IPv6 addresses from an earlier subnet6 go, its link-local one stays."""
    wanted = (conf.gateway6_text(), conf.prefix6)
    current = links.ipv4_addresses(conf.bridge, 6)
    lines = [f"addr del {a}/{p} dev {conf.bridge}" for a, p in current
             if (a, p) != wanted and not a.startswith("fe80:")]
    if lines or wanted not in current:
        lines.append(f"addr replace {wanted[0]}/{wanted[1]} dev {conf.bridge} nodad")
        links.batch(lines, what=f"set address {wanted[0]}/{wanted[1]} on {conf.bridge}")


def _refuse_overlap6(conf: NetConf) -> None:
    """subnet6 must not overlap a route the host already has on another interface (its
    uplink's prefix, a VPN, another bridge): pods would shadow or steal that traffic."""
    for dst, dev in _routes6():
        if dev == conf.bridge or dst == "default" or dst.startswith(("fe80:", "ff")):
            continue
        try:
            network, prefix = ipv6.parse_cidr(dst if "/" in dst else dst + "/128", strict=False)
        except ipv4.AddressError:
            continue
        if ipv6.overlaps(network, prefix, conf.subnet6, conf.prefix6):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"invalid network config: subnet6 {conf.cidr6()} overlaps the host's "
                           f"route {dst} on {dev or 'several interfaces'}; choose another "
                           "prefix (e.g. a unique local fdXX:XXXX:XXXX::/64)")


def _routes6() -> list[tuple[str, str]]:
    """(destination as `ip` prints it, device) of each IPv6 route in the main table; the
    device is "" for a multipath route. One rtnetlink dump (no `ip` exec: ~0.2 ms against ~2.2 ms per
    dual-stack set-up), else `ip -j -6 route show`; [] when neither can list them."""
    from . import netlink

    if not os.environ.get(netlink.FORCE_IPROUTE2):
        try:
            sock = netlink.host_socket()
            try:
                routes = sock.routes6()
            finally:
                sock.close()
        except (netlink.NetlinkUnavailable, OSError):
            pass
        else:
            import _socket

            def name(index: int) -> str:
                try:
                    return _socket.if_indextoname(index) if index else ""
                except OSError:  # gone meanwhile
                    return ""

            return [("default" if prefix == 0 else dst if prefix == 128 else f"{dst}/{prefix}",
                     name(oif)) for dst, prefix, oif in routes]
    try:
        routes = links.show_json(["-6", "route", "show"])
    except CNIError:
        return []
    return [(route.get("dst") or "", route.get("dev") or "") for route in routes]


def ensure_network(tx: store.Transaction, conf: NetConf, problems: list[str]) -> None:
    """ADD's network step, under the state lock: set the network up when it is new or
    changed, restore it when ADD's look outside the lock (`problems`) found it not whole."""
    if not problems and network_ready(conf, tx.networks):
        return
    first = conf.name not in tx.networks
    if first:
        _adopt_survivors(tx, conf)
    fixed = setup_network(conf, tx.attachments)
    tx.networks[conf.name] = network_marker(conf)
    tx.dirty = True
    if problems and not first:  # the rules ADD did not look at itself (see bridge.add) too
        _note_repairs(conf, problems + [p for p in fixed if p not in problems], "ADD")


def claim_network(conf: NetConf, directory: str | None = None) -> None:
    """For the installer, after setup_network: note in the state that this node set the
    network up, so the DNS service's reconciler keeps it whole from now on, not only after
    the first pod's ADD. Pods that survived a lost state are adopted first, as ADD does."""
    with store.Transaction(directory) as tx:
        if conf.name not in tx.networks:
            _adopt_survivors(tx, conf)
        tx.networks[conf.name] = network_marker(conf)
        tx.dirty = True


def teardown_network(conf: NetConf) -> None:
    """Remove the bridge, its rules and the network's records (for uninstall and tests).

    The marker goes first: a reconciler rebuilds only a network that has one.
    """
    with store.Transaction() as tx:
        if tx.networks.pop(conf.name, None) is not None:
            tx.dirty = True
        try:
            os.unlink(verified_path(conf, tx.directory))  # the reconciler's word no longer holds
        except OSError:
            pass
    _firewall().teardown(conf)
    links.delete(conf.bridge)



def _note_repairs(conf: NetConf, problems: list[str], who: str) -> None:
    """One log line per repair, and the repairs file for `status`."""
    from .. import logs
    from ..repairs import note_repairs  # only when something was repaired

    for problem in problems:
        logs.log("WARN", f"{who} repaired network {conf.name}: {problem}")
    note_repairs(conf.name, problems, who)


def _adopt_survivors(tx: store.Transaction, conf: NetConf) -> None:
    """After the state was lost (not a reboot: /run/smarter-cni removed by hand), pods may
    still sit on the bridge. Note their addresses, keyed by host veth, so new pods do not
    get them; each is free again once its veth is gone (the runtime's DEL removes it).
    Costs two `ip` execs per unknown port, only on the first ADD after the loss."""
    try:
        ports = os.listdir(f"/sys/class/net/{conf.bridge}/brif")
    except OSError:
        return
    known = {r.get("host_ifname") for r in tx.attachments.values()}
    ports = [p for p in ports if p.startswith("sm") and p not in known]
    if not ports:
        return
    try:
        # `ip netns list` (not `list-id`, whose dump stops after ~130 entries) gives each
        # named netns with the id the host's veths use as link_netnsid
        names = {e.get("id"): e.get("name") for e in links.show_json(["netns", "list"])
                 if "id" in e}
        found, found6 = {}, {}
        for port in ports:
            info = (links.show_json(["-d", "link", "show", "dev", port]) or [{}])[0]
            netns = names.get(info.get("link_netnsid"))
            if not netns:
                continue
            family = ["-4"] if conf.subnet6 is None else []  # IPv6 too on dual-stack
            for entry in links.show_json(["-n", netns, *family, "addr", "show"]):
                if entry.get("ifindex") != info.get("link_index"):
                    continue
                for addr in entry.get("addr_info", []):
                    local = addr.get("local", "")
                    if ":" in local:
                        if conf.subnet6 is not None and \
                                ipv6.contains(conf.subnet6, conf.prefix6, ipv6.to_int(local)):
                            found6[port] = ipv6.to_text(ipv6.to_int(local))
                    elif conf.ipv4 and ipv4.contains(conf.subnet, conf.prefix, ipv4.to_int(local)):
                        found[port] = local
    except (CNIError, ipv4.AddressError):
        return  # best effort: never fail an ADD over this
    for field, addresses in (("adopted", found), ("adopted6", found6)):
        if addresses:
            tx.state.setdefault(field, {})[conf.name] = addresses
            tx.dirty = True


def kept_gateways(conf: NetConf, wanted: str, directory: str | None = None) -> set[str]:
    """Bridge addresses ("a.b.c.d/p") still in use as the gateway of pods on this network.

    When the pod range changes while pods run (a new podCIDR, or the runtime
    starts passing ranges), the running pods keep their addresses and their
    gateway: the bridge keeps the old gateway address next to the new one until
    the network is set up again with none of those pods left. Logged.
    """

    try:
        attachments = store.load(directory)["attachments"]
    except (CNIError, OSError, ValueError):
        return set()
    kept: dict[str, int] = {}
    for record in attachments.values():
        if record.get("network") != conf.name or record.get("mode", "bridge") != "bridge":
            continue
        ips = record.get("ips") or []
        gateway = record.get("gateway") or ""
        if not ips or not gateway or "/" not in ips[0]:
            continue
        address = f"{gateway}/{ips[0].split('/')[1]}"
        if address != wanted:
            kept[address] = kept.get(address, 0) + 1
        if ips[0].split("/")[0] == wanted.split("/")[0]:
            raise CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: gateway {wanted} "
                           f"({conf.range_source or 'configured'}) is the address of running "
                           f"container {str(record.get('container_id'))[:12]}; choose another "
                           "gateway or remove that pod first")
    if kept:
        _log("warning", f"network {conf.name}: pod range is now {conf.subnet_text()} with gateway "
             f"{wanted} ({conf.range_source or 'configured subnet'}); "
             + ", ".join(f"{n} running pod(s) keep their addresses behind gateway {a}"
                         for a, n in sorted(kept.items()))
             + f"; kept on {conf.bridge}, dropped at a later set-up once those pods are gone")
    elif conf.range_source:
        _log("info", f"network {conf.name}: pod range {conf.subnet_text()} gateway {wanted} "
             f"from {conf.range_source}")
    return set(kept)


def _log(level: str, message: str) -> None:
    from ..logs import log  # only when there is something to say: not on every call

    log(level, message)
