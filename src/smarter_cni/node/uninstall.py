"""`smarter-cni uninstall`: undo what the install record says install made, and nothing else.

Without a record it refuses and says how to point it at the install: it
never falls back to default dirs, unit paths, interfaces or networks, since
those may belong to another installation. `--purge` removes the program by
install.sh's own record (program.json); the state dir loses only the files
smarter-cni writes there (paths.STATE_FILES).
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from .. import paths, store
from ..conflist import CONFLIST_NAME
from ..dns.address import remove_address
from ..netconf import NetConf
from . import service
from .console import CLIError, Output
from .families import previous_conf
from .record import (
    LOOPBACK_MARKER,
    PLUGIN_MARKER,
    forget_record,
    load_program_record,
    load_record,
    own_file,
    prefix,
    program_record_path,
    record_path,
)

if TYPE_CHECKING:
    from ..store import Attachment


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
    if record.get("containerd_template") and record.get("config"):
        conf_path = str(record["config"])  # beside the template, not in the CNI conf dir
    conf = previous_conf(record, conf_path)
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
        if record.get("dns_service") == "systemd" and service.remove_unit(unit):
            kinds.append(f"systemd unit {unit} removed")
        if service.stop_supervisor():
            kinds.append("supervisor stopped")
        # the address install put on the node (IPv6 on an IPv6-only node), as recorded
        address = record.get("dns_address") or (conf.dns_addresses()[0] if conf else "")
        if address:
            interface = record.get("dns_interface") or record.get("dns_address_device", "")
            remove_dns_address(address, record.get("dns_address_device", ""), interface)
        step.detail = ", ".join(kinds) or "none was running"

    with out.step(f"Removing {conf_path}") as step:
        if conf_path and os.path.exists(conf_path):
            os.unlink(conf_path)
            removed.append(conf_path)
        else:
            step.detail = "not there"

    if record.get("containerd_template"):
        from .containerd import RENDERED_NAME, is_ours

        # the template, and the config containerd rendered from it (it would call the
        # plugin removed below)
        rendered_dir = str(record.get("cni_conf_dir") or os.path.dirname(conf_path))
        for path in (record["containerd_template"], os.path.join(rendered_dir, RENDERED_NAME)):
            if is_ours(path):
                os.unlink(path)
                removed.append(path)

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
                from ..dataplane import bridge_network

                bridge_network.teardown_network(conf)
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
    forget_record()
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
    return os.path.join(service.DEFAULT_UNIT_DIR, service.UNIT_NAME) \
        if "dns_interface" not in record else ""


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


def _attached(conf: NetConf | None) -> list[dict[str, Any]]:
    records = store.load().get("attachments", {}).values()
    if conf is None:
        return list(records)
    return [r for r in records if r.get("network") == conf.name]


def _pod_label(record: Attachment) -> str:
    pod = record.get("pod") or {}
    if pod.get("name"):
        return f"{pod.get('namespace') or '?'}/{pod['name']}"
    return str(record.get("container_id", "?"))[:12]


def _remove_pod_links(records: list[Attachment]) -> None:
    from ..run import run

    for record in records:
        host = record.get("host_ifname")
        if host and os.path.exists(f"/sys/class/net/{host}"):
            run(["ip", "link", "del", host])


def _remove_docker_network(conf: NetConf) -> str:
    from ..dataplane import docker_mode
    from ..docker_api import quote
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



def remove_dns_address(address: str, device: str, interface: str) -> None:
    """Take the DNS address off where install put it; drop our dummy interface once empty."""
    if device and os.path.exists(f"/sys/class/net/{device}"):
        remove_address(address, device, drop_empty_dummy=device == interface)
