"""The node's own pod range, as the runtime passes it: `runtimeConfig.ipRanges`.

kubelet's CNI code (and cri-dockerd, which carries it on) passes the node's
podCIDR to plugins that declare the `ipRanges` capability, as a list of range
sets, each a list of `{subnet, rangeStart?, rangeEnd?, gateway?}` (the
host-local range format). containerd spells keys its own way at times
(`IPRanges`, `Subnet`), so keys are matched without regard to case.

When a range arrives, the pod's address, prefix and gateway come from it and
the bridge gets its gateway. The network's CIDR (what forwarding, NAT and the
node DNS cover) stays the configured subnet when the range lies inside it,
which is the Kubernetes case: the configured subnet is the cluster CIDR, the
range the node's slice of it.

On the plugin's hot path: no json, typing or ipaddress imports.
"""

from __future__ import annotations

from . import ipv4
from .cni.errors import INVALID_NETWORK_CONFIG, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .netconf import NetConf

SOURCE = "runtimeConfig.ipRanges"
_FORMAT = ("runtimeConfig.ipRanges must be a list of range sets, each a list of "
           "{\"subnet\": \"10.42.1.0/24\", \"rangeStart\", \"rangeEnd\", \"gateway\"} "
           "(the last three optional)")


def _fail(message: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"invalid pod range ({SOURCE} or podCIDRs): {message}")


def _key(mapping: dict, name: str) -> Any:
    """mapping[name], matched without regard to case (ipRanges, IPRanges, Subnet ...)."""
    if name in mapping:
        return mapping[name]
    lowered = name.lower()
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


class Range:
    """One IPv4 range: subnet, prefix, gateway, first and last address to hand out."""

    __slots__ = ("subnet", "prefix", "gateway", "start", "end")

    def cidr(self) -> str:
        return f"{ipv4.to_text(self.subnet)}/{self.prefix}"


def runtime_ranges(config: dict) -> list[list[dict]]:
    """The raw range sets from the config's runtimeConfig ([] when none were passed)."""
    runtime = config.get("runtimeConfig")
    if not isinstance(runtime, dict):
        return []  # the hostile-input table: a garbled runtimeConfig as such is ignored
    sets = _key(runtime, "ipRanges")
    if sets is None:
        return []
    if not isinstance(sets, list) or not all(isinstance(s, list) for s in sets) \
            or not all(isinstance(r, dict) for s in sets for r in s):
        raise _fail(_FORMAT)
    return sets


def parse_range(entry: dict) -> Range | None:
    """One range entry -> Range; None for an IPv6 range (this plugin serves IPv4)."""
    subnet_text = _key(entry, "subnet")
    if not isinstance(subnet_text, str) or not subnet_text:
        raise _fail("a range has no \"subnet\" (e.g. {\"subnet\": \"10.42.1.0/24\"})")
    if ":" in subnet_text:
        return None
    found = Range()
    try:
        found.subnet, found.prefix = ipv4.parse_cidr(subnet_text)
    except ipv4.AddressError as err:
        raise _fail(f"subnet: {err}") from None
    if found.prefix > 30:
        raise _fail(f"subnet {subnet_text} is too small for a gateway and pods; use /30 or larger")
    first, last = found.subnet + 1, ipv4.broadcast(found.subnet, found.prefix) - 1
    found.gateway = _address(entry, "gateway", found, first)
    found.start = _address(entry, "rangeStart", found, first)
    found.end = _address(entry, "rangeEnd", found, last)
    if found.start > found.end:
        raise _fail(f"rangeStart {ipv4.to_text(found.start)} is after rangeEnd "
                    f"{ipv4.to_text(found.end)} in {found.cidr()}")
    if found.start == found.end == found.gateway:
        raise _fail(f"range {found.cidr()} holds only its gateway {ipv4.to_text(found.gateway)}")
    return found


def _address(entry: dict, key: str, found: Range, default: int) -> int:
    text = _key(entry, key)
    if text is None or text == "":
        return default
    if not isinstance(text, str):
        raise _fail(f"{key} must be a string such as \"10.42.1.1\", got {type(text).__name__}")
    try:
        return ipv4.host_in_subnet(key, text, found.subnet, found.prefix)
    except ipv4.AddressError as err:
        raise _fail(str(err)) from None


