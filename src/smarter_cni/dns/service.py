"""`smarter-cni dns`: settings, address set-up, signals, then the server loop."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys

from ..cni.errors import CNIError
from ..netconf import PLUGIN_TYPES, NetConf, parse_netconf
from ..paths import DEFAULT_CNI_CONF_DIR, DEFAULT_STATE_DIR
from . import acl as acl_module
from .address import (
    DEFAULT_INTERFACE,
    AddressSetupError,
    ensure_address,
    is_local,
    remove_address,
)
from .forwarder import DEFAULT_TIMEOUT, parse_upstream, resolv_conf_upstreams

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("smarter-cni.dns")

RESOLV_CONF = "/etc/resolv.conf"
# When the host's own resolv.conf points at us (so the host resolves pod
# names), the real upstreams are usually in systemd-resolved's copy.
FALLBACK_RESOLV_CONFS = ("/run/systemd/resolve/resolv.conf",)


class SettingsError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smarter-cni dns",
        description="Node DNS: answers pod names from the smarter-cni registry, forwards "
                    "everything else to the node's resolvers. Runs in the foreground.")
    parser.add_argument("--config", metavar="FILE",
                        help="a smarter-cni .conflist/.conf (default: the first one in "
                             "--cni-conf-dir)")
    parser.add_argument("--cni-conf-dir", default=DEFAULT_CNI_CONF_DIR, metavar="DIR")
    parser.add_argument("--listen", metavar="ADDR",
                        help="IPv4 address to serve on (default: dnsAddress from the config)")
    parser.add_argument("--listen6", metavar="ADDR",
                        help="also serve on this IPv6 address (default: dnsAddress6 from the "
                             "config, if any)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the plugin keeps attachments.json (default: "
                             "$SMARTER_CNI_STATE_DIR or /run/smarter-cni)")
    parser.add_argument("--upstream", action="append", default=[], metavar="ADDR[:PORT]",
                        help="upstream resolver (repeatable; default: nameservers in "
                             "--resolv-conf)")
    parser.add_argument("--resolv-conf", default=RESOLV_CONF, metavar="FILE")
    parser.add_argument("--upstream-timeout", type=float, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS")
    parser.add_argument("--interface", default=DEFAULT_INTERFACE,
                        help="dummy interface that carries the address (default %(default)s)")
    parser.add_argument("--no-address-setup", action="store_true",
                        help="do not add the address to the node; it must already exist")
    parser.add_argument("--allow", action="append", default=[], metavar="CIDR",
                        help="also answer clients in this IPv4 range (repeatable)")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="answer Service names from one list+watch of Services "
                             "(dns/services.py)")
    parser.add_argument("--service-cidr", default="10.43.0.0/16", metavar="CIDR",
                        help="its first address answers kubernetes.default until the "
                             "Services are listed (k3s' default 10.43.0.0/16)")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def find_netconf(conf_dir: str) -> tuple[str, dict[str, Any]]:
    """The first smarter-cni (or c2d) config in the CNI conf dir, in file-name order."""
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError as err:
        raise SettingsError(f"cannot read CNI config dir {conf_dir}: {err.strerror}") from None
    for name in names:
        if name.endswith((".conflist", ".conf", ".json")):
            path = os.path.join(conf_dir, name)
            try:
                return path, read_netconf(path)
            except SettingsError:
                continue
    raise SettingsError(f"no smarter-cni network config in {conf_dir}; install one "
                        "(smarter-cni install) or pass --config FILE")


def read_netconf(path: str) -> dict[str, Any]:
    """The smarter-cni plugin's config from a .conflist or .conf, with the list's name."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise SettingsError(f"cannot read network config {path}: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} is not a CNI network config")
    plugins = data.get("plugins")
    candidates = plugins if isinstance(plugins, list) else [data]
    for plugin in candidates:
        if isinstance(plugin, dict) and plugin.get("type") in PLUGIN_TYPES:
            config = dict(plugin)
            config.setdefault("name", data.get("name", ""))
            config.setdefault("cniVersion", data.get("cniVersion", ""))
            return config
    raise SettingsError(f"{path} has no plugin of type smarter-cni or c2d")


def load_netconf(args: argparse.Namespace) -> tuple[str, NetConf]:
    path, config = (args.config, read_netconf(args.config)) if args.config \
        else find_netconf(args.cni_conf_dir)
    if not isinstance(config.get("name"), str) or not config["name"]:
        raise SettingsError(f"{path}: the network config has no name")
    try:
        return path, parse_netconf(config)
    except CNIError as err:
        raise SettingsError(f"{path}: {err.msg}") from None


