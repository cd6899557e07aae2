"""`smarter-cni install` / `uninstall`: put everything in place on a node, or take it away.

What install does, in order (each step idempotent, so a second run is an
in-place upgrade that leaves running pods alone):

1. the plugin launcher into the CNI bin dir as `smarter-cni` and `c2d`, and a
   Python `loopback` when the dir has none;
2. the network config (`10-smarter-cni.conflist`), written atomically;
3. the network: the bridge with its gateway and NAT rules, or the Docker
   network with the DNS address reserved;
4. the node DNS service: a systemd unit where systemd runs the node, else a
   small supervisor process that restarts `smarter-cni dns` if it exits;
5. a record of what was installed (`install.json` in the prefix) so that
   status, selftest and uninstall find the same dirs;
6. the self-test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import __version__, launcher, loopback, paths, store
from .cli import CLIError, Output
from .cni.errors import CNIError
from .dns.address import DEFAULT_INTERFACE as DEFAULT_DNS_INTERFACE
from .netconf import DEFAULT_DOCKER_NETWORK, DEFAULT_DOCKER_SOCKET, NetConf, parse_netconf

PREFIX_ENV = "SMARTER_CNI_PREFIX"
DEFAULT_PREFIX = "/opt/smarter-cni"
RECORD_NAME = "install.json"
CONFLIST_NAME = paths.CONFLIST_NAME
DOCKER_TEMPLATE = "10-smarter-cni-docker.conflist"
UNIT_NAME = "smarter-cni-dns.service"
UNIT_DIR_ENV = "SMARTER_CNI_UNIT_DIR"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
SUPERVISOR_PIDFILE = paths.SUPERVISOR_PIDFILE
DNS_LOG = paths.DNS_LOG
DNS_INTERFACE = DEFAULT_DNS_INTERFACE
SERVICE_KINDS = ("auto", "systemd", "supervisor")
PROGRAM_RECORD_NAME = "program.json"
PLUGIN_MARKER = "smarter-cni CNI plugin launcher"
LOOPBACK_MARKER = "loopback CNI plugin (Python; written by `smarter-cni install`)"
# k3s with --flannel-backend=none writes no CNI dirs into its containerd config
# and passes none to cri-dockerd, so both fall back to the CNI defaults.
K3S_BIN_DIR = paths.DEFAULT_CNI_BIN_DIR
K3S_CONF_DIR = paths.DEFAULT_CNI_CONF_DIR
# Where k3s keeps its own (flannel) CNI config; a config there means flannel is on.
K3S_FLANNEL_CONF_DIR = "/var/lib/rancher/k3s/agent/etc/cni/net.d"


# ---------------------------------------------------------------- where things are

def prefix() -> str:
    """Where install.sh put the venv: $SMARTER_CNI_PREFIX, else the venv's parent, else /opt."""
    explicit = os.environ.get(PREFIX_ENV)
    if explicit:
        return explicit
    if os.path.basename(sys.prefix) == "venv" and sys.prefix != sys.base_prefix:
        return os.path.dirname(sys.prefix)
    return DEFAULT_PREFIX


def record_path() -> str:
    return os.path.join(prefix(), RECORD_NAME)


def load_record() -> dict[str, Any]:
    try:
        with open(record_path()) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def template_dirs() -> list[str]:
    """$PREFIX/share (copied there by install.sh), then a source checkout's deploy/."""
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(prefix(), "share"),
            os.path.join(os.path.dirname(os.path.dirname(here)), "deploy")]


def find_template(name: str) -> str | None:
    for directory in template_dirs():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temp, "w") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise CLIError(f"cannot write {path}: {err.strerror}",
                       "check that the directory is writable and the disk is not full") from None


def own_file(path: str, marker: str) -> bool:
    """True when `path` is a file smarter-cni wrote (so removing or replacing it is ours to do)."""
    try:
        with open(path, errors="replace") as handle:
            return marker in handle.read(512)
    except OSError:
        return False


# ---------------------------------------------------------------- options and config

