"""`smarter-cni dns`: settings, address set-up, signals, then the server loop."""

from __future__ import annotations

import os
import signal
import socket
import sys

from ..cni import jsonfast
from ..cni.errors import CNIError
from ..netconf import PLUGIN_TYPES, NetConf, parse_netconf
from ..paths import DEFAULT_CNI_CONF_DIR, DEFAULT_STATE_DIR
from . import acl as acl_module
from .cache import DEFAULT_STALE_FOR
from .forwarder import DEFAULT_TIMEOUT, parse_upstream, resolv_conf_upstreams
from .log import DEBUG, INFO, log, route_std_logging
from .metrics import DEFAULT_PORT as DEFAULT_METRICS_PORT

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


RESOLV_CONF = "/etc/resolv.conf"
# When the host's own resolv.conf points at us (so the host resolves pod
# names), the real upstreams are usually in systemd-resolved's copy.
FALLBACK_RESOLV_CONFS = ("/run/systemd/resolve/resolv.conf",)


# dns.address (and the `logging` it brings, ~1.3 MB) is imported only when the
# address has to be set up: a restart that finds it in place never loads it.
DEFAULT_INTERFACE = "smarter-dns"  # = dns.address.DEFAULT_INTERFACE (checked by a test)


class SettingsError(Exception):
    pass


class AddressError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class Formatter(argparse.HelpFormatter):
        """argparse's own asks shutil for the terminal width, and shutil imports zlib,
        bz2 and lzma: ~0.7 MB that would stay resident for a help text."""

        def __init__(self, prog: str) -> None:
            try:
                width = int(os.environ.get("COLUMNS", "")) - 2
            except ValueError:
                width = 98
            super().__init__(prog, width=max(width, 40))

    parser = argparse.ArgumentParser(
        formatter_class=Formatter,
        prog="smarter-cni dns",
        description="Node DNS: answers pod names from the smarter-cni registry, forwards "
                    "everything else to the node's resolvers. Runs in the foreground.")
    parser.add_argument("--config", metavar="FILE",
                        help="a smarter-cni .conflist/.conf (default: the first one in "
                             "--cni-conf-dir)")
    parser.add_argument("--cni-conf-dir", default=DEFAULT_CNI_CONF_DIR, metavar="DIR")
    parser.add_argument("--listen", metavar="ADDR",
                        help="IPv4 address to serve on (default: dnsAddress from the config; "
                             "an IPv6-only config has none, and the service then serves on "
                             "the IPv6 address only)")
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
                        metavar="SECONDS",
                        help="one attempt at one upstream (default %(default)s); a client "
                             "gets SERVFAIL or a stale answer within 3 s in all")
    parser.add_argument("--serve-stale", type=float, default=DEFAULT_STALE_FOR,
                        metavar="SECONDS",
                        help="when no upstream answers, serve expired cached answers up to "
                             "this long after they expired (RFC 8767; default %(default)g, "
                             "0 = never)")
    parser.add_argument("--interface", default=DEFAULT_INTERFACE,
                        help="dummy interface that carries the address (default %(default)s)")
    parser.add_argument("--no-address-setup", action="store_true",
                        help="do not add the address to the node; it must already exist")
    parser.add_argument("--allow", action="append", default=[], metavar="CIDR",
                        help="also answer clients in this IPv4 range (repeatable)")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="answer Service names from one list+watch of Services "
                             "(dns/services.py) and headless Services' endpoints from one "
                             "of their EndpointSlices (dns/endpoints.py)")
    parser.add_argument("--in-cluster", action="store_true",
                        help="the same Service names and headless endpoints with the pod's "
                             "own ServiceAccount (token and CA from --service-account-dir; "
                             "the DaemonSet), instead of --kubeconfig")
    parser.add_argument("--api-server", metavar="URL",
                        help="with --in-cluster: the API server's real address (k3s server: "
                             "https://127.0.0.1:6443); default: the kubernetes Service from "
                             "KUBERNETES_SERVICE_HOST/PORT, which needs kube-proxy to route")
    parser.add_argument("--service-account-dir", metavar="DIR",
                        default="/var/run/secrets/kubernetes.io/serviceaccount",
                        help="with --in-cluster: where token, ca.crt and namespace are "
                             "(default %(default)s)")
    parser.add_argument("--endpoints-node", default="", metavar="NAME",
                        help="with --kubeconfig or --in-cluster: headless Services answer "
                             "only their endpoints on node NAME (default: every endpoint)")
    parser.add_argument("--service-cidr", default="10.43.0.0/16", metavar="CIDR",
                        help="its first address answers kubernetes.default until the "
                             "Services are listed (k3s' default 10.43.0.0/16)")
    parser.add_argument("--metrics", metavar="[ADDR:]PORT|off",
                        help="serve Prometheus /metrics, /healthz and /readyz here (default: "
                             f"the DNS address, port {DEFAULT_METRICS_PORT}); 'off' for none")
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
            data = jsonfast.loads(handle.read())
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