def choose_upstreams(args: argparse.Namespace, listen: str, port: int
                     ) -> list[tuple[str, int]]:
    own = {(listen, port), (listen, 53)}
    if args.upstream:
        upstreams = []
        for text in args.upstream:
            try:
                upstream = parse_upstream(text)
            except (OSError, ValueError):
                raise SettingsError(f"--upstream {text!r} is not ADDR or ADDR:PORT") from None
            if upstream in own:
                raise SettingsError(f"--upstream {text} is this service itself")
            upstreams.append(upstream)
        return upstreams
    upstreams = resolv_conf_upstreams(args.resolv_conf, own)
    if not upstreams and args.resolv_conf == RESOLV_CONF:
        for path in FALLBACK_RESOLV_CONFS:
            upstreams = resolv_conf_upstreams(path, own)
            if upstreams:
                break
    return upstreams


def raise_file_limit(wanted: int = 4096) -> None:
    """Room for a socket per query in flight upstream plus the TCP clients."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamps; a bare message stays readable there.
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(args)
    except SettingsError as err:
        log.error("%s", err)
        return 2
    except AddressSetupError as err:
        log.error("cannot set up the DNS address: %s", err)
        return 1
    except KeyboardInterrupt:
        return 0


def run(args: argparse.Namespace) -> int:
    from .server import Server  # imported late: `--help` stays fast

    path, conf = load_netconf(args)
    listen = args.listen or conf.dns_address
    try:
        socket.inet_aton(listen)
    except OSError:
        raise SettingsError(f"--listen {listen!r} is not an IPv4 address") from None
    if not 0 < args.port < 65536:
        raise SettingsError(f"--port {args.port} is out of range")
    state_dir = args.state_dir or os.environ.get("SMARTER_CNI_STATE_DIR") or DEFAULT_STATE_DIR
    subnets = [(conf.net_subnet, (0xFFFFFFFF << (32 - conf.net_prefix)) & 0xFFFFFFFF)]
    for cidr in args.allow:
        try:
            subnets.append(acl_module.parse_cidr(cidr))
        except ValueError as err:
            raise SettingsError(f"--allow: {err}") from None
    upstreams = choose_upstreams(args, listen, args.port)
    if not upstreams:
        log.warning("no upstream resolvers (from %s or --upstream): names outside the "
                    "cluster get SERVFAIL", args.resolv_conf)
    if args.no_address_setup and not is_local(listen):
        raise SettingsError(f"{listen} is not an address of this node "
                            "(drop --no-address-setup to add it)")
    added_to = ""
    if not args.no_address_setup:
        done = ensure_address(listen, args.interface)
        if done != "present":
            log.info("address %s %s", listen, done)
            added_to = done.rsplit(" ", 1)[-1]
    raise_file_limit()
    if args.kubeconfig:
        from .services import start as start_services

        try:
            start_services(args.kubeconfig, conf.domain, args.service_cidr, state_dir)
        except (OSError, ValueError) as err:
            raise SettingsError(f"Service names: {err}") from None
    try:
        server = Server(listen, args.port, state_dir, conf.domain, conf.net_subnet, conf.net_prefix,
                        acl_module.Acl(subnets), upstreams, args.upstream_timeout,
                        None if args.upstream else args.resolv_conf)
    except OSError as err:
        raise SettingsError(f"cannot listen on {listen}:{args.port}: {err.strerror}") from None

    stop6 = None
    listen6 = args.listen6 or conf.dns_address6
    if listen6:  # IPv6 (issue 13): a second server, same names and access rule
        from . import listen6 as dns6

        def make_server6(address: str, acl6: Any) -> Any:
            return Server(address, args.port, state_dir, conf.domain, conf.net_subnet,
                          conf.net_prefix, acl6, upstreams, args.upstream_timeout,
                          None if args.upstream else args.resolv_conf)
        try:
            stop6 = dns6.start(listen6, args, conf, dns6.prefix6_acl(conf, subnets), make_server6)
        except (OSError, AddressSetupError) as err:
            server.close()
            raise SettingsError(f"cannot listen on [{listen6}]:{args.port}: {err}") from None
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    server.watch_fd(wake_r)

    def on_signal(signum: int, frame: Any) -> None:
        server.stop = True

    def on_usr1(signum: int, frame: Any) -> None:
        server.log_stats = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_usr1)
    from ..reconcile import start as start_reconciler  # keeps the network whole (issue 11)

    start_reconciler(conf, state_dir, listen, args.port,
                     None if args.no_address_setup else args.interface, server)
    log.info("serving %s mode network %s (%s) on %s:%d udp+tcp; domain %s; pods %s; "
             "registry %s; upstreams %s", conf.mode, conf.name, path, listen, args.port,
             conf.domain, conf.cidr(), state_dir,
             ", ".join(f"{h}:{p}" for h, p in upstreams) or "none")
    try:
        server.serve_forever()
    finally:
        if stop6 is not None:
            stop6()
        server.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        if added_to:
            # Gone with the service: clients fail fast instead of timing out, and
            # nothing is left on lo when there is no dummy interface to delete.
            remove_address(listen, added_to)
    log.info("stopped: %s", server.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
