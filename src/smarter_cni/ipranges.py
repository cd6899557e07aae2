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
