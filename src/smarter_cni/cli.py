"""`smarter-cni <command>`: the operator's command line, argparse and nothing else.

Each command is a call into node/ (install, uninstall, status, selftest,
service); this module parses, picks the output form and turns every failure
into a message that says what to do, never a traceback. Not on the plugin's
hot path (entry.py only comes here when CNI_COMMAND is unset).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from . import __version__ as _version
from .conflist import ConfigError
from .node.console import CLIError, Output, require_root

EPILOG = """\
typical use:
  sudo smarter-cni install                 bridge mode, defaults, self-test at the end
  sudo smarter-cni install --mode docker   Docker network `mynet` (k3s --docker)
  sudo smarter-cni install --k3s           same, and print the k3s command lines
  sudo smarter-cni install --ipv6-only     IPv6-only pods (fd00:10:42::/64), DNS on fd00:169:254::2
  smarter-cni status                       is everything in place? what to fix?
  smarter-cni pods                         pods on this node and their addresses
  sudo smarter-cni selftest                two throwaway pods: ping and resolve each other
  sudo smarter-cni uninstall               remove it all (refuses while pods are attached)
"""


# ---------------------------------------------------------------- commands

def _cmd_install(args: argparse.Namespace, out: Output) -> int:
    from .node.install import Options, install

    require_root("install")
    return install(Options.from_args(args), out)


def _cmd_uninstall(args: argparse.Namespace, out: Output) -> int:
    from .node.uninstall import uninstall

    require_root("uninstall")
    return uninstall(out, force=args.force, bin_dir=args.cni_bin_dir, conf_dir=args.cni_conf_dir,
                     purge=args.purge)


def _cmd_status(args: argparse.Namespace, out: Output) -> int:
    from .node.status import status

    return status(out, conf_dir=args.cni_conf_dir, bin_dir=args.cni_bin_dir)


def _cmd_pods(args: argparse.Namespace, out: Output) -> int:
    from .node.status import pods

    return pods(out)


def _cmd_selftest(args: argparse.Namespace, out: Output) -> int:
    from .node.selftest import selftest

    require_root("selftest")
    return selftest(out, conf_dir=args.cni_conf_dir, bin_dir=args.cni_bin_dir)


def _cmd_supervise(args: argparse.Namespace, out: Output) -> int:
    from .node.service import supervise

    return supervise(args.argv)


def _add_dir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cni-bin-dir", metavar="DIR",
                        help="CNI plugin dir (default: the one `install` used, else /opt/cni/bin)")
    parser.add_argument("--cni-conf-dir", metavar="DIR",
                        help="CNI config dir (default: the one `install` used, else /etc/cni/net.d)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smarter-cni",
        description="Node-local pod networking with names for k3s edge gateways. "
                    "As a CNI plugin it is run by the container runtime; as a command it "
                    "installs, checks and removes itself.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"smarter-cni {_version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    inst = sub.add_parser(
        "install", help="install the plugin, config, network and DNS service on this node",
        description="Put the plugin (and `loopback` if missing) into the CNI bin dir, write the "
                    "config, create the network, start the node DNS service and run the "
                    "self-test. Safe to run again: it upgrades in place and leaves running "
                    "pods alone.")
    inst.add_argument("--mode", choices=("bridge", "docker"), default="bridge",
                      help="bridge: containerd/CRI-O/podman (default); "
                           "docker: Docker network via cri-dockerd (k3s --docker)")
    inst.add_argument("--subnet", metavar="CIDR",
                      help="pod subnet (default 10.42.0.0/16 bridge, 172.38.0.0/16 docker)")
    inst.add_argument("--gateway", metavar="IP", help="gateway address (default: first in subnet)")
    inst.add_argument("--dns-ip", metavar="IP",
                      help="node DNS address for kubelet --cluster-dns "
                           "(default 169.254.0.2 bridge, 172.38.0.2 docker)")
    inst.add_argument("--subnet6", metavar="PREFIX",
                      help="also give pods IPv6 addresses from this prefix (dual-stack; "
                           "with --ipv6-only their only addresses; /48 to /120, e.g. a "
                           "unique local fdXX:XXXX:XXXX::/64)")
    inst.add_argument("--ipv6", action="store_true",
                      help="dual-stack with the default prefix fd00:10:42::/64 unless "
                           "--subnet6 names one; the node DNS also listens on fd00:169:254::2")
    inst.add_argument("--ipv6-only", action="store_true",
                      help="no IPv4 at all: pods get only an IPv6 address from --subnet6 "
                           "(default fd00:10:42::/64) and the node DNS listens only on "
                           "--dns-ip6 (default fd00:169:254::2); not with --subnet, --gateway, "
                           "--dns-ip, --pod-cidr-from-node, --containerd-template or "
                           "--mode docker")
    inst.add_argument("--dns-ip6", metavar="IP",
                      help="the node DNS's IPv6 address (default with --ipv6/--subnet6/"
                           "--ipv6-only: fd00:169:254::2)")
    inst.add_argument("--bridge", metavar="NAME", help="bridge name in bridge mode (default smarter0)")
    inst.add_argument("--network", metavar="NAME",
                      help="the CNI network's name (default smarter); in docker mode also the "
                           "Docker network (default mynet)")
    inst.add_argument("--dns-interface", metavar="NAME",
                      help="dummy interface that carries the DNS address (default smarter-dns)")
    inst.add_argument("--service", choices=("auto", "systemd", "supervisor"), default="auto",
                      help="how the DNS service runs: auto (default) is systemd where systemd "
                           "runs the node, else a supervisor process; the unit goes to "
                           "$SMARTER_CNI_UNIT_DIR (default /etc/systemd/system)")
    inst.add_argument("--domain", metavar="DOMAIN", help="cluster domain (default cluster.local)")
    inst.add_argument("--k3s", action="store_true",
                      help="use the dirs k3s uses with --flannel-backend=none and print the "
                           "k3s server/agent command lines")
    kube = inst.add_argument_group(
        "Kubernetes", "the node's own pod CIDR (docs/k3s.md); Service names in the node DNS")
    kube.add_argument("--kubeconfig", metavar="PATH",
                      help="kubeconfig for the API server (default with --k3s and "
                           "--pod-cidr-from-node: /etc/rancher/k3s/k3s.yaml); also handed to "
                           "the DNS service, which then answers Service names")
    kube.add_argument("--pod-cidr-from-node", action="store_true",
                      help="use the node's spec.podCIDR(s) from the API server as the subnet")
    kube.add_argument("--node-name", metavar="NAME",
                      help="the node's name in Kubernetes (default: this host's name)")
    kube.add_argument("--containerd-template", metavar="PATH", nargs="?", const="auto",
                      help="also write a containerd CNI conf_template, so containerd puts the "
                           "node's pod CIDR ({{.PodCIDRRanges}}) into the config itself "
                           "(default path: smarter-cni-containerd.conflist.tmpl next to the "
                           "conf dir), and print the containerd/k3s setting that uses it")
    _add_dir_options(inst)
    inst.add_argument("--no-selftest", action="store_true", help="skip the final self-test")
    inst.add_argument("--no-dns-service", action="store_true",
                      help="do not install/start the DNS service (e.g. it runs as a pod)")
    inst.add_argument("--plugin-python", metavar="PATH",
                      help="python the runtime runs the plugin with (default: this one; a "
                           "DaemonSet gives the node's, e.g. /usr/bin/python3)")
    inst.add_argument("--plugin-lib", metavar="DIR",
                      help="copy the package here and run the plugin from it (a DaemonSet "
                           "gives a host path, e.g. /opt/smarter-cni/lib)")
    inst.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    inst.set_defaults(func=_cmd_install)

    uninst = sub.add_parser(
        "uninstall", help="remove plugin, config, DNS service, network and state",
        description="Undo `install`. Refuses while pods are still attached unless --force.")
    uninst.add_argument("--force", action="store_true",
                        help="remove everything even while pods are attached (their networking stops)")
    uninst.add_argument("--purge", action="store_true",
                        help="also remove the program (the venv install.sh made in the prefix)")
    _add_dir_options(uninst)
    uninst.add_argument("--json", action="store_true", help="print a JSON summary")
    uninst.set_defaults(func=_cmd_uninstall)

    stat = sub.add_parser("status", help="what is installed, what runs, what to fix",
                          description="Exit status 0 when no problem was found, 1 otherwise.")
    _add_dir_options(stat)
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=_cmd_status)

    pod = sub.add_parser("pods", help="pods attached on this node")
    pod.add_argument("--json", action="store_true", help="machine-readable output")
    pod.set_defaults(func=_cmd_pods)

    test = sub.add_parser(
        "selftest", help="two throwaway pods through the installed plugin: ping and resolve",
        description="Creates two pods in their own network namespaces through the installed "
                    "plugin, pings and resolves each by name through the node DNS, then "
                    "removes them. Exit status 0 only when every check passed.")
    _add_dir_options(test)
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(func=_cmd_selftest)

    sub.add_parser("dns", help="run the node DNS service (what the service manager starts)",
                   add_help=False)

    sup = sub.add_parser("supervise-dns")  # internal: no help= keeps it out of the list
    sup.add_argument("argv", nargs=argparse.REMAINDER)
    sup.set_defaults(func=_cmd_supervise)
    return parser


def _run_dns(rest: list[str]) -> int:
    from .dns.service import main as dns_main

    result = dns_main(rest)
    return int(result or 0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["dns"]:  # the service parses its own options
        handler: Callable[[], int] = lambda: _run_dns(argv[1:])  # noqa: E731
        out = Output()
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        out = Output(as_json=getattr(args, "json", False))
        handler = lambda: args.func(args, out)  # noqa: E731
    return _guarded(handler)


def _guarded(handler: Callable[[], int]) -> int:
    from .cni.errors import CNIError

    try:
        return handler()
    except CLIError as err:
        _error(err.message, err.fix)
        return err.code
    except ConfigError as err:
        _error(err.message, err.fix)
        return 1
    except CNIError as err:
        _error(err.msg, "")
        return 1
    except KeyboardInterrupt:
        _error("interrupted", "")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as err:  # never a traceback for the operator; keep it in the log
        import traceback

        from .logs import log

        log("error", "cli: " + "".join(traceback.format_exception(type(err), err,
                                                                  err.__traceback__)))
        _error(f"unexpected failure: {type(err).__name__}: {err}",
               "the details are in the log (smarter-cni.log in the state dir); please report it")
        return 1


def _error(message: str, fix: str) -> None:
    print(f"smarter-cni: error: {message}", file=sys.stderr)
    if fix:
        print(f"  fix: {fix}", file=sys.stderr)
    sys.stderr.flush()
