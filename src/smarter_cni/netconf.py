"""The smarter-cni network config: defaults, validation, one typed object."""

from __future__ import annotations

import os

from . import ipv4, ipv6
from .cni.errors import INVALID_NETWORK_CONFIG, CNIError
from .cni.request import validate_ifname

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PLUGIN_TYPES = ("smarter-cni", "c2d")
MODES = ("bridge", "docker")
DEFAULTS = {
    "bridge": {"subnet": "10.42.0.0/16", "dnsAddress": "169.254.0.2"},
    "docker": {"subnet": "172.38.0.0/16", "dnsAddress": "172.38.0.2"},
}
# the CNI network's name (the conflist's `name`) when the operator names none
DEFAULT_NETWORK_NAMES = {"bridge": "smarter", "docker": "smarter-docker"}
DEFAULT_BRIDGE = "smarter0"
DEFAULT_DOCKER_NETWORK = "mynet"
DEFAULT_DOMAIN = "cluster.local"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_DOCKER_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DOCKER_REST = _DOCKER_FIRST | frozenset("_.-")


class NetConf:
    """One network's settings, validated."""

    __slots__ = (
        "name", "type", "mode", "bridge", "subnet", "prefix", "gateway", "range_start",
        "range_end", "mtu", "ip_masq", "hairpin", "ipam", "dns_address", "domain",
        "docker_network", "docker_socket", "kubeconfig", "raw", "net_subnet", "net_prefix",
        "range_source", "subnet6", "prefix6", "gateway6", "range6_start", "range6_end",
        "dns_address6", "ipv4",
    )

    def cidr(self) -> str:
        """The network's IPv4 CIDR: what forwarding, NAT and the node DNS cover ("" when
        the network is IPv6 only)."""
        return f"{ipv4.to_text(self.net_subnet)}/{self.net_prefix}" if self.ipv4 else ""

    def subnet_text(self) -> str:
        """The pods' own subnet: the network's, or the runtime's narrower range (ipranges)."""
        return f"{ipv4.to_text(self.subnet)}/{self.prefix}" if self.ipv4 else ""

    def gateway_text(self) -> str:
        return ipv4.to_text(self.gateway) if self.ipv4 else ""

    def cidr6(self) -> str:
        """The pods' IPv6 prefix, "" when the network is IPv4 only."""
        return f"{ipv6.to_text(self.subnet6)}/{self.prefix6}" if self.subnet6 is not None else ""

    def gateway6_text(self) -> str:
        return ipv6.to_text(self.gateway6) if self.gateway6 is not None else ""

    def dns_addresses(self) -> list[str]:
        """Every address the node DNS answers on, IPv4 first: `dnsAddress` (none on an
        IPv6-only network unless the config names one), then `dnsAddress6`."""
        return [a for a in (self.dns_address, self.dns_address6) if a]

    @property
    def delegated_ipam(self) -> str | None:
        kind = self.ipam.get("type")
        return kind if kind else None

    def dns_result(self, namespace: str = "") -> dict[str, Any]:
        search = [f"svc.{self.domain}", self.domain]
        if namespace:
            search.insert(0, f"{namespace}.svc.{self.domain}")
        servers = ([self.dns_address] if self.ipv4 else []) + \
            ([self.dns_address6] if self.dns_address6 else [])
        return {"nameservers": servers, "search": search}


