"""Bridge mode: a Linux bridge per network, a veth pair per pod.

The per-network work (bridge, gateway address, forwarding, NAT) is done
once and remembered in the state file; a pod's ADD then costs two `ip`
execs: one on the host, one inside the pod's netns.
"""

from __future__ import annotations

import os
import time

from .. import ipv4, registry, store
from ..cni.errors import (
    ADDRESS_EXHAUSTED,
    CHECK_FAILED,
    DATAPLANE_FAILURE,
    INTERFACE_EXISTS,
    INVALID_NETWORK_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CNIError,
)
from ..cni.result import Interface, IPConfig, Result, Route, from_dict
from ..ipam.allocator import next_free
from ..paths import state_dir
from ..run import find_program, run
from . import links
from .names import address_text, host_ifname, pod_mac, random_mac

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..cni.request import Request
    from ..netconf import NetConf


def _firewall() -> Any:
    """Imported on first use: a pod's ADD on a ready network never needs it."""
    from . import firewall

    return firewall


def _delegate() -> Any:
    """Imported on first use: only configs with an `ipam` plugin need it."""
    from ..ipam import delegate

    return delegate


# ---------------------------------------------------------------- the network

def network_marker(conf: NetConf) -> dict[str, Any]:
    return {"bridge": conf.bridge, "cidr": conf.cidr(), "gateway": conf.gateway_text(),
            "ipMasq": conf.ip_masq, "mtu": conf.mtu, "ifindex": links.ifindex(conf.bridge)}


def network_ready(conf: NetConf, networks: dict[str, Any]) -> bool:
    marker = networks.get(conf.name)
    return bool(marker) and links.exists(conf.bridge) and marker == network_marker(conf)


def bridge_mac(conf: NetConf) -> str:
    """The bridge's MAC: fixed per gateway address (never a pod's, see pod_mac), so a bridge
    rebuilt after a deletion keeps the MAC the running pods have in their ARP caches."""
    return pod_mac(conf.gateway)


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
        if wanted not in links.ipv4_addresses(conf.bridge):
            problems.append(f"bridge {conf.bridge} lacks its address {address_text(conf.gateway, conf.prefix)}")
        if attachments:
            loose = detached_ports(conf, attachments)
            if loose:
                problems.append(f"{len(loose)} pod veth(s) not on {conf.bridge}: {', '.join(loose[:5])}")
    firewall = _firewall()
    if not firewall.forwarding_enabled():
        problems.append("IPv4 forwarding is off (net.ipv4.ip_forward=0)")
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


def setup_network(conf: NetConf, attachments: dict[str, Any] | None = None) -> None:
    """Create or correct the bridge, its gateway address, forwarding and NAT; put the pods'
    host veths back on a rebuilt bridge."""
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
    if attachments:
        for host in detached_ports(conf, attachments):
            try:
                links.attach(host, conf.bridge, conf.hairpin)
            except CNIError:
                pass  # deleted meanwhile (a DEL in flight): nothing to put back
    _firewall().ensure(conf)


def _correct_bridge_address(conf: NetConf) -> None:
    """Give the bridge exactly the gateway address (a stale one is replaced, not tripped over)."""
    wanted = address_text(conf.gateway, conf.prefix)
    current = []
    for entry in links.show_json(["-4", "addr", "show", "dev", conf.bridge]):
        for info in entry.get("addr_info", []):
            current.append(f"{info.get('local')}/{info.get('prefixlen')}")
    lines = [f"addr del {cidr} dev {conf.bridge}" for cidr in current if cidr != wanted]
    if lines or wanted not in current:
        # `replace`, not `add`: deleting a primary address also drops the secondaries of
        # its subnet, so a wanted address that was there as a secondary is gone by now.
        lines.append(f"addr replace {wanted} dev {conf.bridge}")
    if lines:
        links.batch(lines, what=f"set address {wanted} on {conf.bridge}")


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


# ---------------------------------------------------------------- ADD

