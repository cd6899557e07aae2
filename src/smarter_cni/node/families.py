"""A reinstall that changes the network's address families (IPv4, IPv6, both).

With fewer families, what the dropped one had goes: the bridge's address of that family,
its forwarding and NAT rules (or nft table), and the node DNS address of that family (the
restarted DNS service no longer listens on it). With pods attached a family change is
refused before anything changes: those pods keep addresses of a family the network no
longer serves (or lack the new one) until they are recreated.
"""

from __future__ import annotations

from typing import Any

from .. import store
from ..cni.errors import CNIError
from ..conflist import ConfigError, netconf_of, read
from ..netconf import NetConf, parse_netconf
from .console import CLIError


def families(conf: NetConf) -> list[str]:
    """The network's address families, in the order status shows them."""
    return [name for name, has in (("IPv4", conf.ipv4), ("IPv6", conf.subnet6 is not None))
            if has]


def previous_conf(record: dict[str, Any], path: str | None = None) -> NetConf | None:
    """The network the earlier install made: the record's plugin config, else the config
    file at `path` (default: the one the record names); None without a (readable) one."""
    saved = record.get("plugin_config")
    if isinstance(saved, dict):
        try:
            return parse_netconf(saved)
        except CNIError:
            pass
    if path is None:
        path = record.get("config")
    try:
        return netconf_of(read(path)) if isinstance(path, str) and path else None
    except ConfigError:
        return None


def check_family_change(old: NetConf | None, conf: NetConf) -> None:
    """Refuse to change the families while pods of the earlier network are attached.

    No override: a forced change would leave running pods with an address of a family
    whose gateway, rules and DNS address are gone (or without the new family), which
    looks fine to Kubernetes and fails only on traffic. Deleting the pods first is a
    clean cut over; `uninstall --force` exists for a node whose pods cannot be removed.
    """
    if old is None or not changed(old, conf):
        return
    try:
        records = store.load().get("attachments", {}).values()
    except CNIError as err:
        raise CLIError(f"cannot tell whether pods are attached: {err.msg}",
                       "check the state dir, then run install again") from None
    attached = [r for r in records if r.get("network") == old.name]
    if not attached:
        return
    before, after = " and ".join(families(old)), " and ".join(families(conf))
    raise CLIError(
        f"{len(attached)} pod(s) are attached to network {old.name}, which is {before}; "
        f"reinstalling it {after} would leave them with addresses the network no longer "
        "serves (or without the new family's)",
        "drain the node (kubectl drain NODE --ignore-daemonsets) or delete those pods, "
        "check `smarter-cni pods` lists none, then run install again; nothing was changed")


def changed(old: NetConf | None, conf: NetConf) -> bool:
    return old is not None and families(old) != families(conf)


def drop_unused(conf: NetConf, old: NetConf | None, reclaim: bool = False) -> None:
    """A bridge network's pieces of each family `conf` lacks go: the bridge's addresses of
    that family (IPv6 only after an earlier subnet6: the kernel's fe80:: stays) and its
    rules (firewall.drop_families). `reclaim`: the state's network marker is rewritten
    for `conf` too (an earlier reconciler may have rewritten it for its config)."""
    from ..dataplane import bridge_network, firewall, links

    if links.exists(conf.bridge):
        stale = [f"{a}/{p}" for a, p in links.ipv4_addresses(conf.bridge)] if not conf.ipv4 \
            else []
        if conf.subnet6 is None and old is not None and old.subnet6 is not None:
            stale += [f"{a}/{p}" for a, p in links.ipv4_addresses(conf.bridge, 6)
                      if not a.startswith("fe80:")]
        if stale:
            links.batch([f"addr del {cidr} dev {conf.bridge}" for cidr in stale],
                        what=f"remove the addresses of a dropped family from {conf.bridge}")
    firewall.drop_families(conf)
    if reclaim:
        bridge_network.claim_network(conf)


def dropped_dns_addresses(previous: dict[str, Any], conf: NetConf) -> list[str]:
    """The earlier install's DNS addresses (IPv4 and IPv6) this config no longer has."""
    return [address for address in (previous.get("dns_address"), previous.get("dns_address6"))
            if isinstance(address, str) and address and address not in conf.dns_addresses()]


def remove_dns_address(address: str, previous: dict[str, Any]) -> bool:
    """Take a dropped DNS address off the device the earlier install (or its service)
    put it on: its recorded device or its DNS interface (lo only where the earlier install
    fell back to lo: no dummy interfaces); an address someone else put elsewhere stays."""
    from ..dns.address import remove_address
    from ..run import run

    ours = {d for d in (previous.get("dns_address_device"), previous.get("dns_interface"))
            if isinstance(d, str) and d}
    listing = run(["ip", "-o", "addr", "show", "to", address], timeout=10.0)
    devices = {words[1] for words in (line.split() for line in
                                      listing.stdout.decode(errors="replace").splitlines())
               if len(words) > 1}
    removed = False
    for device in sorted(devices & ours):
        remove_address(address, device)
        removed = True
    return removed
