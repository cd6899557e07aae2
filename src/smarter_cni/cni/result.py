"""The ADD result: one internal shape, converted to each spec version at the edge."""

from __future__ import annotations

from .errors import DECODING_FAILURE, CNIError
from .version import at_least

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Interface:
    __slots__ = ("name", "mac", "sandbox", "mtu")

    def __init__(self, name: str, mac: str = "", sandbox: str = "", mtu: int = 0) -> None:
        self.name = name
        self.mac = mac
        self.sandbox = sandbox
        self.mtu = mtu


class IPConfig:
    __slots__ = ("address", "gateway", "interface")

    def __init__(self, address: str, gateway: str = "", interface: int | None = None) -> None:
        self.address = address  # CIDR form, "10.42.0.5/16"
        self.gateway = gateway
        self.interface = interface


class Route:
    __slots__ = ("dst", "gw")

    def __init__(self, dst: str, gw: str = "") -> None:
        self.dst = dst
        self.gw = gw


class Result:
    __slots__ = ("interfaces", "ips", "routes", "dns")

    def __init__(self) -> None:
        self.interfaces: list[Interface] = []
        self.ips: list[IPConfig] = []
        self.routes: list[Route] = []
        self.dns: dict[str, Any] = {}

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        """The result as the spec of `cni_version` defines it."""
        if not at_least(cni_version, "0.3.0"):
            return self._legacy_dict(cni_version)
        out: dict[str, Any] = {"cniVersion": cni_version}
        with_mtu = at_least(cni_version, "1.1.0")
        if self.interfaces:
            out["interfaces"] = [_interface_dict(i, with_mtu) for i in self.interfaces]
        ips = []
        for ip in self.ips:
            entry: dict[str, Any] = {}
            if not at_least(cni_version, "1.0.0"):
                entry["version"] = "6" if ":" in ip.address else "4"
            entry["address"] = ip.address
            if ip.gateway:
                entry["gateway"] = ip.gateway
            if ip.interface is not None:
                entry["interface"] = ip.interface
            ips.append(entry)
        if ips:
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_route_dict(r) for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    def _legacy_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version}
        for ip in self.ips:  # 0.2.0 has room for one address of each family
            six = ":" in ip.address
            key = "ip6" if six else "ip4"
            if key in out:
                continue
            entry: dict[str, Any] = {"ip": ip.address}
            if ip.gateway:
                entry["gateway"] = ip.gateway
            routes = [_route_dict(r) for r in self.routes if (":" in r.dst) == six]
            if routes:
                entry["routes"] = routes
            out[key] = entry
        out["dns"] = dict(self.dns)
        return out


def _interface_dict(iface: Interface, with_mtu: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        entry["mac"] = iface.mac
    if with_mtu and iface.mtu:
        entry["mtu"] = iface.mtu
    if iface.sandbox:
        entry["sandbox"] = iface.sandbox
    return entry


def _route_dict(route: Route) -> dict[str, str]:
    entry = {"dst": route.dst}
    if route.gw:
        entry["gw"] = route.gw
    return entry


def from_dict(data: Any) -> Result:
    """Read a result of any spec version (a `prevResult`, or an IPAM plugin's answer)."""
    if not isinstance(data, dict):
        raise CNIError(DECODING_FAILURE, "prevResult must be a JSON object")
    result = Result()
    try:
        if "ip4" in data or "ip6" in data:
            for key in ("ip4", "ip6"):
                block = data.get(key)
                if block:
                    result.ips.append(IPConfig(_text(block["ip"]), _text(block.get("gateway", ""))))
                    result.routes += [_parse_route(r) for r in block.get("routes") or []]
        for entry in data.get("interfaces") or []:
            result.interfaces.append(
                Interface(
                    _text(entry["name"]),
                    _text(entry.get("mac", "")),
                    _text(entry.get("sandbox", "")),
                    int(entry.get("mtu", 0) or 0),
                )
            )
        for entry in data.get("ips") or []:
            index = entry.get("interface")
            if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
                raise TypeError("ips[].interface must be an integer")
            result.ips.append(
                IPConfig(_text(entry["address"]), _text(entry.get("gateway", "")), index)
            )
        result.routes += [_parse_route(r) for r in data.get("routes") or []]
        dns = data.get("dns") or {}
        if not isinstance(dns, dict):
            raise TypeError("dns must be an object")
        result.dns = dns
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise CNIError(DECODING_FAILURE, f"cannot read result: {_describe(err)}") from None
    return result


def _parse_route(entry: Any) -> Route:
    return Route(_text(entry["dst"]), _text(entry.get("gw", "")))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    if isinstance(err, AttributeError):
        return "an entry is not a JSON object"
    return str(err)
