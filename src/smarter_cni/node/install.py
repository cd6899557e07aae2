"""`smarter-cni install`: put everything in place on a node.

What it does, in order (each step idempotent, so a second run is an in-place
upgrade that leaves running pods alone):

1. the plugin launcher into the CNI bin dir as `smarter-cni` and `c2d`, and a
   Python `loopback` when the dir has none;
2. the network config (`10-smarter-cni.conflist`), written atomically;
3. the network: the bridge with its gateway and NAT rules, or the Docker
   network with the DNS address reserved;
4. the record of what was installed (record.py), before anything that can
   fail half-way, so uninstall can always undo it;
5. the node DNS service (service.py) on its address (dns/address.py);
6. the self-test.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .. import __version__, conflist, launcher, loopback, paths
from ..cni.errors import CNIError
from ..conflist import CONFLIST_NAME, K3S_FLANNEL_CONF_DIR, netconf_of, plugin_config
from ..dns.address import DEFAULT_INTERFACE, AddressSetupError, ensure_address
from ..netconf import NetConf, docker_socket_from_env
from ..run import find_program
from . import families, service
from .console import CLIError, Output
from .record import (
    LOOPBACK_MARKER,
    PLUGIN_MARKER,
    find_template,
    load_record,
    missing_dirs,
    mkdir,
    own_file,
    save_record,
    write_file,
)

# k3s with --flannel-backend=none writes no CNI dirs into its containerd config
# and passes none to cri-dockerd, so both fall back to the CNI defaults.
K3S_BIN_DIR = paths.DEFAULT_CNI_BIN_DIR
K3S_CONF_DIR = paths.DEFAULT_CNI_CONF_DIR


@dataclass
class Options:
    mode: str = "bridge"
    subnet: str | None = None
    gateway: str | None = None
    dns_ip: str | None = None
    subnet6: str | None = None   # dual-stack (issue 13); ipv6: with the default prefix
    ipv6: bool = False
    ipv6_only: bool = False       # no IPv4: "subnet": "" with subnet6 and dnsAddress6
    dns_ip6: str | None = None
    bridge: str | None = None
    network: str | None = None
    domain: str | None = None
    bin_dir: str = paths.DEFAULT_CNI_BIN_DIR
    conf_dir: str = paths.DEFAULT_CNI_CONF_DIR
    k3s: bool = False
    selftest: bool = True
    dns_service: bool = True
    plugin_python: str | None = None
    plugin_lib: str | None = None
    dns_interface: str = DEFAULT_INTERFACE
    service: str = "auto"
    kubeconfig: str | None = None
    pod_cidr_from_node: bool = False
    node_name: str | None = None
    containerd_template: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> Options:
        bin_dir = args.cni_bin_dir or (K3S_BIN_DIR if args.k3s else paths.DEFAULT_CNI_BIN_DIR)
        conf_dir = args.cni_conf_dir or (K3S_CONF_DIR if args.k3s else paths.DEFAULT_CNI_CONF_DIR)
        return cls(mode=args.mode, subnet=args.subnet, gateway=args.gateway, dns_ip=args.dns_ip,
                   subnet6=getattr(args, "subnet6", None), ipv6=getattr(args, "ipv6", False),
                   ipv6_only=getattr(args, "ipv6_only", False),
                   dns_ip6=getattr(args, "dns_ip6", None),
                   bridge=args.bridge, network=args.network, domain=args.domain,
                   bin_dir=os.path.abspath(bin_dir), conf_dir=os.path.abspath(conf_dir),
                   k3s=args.k3s, selftest=not args.no_selftest,
                   dns_service=not args.no_dns_service,
                   plugin_python=getattr(args, "plugin_python", None),
                   plugin_lib=os.path.abspath(args.plugin_lib) if getattr(args, "plugin_lib", None)
                   else None,
                   dns_interface=getattr(args, "dns_interface", None) or DEFAULT_INTERFACE,
                   service=getattr(args, "service", None) or "auto",
                   **kube_options(args))


def kube_options(args: Any) -> dict[str, Any]:
    """--kubeconfig, --pod-cidr-from-node, --node-name (node/kube.py checks and uses them)."""
    from .kube import options_from_args

    return options_from_args(args)


def check_ipv6_only(opts: Options) -> None:
    """--ipv6-only with an IPv4 setting is a contradiction: refused before anything changes."""
    if not opts.ipv6_only:
        return
    ipv4_options = [name for name, given in (
        ("--subnet", opts.subnet), ("--gateway", opts.gateway), ("--dns-ip", opts.dns_ip),
        ("--pod-cidr-from-node", opts.pod_cidr_from_node),
        ("--containerd-template", opts.containerd_template)) if given]
    if opts.mode != "bridge":
        raise CLIError("--ipv6-only is for bridge mode: in docker mode Docker's IPAM hands "
                       "out the addresses (create the Docker network with --ipv6 yourself)",
                       "drop --ipv6-only, or install with --mode bridge")
    if ipv4_options:
        raise CLIError(f"--ipv6-only gives pods no IPv4, but {' and '.join(ipv4_options)} "
                       "set IPv4 (or the node's IPv4 pod range)",
                       "drop " + " and ".join(ipv4_options) + " (give the IPv6 prefix with "
                       "--subnet6 PREFIX and the DNS address with --dns-ip6 IP), or drop "
                       "--ipv6-only for a dual-stack node")


def render_conflist(opts: Options) -> dict[str, Any]:
    """The shipped template for the mode with the operator's options filled in."""
    try:
        return conflist.render(opts, find_template(conflist.template_name(opts.mode)))
    except conflist.ConfigError as err:
        raise CLIError(err.message, err.fix) from None


