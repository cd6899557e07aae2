"""The network config file: shipped defaults, finding and reading an installed one.

One conflist holds one smarter-cni (or c2d) plugin entry; what a runtime
hands the plugin is that entry plus the list's `name` and `cniVersion`.
install renders it, status and selftest find and read it, and the DNS
service can read its plugin config with `read_plugin_config`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import ipv4
from .cni.errors import CNIError
from .netconf import (
    DEFAULT_BRIDGE,
    DEFAULT_DNS6,
    DEFAULT_DOCKER_NETWORK,
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_DOMAIN,
    DEFAULT_NETWORK_NAMES,
    DEFAULT_SUBNET6,
    DEFAULTS,
    PLUGIN_TYPES,
    NetConf,
    docker_socket_from_env,
    parse_netconf,
)
from .paths import CONFLIST_NAME, DEFAULT_CNI_CONF_DIR

DOCKER_TEMPLATE = "10-smarter-cni-docker.conflist"
CNI_VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# Where k3s keeps its own (flannel) CNI config; a config there means flannel is on.
K3S_FLANNEL_CONF_DIR = "/var/lib/rancher/k3s/agent/etc/cni/net.d"


class ConfigError(Exception):
    """A conflist that cannot be used: what is wrong and what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def template_name(mode: str) -> str:
    return CONFLIST_NAME if mode == "bridge" else DOCKER_TEMPLATE


def default_conflist(mode: str) -> dict[str, Any]:
    """The shipped defaults (deploy/10-smarter-cni*.conflist hold the same)."""
    subnet, prefix = ipv4.parse_cidr(DEFAULTS[mode]["subnet"])
    plugin: dict[str, Any] = {"type": "smarter-cni", "mode": mode}
    if mode == "bridge":
        plugin["bridge"] = DEFAULT_BRIDGE
    else:
        plugin["network"] = DEFAULT_DOCKER_NETWORK
    plugin.update({"subnet": DEFAULTS[mode]["subnet"], "gateway": ipv4.to_text(subnet + 1),
                   "dnsAddress": DEFAULTS[mode]["dnsAddress"], "clusterDomain": DEFAULT_DOMAIN})
    # containerd/CRI-O pass pod annotations (smarter-cni.io/hostname) only when asked to
    plugin["capabilities"] = {"io.kubernetes.cri.pod-annotations": True}
    if mode == "bridge":
        # kubelet/cri-dockerd pass the node's podCIDR as runtimeConfig.ipRanges (ipranges.py);
        # in docker mode Docker's IPAM hands out the addresses, so it is not declared there
        plugin["capabilities"]["ipRanges"] = True
    return {"cniVersion": "1.0.0", "cniVersions": list(CNI_VERSIONS),
            "name": DEFAULT_NETWORK_NAMES[mode], "plugins": [plugin]}


def our_plugin(conflist: dict[str, Any]) -> dict[str, Any]:
    """The smarter-cni entry of a conflist (or a single-plugin .conf)."""
    entries = conflist.get("plugins") if "plugins" in conflist else [conflist]
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("type") in PLUGIN_TYPES:
            return entry
    raise ConfigError("the network config has no smarter-cni plugin entry",
                      "run `smarter-cni install` again to rewrite it")


def plugin_config(conflist: dict[str, Any]) -> dict[str, Any]:
    """What a runtime hands the plugin: its entry plus the list's name and cniVersion."""
    config = dict(our_plugin(conflist))
    config["name"] = conflist.get("name", config.get("name", ""))
    config["cniVersion"] = conflist.get("cniVersion", config.get("cniVersion", "1.0.0"))
    return config


def netconf_of(conflist: dict[str, Any]) -> NetConf:
    try:
        return parse_netconf(plugin_config(conflist))
    except CNIError as err:
        raise ConfigError(err.msg, "fix the option named above and run install again") from None