@dataclass
class Options:
    mode: str = "bridge"
    subnet: str | None = None
    gateway: str | None = None
    dns_ip: str | None = None
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
    dns_interface: str = DEFAULT_DNS_INTERFACE
    service: str = "auto"

    @classmethod
    def from_args(cls, args: Any) -> Options:
        bin_dir = args.cni_bin_dir or (K3S_BIN_DIR if args.k3s else paths.DEFAULT_CNI_BIN_DIR)
        conf_dir = args.cni_conf_dir or (K3S_CONF_DIR if args.k3s else paths.DEFAULT_CNI_CONF_DIR)
        return cls(mode=args.mode, subnet=args.subnet, gateway=args.gateway, dns_ip=args.dns_ip,
                   bridge=args.bridge, network=args.network, domain=args.domain,
                   bin_dir=os.path.abspath(bin_dir), conf_dir=os.path.abspath(conf_dir),
                   k3s=args.k3s, selftest=not args.no_selftest,
                   dns_service=not args.no_dns_service,
                   plugin_python=getattr(args, "plugin_python", None),
                   plugin_lib=os.path.abspath(args.plugin_lib) if getattr(args, "plugin_lib", None)
                   else None,
                   dns_interface=getattr(args, "dns_interface", None) or DEFAULT_DNS_INTERFACE,
                   service=getattr(args, "service", None) or "auto")


def default_conflist(mode: str) -> dict[str, Any]:
    """The shipped defaults (deploy/10-smarter-cni*.conflist hold the same)."""
    plugin: dict[str, Any] = {"type": "smarter-cni", "mode": mode}
    if mode == "bridge":
        plugin.update({"bridge": "smarter0", "subnet": "10.42.0.0/16", "gateway": "10.42.0.1",
                       "dnsAddress": "169.254.0.2"})
    else:
        plugin.update({"network": DEFAULT_DOCKER_NETWORK, "subnet": "172.38.0.0/16",
                       "gateway": "172.38.0.1", "dnsAddress": "172.38.0.2"})
    plugin["clusterDomain"] = "cluster.local"
    # containerd/CRI-O pass pod annotations (smarter-cni.io/hostname) only when asked to
    plugin["capabilities"] = {"io.kubernetes.cri.pod-annotations": True}
    return {"cniVersion": "1.0.0", "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
            "name": "smarter" if mode == "bridge" else "smarter-docker", "plugins": [plugin]}


