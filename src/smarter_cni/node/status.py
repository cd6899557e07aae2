"""`smarter-cni status` and `smarter-cni pods`: what this node is doing, at a glance.

Read-only: they look at files, links, the Docker API and the DNS service's
answers, and never change anything, so they are safe to run at any time
(and `pods` does not need root when the state file is readable).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from .. import ipv4, paths, reconcile, store
from ..cni.errors import CNIError
from ..conflist import CONFLIST_NAME, ConfigError, find, netconf_of
from ..dns.probe import dns_answers
from . import service
from .console import CLIError, Output
from .record import LOOPBACK_MARKER, load_record, own_file

# ---------------------------------------------------------------- finding the install

def find_config(conf_dir: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """(path, conflist) of the installed config: --cni-conf-dir, the install record, defaults."""
    return find([load_record().get("conf_dir")], explicit=conf_dir)


def bin_dir_of(bin_dir: str | None = None) -> str:
    return bin_dir or load_record().get("bin_dir") or paths.DEFAULT_CNI_BIN_DIR


# ---------------------------------------------------------------- status

class Report:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.problems: list[dict[str, str]] = []

    def problem(self, what: str, fix: str) -> None:
        self.problems.append({"problem": what, "fix": fix})


def collect(conf_dir: str | None = None, bin_dir: str | None = None) -> Report:
    report = Report()
    path, conflist = find_config(conf_dir)
    report.data["config"] = path
    if path is None:
        report.problem(f"no {CONFLIST_NAME} found", "run `sudo smarter-cni install`")
        return report
    if conflist is None:
        report.problem(f"{path} is not valid JSON", "run `sudo smarter-cni install` to rewrite it")
        return report
    try:
        conf = netconf_of(conflist)
    except ConfigError as err:
        report.problem(f"{path}: {err.message}", "run `sudo smarter-cni install` to rewrite it")
        return report
    record = load_record()
    report.data.update({"mode": conf.mode, "network": conf.name, "domain": conf.domain,
                        "families": ["ipv4"] * conf.ipv4 + ["ipv6"] * (conf.subnet6 is not None),
                        "installed_version": record.get("version")})
    if conf.ipv4:  # an IPv6-only network has no IPv4 subnet, gateway or (usually) DNS address
        report.data.update({"subnet": conf.cidr(), "gateway": conf.gateway_text()})
    if conf.dns_address:
        report.data["dns_address"] = conf.dns_address
    if conf.subnet6 is not None:  # dual-stack or IPv6 only (issue 13)
        report.data.update({"subnet6": conf.cidr6(), "gateway6": conf.gateway6_text(),
                            "dns_address6": conf.dns_address6})

    bins = bin_dir_of(bin_dir)
    plugin = os.path.join(bins, "smarter-cni")
    report.data["plugin"] = plugin if os.access(plugin, os.X_OK) else None
    if report.data["plugin"] is None:
        report.problem(f"the plugin is missing from {bins}", "run `sudo smarter-cni install`")
    loop = os.path.join(bins, "loopback")
    report.data["loopback"] = ("smarter-cni (Python)" if own_file(loop, LOOPBACK_MARKER)
                               else "present" if os.access(loop, os.X_OK) else None)
    if report.data["loopback"] is None:
        report.problem(f"no loopback plugin in {bins} (containerd runs it for every pod)",
                       "run `sudo smarter-cni install`, which adds one")

    _network_status(report, conf)
    # "dns" is the main listener: the IPv4 one, or on an IPv6-only node the IPv6 one
    main = conf.dns_addresses()[0]
    answered, said = dns_answers(main, conf.domain, 1.0)
    report.data["dns"] = {"address": main, "answering": answered, "answer": said,
                          "service": record.get("dns_service", "unknown")}
    if not answered:
        report.problem(f"the node DNS service does not answer on "
                       f"{reconcile.address_port(main, 53)} ({said})", _dns_fix(record))
    else:
        report.data["dns"]["metrics"], kube = _dns_counters(main)
        if kube:  # `dns --kubeconfig` / `--in-cluster`: which credentials, which API server
            report.data["dns"]["kube"] = kube
        watch_problems(report, report.data["dns"]["metrics"] or {}, record, kube)
    if conf.dns_address6 and conf.dns_address6 != main:  # the IPv6 listener is asked as well
        answered6, said6 = dns_answers(conf.dns_address6, conf.domain, 1.0)
        report.data["dns6"] = {"address": conf.dns_address6, "answering": answered6,
                               "answer": said6}
        if not answered6:
            report.problem(f"the node DNS service does not answer on [{conf.dns_address6}]:53 "
                           f"({said6})", _dns_fix(record))
    _pool_status(report, conf)
    report.data["resident"] = resident_status()
    _heal_status(report, conf, record)
    return report


def resident_status(directory: str | None = None) -> dict[str, Any]:
    """The resident plugin server's pool as it last wrote it (plugin.pool), if it runs.

    Not a problem when it does not: the plugin then works in its own process."""
    import json

    directory = directory or paths.state_dir()
    try:
        with open(os.path.join(directory, paths.PLUGIN_POOL)) as handle:
            pool = json.load(handle)
        os.kill(int(pool["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {"running": False}
    pool["running"] = os.path.exists(os.path.join(directory, paths.PLUGIN_SOCKET))
    try:
        until = os.stat(os.path.join(directory, paths.PLUGIN_UNRESPONSIVE)).st_mtime
    except OSError:
        until = 0.0
    pool["unresponsive_until"] = until if until > time.time() else None
    return pool


def resident_summary(pool: dict[str, Any]) -> str:
    if not pool.get("running"):
        return "not running: the plugin does its work in its own process"
    text = (f"{pool['mode']} pool, {pool['workers']} worker(s) ({pool['idle']} idle, "
            f"{pool['max_workers']} at most), {pool['served']} requests served, "
            f"{pool['ended']} worker(s) ended mid-request")
    if pool.get("unresponsive_until"):
        text += (", skipped by the plugin until "
                 + time.strftime("%H:%M:%S", time.localtime(pool["unresponsive_until"])))
    return text


def _heal_status(report: Report, conf: Any, record: dict[str, Any]) -> None:
    """Drift (what is not whole now: each one a problem) and the last repairs (history)."""
    heal = reconcile.summary(conf, paths.state_dir(), conf.dns_address,
                             dns_address6=conf.dns_address6)
    report.data["drift"], report.data["repairs"] = heal["drift"], heal["repairs"]
    if conf.mode == "docker":
        fix = ("the node DNS service's reconciler recreates a missing Docker network it "
               "knows (installed or used by a pod here); otherwise run "
               "`sudo smarter-cni install --mode docker`")
    elif reconcile.network_is_ours(conf, paths.state_dir()):
        fix = ("the node DNS service's reconciler restores this within seconds "
               f"({reconcile.INTERVAL_ENV}); if it stays, see its log: "
               + service.dns_log_hint(record.get("dns_service", "")))
    else:
        fix = ("nothing set this network up since the last boot (normal until the first pod "
               "starts): start a pod, or run `sudo smarter-cni install`")
    for item in heal["drift"]:
        if not _said_already(report, item):
            report.problem(item, fix)


def _said_already(report: Report, item: str) -> bool:
    """Drift that a check above reported with a more specific fix: the DNS service's
    answer (on either family's address), Docker's answer, the Docker network's presence
    and DNS reservation."""
    if item.startswith("DNS "):
        dns6 = report.data.get("dns6")
        asked = dns6 if dns6 and dns6["address"] in item else report.data["dns"]
        return not asked["answering"]
    if item.startswith(("dockerd ", "docker network")):
        return report.data.get("network_present") is not True or "is not reserved" in item
    return False


def _dns_counters(address: str) -> tuple[dict[str, float] | None, dict[str, dict[str, str]]]:
    """The DNS service's main counters from its metrics endpoint (None: not served there),
    and the credentials and API server of its Kubernetes watches ({}: none run)."""
    from ..dns import metrics

    try:
        parsed = metrics.fetch_metrics(address, timeout=1.0)
        return metrics.counters_of(parsed), metrics.watch_info(parsed)
    except (OSError, ValueError, KeyError):
        return None, {}


def watch_problems(report: Report, counters: dict[str, float], record: dict[str, Any],
                   kube: dict[str, dict[str, str]] | None = None) -> None:
    """A Kubernetes watch of the DNS service (`dns --kubeconfig` / `--in-cluster`) that is
    not up: its names keep their last answers, but changes no longer reach them. A 401 or
    403 says which credentials to fix (`kube`: metrics.watch_info)."""
    from ..incluster import RBAC_HINT

    for key, value in counters.items():
        if not (key.startswith("watch_") and key.endswith("_up")) or value:
            continue
        resource = key[len("watch_"):-len("_up")]
        info = (kube or {}).get(resource, {})
        in_cluster = info.get("credentials") == "in-cluster"
        server = f" {info['server']}" if info.get("server") else ""
        status = int(counters.get(f"watch_{resource}_status", 0))
        log_hint = "; its log: " + service.dns_log_hint(record.get("dns_service", ""))
        if status == 401:
            why = (": HTTP 401, the service account token is refused" if in_cluster
                   else ": HTTP 401, the kubeconfig's credentials are refused")
            fix = ("the token is expired, revoked or from another cluster: check the pod's "
                   "token mount (automountServiceAccountToken: true) and that --api-server "
                   "is this cluster's API server (docs/k3s.md)" if in_cluster
                   else "give the DNS service a kubeconfig this API server accepts "
                        "(docs/k3s.md)")
        elif status == 403:
            why = f": HTTP 403, RBAC does not allow list and watch on {resource}"
            fix = (RBAC_HINT if in_cluster else
                   "the kubeconfig's user needs get, list and watch on services and "
                   "endpointslices (discovery.k8s.io) (docs/k3s.md)")
        else:
            why = f" (HTTP {status})" if status else ""
            fix = ("check that the API server is reachable at --api-server, the service "
                   "account's token and ca.crt, and the RBAC (docs/k3s.md)" if in_cluster
                   else "check the kubeconfig it was given and that its user may list and "
                        f"watch {resource} (docs/k3s.md)")
        report.problem(f"the node DNS service is not watching {resource} on the API "
                       f"server{server}{why} (the last known answers are kept; changes are "
                       "not seen)", fix + log_hint)


def _dns_fix(record: dict[str, Any]) -> str:
    kind = record.get("dns_service")
    if kind == "systemd":
        return (f"sudo systemctl restart {service.UNIT_NAME}; "
                f"logs: journalctl -u {service.UNIT_NAME}")
    if kind == "supervisor":
        return ("run `sudo smarter-cni install` again to restart it; logs: "
                + service.dns_log_hint("supervisor"))
    return "start it: run `sudo smarter-cni install` (or the DaemonSet runs `smarter-cni dns`)"


def _network_status(report: Report, conf: Any) -> None:
    if conf.mode == "bridge":
        present = os.path.isdir(f"/sys/class/net/{conf.bridge}/bridge")
        address = f"{conf.gateway_text()}/{conf.prefix}" if conf.ipv4 else \
            f"{conf.gateway6_text()}/{conf.prefix6}"
        has_gateway = False
        if present:
            from ..run import run

            done = run(["ip", "-o", "-4" if conf.ipv4 else "-6", "addr", "show", "dev", conf.bridge])
            has_gateway = f" {address} " in done.stdout.decode("utf-8", "replace")
        report.data["network_present"] = present
        report.data["bridge"] = {"name": conf.bridge, "present": present,
                                 "gateway_address": has_gateway}
        return  # a missing bridge or address is drift, reported by _heal_status
    try:
        from ..dataplane import docker_mode

        network = docker_mode.client(conf, 3.0).inspect_network(conf.docker_network)
    except CNIError as err:
        report.data["network_present"] = None
        report.problem(f"cannot ask Docker about network {conf.docker_network}: {err.msg}",
                       "start Docker (systemctl start docker) and check /var/run/docker.sock")
        return
    report.data["network_present"] = network is not None
    report.data["docker_network"] = {"name": conf.docker_network, "present": network is not None,
                                     "id": (network or {}).get("Id", "")[:12]}
    if network is None:
        report.problem(f"Docker network {conf.docker_network} does not exist",
                       "run `sudo smarter-cni install --mode docker`")
        return
    from ..dataplane.docker_network import install_command, unreserved_dns_error

    unsafe = unreserved_dns_error(network, conf)
    if unsafe is not None:
        report.problem(f"Docker network {conf.docker_network} does not reserve the node DNS address "
                       f"{conf.dns_address}: pods could be given it", f"run `{install_command(conf)}`")


def _pool_status(report: Report, conf: Any) -> None:
    try:
        attachments = store.load().get("attachments", {})
    except CNIError as err:
        report.problem(err.msg, f"check {paths.state_dir()}")
        attachments = {}
    used = [r for r in attachments.values() if r.get("network") == conf.name]
    size = conf.range_end - conf.range_start + 1
    if not conf.ipv4:  # IPv6 only: the IPv6 pool (the gateway is outside its range)
        size = conf.range6_end - conf.range6_start + 1
    elif conf.range_start <= conf.gateway <= conf.range_end:
        size -= 1
    if conf.mode == "docker" and conf.range_start <= ipv4.to_int(conf.dns_address) <= conf.range_end:
        size -= 1
    report.data["pods"] = len(used)
    report.data["pool"] = {"used": len(used), "size": size,
                           "percent": round(100.0 * len(used) / size, 1) if size > 0 else 100.0}
    if size > 0 and len(used) >= 0.9 * size:
        report.problem(f"the address pool is {len(used)}/{readable_count(size)} used",
                       "use a larger --subnet, or remove pods")


def readable_count(count: int) -> str:
    """A pool size as people read it: exact up to a million, else as a power of two with
    its order of magnitude (an IPv6 /64 pool: "~2^64 (1.8e19)", not 20 digits)."""
    if count < 1_000_000:
        return str(count)
    mantissa, power = f"{count:.1e}".split("e")
    magnitude = f"{mantissa}e{int(power)}"
    exponent = round(math.log2(count))
    if abs(count - 2 ** exponent) <= count // 100:  # a prefix's pool, less a few addresses
        return f"~2^{exponent} ({magnitude})"
    return magnitude


def status(out: Output, conf_dir: str | None = None, bin_dir: str | None = None) -> int:
    report = collect(conf_dir, bin_dir)
    data = dict(report.data)
    data["problems"] = report.problems
    data["ok"] = not report.problems
    if out.as_json:
        out.emit(data)
        return 0 if data["ok"] else 1
    rows = [("config", data.get("config") or "not found")]
    if "mode" in data:
        rows.append(("mode", data["mode"]))
        ranges = [f"{data[subnet]} via {data[gateway]}" for subnet, gateway in
                  (("subnet", "gateway"), ("subnet6", "gateway6")) if data.get(subnet)]
        only = "  (IPv6 only)" if data.get("families") == ["ipv6"] else ""
        rows.append(("network", f"{data['network']}  {', '.join(ranges)}{only}"))
        if "bridge" in data:
            bridge = data["bridge"]
            rows.append(("bridge", f"{bridge['name']}: "
                         + ("present" if bridge["present"] else "MISSING")))
        if "docker_network" in data:
            net = data["docker_network"]
            rows.append(("docker network", f"{net['name']}: "
                         + (f"present ({net['id']})" if net["present"] else "MISSING")))
        if "plugin" in data:
            rows.append(("plugin", data["plugin"] or "MISSING"))
            rows.append(("loopback", data["loopback"] or "MISSING"))
        dns = data.get("dns")
        if dns:
            state = f"answering ({dns['answer']})" if dns["answering"] else f"NOT answering: {dns['answer']}"
            rows.append(("dns", f"{reconcile.address_port(dns['address'], 53)} {state}, "
                                f"service: {dns['service']}"))
            dns6 = data.get("dns6")
            if dns6:
                state6 = f"answering ({dns6['answer']})" if dns6["answering"] else \
                    f"NOT answering: {dns6['answer']}"
                rows.append(("dns6", f"{reconcile.address_port(dns6['address'], 53)} {state6}"))
            if dns.get("metrics"):
                from ..dns.metrics import DEFAULT_PORT, summary, watch_summary

                rows.append(("counters", summary(dns["metrics"])))
                watches = watch_summary(dns["metrics"], dns.get("kube"))
                if watches:  # `dns --kubeconfig`/`--in-cluster`: Services, EndpointSlices
                    rows.append(("kube watch", watches))
                rows.append(("metrics", f"http://{reconcile.address_port(dns['address'], DEFAULT_PORT)}"
                                        "/metrics"))
        if "resident" in data:
            rows.append(("resident", resident_summary(data["resident"])))
        pool = data.get("pool")
        if pool:
            rows.append(("pool", f"{pool['used']}/{readable_count(pool['size'])} addresses used "
                                 f"({pool['percent']}%)"))
        if "drift" in data:
            rows.append(("drift", f"{len(data['drift'])} (listed below)" if data["drift"]
                         else "none: the network is whole"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.say(f"{key.ljust(width)}  {value}")
    if data.get("repairs"):
        out.say("")
        out.say("last repairs:")
        for entry in data["repairs"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time") or 0))
            out.say(f"  {when}  {entry.get('by', '?'):<10}  {entry.get('network', '?')}: "
                    f"{entry.get('what', '?')}")
    if report.problems:
        out.say("")
        out.say(f"{len(report.problems)} problem(s):")
        for item in report.problems:
            out.say(f"  - {item['problem']}")
            out.say(f"    fix: {item['fix']}")
        return 1
    out.say("")
    out.say("no problems found")
    return 0


# ---------------------------------------------------------------- pods

def age(seconds: float) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def pod_rows(now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for record in store.load().get("attachments", {}).values():
        pod = record.get("pod") or {}
        addresses = [cidr.split("/", 1)[0] for cidr in record.get("ips") or []
                     if isinstance(cidr, str)]
        created = record.get("created")
        rows.append({
            "name": pod.get("name", ""),
            "namespace": pod.get("namespace", ""),
            "hostname": pod.get("hostname", ""),
            "address": ",".join(addresses),
            "container": str(record.get("container_id", "")),
            "network": record.get("network", ""),
            "mode": record.get("mode", ""),
            "ready": bool(record.get("ready")),
            "created": created,
            "age_seconds": round(now - created, 1) if isinstance(created, (int, float)) else None,
        })
    rows.sort(key=lambda r: (r["namespace"], r["name"], r["container"]))
    return rows


def pods(out: Output) -> int:
    try:
        rows = pod_rows()
    except CNIError as err:
        raise CLIError(err.msg, f"check {paths.state_dir()} (run as root?)") from None
    if out.as_json:
        out.emit(rows)
        return 0
    if not rows:
        out.say(f"no pods attached (state: {store.records_path()})")
        return 0
    table = []
    for row in rows:
        name = row["name"] or "-"
        if not row["ready"]:
            name += " (not ready)"
        table.append((name, row["namespace"] or "-", row["hostname"] or "-", row["address"] or "-",
                      row["container"][:12] or "-",
                      age(row["age_seconds"]) if row["age_seconds"] is not None else "?"))
    out.table(("NAME", "NAMESPACE", "HOSTNAME", "ADDRESS", "CONTAINER", "AGE"), table)
    return 0