def _fail(message: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {message}")


def _get(config: dict, key: str, kind: type, default: Any) -> Any:
    value = config.get(key, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        raise _fail(f"{key!r} must be a number, not {value!r}")
    if not isinstance(value, kind):
        raise _fail(f"{key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def parse_netconf(config: dict) -> NetConf:
    conf = NetConf()
    conf.raw = config
    conf.name = config["name"]
    conf.type = _get(config, "type", str, "smarter-cni")
    if conf.type not in PLUGIN_TYPES:
        raise _fail(f"type {conf.type!r} is not handled by this plugin (expected smarter-cni)")
    default_mode = "docker" if conf.type == "c2d" else "bridge"
    conf.mode = _get(config, "mode", str, default_mode)
    if conf.mode not in MODES:
        raise _fail(f"mode {conf.mode!r} must be 'bridge' or 'docker'")
    defaults = DEFAULTS[conf.mode]

    conf.bridge = _get(config, "bridge", str, DEFAULT_BRIDGE)
    try:
        validate_ifname(conf.bridge)
        if not conf.bridge:
            raise CNIError(INVALID_NETWORK_CONFIG, "empty")
    except CNIError:
        raise _fail(f"bridge {conf.bridge[:40]!r} is not a valid interface name "
                    "(1-15 characters, no '/', ':' or spaces)") from None
    subnet_text = _get(config, "subnet", str, defaults["subnet"])
    conf.ipv4 = subnet_text.strip() != ""  # "subnet": "" with a subnet6: IPv6-only pods
    if not conf.ipv4:
        _ipv6_only(conf, config)
        return conf
    try:
        conf.subnet, conf.prefix = ipv4.parse_cidr(subnet_text)
    except ipv4.AddressError as err:
        raise _fail(f"subnet: {err}") from None
    conf.net_subnet, conf.net_prefix, conf.range_source = conf.subnet, conf.prefix, ""
    if conf.prefix > 30:
        raise _fail(f"subnet /{conf.prefix} is too small for a gateway and pods; use /30 or larger")
    first_host = conf.subnet + 1
    last_host = ipv4.broadcast(conf.subnet, conf.prefix) - 1
    conf.gateway = _address_in_subnet(conf, config, "gateway", first_host)
    conf.range_start = _address_in_subnet(conf, config, "rangeStart", first_host)
    conf.range_end = _address_in_subnet(conf, config, "rangeEnd", last_host)
    if conf.range_start > conf.range_end:
        raise _fail("rangeStart is after rangeEnd")

    _parse_subnet6(conf, config)
    _common(conf, config, defaults)
    if "runtimeConfig" in config or "podCIDRs" in config:  # the node's own pod range
        _apply_node_range(conf, config)
    return conf


def _ipv6_only(conf: NetConf, config: dict) -> None:
    """No IPv4 subnet: pods get only an IPv6 address. The IPv4 fields hold an empty
    placeholder (0.0.0.0/32, an empty range) that code asking `conf.ipv4` skips."""
    conf.subnet = conf.net_subnet = conf.gateway = 0
    conf.prefix = conf.net_prefix = 32
    conf.range_start, conf.range_end, conf.range_source = 1, 0, ""
    if conf.mode == "docker":
        raise _fail("an empty subnet (IPv6-only pods) is not supported in docker mode")
    for key in ("gateway", "rangeStart", "rangeEnd", "podCIDRs"):
        if config.get(key):
            raise _fail(f"{key} is an IPv4 setting but subnet is empty (IPv6 only); drop it")
    _parse_subnet6(conf, config)
    if conf.subnet6 is None:
        raise _fail("subnet is empty and subnet6 is not set: give pods an IPv4 subnet, an "
                    "IPv6 subnet6, or both")
    # no IPv4 DNS address unless the config names one (for the node's own processes)
    _common(conf, config, dict(DEFAULTS[conf.mode], dnsAddress=""))
    if not conf.dns_address6:  # the pods have no IPv4 to reach the IPv4 DNS address with
        conf.dns_address6 = DEFAULT_DNS6


def _common(conf: NetConf, config: dict, defaults: dict[str, str]) -> None:
    """The settings every network has, whatever its address families."""
    conf.mtu = _get(config, "mtu", int, 1500)
    if not 576 <= conf.mtu <= 65535:
        raise _fail(f"mtu {conf.mtu} is outside 576..65535")
    conf.ip_masq = _get(config, "ipMasq", bool, True)
    conf.hairpin = _get(config, "hairpinMode", bool, True)
    conf.ipam = _get(config, "ipam", dict, {})
    ipam_type = conf.ipam.get("type")
    if ipam_type is not None and (not isinstance(ipam_type, str) or "/" in ipam_type
                                  or ipam_type in ("", ".", "..")):
        raise _fail("ipam.type must be the file name of an IPAM plugin such as 'host-local'")
    dns_text = _get(config, "dnsAddress", str, defaults["dnsAddress"]).strip()
    try:
        conf.dns_address = ipv4.to_text(ipv4.to_int(dns_text)) if dns_text or conf.ipv4 else ""
    except ipv4.AddressError as err:
        raise _fail(f"dnsAddress: {err}") from None
    conf.dns_address6 = _parse_dns6(conf, config)
    conf.domain = _get(config, "clusterDomain", str, DEFAULT_DOMAIN).strip(".").lower()
    if not conf.domain or len(conf.domain) > 200 or not set(conf.domain) <= _DOMAIN_CHARS \
            or "" in conf.domain.split("."):
        raise _fail("clusterDomain must be a domain such as cluster.local")

    network_default = conf.name if conf.type == "c2d" else DEFAULT_DOCKER_NETWORK
    conf.docker_network = _get(config, "network", str, network_default)
    if conf.mode == "docker" and not _is_docker_name(conf.docker_network):
        raise _fail(f"network {conf.docker_network[:60]!r} is not a Docker network name "
                    "(a letter or digit, then letters, digits, '_', '.' or '-')")
    conf.docker_socket = _get(config, "dockerSocket", str, docker_socket_from_env())
    conf.kubeconfig = _get(config, "kubeconfig", str, "")


# /120 leaves 255 addresses (the gateway and 254 pods, like a /24); a prefix shorter than
# /48 would claim a whole site's space for one node's bridge, almost surely a typo.
PREFIX6_MIN, PREFIX6_MAX = 48, 120


def _parse_subnet6(conf: NetConf, config: dict) -> None:
    """`subnet6`: the pods' IPv6 prefix beside the IPv4 subnet (dual-stack); "" or absent:
    IPv4 only. The gateway is the prefix's ::1, pods get ::2 upwards."""
    conf.subnet6 = conf.prefix6 = conf.gateway6 = conf.range6_start = conf.range6_end = None
    text = _get(config, "subnet6", str, "").strip()
    if not text:
        return
    if conf.mode == "docker":
        raise _fail("subnet6 is not used in docker mode: Docker's IPAM hands out IPv6 on a "
                    "network created with IPv6 (docker network create --ipv6 --subnet "
                    "172.38.0.0/16 --subnet PREFIX ...; dockerd with --ipv6 and fixed-cidr-v6 "
                    "for its default bridge) and pods get it; drop subnet6 from the config")
    try:
        subnet, prefix = ipv6.parse_cidr(text)
    except ipv4.AddressError as err:
        raise _fail(f"subnet6: {err}") from None
    if not PREFIX6_MIN <= prefix <= PREFIX6_MAX:
        raise _fail(f"subnet6 {text} is a /{prefix}: use a prefix from /{PREFIX6_MIN} to "
                    f"/{PREFIX6_MAX} (a /64 such as fd42:10:42::/64 is usual)")
    for network, length, what in ipv6.RESERVED:
        if ipv6.overlaps(subnet, prefix, network, length):
            raise _fail(f"subnet6 {text} is inside {what}; use a unique local prefix "
                        "(fd00::/8, e.g. fd42:10:42::/64) or a global one")
    conf.subnet6, conf.prefix6 = subnet, prefix
    conf.gateway6 = subnet + 1
    conf.range6_start, conf.range6_end = subnet + 2, ipv6.last(subnet, prefix) - 1


# The node DNS's IPv6 address when the operator asks for one and names none (install
# --ipv6): a unique local /128 on the dummy interface, the same on every node, as
# 169.254.0.2 is for IPv4. ULA, not link-local: a link-local address needs a zone (an
# interface) in resolv.conf and kubelet's --cluster-dns, and pods on a bridge cannot
# reach the host's dummy interface by one.
DEFAULT_DNS6 = "fd00:169:254::2"
# install --ipv6 with no --subnet6: mirrors 10.42.0.0/16 (a ULA needs no registration;
# pick your own random fdXX:XXXX:XXXX::/64 where prefixes of several sites could meet)
DEFAULT_SUBNET6 = "fd00:10:42::/64"


def _parse_dns6(conf: NetConf, config: dict) -> str:
    """`dnsAddress6`: the node DNS also listens there; "" or absent: IPv4 only."""
    text = _get(config, "dnsAddress6", str, "").strip()
    if not text:
        return ""
    if conf.mode == "docker":
        raise _fail("dnsAddress6 is not supported in docker mode; drop it")
    try:
        value = ipv6.to_int(text)
    except ipv4.AddressError as err:
        raise _fail(f"dnsAddress6: {err}") from None
    for network, length, what in ipv6.RESERVED:
        if ipv6.contains(network, length, value & ipv6.mask(length)):
            raise _fail(f"dnsAddress6 {text} is inside {what}; use a unique local address "
                        f"such as {DEFAULT_DNS6}")
    if conf.subnet6 is not None and ipv6.contains(conf.subnet6, conf.prefix6, value & ipv6.mask(conf.prefix6)):
        raise _fail(f"dnsAddress6 {text} is inside subnet6 {conf.cidr6()}, where pods get "
                    f"their addresses; use one outside it such as {DEFAULT_DNS6}")
    return ipv6.to_text(value)


def _apply_node_range(conf: NetConf, config: dict) -> None:
    """Narrow `conf` to the runtime's range (ipranges), when there is one (bridge mode only)."""
    if conf.mode != "bridge":
        return
    from .ipranges import SOURCE, choose, runtime_ranges

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


def _log(level: str, message: str) -> None:
    from .logs import log  # only when there is something to say: not on every call

    log(level, message)


def _is_docker_name(name: str) -> bool:
    """Docker's rule for object names; the name also goes into API paths."""
    return 0 < len(name) <= 255 and name[0] in _DOCKER_FIRST and set(name) <= _DOCKER_REST


def _address_in_subnet(conf: NetConf, config: dict, key: str, default: int) -> int:
    text = _get(config, key, str, "")
    if not text:
        return default
    try:
        return ipv4.host_in_subnet(key, text, conf.subnet, conf.prefix)
    except ipv4.AddressError as err:
        raise _fail(str(err)) from None


def docker_socket_from_env() -> str:
    """The Docker socket DOCKER_HOST names (unix:// only), else the default: the one parser."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return DEFAULT_DOCKER_SOCKET
