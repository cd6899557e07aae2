"""Bridge mode: a Linux bridge per network, a veth pair per pod.

A pod's ADD, DEL, CHECK, STATUS and GC. The network itself (bridge,
gateway address, forwarding, NAT) is bridge_network.py's: set up once and
remembered in the state file. A pod's own steps run over rtnetlink
(links.plumb_pod), no `ip` exec; ADD's look at the network adds one
`iptables-save` only when the reconciler has not vouched for the rules.
"""

from __future__ import annotations

from .. import dataplane, ipv4, ipv6, registry, store
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
from ..run import find_program
from . import PAUSE_BEFORE_PLUMB_ENV, links, pause_between_phases
from .bridge_network import ensure_network, network_problems, rules_verified
from .names import address_text, host_ifname, pod_mac, random_mac

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..cni.request import Request
    from ..netconf import NetConf


def _firewall() -> Any:
    """Imported on first use: only STATUS needs it here."""
    from . import firewall

    return firewall


def _delegate() -> Any:
    """Imported on first use: only configs with an `ipam` plugin need it."""
    from ..ipam import delegate

    return delegate


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
    # The rules only when the rest is whole: otherwise the repair below runs anyway and its
    # own iptables-save (firewall.ensure) finds what is missing, one exec less.
    problems = network_problems(conf, rules=False)
    if not problems and not rules_verified(conf):
        problems = _firewall().present(conf)
    with store.Transaction() as tx:
        existing = tx.attachments.get(key)
        if existing and links.exists(existing.get("host_ifname", host)):
            raise CNIError(
                INTERFACE_EXISTS,
                f"container {request.container_id[:12]} already has {request.ifname} on "
                f"{conf.name}; DEL it before adding it again")
        ensure_network(tx, conf, problems)
        last_before = tx.state.get("last_reserved", {}).get(conf.name)
        last6_before = tx.state.get("last_reserved6", {}).get(conf.name)
        address6 = ""
        if conf.delegated_ipam or not conf.ipv4:
            address, prefix, gateway = 0, 0, conf.gateway
        else:
            address = _reserve(tx, conf, key, existing)
            prefix, gateway = conf.prefix, conf.gateway
        if not conf.delegated_ipam and conf.subnet6 is not None:
            address6 = f"{ipv6.to_text(_reserve6(tx, conf, existing))}/{conf.prefix6}"
        ips = [address_text(address, prefix)] if address else []
        if address6:
            ips.append(address6)
        record = store.new_attachment(request, conf.name, "bridge", pod, conf.domain,
                                      host_ifname=host, ips=ips,
                                      gateway=ipv4.to_text(gateway) if conf.ipv4 else "")
        tx.attachments[key] = record
        tx.dirty = True
    # From here a pool worker that ends because its client is gone undoes what a DEL that
    # already ran could not see (dataplane.abandon; resident_request.leave).
    dataplane.abandon = lambda: _abandon_add(request, conf, key, host, record)
    try:
        pause_between_phases(PAUSE_BEFORE_PLUMB_ENV)
        try:
            if conf.delegated_ipam:
                address, prefix, gateway, address6 = _delegate_add(request, conf)
                record["ips"] = ([address_text(address, prefix)] if address else []) + \
                    ([address6] if address6 else [])
                record["gateway"] = ipv4.to_text(gateway) if address else ""
            result = _plumb(request, conf, host, address, prefix, gateway, address6)
            result = _after_previous(previous, result)
        except BaseException:
            _undo_add(request, conf, key, host, last_before, last6_before)
            raise
        pause_between_phases()
        with store.Transaction() as tx:
            # Only our own record, still there (address, name and link would come back).
            mine = store.same_record(tx.attachments.get(key), record, "host_ifname")
            if mine:
                record["ready"] = True
                record["mac"] = result.interfaces[-1].mac
                tx.attachments[key] = record
                tx.dirty = True
        if not mine:
            _release_link_and_address(request, conf, host)
            raise CNIError(UNKNOWN_CONTAINER,
                           f"container {request.container_id[:12]}/{request.ifname} on {conf.name} "
                           "was deleted (DEL or GC) while its ADD was running; its interface and "
                           "address were released, nothing is left to clean up")
        return result
    finally:
        dataplane.abandon = None


def _abandon_add(request: Request, conf: NetConf, key: str, host: str, record: dict) -> None:
    """This ADD's client is gone and its worker ends here. While its record is still its own
    the runtime's DEL is yet to come (or still running: it deletes the link again after
    its transaction) and cleans up; when a DEL or GC has removed it, a link made since
    would stay: give it back now, as the ADD would at its second transaction."""
    if not store.same_record(store.load()["attachments"].get(key), record, "host_ifname"):
        _release_link_and_address(request, conf, host)


def _release_link_and_address(request: Request, conf: NetConf, host: str) -> None:
    """Delete an ADD's host link and give a delegated address back, whatever is already gone.

    Alone, for an ADD whose record a DEL or GC removed meanwhile (the record is not ours to
    touch; that DEL may have come before our IPAM ADD, so its release freed nothing); and
    as the first part of undoing a failed ADD.
    """
    try:
        links.delete(host)
    except CNIError:
        pass
    if conf.delegated_ipam:
        try:
            _delegate().delete(request, conf.delegated_ipam)
        except CNIError:
            pass