def node_cidrs(config: dict) -> list[list[dict]]:
    """The config's own `podCIDRs` (a containerd conf_template renders the node's ranges
    there, node/containerd.py) as range sets; [] when absent."""
    cidrs = config.get("podCIDRs")
    if cidrs is None:
        return []
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid network config: podCIDRs must be a "
                       "list of CIDRs such as [\"10.42.1.0/24\"]")
    return [[{"subnet": cidr}] for cidr in cidrs]


def choose(config: dict) -> tuple[Range | None, list[str]]:
    """The IPv4 range to use (None: keep the configured subnet) and what was left out.

    kubelet passes one range set per address family, each with one range (the
    node's podCIDR). The first IPv4 range wins; every other entry is still
    validated, and named in the second value so ADD can log it.
    """
    chosen = None
    ignored = []
    for range_set in runtime_ranges(config) or node_cidrs(config):
        for entry in range_set:
            found = parse_range(entry)
            if found is None:
                ignored.append(f"IPv6 range {_key(entry, 'subnet')} (IPv6 comes from subnet6)")
            elif chosen is None:
                chosen = found
            else:
                ignored.append(f"range {found.cidr()} (one IPv4 range per node is used)")
    return chosen, ignored


def apply(conf: NetConf, config: dict) -> None:
    """Narrow `conf` to the runtime's range, when there is one (bridge mode only)."""
    if conf.mode != "bridge":
        return
    found, ignored = choose(config)
    source = SOURCE if runtime_ranges(config) else "podCIDRs"
    if found is None:
        if ignored:
            _log("warning", f"network {conf.name}: {source} has no IPv4 range ("
                 f"{'; '.join(ignored)}); pods keep the configured subnet {conf.cidr()}")
        return
    if ignored:
        _log("info", f"network {conf.name}: {source} uses {found.cidr()}, leaves out "
             + "; ".join(ignored))
    inside = found.prefix >= conf.net_prefix and \
        ipv4.contains(conf.net_subnet, conf.net_prefix, found.subnet)
    if not inside:
        # forwarding, NAT and the DNS ACL follow the range when it is not part of the
        # configured network (normally the cluster CIDR)
        conf.net_subnet, conf.net_prefix = found.subnet, found.prefix
    conf.subnet, conf.prefix, conf.gateway = found.subnet, found.prefix, found.gateway
    conf.range_start, conf.range_end = found.start, found.end
    conf.range_source = source


def kept_gateways(conf: NetConf, wanted: str, directory: str | None = None) -> set[str]:
    """Bridge addresses ("a.b.c.d/p") still in use as the gateway of pods on this network.

    When the pod range changes while pods run (a new podCIDR, or the runtime
    starts passing ranges), the running pods keep their addresses and their
    gateway: the bridge keeps the old gateway address next to the new one until
    the network is set up again with none of those pods left. Logged.
    """
    from . import store

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
    from .logs import log

    log(level, message)


def as_recorded(conf: NetConf, marker: dict | None) -> NetConf:
    """`conf` (from the installed conflist) narrowed to the node range the network was last
    set up with: the state's network marker ("pods", "gateway"), which an ADD with
    `ipRanges` or `podCIDRs` wrote. For the DNS service's reconciler, so that it keeps the
    range's gateway on the bridge instead of restoring the configured one (and the next
    ADD undoing that). `conf` itself when the marker names no other range of its network.
    """
    if not isinstance(marker, dict) or marker.get("cidr") != conf.cidr():
        return conf
    pods, gateway = marker.get("pods"), marker.get("gateway")
    if not isinstance(pods, str) or not isinstance(gateway, str) or \
            (pods == conf.subnet_text() and gateway == conf.gateway_text()):
        return conf
    try:
        subnet, prefix = ipv4.parse_cidr(pods)
        gateway_int = ipv4.to_int(gateway)
    except ipv4.AddressError:
        return conf
    if not ipv4.contains(subnet, prefix, gateway_int):
        return conf
    narrowed = type(conf)()
    for slot in type(conf).__slots__:
        if hasattr(conf, slot):
            setattr(narrowed, slot, getattr(conf, slot))
    narrowed.subnet, narrowed.prefix, narrowed.gateway = subnet, prefix, gateway_int
    narrowed.range_start = subnet + 1
    narrowed.range_end = ipv4.broadcast(subnet, prefix) - 1
    narrowed.range_source = "recorded"
    return narrowed