def our_plugin(conflist: dict[str, Any]) -> dict[str, Any]:
    """The smarter-cni entry of a conflist (or a single-plugin .conf)."""
    entries = conflist.get("plugins") if "plugins" in conflist else [conflist]
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("type") in ("smarter-cni", "c2d"):
            return entry
    raise CLIError("the network config has no smarter-cni plugin entry",
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
        raise CLIError(err.msg, "fix the option named above and run install again") from None


def render_conflist(opts: Options) -> dict[str, Any]:
    """The template for the mode with the operator's options filled in."""
    name = CONFLIST_NAME if opts.mode == "bridge" else DOCKER_TEMPLATE
    conflist = default_conflist(opts.mode)
    path = find_template(name)
    if path:
        try:
            with open(path) as handle:
                conflist = json.load(handle)
        except (OSError, ValueError) as err:
            raise CLIError(f"template {path} is unreadable: {err}",
                           "restore it from the smarter-cni source") from None
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
        socket_path = os.environ.get("DOCKER_HOST", "")
        if socket_path.startswith("unix://") and socket_path[7:] != DEFAULT_DOCKER_SOCKET:
            plugin["dockerSocket"] = socket_path[7:]  # runtimes do not pass DOCKER_HOST on
    for key, value in (("gateway", opts.gateway), ("bridge", opts.bridge),
                       ("clusterDomain", opts.domain)):
        if value:
            plugin[key] = value
    if opts.network:  # the CNI network's name; in docker mode also the Docker network's
        conflist["name"] = opts.network
        if opts.mode == "docker":
            plugin["network"] = opts.network
    conf = netconf_of(conflist)
    if opts.mode == "docker" and opts.subnet and not opts.dns_ip:
        # the docker default puts the DNS address at .2 of the subnet, as the original did
        from . import ipv4

        plugin["dnsAddress"] = ipv4.to_text(conf.subnet + 2)
        conf = netconf_of(conflist)
    if not opts.dns_ip and "dnsAddress" not in plugin:
        plugin["dnsAddress"] = conf.dns_address
    return conflist


# ---------------------------------------------------------------- prerequisites

def missing_prerequisites(mode: str) -> list[str]:
    """Each missing program with the package that provides it."""
    from .run import find_program

    missing = []
    if not find_program("ip"):
        missing.append("`ip` (apt-get install iproute2)")
    if not find_program("nsenter"):
        missing.append("`nsenter` (apt-get install util-linux)")
    if mode == "bridge" and not (find_program("iptables") or find_program("nft")):
        missing.append("`iptables` or `nft` (apt-get install iptables)")
    if mode == "docker":
        socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        socket_path = socket_path.replace("unix://", "", 1)
        if not os.path.exists(socket_path):
            missing.append(f"Docker (no daemon socket at {socket_path}; apt-get install docker.io "
                           "and start it)")
    return missing


# ---------------------------------------------------------------- install

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
    _mkdir(lib_dir)
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
    out.say(f"smarter-cni {__version__}: installing in {opts.mode} mode")
    missing = missing_prerequisites(opts.mode)
    if missing:
        raise CLIError("missing prerequisite(s): " + "; ".join(missing),
                       "install them (install.sh does this with apt-get) and run install again")
    conflist = render_conflist(opts)
    conf = netconf_of(conflist)
    _check_interface_name(opts.dns_interface)
    conf_path = os.path.join(opts.conf_dir, CONFLIST_NAME)
    previous = load_record()
    created = [d for d in previous.get("created_dirs", []) if isinstance(d, str)]
    for directory in (opts.bin_dir, opts.conf_dir, opts.plugin_lib):
        created += _missing_dirs(directory) if directory else []
    python, root = plugin_python(opts)
    summary: dict[str, Any] = {"version": __version__, "mode": opts.mode,
                               "bin_dir": opts.bin_dir, "conf_dir": opts.conf_dir,
                               "config": conf_path, "network": conf.name,
                               "dns_address": conf.dns_address, "subnet": conf.cidr()}

    with out.step(f"Installing the plugin into {opts.bin_dir}") as step:
        _mkdir(opts.bin_dir)
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
        _mkdir(opts.conf_dir)
        write_atomic(conf_path, json.dumps(conflist, indent=2) + "\n", 0o644)
        step.detail = f"network {conf.name}, subnet {conf.cidr()}, DNS {conf.dns_address}"
    for warning in _config_warnings(opts.conf_dir):
        out.note(f"  warning: {warning}")

    if conf.mode == "bridge":
        with out.step(f"Creating bridge {conf.bridge} ({conf.gateway_text()}/{conf.prefix}, NAT)"):
            from .dataplane import bridge

            paths.ensure_state_dir()
            bridge.setup_network(conf)
    else:
        with out.step(f"Creating Docker network {conf.docker_network} ({conf.cidr()})") as step:
            from .dataplane import docker_mode

            network_id = docker_mode.ensure_network(conf)
            step.detail = f"id {network_id[:12]}" if network_id else ""

    record = {"version": __version__, "options": asdict(opts), "config": conf_path,
              "bin_dir": opts.bin_dir, "conf_dir": opts.conf_dir, "mode": conf.mode,
              "network": conf.name, "bridge": conf.bridge, "docker_network": conf.docker_network,
              "dns_address": conf.dns_address, "domain": conf.domain,
              "dns_interface": opts.dns_interface,
              "state_dir": paths.state_dir(), "plugin_config": plugin_config(conflist),
              "loopback_installed": summary["loopback"].startswith("installed"),
              "dns_service": "none", "installed_at": time.time(),
              "created_dirs": sorted(set(created))}
    _save_record(record)  # before the DNS service, so a failure there can still be uninstalled

    if opts.dns_service:
        with out.step(f"Starting the node DNS service on {conf.dns_address}") as step:
            kind = service_kind(opts.service)
            device = ensure_dns_address(conf.dns_address, opts.dns_interface)
            if device:
                record["dns_address_device"] = device
            elif previous.get("dns_address") == conf.dns_address:
                record["dns_address_device"] = previous.get("dns_address_device", "")
            record["dns_service"] = kind
            if kind == "systemd":
                record["unit_path"] = unit_path()
            _save_record(record)
            start_dns_service(kind, conf_path, conf, opts.dns_interface)
            step.detail = kind
        summary["dns_service"] = kind
    else:
        summary["dns_service"] = "not managed (--no-dns-service)"

    code = 0
    if opts.selftest:
        from .selftest import selftest

        out.say("Self-test:")
        code = selftest(out, conf_dir=opts.conf_dir, bin_dir=opts.bin_dir, nested=True)
        summary["selftest"] = "passed" if code == 0 else "FAILED"
    _print_next_steps(out, conf, opts)
    if code == 0:
        out.say("smarter-cni is installed.")
    else:
        out.say("smarter-cni is installed, but the self-test FAILED: see above, "
                "and `smarter-cni status`.")
    out.emit(summary)
    return code


def _check_interface_name(name: str) -> None:
    from .cni.request import validate_ifname

    try:
        validate_ifname(name)
    except CNIError:
        raise CLIError(f"--dns-interface {name[:40]!r} is not a valid interface name",
                       "give 1-15 characters without '/', ':' or spaces") from None


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create {path}: {err.strerror}", "check the path and permissions"
                       ) from None