def _reserve(tx: store.Transaction, conf: NetConf, key: str, existing: dict | None) -> int:
    if existing and existing.get("ips"):
        return ipv4.to_int(existing["ips"][0].split("/")[0])
    taken = _taken(tx, conf, conf.gateway, ipv6_family=False)
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


def _taken(tx: store.Transaction, conf: NetConf, gateway: int, ipv6_family: bool) -> set[int]:
    """The addresses of one family not to hand out: the gateway, surviving adopted pods,
    and this network's records."""
    to_int = ipv6.to_int if ipv6_family else ipv4.to_int
    taken = {gateway}
    adopted = tx.state.get("adopted6" if ipv6_family else "adopted", {}).get(conf.name) or {}
    for port, address in adopted.items():
        if links.exists(port):  # a surviving pod from before the state was lost
            taken.add(to_int(address))
    for record in tx.attachments.values():
        if record.get("network") == conf.name:
            for cidr in record.get("ips") or []:
                if (":" in cidr) == ipv6_family:
                    taken.add(to_int(cidr.split("/")[0]))
    return taken


def _reserve6(tx: store.Transaction, conf: NetConf, existing: dict | None) -> int:
    """The pod's IPv6 address: the same walk as IPv4 (next_free from the last one handed
    out, under the same lock), over the IPv6 addresses of this network's records."""
    for cidr in (existing or {}).get("ips") or []:
        if ":" in cidr:
            return ipv6.to_int(cidr.split("/")[0])
    taken = _taken(tx, conf, conf.gateway6, ipv6_family=True)
    last = tx.state.get("last_reserved6", {}).get(conf.name)
    address = next_free(conf.range6_start, conf.range6_end, taken,
                        ipv6.to_int(last) if last else None)
    if address is None:
        raise CNIError(ADDRESS_EXHAUSTED,
                       f"no free IPv6 address left in {conf.cidr6()} on network {conf.name} "
                       f"({len(taken) - 1} in use); delete pods or widen subnet6")
    tx.state.setdefault("last_reserved6", {})[conf.name] = ipv6.to_text(address)
    return address


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


def _delegate_add(request: Request, conf: NetConf) -> tuple[int, int, int, str]:
    """The IPAM plugin's IPv4 address, and its IPv6 one ("" when none) on a dual-stack network."""
    result = _delegate().add(request, conf.delegated_ipam or "")
    ip = next((ip for ip in result.ips if ":" not in ip.address), None)
    ip6 = next((ip for ip in result.ips if ":" in ip.address), None)
    if conf.ipv4 and ip is None:
        raise CNIError(DATAPLANE_FAILURE, f"IPAM plugin {conf.delegated_ipam} returned no IPv4 "
                       "address; give it a range inside subnet")
    if conf.subnet6 is not None and ip6 is None:
        raise CNIError(DATAPLANE_FAILURE, f"IPAM plugin {conf.delegated_ipam} returned no IPv6 "
                       f"address; give it a range inside subnet6 {conf.cidr6()}")
    address = prefix = 0
    gateway, address6 = conf.gateway, ""
    try:
        if ip is not None and conf.ipv4:
            address, prefix = ipv4.parse_cidr(ip.address, strict=False)
            gateway = ipv4.to_int(ip.gateway) if ip.gateway else conf.gateway
        if ip6 is not None and conf.subnet6 is not None:
            value6, prefix6 = ipv6.parse_cidr(ip6.address, strict=False)
            if not ipv6.contains(conf.subnet6, conf.prefix6, value6 & ipv6.mask(conf.prefix6)):
                raise ipv4.AddressError(f"{ip6.address} is outside subnet6 {conf.cidr6()}, "
                                        "where the bridge is its gateway")
            address6 = f"{ipv6.to_text(value6)}/{prefix6}"
    except ipv4.AddressError as err:
        raise CNIError(DATAPLANE_FAILURE, f"IPAM plugin returned a bad address: {err}") from None
    return address, prefix, gateway, address6