def add(request: Request, conf: NetConf) -> Result:
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    host = host_ifname(request.container_id, request.ifname)
    previous = _previous_result(request)  # a garbage prevResult fails before any work
    # Outside the lock: an API lookup of the hostname must not hold up other pods.
    pod = registry.pod_identity(request.pod_name, request.pod_namespace,
                                request.args.get("K8S_POD_UID", ""), pod_hostname(request, conf))
    # A cheap look (outside the lock, read-only) instead of trusting the marker alone:
    # rules flushed by a firewall reload, a deleted bridge or address are restored here.
    problems = network_problems(conf, rules=not rules_verified(conf))
    with store.Transaction() as tx:
        existing = tx.attachments.get(key)
        if existing and links.exists(existing.get("host_ifname", host)):
            raise CNIError(
                INTERFACE_EXISTS,
                f"container {request.container_id[:12]} already has {request.ifname} on "
                f"{conf.name}; DEL it before adding it again")
        if problems or not network_ready(conf, tx.networks):
            first = conf.name not in tx.networks
            if first:
                _adopt_survivors(tx, conf)
            setup_network(conf, tx.attachments)
            tx.networks[conf.name] = network_marker(conf)
            tx.dirty = True
            if problems and not first:
                _note_repairs(conf, problems, "ADD")
        last_before = tx.state.get("last_reserved", {}).get(conf.name)
        if conf.delegated_ipam:
            address, prefix, gateway = 0, 0, conf.gateway
        else:
            address = _reserve(tx, conf, key, existing)
            prefix, gateway = conf.prefix, conf.gateway
        record = _new_record(request, conf, host, address, prefix, gateway, pod)
        tx.attachments[key] = record
        tx.dirty = True
    try:
        if conf.delegated_ipam:
            address, prefix, gateway = _delegate_add(request, conf)
            record["ips"] = [address_text(address, prefix)]
            record["gateway"] = ipv4.to_text(gateway)
        result = _plumb(request, conf, host, address, prefix, gateway)
        result = _after_previous(previous, result)
    except BaseException:
        _undo_add(request, conf, key, host, last_before)
        raise
    _pause_between_phases()
    with store.Transaction() as tx:
        current = tx.attachments.get(key)
        # Only our own record, still there: a DEL or GC that removed it since the first
        # transaction must not be undone (address, name and link would come back).
        mine = current is not None and current.get("created") == record["created"] \
            and current.get("host_ifname") == host
        if mine:
            record["ready"] = True
            record["mac"] = result.interfaces[-1].mac
            tx.attachments[key] = record
            tx.dirty = True
    if not mine:
        _abandon_add(request, conf, host)
        raise CNIError(UNKNOWN_CONTAINER,
                       f"container {request.container_id[:12]}/{request.ifname} on {conf.name} "
                       "was deleted (DEL or GC) while its ADD was running; its interface and "
                       "address were released, nothing is left to clean up")
    return result


# Tests only: the path of a FIFO the plugin opens (blocking until the test opens it for
# writing) and reads to EOF between ADD's two store transactions, so a test can run a DEL
# or GC exactly there. Unset in production: costs one environment lookup.
PAUSE_ENV = "SMARTER_CNI_TEST_PAUSE_FIFO"


def _pause_between_phases() -> None:
    path = os.environ.get(PAUSE_ENV)
    if path:
        try:
            with open(path, "rb") as fifo:
                fifo.read()
        except OSError:
            pass


def _abandon_add(request: Request, conf: NetConf, host: str) -> None:
    """Release what an ADD made after its record was removed; the record is not ours to touch."""
    try:
        links.delete(host)
    except CNIError:
        pass
    if conf.delegated_ipam:
        try:
            # the DEL may have come before our IPAM ADD, so its release freed nothing
            _delegate().delete(request, conf.delegated_ipam)
        except CNIError:
            pass


def _note_repairs(conf: NetConf, problems: list[str], who: str) -> None:
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
        found = {}
        for port in ports:
            info = (links.show_json(["-d", "link", "show", "dev", port]) or [{}])[0]
            netns = names.get(info.get("link_netnsid"))
            if not netns:
                continue
            for entry in links.show_json(["-n", netns, "-4", "addr", "show"]):
                if entry.get("ifindex") != info.get("link_index"):
                    continue
                for addr in entry.get("addr_info", []):
                    local = addr.get("local", "")
                    if ipv4.contains(conf.subnet, conf.prefix, ipv4.to_int(local)):
                        found[port] = local
    except (CNIError, ipv4.AddressError):
        return  # best effort: never fail an ADD over this
    if found:
        tx.state.setdefault("adopted", {})[conf.name] = found
        tx.dirty = True


def _reserve(tx: store.Transaction, conf: NetConf, key: str, existing: dict | None) -> int:
    if existing and existing.get("ips"):
        return ipv4.to_int(existing["ips"][0].split("/")[0])
    taken = {conf.gateway}
    adopted = tx.state.get("adopted", {}).get(conf.name) or {}
    for port, address in adopted.items():
        if links.exists(port):  # a surviving pod from before the state was lost
            taken.add(ipv4.to_int(address))
    for record in tx.attachments.values():
        if record.get("network") == conf.name:
            for cidr in record.get("ips") or []:
                taken.add(ipv4.to_int(cidr.split("/")[0]))
    last = tx.state.get("last_reserved", {}).get(conf.name)
    address = next_free(conf.range_start, conf.range_end, taken,
                        ipv4.to_int(last) if last else None)
    if address is None:
        raise CNIError(ADDRESS_EXHAUSTED,
                       f"no free address left in {ipv4.to_text(conf.range_start)}-"
                       f"{ipv4.to_text(conf.range_end)} on network {conf.name} "
                       f"({len(taken) - 1} in use); delete pods or widen the subnet/range")
    tx.state.setdefault("last_reserved", {})[conf.name] = ipv4.to_text(address)
    return address