def _missing_dirs(path: str) -> list[str]:
    """`path` and those of its parents that do not exist yet (what makedirs will create)."""
    missing = []
    while path and path != "/" and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


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


def _save_record(record: dict[str, Any]) -> None:
    _mkdir(prefix())
    write_atomic(record_path(), json.dumps(record, indent=2) + "\n", 0o644)


def k3s_command_lines(conf: NetConf) -> list[str]:
    flags = ("--flannel-backend=none --disable-network-policy --disable-kube-proxy "
             "--disable=coredns,servicelb,traefik,metrics-server")
    docker = " --docker" if conf.mode == "docker" else ""
    return [
        f"curl -sfL https://get.k3s.io | sh -s - server {flags} "
        f"--cluster-dns={conf.dns_address} --cluster-domain={conf.domain}{docker}",
        "curl -sfL https://get.k3s.io | K3S_URL=https://SERVER:6443 K3S_TOKEN=TOKEN "
        f"sh -s - agent{docker}",
    ]


def _print_next_steps(out: Output, conf: NetConf, opts: Options) -> None:
    out.say(f"Point kubelet at the node DNS: --cluster-dns={conf.dns_address} "
            f"--cluster-domain={conf.domain}")
    if opts.k3s:
        out.say("k3s, server (first node) and agents (the others):")
        for line in k3s_command_lines(conf):
            out.say(f"  {line}")
        out.say("  (agents take --cluster-dns from the server; see docs/k3s.md)")


# ---------------------------------------------------------------- DNS service

def systemd_running() -> bool:
    """systemd is the init system (the test sd_booted() makes)."""
    return os.path.isdir("/run/systemd/system")


def cli_executable() -> list[str]:
    """How to run this installation's `smarter-cni` (the venv's script if there is one)."""
    script = os.path.join(os.path.dirname(sys.executable), "smarter-cni")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "smarter_cni"]


def service_kind(choice: str) -> str:
    """--service: auto is systemd where systemd runs the node, else the supervisor."""
    if choice == "auto":
        return "systemd" if systemd_running() else "supervisor"
    if choice == "systemd" and not systemd_running():
        raise CLIError("--service systemd, but systemd does not run this node",
                       "use --service supervisor (or auto)")
    if choice not in SERVICE_KINDS:
        raise CLIError(f"--service {choice!r} is not one of {', '.join(SERVICE_KINDS)}")
    return choice