def _plumb(request: Request, conf: NetConf, host: str, address: int, prefix: int,
           gateway: int, address6: str = "") -> Result:
    # the MAC follows the IPv4 address, else (IPv6 only) the IPv6 one's low 32 bits
    peer_mac = pod_mac(address or ipv6.to_int(address6.split("/")[0]) & 0xFFFFFFFF)
    host_mac = random_mac()
    gateway_text = ipv4.to_text(gateway) if address else ""
    link = links.PodLink(host, host_mac, request.ifname, peer_mac, request.netns,
                         conf.mtu, conf.bridge, conf.hairpin)
    if address6:
        link.address6, _, prefix6 = address6.partition("/")
        link.prefix6, link.gateway6 = int(prefix6), conf.gateway6_text()
    links.plumb_pod(link, ipv4.to_text(address) if address else "", prefix, gateway_text)
    result = Result()
    result.interfaces = [
        Interface(host, host_mac, mtu=conf.mtu),
        Interface(request.ifname, peer_mac, request.netns, conf.mtu),
    ]
    result.ips = [IPConfig(address_text(address, prefix), gateway_text, 1)] if address else []
    result.routes = [Route("0.0.0.0/0", gateway_text)] if address else []
    if address6:
        result.ips.append(IPConfig(address6, link.gateway6, 1))
        result.routes.append(Route("::/0", link.gateway6))
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
              last_before: str | None, last6_before: str | None = None) -> None:
    """Leave nothing behind a failed ADD, the allocator's position included."""
    _release_link_and_address(request, conf, host)
    with store.Transaction() as tx:
        if tx.attachments.pop(key, None) is not None:
            tx.dirty = True
        for field, before in (("last_reserved", last_before), ("last_reserved6", last6_before)):
            positions = tx.state.get(field, {})
            if positions.get(conf.name) != before:
                if before is None:
                    positions.pop(conf.name, None)
                else:
                    positions[conf.name] = before
                if not positions:
                    tx.state.pop(field, None)
                tx.dirty = True


# ---------------------------------------------------------------- DEL, CHECK, GC, STATUS

def delete(request: Request, conf: NetConf) -> None:
    """Idempotent: unknown container, missing netns and lost state all succeed."""
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    record = store.load()["attachments"].get(key) or {}
    host = record.get("host_ifname") or host_ifname(request.container_id, request.ifname)
    links.delete_unlisted(host)
    if conf.delegated_ipam:
        _delegate().delete(request, conf.delegated_ipam)
    if record:
        with store.Transaction() as tx:
            if tx.attachments.pop(key, None) is not None:
                tx.dirty = True
        # An ADD still running in a pool worker whose client died may have made the link
        # since the first delete; with the record gone it would stay (see _abandon_add).
        links.delete_unlisted(host)


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
        addrs = links.show_json(["addr", "show", "dev", request.ifname], request.netns)
    except CNIError:
        return [f"interface {request.ifname} is missing in {request.netns}"]
    have = {_canonical(f"{i.get('local')}/{i.get('prefixlen')}")
            for entry in addrs for i in entry.get("addr_info", [])}
    for ip in expected.ips:
        if _canonical(ip.address) not in have:
            problems.append(f"address {ip.address} is missing on {request.ifname}")
    routes = links.show_json(["-4", "route", "show", "dev", request.ifname], request.netns)
    if any(":" in route.dst for route in expected.routes):
        routes += links.show_json(["-6", "route", "show", "dev", request.ifname], request.netns)
    have_routes = {(_canonical(r.get("dst") or ""), _canonical(r.get("gateway", "")))
                   for r in routes}
    have_dsts = {dst for dst, _ in have_routes}
    for route in expected.routes:
        dst = "default" if route.dst in ("0.0.0.0/0", "::/0") else _canonical(route.dst)
        present = (dst, _canonical(route.gw)) in have_routes if route.gw else dst in have_dsts
        if not present:
            problems.append(f"route {route.dst} via {route.gw or '-'} is missing")
    return problems


def _canonical(text: str) -> str:
    """IPv6 text in one spelling (results may carry another); IPv4 and names unchanged."""
    if ":" not in text:
        return text
    address, sep, prefix = text.partition("/")
    try:
        return ipv6.to_text(ipv6.to_int(address)) + sep + prefix
    except ipv4.AddressError:
        return text


def gc(request: Request, conf: NetConf, valid: set[tuple[str, str]]) -> None:
    """Remove every attachment of this network that is not in `valid`."""
    doomed = {}
    for key, record in store.load()["attachments"].items():
        if record.get("network") == conf.name and \
                (record.get("container_id"), record.get("ifname")) not in valid:
            doomed[key] = record
    for record in doomed.values():
        links.delete_unlisted(record.get("host_ifname", ""))
    if conf.delegated_ipam:
        stale = [(r.get("container_id", ""), r.get("ifname", "")) for r in doomed.values()]
        _delegate().gc(request, conf.delegated_ipam, stale)
    if doomed:
        with store.Transaction() as tx:
            for key in doomed:
                tx.attachments.pop(key, None)
            tx.dirty = True
        for record in doomed.values():  # made since by an ADD whose client died (as DEL)
            links.delete_unlisted(record.get("host_ifname", ""))


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
        used = sum(1 for r in attachments.values() if r.get("network") == conf.name)
        if conf.subnet6 is not None and used >= conf.range6_end - conf.range6_start + 1:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPv6 address pool of {conf.name} is "
                           f"exhausted ({used} pods)")
        if not conf.ipv4:
            return
        size = conf.range_end - conf.range_start + 1
        if used >= size - (1 if conf.range_start <= conf.gateway <= conf.range_end else 0):
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"address pool of {conf.name} is exhausted "
                           f"({used} pods)")
    else:
        try:
            _delegate().status(request, conf.delegated_ipam)
        except CNIError as err:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPAM plugin {conf.delegated_ipam}: {err.msg}") from None