def _new_record(request: Request, conf: NetConf, host: str, address: int, prefix: int,
                gateway: int, pod: dict[str, str]) -> dict[str, Any]:
    return {
        "network": conf.name,
        "mode": "bridge",
        "container_id": request.container_id,
        "ifname": request.ifname,
        "netns": request.netns,
        "host_ifname": host,
        "ips": [address_text(address, prefix)] if address else [],
        "gateway": ipv4.to_text(gateway),
        "pod": pod,
        "domain": conf.domain,
        "ready": False,
        "created": round(time.time(), 3),
    }


HOSTNAME_ANNOTATION = "smarter-cni.io/hostname"


def pod_hostname(request: Request, conf: NetConf) -> str:
    """spec.hostname, which runtimes do not pass to CNI.

    First the pod annotation `smarter-cni.io/hostname`, which containerd and
    CRI-O hand over through the `io.kubernetes.cri.pod-annotations`
    capability; else, when the config names a `kubeconfig`, the pod's
    spec.hostname from the API server (bounded by a short time-out).
    """
    runtime = request.config.get("runtimeConfig")
    annotations = runtime.get("io.kubernetes.cri.pod-annotations") \
        if isinstance(runtime, dict) else None
    if isinstance(annotations, dict):
        value = annotations.get(HOSTNAME_ANNOTATION)
        if isinstance(value, str) and value:
            return value
    if conf.kubeconfig:
        from ..kubeapi import pod_hostname as lookup

        return lookup(conf.kubeconfig, request.pod_namespace, request.pod_name)
    return ""


def _delegate_add(request: Request, conf: NetConf) -> tuple[int, int, int]:
    result = _delegate().add(request, conf.delegated_ipam or "")
    ip = next(ip for ip in result.ips if ":" not in ip.address)
    try:
        address, prefix = ipv4.parse_cidr(ip.address, strict=False)
        gateway = ipv4.to_int(ip.gateway) if ip.gateway else conf.gateway
    except ipv4.AddressError as err:
        raise CNIError(DATAPLANE_FAILURE, f"IPAM plugin returned a bad address: {err}") from None
    return address, prefix, gateway


def _plumb(request: Request, conf: NetConf, host: str, address: int, prefix: int,
           gateway: int) -> Result:
    peer_mac = pod_mac(address)
    host_mac = random_mac()
    gateway_text = ipv4.to_text(gateway)
    links.plumb_pod(links.PodLink(host, host_mac, request.ifname, peer_mac, request.netns,
                                  conf.mtu, conf.bridge, conf.hairpin),
                    ipv4.to_text(address), prefix, gateway_text)
    result = Result()
    result.interfaces = [
        Interface(host, host_mac, mtu=conf.mtu),
        Interface(request.ifname, peer_mac, request.netns, conf.mtu),
    ]
    result.ips = [IPConfig(address_text(address, prefix), gateway_text, 1)]
    result.routes = [Route("0.0.0.0/0", gateway_text)]
    result.dns = conf.dns_result(request.pod_namespace)
    return result


def _previous_result(request: Request) -> Result | None:
    prev = request.config.get("prevResult")
    return None if prev is None else from_dict(prev)


def _after_previous(merged: Result | None, result: Result) -> Result:
    """Keep what earlier plugins in the chain reported, ours appended after it."""
    if merged is None:
        return result
    offset = len(merged.interfaces)
    for ip in result.ips:
        if ip.interface is not None:
            ip.interface += offset
    merged.interfaces += result.interfaces
    merged.ips += result.ips
    merged.routes += result.routes
    merged.dns = result.dns or merged.dns
    return merged


def _undo_add(request: Request, conf: NetConf, key: str, host: str,
              last_before: str | None) -> None:
    """Leave nothing behind a failed ADD, the allocator's position included."""
    try:
        links.delete(host)
    except CNIError:
        pass
    if conf.delegated_ipam:
        try:
            _delegate().delete(request, conf.delegated_ipam)
        except CNIError:
            pass
    with store.Transaction() as tx:
        if tx.attachments.pop(key, None) is not None:
            tx.dirty = True
        positions = tx.state.get("last_reserved", {})
        if positions.get(conf.name) != last_before:
            if last_before is None:
                positions.pop(conf.name, None)
            else:
                positions[conf.name] = last_before
            if not positions:
                tx.state.pop("last_reserved", None)
            tx.dirty = True


# ---------------------------------------------------------------- DEL, CHECK, GC, STATUS