def unit_path() -> str:
    """Where the systemd unit goes: $SMARTER_CNI_UNIT_DIR, else /etc/systemd/system."""
    return os.path.join(os.environ.get(UNIT_DIR_ENV) or DEFAULT_UNIT_DIR, UNIT_NAME)


def dns_arguments(conf_path: str, conf: NetConf, interface: str = DEFAULT_DNS_INTERFACE
                  ) -> list[str]:
    return ["--config", conf_path, "--interface", interface]


def start_dns_service(kind: str, conf_path: str, conf: NetConf,
                      interface: str = DEFAULT_DNS_INTERFACE) -> str:
    """(Re)start the DNS service so it runs this version with this config; returns its kind."""
    argv = cli_executable() + ["dns"] + dns_arguments(conf_path, conf, interface)
    if kind == "systemd":
        _install_unit(argv)
    else:
        stop_supervisor()
        start_supervisor(argv)
    from .dns.probe import wait_for_dns

    if not wait_for_dns(conf.dns_address, conf.domain, 10.0):
        raise CLIError(f"the DNS service does not answer on {conf.dns_address}:53",
                       f"see {_dns_log_hint(kind)}; `smarter-cni status` shows what else is wrong")
    return kind


def _dns_log_hint(kind: str) -> str:
    if kind == "systemd":
        return f"journalctl -u {UNIT_NAME}"
    return os.path.join(paths.state_dir(), DNS_LOG)


def _unit_text(argv: list[str]) -> str:
    exec_start = " ".join(argv)
    template = find_template(UNIT_NAME)
    if template:
        with open(template) as handle:
            lines = handle.read().splitlines()
        out = []
        for line in lines:
            if line.startswith("ExecStart="):
                line = f"ExecStart={exec_start}"
            out.append(line)
        text = "\n".join(out) + "\n"
    else:
        text = ("[Unit]\nDescription=smarter-cni node DNS service\nAfter=network-online.target\n"
                "Wants=network-online.target\n\n[Service]\n"
                f"ExecStart={exec_start}\nRestart=always\nRestartSec=1\n\n"
                "[Install]\nWantedBy=multi-user.target\n")
    state = os.environ.get("SMARTER_CNI_STATE_DIR")
    if state and "SMARTER_CNI_STATE_DIR" not in text:
        text = text.replace("[Service]\n", f"[Service]\nEnvironment=SMARTER_CNI_STATE_DIR={state}\n")
    return text


def _install_unit(argv: list[str]) -> None:
    path = unit_path()
    _mkdir(os.path.dirname(path))
    write_atomic(path, _unit_text(argv), 0o644)
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME],
                ["systemctl", "restart", UNIT_NAME]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise CLIError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:300]}",
                           f"see journalctl -u {UNIT_NAME}")


def _remove_unit(path: str) -> bool:
    """Stop, disable and delete the unit install wrote at `path` (the record's)."""
    if not path or not own_file(path, "smarter-cni"):
        return False
    if systemd_running():
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], capture_output=True,
                       timeout=60)
    os.unlink(path)
    if systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=60)
    return True


def pidfile_path() -> str:
    return os.path.join(paths.state_dir(), SUPERVISOR_PIDFILE)


def supervisor_pid() -> int:
    """The running supervisor's PID, or 0 (a stale pidfile or a reused PID is not it)."""
    try:
        with open(pidfile_path()) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid > 0 and _is_supervisor(pid) else 0


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return b"supervise-dns" in cmdline and state != "Z"