def metrics_address(text: str | None, listen: str) -> tuple[str, int] | None:
    """--metrics: None for 'off'; else (address, port), the DNS address by default.
    PORT, ADDR, ADDR:PORT, or for IPv6 [ADDR]:PORT (a bare IPv6 ADDR takes the default port)."""
    if text is None:
        return listen, DEFAULT_METRICS_PORT
    text = text.strip()
    if text.lower() in ("off", "none", "no", "0"):
        return None
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise SettingsError(f"--metrics {text!r} is not [ADDR]:PORT")
        port_text = rest[1:]
    elif text.count(":") > 1:
        address, port_text = text, ""
    else:
        address, sep, port_text = text.rpartition(":")
        if not sep:
            address, port_text = ("", text) if text.isdigit() else (text, "")
    address = address or listen
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        port = int(port_text) if port_text else DEFAULT_METRICS_PORT
    except (OSError, ValueError):
        raise SettingsError(f"--metrics {text!r} is not [ADDR:]PORT or off") from None
    if not 0 < port < 65536:
        raise SettingsError(f"--metrics port {port} is out of range")
    return address, port


def service_credentials(args: argparse.Namespace) -> tuple[Any, str]:
    """(kubeconfig path or in-cluster loader, source name) for the Kubernetes watches
    (Services, headless EndpointSlices); ("", "") for none. In-cluster is chosen explicitly,
    never guessed from files that happen to be there: Service names are an option, and a
    mounted token must not turn them on."""
    in_cluster = bool(getattr(args, "in_cluster", False))
    api_server = getattr(args, "api_server", None) or ""
    if in_cluster and args.kubeconfig:
        raise SettingsError("--in-cluster and --kubeconfig are two sources of credentials: "
                            "give one")
    if api_server and not in_cluster:
        raise SettingsError("--api-server goes with --in-cluster (a kubeconfig names its "
                            "own server)")
    if not in_cluster:
        return (args.kubeconfig or "", "kubeconfig" if args.kubeconfig else "")
    from .. import incluster

    try:
        server = incluster.server_url(api_server)
    except incluster.InClusterError as err:
        raise SettingsError(str(err)) from None
    directory = args.service_account_dir or incluster.SERVICE_ACCOUNT_DIR

    # token and CA problems are retried by the watches and logged (kubelet may still be
    # writing them; pod names must not wait): only the address is fixed at start
    def load() -> Any:
        return incluster.load(directory, server)

    load.server = server  # type: ignore[attr-defined]  # shown before the first load
    return load, incluster.SOURCE


