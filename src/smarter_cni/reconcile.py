"""Keep the node's network whole: look every few seconds, restore what is missing.

The per-network pieces (bridge, its address, the pods' ports on it,
forwarding, the FORWARD accepts and the NAT rules, the DNS address and the
DNS listener) are set up once, so a firewall reload, another tool's flush or
an operator's `ip link del` would otherwise break the node silently. The
node DNS service runs `Reconciler` in a thread; each repair is logged on
one line and kept in `repairs.json` (repairs.py) for `status`.

Cost while all is well, per tick: a few sysfs reads, one netlink address
dump, one `iptables-save` exec, one bind test and one DNS query to itself.

Only a network this node has set up (a marker in the state file, written by
the plugin's ADD) is rebuilt: a service pointed at a config whose network
was never created here must not create bridges or rules by itself.
Docker mode: a missing Docker network is recreated (with the DNS address
reserved) only when this node claimed it (install or a pod's ADD wrote the
marker); anything else about it is reported once, never changed.
"""

from __future__ import annotations

import os
import threading
import time

from . import ipv4, store
from .cni.errors import CNIError
from .dns.acl import host_has
from .dns.log import log  # the DNS service's own logger: `logging` costs ~1.3 MB there
from .dns.probe import dns_answers
from .repairs import note_repairs, recent_repairs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .netconf import NetConf

DEFAULT_INTERVAL = 2.0
INTERVAL_ENV = "SMARTER_CNI_RECONCILE_INTERVAL"  # seconds; 0 turns the reconciler off
LISTENER_FAILURES_BEFORE_REPORT = 2
PROBE_TIMEOUT = 1.0  # seconds the reconciler waits for its own DNS query's answer


# ---------------------------------------------------------------- checks

def network_is_ours(conf: NetConf, directory: str | None = None) -> bool:
    """Set up on this node by smarter-cni (the marker ADD writes), so ours to keep whole."""
    try:
        return conf.name in store.load(directory)["networks"]
    except CNIError:
        return False


def docker_network_is_ours(conf: NetConf, directory: str | None = None) -> bool:
    """Claimed by this node for this Docker network (docker_mode.claim_network or an ADD)."""
    try:
        marker = store.load(directory)["networks"].get(conf.name)
    except CNIError:
        return False
    return isinstance(marker, dict) and marker.get("mode") == "docker" and \
        marker.get("docker_network") == conf.docker_network


def check(conf: NetConf, directory: str | None = None, dns_address: str = "",
          dns_port: int = 53, dns_address6: str = "") -> list[str]:
    """What is wrong with the network and the node DNS, one sentence each ([] = whole).

    For `smarter-cni status`; the reconciler repairs these. Bridge mode: the
    bridge, its address and ports, forwarding, FORWARD and NAT rules. Docker
    mode: dockerd answers and the Docker network exists. Both: each DNS
    address given (`dns_address`, and `dns_address6` when the service also
    listens on IPv6) is the node's and the service answers on it (pass "" to
    skip one).
    """
    problems = []
    if conf.mode == "bridge":
        from .dataplane import bridge_network

        try:
            state = store.load(directory)
        except CNIError as err:
            state = {"attachments": {}, "networks": {}}
            problems.append(err.msg)
        conf = as_recorded(conf, state["networks"].get(conf.name))
        problems += bridge_network.network_problems(conf, state["attachments"])
    else:
        problems += _docker_problems(conf)
    for address in (dns_address, dns_address6):
        if address:
            problems += dns_problems(address, conf.domain, dns_port)
    return problems


def dns_problems(address: str, domain: str, port: int = 53) -> list[str]:
    """The DNS address (either family) is the node's and the service answers there."""
    if not host_has(address):
        return [f"DNS address {address} is not on the node"]
    if not dns_answers(address, domain, port=port)[0]:
        return [f"DNS service does not answer on {address_port(address, port)}"]
    return []