def delete(request: Request, conf: NetConf) -> None:
    """Idempotent: unknown container, missing netns and lost state all succeed."""
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    record = store.load()["attachments"].get(key) or {}
    links.delete(record.get("host_ifname") or host_ifname(request.container_id, request.ifname))
    if conf.delegated_ipam:
        _delegate().delete(request, conf.delegated_ipam)
    if record:
        with store.Transaction() as tx:
            if tx.attachments.pop(key, None) is not None:
                tx.dirty = True


def check(request: Request, conf: NetConf) -> None:
    prev = request.config.get("prevResult")
    if not isinstance(prev, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "CHECK needs the ADD result as prevResult")
    expected = from_dict(prev)
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    record = store.load()["attachments"].get(key)
    if not record:
        raise CNIError(UNKNOWN_CONTAINER, f"no attachment of container "
                       f"{request.container_id[:12]}/{request.ifname} on network {conf.name}")
    problems = []
    host = record.get("host_ifname", "")
    if not links.exists(host):
        problems.append(f"host veth {host} is missing")
    elif links.master_of(host) != conf.bridge:
        problems.append(f"host veth {host} is not attached to {conf.bridge}")
    problems += _check_pod_side(request, expected)
    network = network_problems(conf)
    if conf.delegated_ipam:
        _delegate().check(request, conf.delegated_ipam)
    if problems or network:
        text = "; ".join(problems)
        if network:
            text += ("; " if text else "") + f"network {conf.name} is not whole: " + \
                "; ".join(network) + " (the node DNS service restores these within seconds; " \
                "`smarter-cni status` shows what it repaired)"
        raise CNIError(CHECK_FAILED, f"CHECK failed for {request.container_id[:12]}/"
                       f"{request.ifname}: {text}")


def _check_pod_side(request: Request, expected: Result) -> list[str]:
    problems = []
    try:
        addrs = links.show_json(["-4", "addr", "show", "dev", request.ifname], request.netns)
    except CNIError:
        return [f"interface {request.ifname} is missing in {request.netns}"]
    have = {f"{i.get('local')}/{i.get('prefixlen')}"
            for entry in addrs for i in entry.get("addr_info", [])}
    for ip in expected.ips:
        if ":" not in ip.address and ip.address not in have:
            problems.append(f"address {ip.address} is missing on {request.ifname}")
    routes = links.show_json(["-4", "route", "show", "dev", request.ifname], request.netns)
    have_routes = {(r.get("dst"), r.get("gateway", "")) for r in routes}
    have_dsts = {dst for dst, _ in have_routes}
    for route in expected.routes:
        if ":" in route.dst:
            continue
        dst = "default" if route.dst == "0.0.0.0/0" else route.dst
        present = (dst, route.gw) in have_routes if route.gw else dst in have_dsts
        if not present:
            problems.append(f"route {route.dst} via {route.gw or '-'} is missing")
    return problems


def gc(request: Request, conf: NetConf, valid: set[tuple[str, str]]) -> None:
    """Remove every attachment of this network that is not in `valid`."""
    doomed = {}
    for key, record in store.load()["attachments"].items():
        if record.get("network") == conf.name and \
                (record.get("container_id"), record.get("ifname")) not in valid:
            doomed[key] = record
    for record in doomed.values():
        links.delete(record.get("host_ifname", ""))
    if conf.delegated_ipam:
        stale = [(r.get("container_id", ""), r.get("ifname", "")) for r in doomed.values()]
        _delegate().gc(request, conf.delegated_ipam, stale)
    if doomed:
        with store.Transaction() as tx:
            for key in doomed:
                tx.attachments.pop(key, None)
            tx.dirty = True


def status(request: Request, conf: NetConf) -> None:
    """Fail (code 50) only when ADD truly cannot work on this node."""
    for program in ("ip", "nsenter"):
        if not find_program(program):
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"{program} is not installed "
                           "(apt-get install iproute2 util-linux)")
    try:
        _firewall().backend()
    except CNIError as err:
        raise CNIError(PLUGIN_NOT_AVAILABLE, err.msg) from None
    try:
        with store.Transaction() as tx:  # the lock and the file: what ADD will need
            attachments = tx.attachments
    except (CNIError, OSError) as err:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"state directory unusable: {err}") from None
    if not conf.delegated_ipam:
        size = conf.range_end - conf.range_start + 1
        used = sum(1 for r in attachments.values() if r.get("network") == conf.name)
        if used >= size - (1 if conf.range_start <= conf.gateway <= conf.range_end else 0):
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"address pool of {conf.name} is exhausted "
                           f"({used} pods)")
    else:
        try:
            _delegate().status(request, conf.delegated_ipam)
        except CNIError as err:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPAM plugin {conf.delegated_ipam}: {err.msg}") from None