def missing_prerequisites(mode: str) -> list[str]:
    """Each missing program with the package that provides it."""
    missing = []
    if not find_program("ip"):
        missing.append("`ip` (apt-get install iproute2)")
    if not find_program("nsenter"):
        missing.append("`nsenter` (apt-get install util-linux)")
    if mode == "bridge" and not (find_program("iptables") or find_program("nft")):
        missing.append("`iptables` or `nft` (apt-get install iptables)")
    if mode == "docker":
        socket_path = docker_socket_from_env()
        if not os.path.exists(socket_path):
            missing.append(f"Docker (no daemon socket at {socket_path}; apt-get install docker.io "
                           "and start it)")
    return missing


def plugin_python(opts: Options) -> tuple[str, str]:
    """(python, dir holding the smarter_cni package) that the launchers will use.

    By default this installation's own. A DaemonSet installs from inside a
    container whose paths the node's runtime cannot see: it names the node's
    python (--plugin-python) and a host dir to copy the package to (--plugin-lib).
    """
    python = opts.plugin_python or sys.executable
    if opts.plugin_python and not opts.plugin_lib and not os.path.isfile(python):
        raise CLIError(f"--plugin-python {python} does not exist", "give the node's python3 path")
    if opts.plugin_lib:
        copy_package(opts.plugin_lib)
        return python, opts.plugin_lib
    return python, launcher.package_root()