def address_port(address: str, port: int) -> str:
    """'169.254.0.2:53', '[fd00:169:254::2]:53': as an operator would type it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def summary(conf: NetConf, directory: str | None = None, dns_address: str = "",
            dns_port: int = 53, last: int = 10, dns_address6: str = "") -> dict[str, Any]:
    """For `smarter-cni status`: {"drift": check()'s list, "repairs": the last `last`
    repairs, oldest first}. Drift is a problem (exit 1); repairs are history."""
    return {"drift": check(conf, directory, dns_address, dns_port, dns_address6),
            "repairs": recent_repairs(directory)[-last:] if last > 0 else []}


def _docker_problems(conf: NetConf) -> list[str]:
    from .dataplane.docker_mode import client, network_conflicts

    try:
        network = client(conf, 2.0).inspect_network(conf.docker_network)
    except CNIError as err:
        return [f"dockerd does not answer on {conf.docker_socket}: {err.msg}"]
    if network is None:
        return [f"docker network {conf.docker_network} is missing"]
    return [f"docker network {conf.docker_network}: {p}" for p in network_conflicts(network, conf)]


# ---------------------------------------------------------------- the loop

class Listener:
    """One address the DNS service answers on (IPv4, or the IPv6 `dnsAddress6`), as the
    reconciler watches it: its Server (for the query counter) and missed probes in a row."""

    __slots__ = ("address", "server", "failures")

    def __init__(self, address: str, server: Any = None) -> None:
        self.address = address
        self.server = server
        self.failures = 0

    def queries(self) -> int:
        stats = getattr(self.server, "stats", None)
        return int(getattr(stats, "queries", -1))


class Reconciler(threading.Thread):
    """Checks every `interval` seconds and repairs; one log line per repair."""

    def __init__(self, conf: NetConf, directory: str, dns_address: str = "", dns_port: int = 53,
                 dns_interface: str | None = None, interval: float = DEFAULT_INTERVAL,
                 server: Any = None, dns_address6: str = "", server6: Any = None) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.conf = conf
        self.directory = directory
        self.dns_address = dns_address
        self.dns_address6 = dns_address6
        self.dns_port = dns_port
        self.dns_interface = dns_interface  # None: the addresses are not ours to add
        self.interval = interval
        self.server = server  # the DNS Server: its .stop flag and query counter
        # the IPv6 listener is a second Server (dns/listen6.py), with a counter of its own
        self.listeners = [Listener(address, owner) for address, owner in
                          ((dns_address, server), (dns_address6, server6)) if address]
        self.halt = threading.Event()
        self.reported: dict[str, set[str]] = {}  # unrepairable problems, logged once each
        self.loose: set[str] = set()  # pod veths off the bridge at the last look
        self.network_missing = False  # the Docker network was missing at the last look
        self.ticks = 0

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            if self.stopping():
                return
            try:
                self.tick()
            except Exception as err:  # a bug here must never take the DNS service down
                log.error("reconciler: unexpected error: %r", err)

    def stop(self) -> None:
        self.halt.set()

    def stopping(self) -> bool:
        return self.halt.is_set() or bool(getattr(self.server, "stop", False))

    def tick(self) -> list[str]:
        """One look; returns the repairs made."""
        self.ticks += 1
        repairs = []
        if self.conf.mode == "bridge":
            repairs += self._bridge()
        else:
            repairs += self._docker()
        if self.listeners:
            repairs += self._dns()
        return repairs

    def _report(self, kind: str, problems: list[str]) -> None:
        seen = self.reported.get(kind, set())
        for problem in problems:
            if problem not in seen:
                log.warning("network %s: %s (not repaired by the reconciler)", self.conf.name,
                            problem)
        gone = seen - set(problems)
        if gone:  # so a log reader sees when an outage (e.g. a dockerd restart) ended
            log.info("network %s: no longer: %s", self.conf.name, "; ".join(sorted(gone)))
        self.reported[kind] = set(problems)

    def _docker(self) -> list[str]:
        """Recreate the Docker network if it is gone and ours; report anything else.

        Docker refuses to remove a network with endpoints, so a missing one has
        nothing attached: recreating it with the config's subnet, gateway and the
        reserved DNS address (ensure_network, the installer's call) loses nothing.
        """
        problems = _docker_problems(self.conf)
        missing = f"docker network {self.conf.docker_network} is missing"
        # Missing at two looks in a row: the installer's migration (remove, then create
        # with the reservation) or an operator's rm-and-create is never raced.
        seen_missing, self.network_missing = self.network_missing, problems == [missing]
        if not (seen_missing and self.network_missing) or self.stopping() \
                or not docker_network_is_ours(self.conf, self.directory):
            self._report("docker", [p for p in problems if p != missing or seen_missing])
            return []
        from .dataplane.docker_network import ensure_network

        started = time.monotonic()
        try:
            network_id = ensure_network(self.conf)
        except CNIError as err:
            log.error("network %s: %s and cannot be recreated: %s", self.conf.name, missing,
                      err.msg)
            self.reported["docker"] = {missing}
            return []
        took = (time.monotonic() - started) * 1000
        problem = f"{missing}" + (f" (recreated as {network_id[:12]}, DNS address "
                                  f"{self.conf.dns_address} reserved)")
        log.warning("repaired network %s: %s (%.0f ms)", self.conf.name, problem, took)
        note_repairs(self.conf.name, [problem], "reconciler", self.directory)
        _count_repairs("docker-network", 1)
        self.reported["docker"] = set()
        self.network_missing = False
        return [problem]

    def _bridge(self) -> list[str]:
        from .dataplane import bridge_network

        try:
            state = store.load(self.directory)
        except CNIError as err:
            self._report("state", [err.msg])
            return []
        marker = state["networks"].get(self.conf.name)
        if not marker or marker.get("mode") == "docker":
            return []  # never set up here (or set up as a Docker network): not ours to build
        # the range the last ADD set the network up with (ipRanges, podCIDRs), not the file's
        conf = as_recorded(self.conf, state["networks"][self.conf.name])
        problems = bridge_network.network_problems(conf)
        # A port seen off the bridge on two looks in a row: a pod's veth is briefly
        # without a master while its ADD or DEL runs, and that is no drift.
        loose = set(bridge_network.detached_ports(conf, state["attachments"]))
        steady, self.loose = loose & self.loose, loose
        if not problems and not steady:
            self._vouch(bridge_network.verified_path(conf, self.directory))
            return []
        started = time.monotonic()
        with store.Transaction(self.directory) as tx:
            if self.conf.name not in tx.networks:
                return []
            conf = as_recorded(self.conf, tx.networks[self.conf.name])
            # again under the lock: an ADD may have repaired it meanwhile
            problems = bridge_network.network_problems(conf)
            steady &= set(bridge_network.detached_ports(conf, tx.attachments))
            if steady:
                problems.append(f"{len(steady)} pod veth(s) not on {conf.bridge}: "
                                + ", ".join(sorted(steady)[:5]))
            if not problems or self.stopping():
                return []
            try:
                bridge_network.setup_network(conf, tx.attachments)
            except CNIError as err:
                log.error("network %s: cannot repair (%s): %s", conf.name,
                          "; ".join(problems), err.msg)
                return []
            tx.networks[conf.name] = bridge_network.network_marker(conf)
            tx.dirty = True
            note_repairs(conf.name, problems, "reconciler", self.directory)
            _count_repairs("network", len(problems))
        took = (time.monotonic() - started) * 1000
        for problem in problems:
            log.warning("repaired network %s: %s (%.0f ms)", conf.name, problem, took)
        return problems

    def _vouch(self, path: str) -> None:
        """Tell ADD the rules were whole just now (valid for two intervals; see
        bridge_network.rules_verified), so a pod's ADD needs no iptables exec of its own."""
        temp = f"{path}.tmp"
        try:
            with open(temp, "w") as handle:
                handle.write(f"{time.time() + 2 * self.interval + 1:.3f}")
            os.replace(temp, path)
        except OSError:
            pass

    def _dns(self) -> list[str]:
        """Each DNS address (both families alike): restore it if it is gone and ours, then
        probe its listener."""
        repairs = []
        for listener in self.listeners:
            repairs += self._dns_address(listener.address)
            self._dns_listener(listener)
        return repairs

    def _dns_address(self, address: str) -> list[str]:
        kind = f"dns {address}"
        if host_has(address):
            self._report(kind, [])
            return []
        if self.dns_interface is None or self.stopping():
            self._report(kind, [f"DNS address {address} is not on the node"])
            return []
        from .dns.address import AddressSetupError, ensure_address

        try:
            where = ensure_address(address, self.dns_interface)
        except AddressSetupError as err:
            log.error("DNS address %s is missing and cannot be restored: %s", address, err)
            return []
        problem = f"DNS address {address} was missing ({where})"
        log.warning("repaired %s", problem)
        note_repairs(self.conf.name, [problem], "reconciler", self.directory)
        _count_repairs("dns", 1)
        return [problem]

    def _dns_listener(self, listener: Listener) -> None:
        queries = listener.queries()
        if dns_answers(listener.address, self.conf.domain, PROBE_TIMEOUT, self.dns_port)[0] or \
                listener.queries() > queries >= 0:  # busy: our probe dropped, but the loop runs
            if listener.failures:
                log.warning("DNS listener on %s answers again",
                            address_port(listener.address, self.dns_port))
            listener.failures = 0
            return
        listener.failures += 1
        if listener.failures == LISTENER_FAILURES_BEFORE_REPORT:
            # Reported, not acted on: exiting for the supervisor to restart us would turn a
            # host firewall that drops only this probe into a restart loop.
            log.error("DNS listener on %s did not answer %d checks in a row",
                      address_port(listener.address, self.dns_port), listener.failures)


def _count_repairs(kind: str, count: int) -> None:
    """Into the DNS service's metrics (smarter_cni_node_repairs_total{kind})."""
    from .dns import metrics

    for _ in range(count):
        metrics.count_repair(kind)


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", INTERVAL_ENV, text, default)
        return default
    return max(value, 0.0)


def start(conf: NetConf, directory: str, dns_address: str, dns_port: int,
          dns_interface: str | None, server: Any = None, dns_address6: str = "",
          server6: Any = None) -> Reconciler | None:
    """The DNS service's hook: start the thread (unless the interval is 0). `dns_address6`
    and `server6`: the IPv6 listener (dnsAddress6), watched and restored alike."""
    interval = interval_from_env()
    if interval <= 0:
        log.info("reconciler off (%s=0)", INTERVAL_ENV)
        return None
    reconciler = Reconciler(conf, directory, dns_address, dns_port, dns_interface, interval,
                            server, dns_address6, server6)
    reconciler.start()
    log.info("reconciler: checking network %s every %g s", conf.name, interval)
    return reconciler


def as_recorded(conf: NetConf, marker: dict | None) -> NetConf:
    """`conf` (from the installed conflist) narrowed to the node range the network was last
    set up with: the state's network marker ("pods", "gateway"), which an ADD with
    `ipRanges` or `podCIDRs` wrote. For the DNS service's reconciler, so that it keeps the
    range's gateway on the bridge instead of restoring the configured one (and the next
    ADD undoing that). `conf` itself when the marker names no other range of its network.
    """
    if not isinstance(marker, dict) or marker.get("cidr") != conf.cidr():
        return conf
    pods, gateway = marker.get("pods"), marker.get("gateway")
    if not isinstance(pods, str) or not isinstance(gateway, str) or \
            (pods == conf.subnet_text() and gateway == conf.gateway_text()):
        return conf
    try:
        subnet, prefix = ipv4.parse_cidr(pods)
        gateway_int = ipv4.to_int(gateway)
    except ipv4.AddressError:
        return conf
    if not ipv4.contains(subnet, prefix, gateway_int):
        return conf
    narrowed = type(conf)()
    for slot in type(conf).__slots__:
        if hasattr(conf, slot):
            setattr(narrowed, slot, getattr(conf, slot))
    narrowed.subnet, narrowed.prefix, narrowed.gateway = subnet, prefix, gateway_int
    narrowed.range_start = subnet + 1
    narrowed.range_end = ipv4.broadcast(subnet, prefix) - 1
    narrowed.range_source = "recorded"
    return narrowed