def read(path: str) -> dict[str, Any]:
    """The conflist at `path`; ConfigError when it is unreadable or not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable: {err}",
                          "run `sudo smarter-cni install` to rewrite it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a CNI network config",
                          "run `sudo smarter-cni install` to rewrite it")
    return data


def read_plugin_config(path: str) -> dict[str, Any]:
    """The plugin config a runtime would hand the plugin, from the conflist at `path`."""
    return plugin_config(read(path))


def find(conf_dirs: list[str | None], explicit: str | None = None
         ) -> tuple[str | None, dict[str, Any] | None]:
    """(path, conflist or None if unreadable) of the installed config.

    An explicit dir is the only place looked at; otherwise `conf_dirs` in
    order (the install record's first), then the CNI default and k3s' dir.
    """
    candidates = [explicit] if explicit else [*conf_dirs, DEFAULT_CNI_CONF_DIR,
                                              K3S_FLANNEL_CONF_DIR]
    for directory in candidates:
        if not directory:
            continue
        path = os.path.join(directory, CONFLIST_NAME)
        if os.path.isfile(path):
            try:
                return path, read(path)
            except ConfigError:
                return path, None
    return None, None


def render(opts: Any, template: str | None = None) -> dict[str, Any]:
    """The template (else the defaults) for `opts.mode` with the operator's options filled in.

    `opts` carries mode, subnet, gateway, dns_ip, bridge, network and domain
    (node.install.Options); ConfigError names a bad one.
    """
    conflist = default_conflist(opts.mode)
    if template:
        try:
            conflist = read(template)
        except ConfigError as err:
            raise ConfigError(f"template {err.message}", "restore it from the smarter-cni source"
                              ) from None
    plugin = our_plugin(conflist)
    plugin["mode"] = opts.mode
    if opts.subnet:
        plugin["subnet"] = opts.subnet
        if not opts.gateway:  # the template's gateway belongs to the template's subnet
            plugin.pop("gateway", None)
    if opts.dns_ip:
        plugin["dnsAddress"] = opts.dns_ip
    elif opts.subnet and opts.mode == "docker":
        plugin.pop("dnsAddress", None)
    if opts.mode == "docker":
        socket_path = docker_socket_from_env()
        if socket_path != DEFAULT_DOCKER_SOCKET:
            plugin["dockerSocket"] = socket_path  # runtimes do not pass DOCKER_HOST on
    for key, value in (("gateway", opts.gateway), ("bridge", opts.bridge),
                       ("clusterDomain", opts.domain)):
        if value:
            plugin[key] = value
    if opts.network:  # the CNI network's name; in docker mode also the Docker network's
        conflist["name"] = opts.network
        if opts.mode == "docker":
            plugin["network"] = opts.network
    ipv6_only = getattr(opts, "ipv6_only", False)
    if ipv6_only:  # no IPv4 at all: no subnet, gateway or IPv4 DNS address (node/install checks)
        plugin["subnet"] = ""
        for key in ("gateway", "dnsAddress", "rangeStart", "rangeEnd"):
            plugin.pop(key, None)
        plugin.get("capabilities", {}).pop("ipRanges", None)  # the runtime's are IPv4 here
    subnet6 = getattr(opts, "subnet6", None) or \
        (DEFAULT_SUBNET6 if getattr(opts, "ipv6", False) or ipv6_only else None)
    if subnet6:  # dual-stack (issue 13); netconf refuses it in docker mode with the fix
        plugin["subnet6"] = subnet6
    dns_ip6 = getattr(opts, "dns_ip6", None) or (DEFAULT_DNS6 if subnet6 else None)
    if dns_ip6:
        plugin["dnsAddress6"] = dns_ip6
    conf = netconf_of(conflist)
    if opts.mode == "docker" and opts.subnet and not opts.dns_ip:
        # the docker default puts the DNS address at .2 of the subnet, as the original did
        plugin["dnsAddress"] = ipv4.to_text(conf.subnet + 2)
        conf = netconf_of(conflist)
    if not opts.dns_ip and "dnsAddress" not in plugin and conf.dns_address:
        plugin["dnsAddress"] = conf.dns_address
    return conflist