def address_port(address: str, port: int) -> str:
    """'169.254.0.2:53', '[fd00:169:254::2]:53'."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


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
    # journald adds its own timestamps; a bare "LEVEL message" stays readable there.
    log.level = DEBUG if verbose else INFO
    route_std_logging()


LEAN_ENV = "SMARTER_CNI_DNS_LEAN"
# glibc: give freed heap memory back at once instead of keeping it for reuse
# (the service allocates little after start-up): ~0.8 MB less resident.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0", "MALLOC_ARENA_MAX": "1"}


LEAN_ARG = "--parsed-settings"


def reexec_lean(args: argparse.Namespace) -> None:
    """Go on in a fresh interpreter that loads only the service.

    `smarter-cni dns` arrives through the operator CLI (argparse, json,
    typing) and `site` (.pth hooks); none of it is needed once the options
    are parsed, but nothing loaded can be unloaded. So the options, parsed
    and checked here, go to `python -I -S` with the package's own path, and
    glibc is told to return freed memory: ~3 MB less resident memory for a
    process that runs for months. Same PID, so systemd, the supervisor and
    the DaemonSet see no difference. SMARTER_CNI_DNS_LEAN=0 turns it off.
    """
    if os.environ.get(LEAN_ENV) in ("0", "1") or not sys.executable:
        return
    # Compiling a module from source costs more memory than loading its bytecode
    # (~1.8 MB in all): import them here, where __pycache__ gets written if it
    # can be, so the lean process only loads bytecode.
    from . import health, server  # noqa: F401
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # The parent's module path as it is (site-packages included: whatever runs
    # in the service may import what it could import here), without `site`
    # running its .pth hooks again; this package's own copy first.
    path = [package_parent] + [p for p in sys.path if p and p != package_parent]
    boot = (f"import sys; sys.path[:] = {path!r}; "
            "from smarter_cni.dns.service import main; sys.exit(main(sys.argv[1:]))")
    argv = [LEAN_ARG, jsonfast.dumps(vars(args), compact=True)]
    env = dict(os.environ, **{LEAN_ENV: "1"})
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", boot, *argv], env)
    except OSError as err:  # carry on in this process
        log.warning("cannot restart lean (%s); serving from this process", err.strerror)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [LEAN_ARG] and len(argv) == 2:  # from reexec_lean: no argparse here
        import types

        args: Any = types.SimpleNamespace(**jsonfast.loads(argv[1]))
    else:
        args = build_parser().parse_args(argv)
        reexec_lean(args)
    setup_logging(args.verbose)
    try:
        return run(args)
    except SettingsError as err:
        log.error("%s", err)
        return 2
    except AddressError as err:
        log.error("cannot set up the DNS address: %s", err)
        return 1
    except KeyboardInterrupt:
        return 0


def run(args: argparse.Namespace) -> int:
    from .server import Server  # imported late: `--help` stays fast

    path, conf = load_netconf(args)
    listen4 = args.listen or conf.dns_address
    listen6 = args.listen6 or conf.dns_address6
    if listen4:
        try:
            socket.inet_aton(listen4)
        except OSError:
            raise SettingsError(f"--listen {listen4!r} is not an IPv4 address") from None
    elif not listen6:
        raise SettingsError(f"{path}: no DNS address to serve on (dnsAddress, dnsAddress6, "
                            "--listen or --listen6)")
    if listen6:
        try:
            socket.inet_pton(socket.AF_INET6, listen6)
        except OSError:
            raise SettingsError(f"--listen6 {listen6!r} is not an IPv6 address") from None
    # the main server is the IPv4 one; an IPv6-only network (no dnsAddress) has only the
    # IPv6 one, which then takes its place (address set-up, metrics, the reconciler)
    listen = listen4 or listen6
    second6 = listen6 if listen4 else ""
    if not 0 < args.port < 65536:
        raise SettingsError(f"--port {args.port} is out of range")
    if not 0 < args.upstream_timeout <= 30:
        raise SettingsError("--upstream-timeout must be more than 0 and at most 30 seconds")
    if not 0 <= args.serve_stale <= 7 * 86400:
        raise SettingsError("--serve-stale must be 0 to 604800 seconds")
    state_dir = args.state_dir or os.environ.get("SMARTER_CNI_STATE_DIR") or DEFAULT_STATE_DIR
    subnets = [(conf.net_subnet, (0xFFFFFFFF << (32 - conf.net_prefix)) & 0xFFFFFFFF)]
    for cidr in args.allow:
        try:
            subnets.append(acl_module.network_and_mask(cidr))
        except ValueError as err:
            raise SettingsError(f"--allow: {err}") from None
    acl = acl_module.Acl(subnets)
    if not listen4:  # answers the pods' IPv6 prefix, as the second server below does
        from .listen6 import prefix6_acl

        acl = prefix6_acl(conf, subnets)
    metrics_at = metrics_address(args.metrics, listen)
    if metrics_at == (listen, args.port):
        raise SettingsError("--metrics cannot share the DNS port")
    credentials, source = service_credentials(args)  # before any change to the node
    upstreams = choose_upstreams(args, listen, args.port)
    if not upstreams:
        log.warning("no upstream resolvers (from %s or --upstream): names outside the "
                    "cluster get SERVFAIL", args.resolv_conf)
    if args.no_address_setup and not acl_module.host_has(listen):
        raise SettingsError(f"{listen} is not an address of this node "
                            "(drop --no-address-setup to add it)")
    added_to = ""
    if not args.no_address_setup and not acl_module.host_has(listen):
        from .address import AddressSetupError, ensure_address

        route_std_logging()
        try:
            done = ensure_address(listen, args.interface)
        except AddressSetupError as err:
            raise AddressError(str(err)) from None
        if done != "present":
            log.info("address %s %s", listen, done)
            added_to = done.rsplit(" ", 1)[-1]
    raise_file_limit()
    if credentials:  # one source for both watches (each loads it before every connection)
        from .endpoints import start as start_endpoints
        from .services import start as start_services

        try:
            watch = start_services(credentials, conf.domain, args.service_cidr, state_dir,
                                   source)
        except (OSError, ValueError) as err:
            raise SettingsError(f"Service names: {err}") from None
        start_endpoints(credentials, watch.services, args.endpoints_node,  # headless
                        state_dir, source)
    try:
        server = Server(listen, args.port, state_dir, conf.domain, conf.net_subnet, conf.net_prefix,
                        acl, upstreams, args.upstream_timeout,
                        None if args.upstream else args.resolv_conf, args.serve_stale,
                        metrics_at)
    except OSError as err:
        raise SettingsError(f"cannot listen on {address_port(listen, args.port)}: "
                            f"{err.strerror}") from None

    stop6 = server6 = None
    if second6:  # IPv6 (issue 13): a second server, same names and access rule
        from . import listen6 as dns6
        from .address import AddressSetupError  # loaded by listen6 already

        def make_server6(address: str, acl6: Any) -> Any:
            return Server(address, args.port, state_dir, conf.domain, conf.net_subnet,
                          conf.net_prefix, acl6, upstreams, args.upstream_timeout,
                          None if args.upstream else args.resolv_conf)
        try:
            server6, stop6 = dns6.start(second6, args, conf, dns6.prefix6_acl(conf, subnets),
                                        make_server6)
        except (OSError, AddressSetupError) as err:
            server.close()
            raise SettingsError(f"cannot listen on [{second6}]:{args.port}: {err}") from None
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
                     None if args.no_address_setup else args.interface, server,
                     second6, server6)
    from ..resident_supervisor import start_supervisor  # the plugin's work without an exec (issue 16)

    resident = start_supervisor(state_dir, log, bool(args.verbose), conf.mode)
    log.info("serving %s mode network %s (%s) on %s udp+tcp; domain %s; pods %s; "
             "registry %s; upstreams %s; metrics %s", conf.mode, conf.name, path,
             address_port(listen, args.port), conf.domain, conf.cidr() or conf.cidr6(), state_dir,
             ", ".join(f"{h}:{p}" for h, p in upstreams) or "none",
             f"http://{address_port(*metrics_at)}/metrics" if server.http else "off")
    try:
        server.serve_forever()
    finally:
        if stop6 is not None:
            stop6()
        if resident:
            resident.stop()
        server.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        if added_to:
            # Gone with the service: clients fail fast instead of timing out, and
            # nothing is left on lo when there is no dummy interface to delete.
            from .address import remove_address

            remove_address(listen, added_to)
    log.info("stopped: %s", server.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