def start_supervisor(argv: list[str]) -> int:
    state = paths.ensure_state_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["SMARTER_CNI_STATE_DIR"] = state
    root = launcher.package_root()  # a source checkout is not on the default sys.path
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_fd = os.open(os.path.join(state, DNS_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(cli_executable() + ["supervise-dns", "--"] + argv,
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, close_fds=True, env=env, cwd="/")
    finally:
        os.close(log_fd)
    write_atomic(pidfile_path(), f"{proc.pid}\n", 0o644)
    return proc.pid


def stop_supervisor(timeout: float = 10.0) -> bool:
    """Stop the supervisor and the DNS service under it; True if one was running.

    The supervisor leads its own process group (started with a new session),
    so the group signal reaches the DNS service too, even if the supervisor
    itself has to be killed.
    """
    pid = supervisor_pid()
    if pid:
        group = pid if _process_group(pid) == pid else 0
        _signal(pid, group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_supervisor(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_supervisor(pid) or (group and _group_alive(group)):
            _signal(pid, group, signal.SIGKILL)
    try:
        os.unlink(pidfile_path())
    except OSError:
        pass
    return bool(pid)


def _process_group(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def _signal(pid: int, group: int, signum: int) -> None:
    try:
        if group:
            os.killpg(group, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except OSError:
        return False


def supervise(argv: list[str]) -> int:
    """Run argv; restart it when it exits (1 s, doubling to 30 s if it keeps failing fast)."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise CLIError("supervise-dns needs the command to run")
    stopping = False
    child: subprocess.Popen | None = None

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    delay = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if stopping:  # the signal came while it was being started
            child.terminate()
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
        if stopping:
            break
        ran = time.monotonic() - started
        delay = 1.0 if ran > 60 else min(delay * 2, 30.0)
        _log(f"dns service exited with {code} after {ran:.1f} s; restarting in {delay:.0f} s")
        end = time.monotonic() + delay
        while not stopping and time.monotonic() < end:
            time.sleep(0.1)
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} supervisor: {text}", file=sys.stderr, flush=True)


def ensure_dns_address(address: str, interface: str = DEFAULT_DNS_INTERFACE) -> str:
    """Put the DNS address on the node (dns/address); the device it went on, '' if present."""
    from .dns.address import AddressSetupError, ensure_address

    try:
        done = ensure_address(address, interface)
    except AddressSetupError as err:
        raise CLIError(f"cannot add the DNS address {address}: {err}",
                       "choose another --dns-ip") from None
    return "" if done == "present" else done.rsplit(" ", 1)[-1]


def remove_dns_address(address: str, device: str, interface: str) -> None:
    """Take the DNS address off where install put it; drop our dummy interface once empty."""
    from .dns.address import remove_address

    if device and os.path.exists(f"/sys/class/net/{device}"):
        remove_address(address, device, drop_empty_dummy=device == interface)


# ---------------------------------------------------------------- uninstall

def _attached(conf: NetConf | None) -> list[dict[str, Any]]:
    records = store.load().get("attachments", {}).values()
    if conf is None:
        return list(records)
    return [r for r in records if r.get("network") == conf.name]


def uninstall(out: Output, force: bool = False, bin_dir: str | None = None,
              conf_dir: str | None = None, purge: bool = False) -> int:
    """Undo what the install record says install made, and nothing else."""
    record = load_record()
    if not record:
        program = load_program_record()
        if purge and program:
            out.say("smarter-cni: no node install recorded; removing the program")
            with out.step(f"Removing the program from {prefix()}") as step:
                step.detail = purge_program(program)
            out.say("smarter-cni is uninstalled.")
            out.emit({"uninstalled": True, "removed": [], "forced": force, "detached_pods": 0})
            return 0
        raise CLIError(
            f"no install record at {record_path()}, so there is nothing this command knows "
            "it installed (it never guesses)",
            "point it at the install: SMARTER_CNI_PREFIX=DIR smarter-cni uninstall, where DIR "
            "holds install.json (install.sh's default is /opt/smarter-cni)"
            + ("; `smarter-cni uninstall --purge` removes the program left in " + prefix()
               if program else ""))
    if record.get("state_dir"):  # the state this install used, whatever this shell says
        os.environ["SMARTER_CNI_STATE_DIR"] = record["state_dir"]
    bin_dir = os.path.abspath(bin_dir or record.get("bin_dir") or "")
    conf_path = os.path.join(os.path.abspath(conf_dir), CONFLIST_NAME) if conf_dir \
        else str(record.get("config") or "")
    conf = _conf_for_uninstall(conf_path, record)
    attached = _attached(conf)
    if attached and not force:
        names = ", ".join(_pod_label(r) for r in attached[:8])
        more = f" and {len(attached) - 8} more" if len(attached) > 8 else ""
        raise CLIError(f"{len(attached)} pod(s) are still attached: {names}{more}",
                       "delete them first (kubectl drain NODE --ignore-daemonsets), or run "
                       "`smarter-cni uninstall --force` to cut them off")
    out.say("smarter-cni: uninstalling")
    removed: list[str] = []

    with out.step("Stopping the node DNS service") as step:
        kinds = []
        unit = record.get("unit_path") or _old_default_unit(record)
        if record.get("dns_service") == "systemd" and _remove_unit(unit):
            kinds.append(f"systemd unit {unit} removed")
        if stop_supervisor():
            kinds.append("supervisor stopped")
        if conf is not None:
            interface = record.get("dns_interface") or record.get("dns_address_device", "")
            remove_dns_address(conf.dns_address, record.get("dns_address_device", ""), interface)
        step.detail = ", ".join(kinds) or "none was running"

    with out.step(f"Removing {conf_path}") as step:
        if conf_path and os.path.exists(conf_path):
            os.unlink(conf_path)
            removed.append(conf_path)
        else:
            step.detail = "not there"

    with out.step(f"Removing the plugin from {bin_dir}") as step:
        gone = []
        for name, marker in (("smarter-cni", PLUGIN_MARKER), ("c2d", PLUGIN_MARKER),
                             ("loopback", LOOPBACK_MARKER)):
            path = os.path.join(bin_dir, name)
            if own_file(path, marker):
                os.unlink(path)
                gone.append(name)
                removed.append(path)
        step.detail = ", ".join(gone) or "nothing of ours there"

    if conf is not None:
        if conf.mode == "bridge":
            with out.step(f"Removing bridge {conf.bridge} and its rules"):
                _remove_pod_links(attached)
                from .dataplane import bridge

                bridge.teardown_network(conf)
        else:
            with out.step(f"Removing Docker network {conf.docker_network}") as step:
                step.detail = _remove_docker_network(conf)

    with out.step(f"Removing state in {paths.state_dir()}") as step:
        step.detail = _remove_state(conf, force)
    lib = (record.get("options") or {}).get("plugin_lib")
    if lib and os.path.isdir(os.path.join(lib, "smarter_cni")):
        shutil.rmtree(os.path.join(lib, "smarter_cni"), ignore_errors=True)
        removed.append(os.path.join(lib, "smarter_cni"))
    for directory in sorted(record.get("created_dirs", []), key=len, reverse=True):
        try:
            os.rmdir(directory)  # only when empty: someone else's files stay
        except OSError:
            pass
    try:
        os.unlink(record_path())
    except OSError:
        pass
    program = load_program_record()
    if purge:
        with out.step(f"Removing the program from {prefix()}") as step:
            step.detail = purge_program(program) if program else \
                "no program record (not installed by install.sh): nothing to remove"
        out.say("smarter-cni is uninstalled.")
    elif program:
        out.say("smarter-cni is uninstalled. The program itself stays in "
                f"{prefix()} (`smarter-cni uninstall --purge` removes it too).")
    else:
        out.say("smarter-cni is uninstalled.")
    out.emit({"uninstalled": True, "removed": removed, "forced": force,
              "detached_pods": len(attached)})
    return 0


def _old_default_unit(record: dict[str, Any]) -> str:
    """Records older than `unit_path` had their unit at the one path install used then."""
    return os.path.join(DEFAULT_UNIT_DIR, UNIT_NAME) if "dns_interface" not in record else ""


# ---------------------------------------------------------------- the program (install.sh's)

def program_record_path() -> str:
    return os.path.join(prefix(), PROGRAM_RECORD_NAME)


def load_program_record() -> dict[str, Any]:
    """What install.sh made in the prefix (venv, share, docs, the PATH link); {} if none."""
    try:
        with open(program_record_path()) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def purge_program(program: dict[str, Any]) -> str:
    """Remove exactly what the program record lists; returns what went."""
    base = os.path.realpath(prefix())
    gone = []
    link = program.get("link")
    target = program.get("link_target")
    if isinstance(link, str) and os.path.islink(link) and os.readlink(link) == target:
        os.unlink(link)
        gone.append(link)
    for name in program.get("made") or []:
        path = os.path.realpath(os.path.join(base, str(name)))
        if os.path.dirname(path) != base:  # only direct children of the prefix
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(str(name))
    try:
        os.unlink(program_record_path())
    except OSError:
        pass
    if program.get("made_prefix"):
        try:
            os.rmdir(base)  # only when empty: someone else's files stay
            gone.append(base)
        except OSError:
            pass
    return ", ".join(gone) or "nothing recorded"


def _conf_for_uninstall(conf_path: str, record: dict[str, Any]) -> NetConf | None:
    """The network install made: the record's config, else the file at the recorded path."""
    saved = record.get("plugin_config")
    if isinstance(saved, dict):
        try:
            return parse_netconf(saved)
        except CNIError:
            pass
    try:
        with open(conf_path) as handle:
            return netconf_of(json.load(handle))
    except (OSError, ValueError, CLIError):
        return None


def _pod_label(record: dict[str, Any]) -> str:
    pod = record.get("pod") or {}
    if pod.get("name"):
        return f"{pod.get('namespace') or '?'}/{pod['name']}"
    return str(record.get("container_id", "?"))[:12]


def _remove_pod_links(records: list[dict[str, Any]]) -> None:
    from .run import run

    for record in records:
        host = record.get("host_ifname")
        if host and os.path.exists(f"/sys/class/net/{host}"):
            run(["ip", "link", "del", host])


def _remove_docker_network(conf: NetConf) -> str:
    from .dataplane import docker_mode
    from .docker_api import quote
    from .selftest import IMAGE

    docker = docker_mode.client(conf, 30.0)
    docker.request("DELETE", f"/images/{quote(IMAGE)}?force=1")  # the self-test's, if built
    network = docker.inspect_network(conf.docker_network)
    if network is None:
        return "not there"
    if (network.get("Labels") or {}).get(docker_mode.MANAGED_LABEL) != "true":
        return "kept: it was not created by smarter-cni"
    for container in (network.get("Containers") or {}):
        docker.request("POST", f"/networks/{quote(conf.docker_network)}/disconnect",
                       {"Container": container, "Force": True})
    status, data = docker.request("DELETE", f"/networks/{quote(conf.docker_network)}")
    if status not in (200, 204, 404):
        raise CLIError(f"cannot remove Docker network {conf.docker_network}: {data}",
                       f"remove it by hand: docker network rm {conf.docker_network}")
    return "removed"


def _remove_state(conf: NetConf | None, force: bool) -> str:
    """Drop this network's records; then the files smarter-cni writes (paths.STATE_FILES)."""
    directory = paths.state_dir()
    if not os.path.isdir(directory):
        return "not there"
    with store.Transaction(directory) as tx:
        keys = [k for k, r in tx.attachments.items() if conf is None or r.get("network") == conf.name]
        for key in keys:
            tx.attachments.pop(key, None)
        if conf is not None and tx.networks.pop(conf.name, None) is not None:
            keys.append(conf.name)
        tx.dirty = bool(keys)
        remaining = bool(tx.attachments) or bool(tx.networks)
    if remaining:
        return "kept: another network's state lives there too"
    kept = []
    for name in os.listdir(directory):
        if paths.is_state_file(name):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                kept.append(name)
        else:
            kept.append(name)
    try:
        os.rmdir(directory)
    except OSError:
        return f"kept {len(kept)} file(s) smarter-cni did not write: {', '.join(sorted(kept)[:5])}"
    return ""