def copy_package(lib_dir: str) -> None:
    """Copy the smarter_cni package into lib_dir, replacing an older copy in one rename."""
    mkdir(lib_dir)
    source = os.path.join(launcher.package_root(), "smarter_cni")
    final = os.path.join(lib_dir, "smarter_cni")
    staging = os.path.join(lib_dir, f".smarter_cni.{os.getpid()}.new")
    old = os.path.join(lib_dir, f".smarter_cni.{os.getpid()}.old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if os.path.isdir(final):
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def install(opts: Options, out: Output) -> int:
    check_ipv6_only(opts)  # before anything is looked at or changed
    out.say(f"smarter-cni {__version__}: installing in {opts.mode} mode"
            + (", IPv6 only" if opts.ipv6_only else ""))
    missing = missing_prerequisites(opts.mode)
    if missing:
        raise CLIError("missing prerequisite(s): " + "; ".join(missing),
                       "install them (install.sh does this with apt-get) and run install again")
    if opts.pod_cidr_from_node:
        from .kube import subnet_from_node

        with out.step(f"Reading the pod CIDR of node {opts.node_name} from the API server") \
                as step:
            opts.subnet = subnet_from_node(opts)
            step.detail = opts.subnet
    conflist = render_conflist(opts)
    conf = netconf_of(conflist)
    _check_interface_name(opts.dns_interface)
    template_path = containerd_template_path(opts)
    # containerd renders its conf_template only while its conf dir holds no CNI config, so
    # with a template our conflist (for the DNS service, status, selftest) lives beside it
    config_dir = os.path.dirname(template_path) if template_path else opts.conf_dir
    conf_path = os.path.join(config_dir, CONFLIST_NAME)
    previous = load_record()
    earlier = families.previous_conf(previous)
    families.check_family_change(earlier, conf)  # before anything changes
    created = [d for d in previous.get("created_dirs", []) if isinstance(d, str)]
    for directory in (opts.bin_dir, opts.conf_dir, opts.plugin_lib):
        created += missing_dirs(directory) if directory else []
    python, root = plugin_python(opts)
    # the address install puts on the node and waits for: IPv4, or on an IPv6-only node the
    # IPv6 one (the service adds a dual-stack node's IPv6 address itself)
    dns_address = conf.dns_addresses()[0]
    summary: dict[str, Any] = {"version": __version__, "mode": opts.mode,
                               "bin_dir": opts.bin_dir, "conf_dir": opts.conf_dir,
                               "config": conf_path, "network": conf.name,
                               "dns_address": dns_address, "subnet": conf.cidr()}
    if conf.subnet6 is not None:
        summary.update(subnet6=conf.cidr6(), dns_address6=conf.dns_address6)

    with out.step(f"Installing the plugin into {opts.bin_dir}") as step:
        mkdir(opts.bin_dir)
        for name in ("smarter-cni", "c2d"):
            dest = os.path.join(opts.bin_dir, name)
            _refuse_foreign(dest, PLUGIN_MARKER)
            launcher.write(dest, python, root)
        step.detail = "smarter-cni, c2d"
        loop_dest = os.path.join(opts.bin_dir, "loopback")
        if not os.path.exists(loop_dest) or own_file(loop_dest, LOOPBACK_MARKER):
            loopback.write_launcher(loop_dest, python, root)
            summary["loopback"] = "installed (Python)"
            step.detail += ", loopback"
        else:
            summary["loopback"] = "already present"

    with out.step(f"Writing {conf_path}") as step:
        mkdir(config_dir)
        write_file(conf_path, json.dumps(conflist, indent=2) + "\n", 0o644)
        step.detail = f"network {conf.name}, " + ", ".join(
            f"{what} {value}" for what, value in (
                ("subnet", conf.cidr()), ("subnet6", conf.cidr6()),
                ("DNS", " ".join(conf.dns_addresses()))) if value)
    if template_path:
        write_containerd_template(opts, template_path, conflist, out)
    for warning in _config_warnings(opts.conf_dir):
        out.note(f"  warning: {warning}")

    for warning in _router_advertisement_warnings(conf):
        out.note(f"  warning: {warning}")
    if conf.mode == "bridge":
        gateways = ", ".join(f"{gateway}/{prefix}" for gateway, prefix in (
            (conf.gateway_text(), conf.prefix), (conf.gateway6_text(), conf.prefix6)) if gateway)
        with out.step(f"Creating bridge {conf.bridge} ({gateways}, NAT)"):
            from ..dataplane import bridge_network

            paths.ensure_state_dir()
            bridge_network.setup_network(conf)
            bridge_network.claim_network(conf)  # the reconciler keeps it whole from now on
            families.drop_unused(conf, earlier)  # fewer families: the dropped one's go
    else:
        with out.step(f"Creating Docker network {conf.docker_network} ({conf.cidr()})") as step:
            from ..dataplane import docker_mode

            network_id = docker_mode.ensure_network(conf, on_change=out.note)
            paths.ensure_state_dir()
            docker_mode.claim_network(conf)  # the reconciler recreates it if it goes
            step.detail = f"id {network_id[:12]}" if network_id else ""

    record = {"version": __version__, "options": asdict(opts), "config": conf_path,
              "bin_dir": opts.bin_dir, "conf_dir": config_dir, "cni_conf_dir": opts.conf_dir,
              "mode": conf.mode,
              "network": conf.name, "bridge": conf.bridge, "docker_network": conf.docker_network,
              "dns_address": dns_address, "dns_address6": conf.dns_address6,
              "domain": conf.domain,
              "dns_interface": opts.dns_interface,
              "state_dir": paths.state_dir(), "plugin_config": plugin_config(conflist),
              "loopback_installed": summary["loopback"].startswith("installed"),
              "dns_service": "none", "installed_at": time.time(),
              "created_dirs": sorted(set(created))}
    if template_path:
        record["containerd_template"] = template_path
    save_record(record)  # before the DNS service, so a failure there can still be uninstalled

    if opts.dns_service:
        with out.step(f"Starting the node DNS service on {' '.join(conf.dns_addresses())}") \
                as step:
            kind = service.service_kind(opts.service)
            device = ensure_dns_address(dns_address, opts.dns_interface)
            if device:
                record["dns_address_device"] = device
            elif previous.get("dns_address") == dns_address:
                record["dns_address_device"] = previous.get("dns_address_device", "")
            record["dns_service"] = kind
            if kind == "systemd":
                record["unit_path"] = service.unit_path()
            save_record(record)
            service.start_dns_service(kind, conf_path, conf, opts.dns_interface,
                                      opts.kubeconfig or "")
            step.detail = kind
            if conf.mode == "bridge" and families.changed(earlier, conf):
                # the earlier service's reconciler may have put the dropped family's pieces
                # back (and its marker) before it stopped: gone again, marker this config's
                families.drop_unused(conf, earlier, reclaim=True)
            dropped = [address for address in families.dropped_dns_addresses(previous, conf)
                       if families.remove_dns_address(address, previous)]
            if dropped:
                step.detail += f", {', '.join(dropped)} removed (the earlier install's)"
            if device == "lo" and opts.dns_interface != "lo":
                step.detail += ", DNS address on lo (this kernel has no dummy interfaces)"
        summary["dns_service"] = kind
    else:
        summary["dns_service"] = "not managed (--no-dns-service)"

    code = 0
    if opts.selftest:
        from .selftest import selftest

        out.say("Self-test:")
        code = selftest(out, conf_dir=config_dir, bin_dir=opts.bin_dir, nested=True)
        summary["selftest"] = "passed" if code == 0 else "FAILED"
    _print_next_steps(out, conf, opts)
    if code == 0:
        out.say("smarter-cni is installed.")
    else:
        out.say("smarter-cni is installed, but the self-test FAILED: see above, "
                "and `smarter-cni status`.")
    out.emit(summary)
    return code


def containerd_template_path(opts: Options) -> str:
    """Where --containerd-template writes the template ('' without the option)."""
    if not opts.containerd_template:
        return ""
    if opts.mode != "bridge":
        raise CLIError("--containerd-template is for bridge mode (containerd); docker mode "
                       "takes its addresses from the Docker network",
                       "drop --containerd-template, or install with --mode bridge")
    from . import containerd

    path = opts.containerd_template
    if path == "auto":
        path = containerd.default_path(opts.conf_dir)
    if os.path.dirname(path) == opts.conf_dir.rstrip("/"):
        raise CLIError(f"the template {path} must not be in the CNI conf dir {opts.conf_dir}",
                       "give a path outside it (the default is next to it)")
    if os.path.exists(path) and not containerd.is_ours(path):
        raise CLIError(f"{path} exists and was not written by smarter-cni",
                       "move it away or give another --containerd-template PATH")
    return path


def write_containerd_template(opts: Options, path: str, conflist: dict[str, Any],
                              out: Output) -> None:
    """The conf_template file (node/containerd.py), and the containerd setting to print."""
    from . import containerd

    with out.step(f"Writing the containerd CNI template {path}") as step:
        mkdir(os.path.dirname(path))
        mkdir(opts.conf_dir)  # where containerd writes its rendering
        write_file(path, containerd.template_text(conflist), 0o644)
        stale = os.path.join(opts.conf_dir, CONFLIST_NAME)
        if containerd.is_plain_ours(stale):  # an earlier install's: it would stop the template
            os.unlink(stale)
            step.detail = f"removed {stale}"
    others = containerd.other_configs(opts.conf_dir)
    if others:
        out.note(f"  warning: {', '.join(others)} in {opts.conf_dir}: containerd renders the "
                 "template only while that dir holds no CNI config; move them away")
    for line in containerd.config_lines(path, opts.k3s):
        out.say(line)


def _check_interface_name(name: str) -> None:
    from ..cni.request import validate_ifname

    try:
        validate_ifname(name)
        valid = bool(name)
    except CNIError:
        valid = False
    if not valid:
        raise CLIError(f"--dns-interface {name[:40]!r} is not a valid interface name",
                       "give 1-15 characters without '/', ':' or spaces")


def _refuse_foreign(dest: str, marker: str) -> None:
    if os.path.exists(dest) and not own_file(dest, marker):
        raise CLIError(f"{dest} exists and was not written by smarter-cni",
                       f"move it away (e.g. mv {dest} {dest}.orig) and run install again")


def _config_warnings(conf_dir: str) -> list[str]:
    """Runtimes use the first config by file name: say so if another one wins."""
    warnings = []
    try:
        names = sorted(n for n in os.listdir(conf_dir)
                       if n.endswith((".conf", ".conflist", ".json")) and not n.startswith("."))
    except OSError:
        return warnings
    earlier = [n for n in names if n < CONFLIST_NAME]
    if earlier:
        warnings.append(f"{', '.join(earlier)} in {conf_dir} sort before {CONFLIST_NAME}, so the "
                        "runtime uses them instead; move them away unless that is intended")
    if os.path.isdir(K3S_FLANNEL_CONF_DIR) and os.listdir(K3S_FLANNEL_CONF_DIR):
        warnings.append(f"k3s' own CNI config exists in {K3S_FLANNEL_CONF_DIR}: k3s still runs "
                        "flannel; restart it with --flannel-backend=none (see docs/k3s.md)")
    return warnings


def cluster_dns(conf: NetConf) -> str:
    """kubelet's --cluster-dns: the IPv4 DNS address, and the IPv6 one when there is one."""
    return ",".join(a for a in (conf.dns_address, conf.dns_address6) if a)


# an IPv6-only k3s needs IPv6 cluster and service CIDRs (k3s' docs use a /56 and a /112)
K3S_SERVICE_CIDR6 = "fd00:10:43::/112"


def k3s_cluster_cidr6(conf: NetConf) -> str:
    """The /56 holding subnet6 (subnet6 itself when it is wider): k3s' --cluster-cidr."""
    from .. import ipv6

    prefix = min(conf.prefix6, 56)
    return f"{ipv6.to_text(conf.subnet6 & ipv6.mask(prefix))}/{prefix}"


def k3s_command_lines(conf: NetConf, keep_kube_proxy: bool = False) -> list[str]:
    """k3s server and agent command lines for the node-local default, or for the variant
    that keeps kube-proxy (pods reach the API server and ClusterIP services whose endpoints
    are on the same node or on node addresses; docs/k3s.md)."""
    flags = "--flannel-backend=none --disable-network-policy"
    if not keep_kube_proxy:
        flags += " --disable-kube-proxy"
    flags += " --disable=coredns,servicelb,traefik,metrics-server"
    if not conf.ipv4:  # k3s' single-stack IPv6 form; pods still take subnet6 (node-local)
        flags += f" --cluster-cidr={k3s_cluster_cidr6(conf)} --service-cidr={K3S_SERVICE_CIDR6}"
    docker = " --docker" if conf.mode == "docker" else ""
    return [
        f"curl -sfL https://get.k3s.io | sh -s - server {flags} "
        f"--cluster-dns={cluster_dns(conf)} --cluster-domain={conf.domain}{docker}",
        "curl -sfL https://get.k3s.io | K3S_URL=https://SERVER:6443 K3S_TOKEN=TOKEN "
        f"sh -s - agent{docker}",
    ]


def _print_next_steps(out: Output, conf: NetConf, opts: Options) -> None:
    out.say(f"Point kubelet at the node DNS: --cluster-dns={cluster_dns(conf)} "
            f"--cluster-domain={conf.domain}")
    if not conf.ipv4:
        out.say("IPv6 only: pods get no IPv4 address; kubelet (k3s --node-ip) needs the "
                "node's own IPv6 address")
    if opts.k3s:
        out.say("k3s, node-local (default: no kube-proxy, pods use names), server (first "
                "node) and agents (the others):")
        for line in k3s_command_lines(conf):
            out.say(f"  {line}")
        out.say("k3s keeping kube-proxy (pods reach the API server and ClusterIP services "
                "with endpoints on their node; not pods on other nodes):")
        for line in k3s_command_lines(conf, keep_kube_proxy=True):
            out.say(f"  {line}")
        spread = ("--pod-cidr-from-node or --containerd-template" if conf.ipv4 else
                  "its own --subnet6 (IPv6 only: pods take subnet6, not the node's podCIDR)")
        out.say("  (agents take --cluster-dns from the server; install every node with "
                f"{spread} so pod addresses differ between nodes, and give the DNS service "
                "--kubeconfig for Service names; see docs/k3s.md)")


def _router_advertisement_warnings(conf: NetConf) -> list[str]:
    """IPv6 forwarding (which a subnet6 turns on) makes Linux ignore router advertisements
    on interfaces with accept_ra=1: a node whose IPv6 default route came from one would
    lose it when the route expires. Names each such interface with the fix."""
    if conf.subnet6 is None:
        return []
    from ..run import run

    done = run(["ip", "-j", "-6", "route", "show", "default"], timeout=10.0)
    try:
        routes = json.loads(done.stdout or b"[]") if done.returncode == 0 else []
    except ValueError:
        return []
    warnings = []
    for device in sorted({r.get("dev", "") for r in routes if r.get("protocol") == "ra"}):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{device}/accept_ra") as handle:
                accept_ra = handle.read().strip()
        except OSError:
            continue
        if accept_ra == "1":
            warnings.append(f"the IPv6 default route via {device} comes from router "
                            "advertisements, which Linux ignores once IPv6 forwarding is on "
                            f"(accept_ra=1): run `sysctl -w net.ipv6.conf.{device}.accept_ra=2` "
                            "and make it permanent in /etc/sysctl.d/")
    return warnings


def ensure_dns_address(address: str, interface: str = DEFAULT_INTERFACE) -> str:
    """Put the DNS address on the node (dns/address); the device it went on, '' if present."""
    # dns/address logs a fall-back to lo for the service's log; here the step says it
    logging.getLogger("smarter-cni.dns").addHandler(logging.NullHandler())
    try:
        done = ensure_address(address, interface)
    except AddressSetupError as err:
        raise CLIError(f"cannot add the DNS address {address}: {err}",
                       "choose another --dns-ip") from None
    return "" if done == "present" else done.rsplit(" ", 1)[-1]
