"""Service names in the node DNS, from ONE list+watch of Services (`dns --kubeconfig`,
or `dns --in-cluster` with the DaemonSet's ServiceAccount: incluster.py).

Answers, TTL 5 s as CoreDNS' kubernetes plugin:

- `SERVICE.NS.svc.DOMAIN` A / AAAA: the cluster IP(s) (which route only where
  kube-proxy runs: docs/k3s.md);
- headless Services (clusterIP None): their ready endpoints' addresses, and
  `HOSTNAME.SERVICE.NS.svc.DOMAIN` each endpoint's own, from a second
  list+watch of only headless Services' EndpointSlices (dns/endpoints.py);
  no ready endpoint (or no credentials for that watch): the name exists
  without data (NOERROR, NODATA);
- `_PORT._PROTO.SERVICE.NS.svc.DOMAIN` SRV for each named port (and SRV at
  the Service name for every port), target the Service name;
- ExternalName: a CNAME to the external name;
- `kubernetes.default.svc.DOMAIN` always: the `kubernetes` Service's cluster IP
  once listed, before that the first address of `--service-cidr` (k3s:
  10.43.0.1). The kubeconfig's server address is no use to pods (127.0.0.1 on
  a k3s server is the pod itself there).
- what a pod's resolver makes of these names with `ndots:5` and the node's
  own search domains, e.g. `web.default.svc.cluster.local.lan`: NXDOMAIN from
  memory, never forwarded (forms under the cluster domain already are).

Pod names (answers.Names) win over a Service of the same name.

The watch (ServiceWatch, a thread) is kubewatch.ListWatch, client-go's
reflector: list, watch from the list's resourceVersion with bookmarks, resume
after a watch ends, relist after 410 Gone, back off on errors. The last known
Services keep answering while the API server is unreachable, also across a
restart of the DNS service (services.json in the state dir; a restart still
lists first thing). At steady state that is one watch request per 7.5 min on
average: ~8 requests per node per hour.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

from . import wire
from .answers import Answer, label_offsets, suffix_offset
from .kubewatch import BACKOFF, WATCH_TIMEOUT, ListWatch, Loader, cached

PATH = "/api/v1/services"

TTL = 5
SRV = 33

# ---------------------------------------------------------------- the table

class Rec:
    """What one name answers: encoded records, or a CNAME (ExternalName)."""

    __slots__ = ("a", "aaaa", "srv", "cname")

    def __init__(self, a: tuple = (), aaaa: tuple = (), srv: tuple = (),
                 cname: bytes | None = None) -> None:
        self.a, self.aaaa, self.srv, self.cname = a, aaaa, srv, cname


def _a(address: str) -> bytes:
    return wire.record(wire.QUESTION_POINTER, wire.A, TTL, socket.inet_aton(address))


def _aaaa(address: str) -> bytes:
    return wire.record(wire.QUESTION_POINTER, wire.AAAA, TTL,
                       socket.inet_pton(socket.AF_INET6, address))


def _srv(port: int, target: bytes) -> bytes:
    return wire.record(wire.QUESTION_POINTER, SRV, TTL, struct.pack("!HHH", 0, 100, port) + target)


def parse_service(obj: Any) -> tuple[str, str, tuple] | None:
    """(namespace, name, compact spec) of a Service object; None when unusable."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        return None
    if spec.get("type") == "ExternalName":
        external = spec.get("externalName")
        return (namespace, name, ("cname", str(external).rstrip(".").lower())) \
            if isinstance(external, str) and external else None
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    ips = tuple(ip for ip in ips if isinstance(ip, str) and ip and ip != "None")
    ports = []
    for port in spec.get("ports") or []:
        if isinstance(port, dict) and isinstance(port.get("port"), int):
            ports.append((str(port.get("name") or "").lower(),
                          str(port.get("protocol") or "TCP").lower(), port["port"]))
    return namespace, name, ("ip", ips, tuple(ports))


class Services:
    """Service names under the cluster domain: {wire name: Rec}, kept by ServiceWatch.

    Writers (the watch thread) replace whole dicts or single keys, then bump
    `generation`; the DNS loop reads `generation` with the registry and
    clears its answer caches when it moved (server.refresh_registry).
    """

    def __init__(self, domain: str, kubernetes_ip: str = "10.43.0.1") -> None:
        self.domain = domain.lower().strip(".")
        self.domain_wire = wire.encode_name(self.domain)
        self.svc_wire = wire.encode_name("svc." + self.domain)
        self.search_junk = self.svc_wire[:-1]  # `.svc.DOMAIN` with more labels after it
        self.specs: dict[tuple[str, str], tuple] = {}
        self.names: dict[bytes, Rec] = {}
        self.owned: dict[tuple[str, str], tuple[bytes, ...]] = {}
        self.nonterminals: dict[bytes, int] = {}
        self.generation = 0
        self.synced = False
        self.kubernetes_key = wire.encode_name(f"kubernetes.default.svc.{self.domain}")
        self.kubernetes_fallback = Rec(a=(_a(kubernetes_ip),),
                                       srv=(_srv(443, self.kubernetes_key),))
        self.endpoints: Any = None  # dns/endpoints.Endpoints: headless Services' endpoints
        self.lock = threading.Lock()

    # -- building

    def _entries(self, namespace: str, name: str, spec: tuple
                 ) -> tuple[list[tuple[bytes, Rec]], list[bytes]]:
        """The names one Service adds and the empty non-terminals under them."""
        try:
            base = wire.encode_name(f"{name}.{namespace}.svc.{self.domain}".lower())
        except (wire.FormatError, UnicodeError):
            return [], []
        parents = [wire.encode_name(f"{namespace}.svc.{self.domain}".lower())]
        if spec[0] == "cname":
            try:
                target = wire.encode_name(spec[1])
            except (wire.FormatError, UnicodeError):
                return [], []
            cname = wire.record(wire.QUESTION_POINTER, wire.CNAME, TTL, target)
            return [(base, Rec(cname=cname))], parents
        _, ips, ports = spec
        a = tuple(_a(ip) for ip in ips if ":" not in ip and _is_v4(ip))
        aaaa = tuple(_aaaa(ip) for ip in ips if ":" in ip and _is_v6(ip))
        entries = []
        all_srv = []
        for port_name, proto, port in ports:
            record = _srv(port, base)
            all_srv.append(record)
            if not port_name:
                continue
            try:
                proto_name = wire.encode_name(f"_{proto}")[:-1] + base
                key = wire.encode_name(f"_{port_name}")[:-1] + proto_name
            except (wire.FormatError, UnicodeError):
                continue
            entries.append((key, Rec(srv=(record,))))
            parents.append(proto_name)
        entries.append((base, Rec(a=a, aaaa=aaaa, srv=tuple(all_srv))))
        return entries, parents

    def replace_all(self, objects: list[Any]) -> None:
        """After a list: the new table in one swap."""
        specs: dict[tuple[str, str], tuple] = {}
        for obj in objects:
            parsed = parse_service(obj)
            if parsed is not None:
                specs[(parsed[0], parsed[1])] = parsed[2]
        self.replace_specs(specs)
        self.synced = True

    def replace_specs(self, specs: dict[tuple[str, str], tuple]) -> None:
        """The table from compact specs (the cache file); `synced` stays as it was."""
        names: dict[bytes, Rec] = {}
        owned: dict[tuple[str, str], tuple[bytes, ...]] = {}
        nonterminals: dict[bytes, int] = {}
        for (namespace, name), spec in specs.items():
            entries, parents = self._entries(namespace, name, spec)
            for key, rec in entries:
                names[key] = rec
            owned[(namespace, name)] = tuple(key for key, _ in entries)
            for parent in parents:
                nonterminals[parent] = nonterminals.get(parent, 0) + 1
        with self.lock:
            self.specs, self.names, self.owned, self.nonterminals = specs, names, owned, nonterminals
            self.generation += 1

    def save(self, path: str) -> None:
        """The known Services, so a restart while the API server is away still answers."""
        from ..files import write_atomic

        with self.lock:
            rows = [[ns, name, spec] for (ns, name), spec in self.specs.items()]
        write_atomic(path, json.dumps({"version": 1, "services": rows}), 0o600)

    def load(self, path: str) -> int:
        """Answer from the cache file until the first list lands; the count loaded."""
        try:
            with open(path, encoding="utf-8") as handle:
                rows = json.load(handle).get("services") or []
            specs = {(str(ns), str(name)): _tuples(spec) for ns, name, spec in rows}
        except (OSError, ValueError, TypeError, AttributeError):
            return 0
        self.replace_specs(specs)
        return len(specs)

    def apply(self, kind: str, obj: Any) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED); True when answers changed."""
        parsed = parse_service(obj)
        if parsed is None:
            return False
        namespace, name, spec = parsed
        key = (namespace, name)
        with self.lock:
            if kind != "DELETED" and self.specs.get(key) == spec:
                return False  # e.g. a label or status change: no answer changes
            if kind == "DELETED" and key not in self.specs:
                return False
            self._drop(key)
            if kind != "DELETED":
                entries, parents = self._entries(namespace, name, spec)
                for name_key, rec in entries:
                    self.names[name_key] = rec
                self.owned[key] = tuple(k for k, _ in entries)
                self.specs[key] = spec
                for parent in parents:
                    self.nonterminals[parent] = self.nonterminals.get(parent, 0) + 1
            self.generation += 1
        return True

    def _drop(self, key: tuple[str, str]) -> None:
        spec = self.specs.pop(key, None)
        for name_key in self.owned.pop(key, ()):
            self.names.pop(name_key, None)
        if spec is None:
            return
        _, parents = self._entries(key[0], key[1], spec)
        for parent in parents:
            left = self.nonterminals.get(parent, 0) - 1
            if left > 0:
                self.nonterminals[parent] = left
            else:
                self.nonterminals.pop(parent, None)

    # -- answering (called by answers.Names.answer for names that are not pods')

    def answer(self, key: bytes, qtype: int, in_class: bool, names: Any) -> Answer | None:
        """The answer for `key` (lowercased wire name), or None: not a Service name."""
        offset = suffix_offset(key, self.domain_wire)
        if offset <= 0:
            if self.search_junk in key and in_class:
                return self._search_junk(key)
            return None
        rec = self.names.get(key)
        if rec is None and key == self.kubernetes_key:
            rec = self.kubernetes_fallback
        if self.endpoints is not None:
            rec = self._endpoints(key, rec)
        if rec is None:
            if key in self.nonterminals:
                return Answer(wire.NOERROR, [], [names._soa(offset)])
            return None
        if not in_class:
            return Answer(wire.REFUSED, [], [])
        if rec.cname is not None:
            return Answer(wire.NOERROR, [rec.cname], [])
        if qtype == wire.A:
            found = rec.a
        elif qtype == wire.AAAA:
            found = rec.aaaa
        elif qtype == SRV:
            found = rec.srv
        elif qtype == wire.ANY:
            found = rec.a + rec.aaaa + rec.srv
        else:
            found = ()
        if found:
            return Answer(wire.NOERROR, list(found), [])
        return Answer(wire.NOERROR, [], [names._soa(offset)])

    def _endpoints(self, key: bytes, rec: Rec | None) -> Rec | None:
        """A headless Service's ready endpoints, or one endpoint's by its hostname
        (`HOSTNAME.SVC.NS.svc.DOMAIN`, only while the headless Service is known)."""
        found = self.endpoints.names.get(key)
        if found is None:
            return rec
        if rec is None:  # a hostname name: its parent must be a headless Service
            rec = self.names.get(key[key[0] + 1:])
            return found if rec is not None and _headless(rec) else None
        return found if _headless(rec) else rec

    def _search_junk(self, key: bytes) -> Answer | None:
        """`x.svc.DOMAIN.lan` and the like: a search-path form, never a real name."""
        start = key.find(self.search_junk)
        offsets = label_offsets(key)
        while start >= 0:
            end = start + len(self.search_junk)
            if start in offsets and end in offsets:
                return Answer(wire.NXDOMAIN, [], [])
            start = key.find(self.search_junk, start + 1)
        return None

    @property
    def count(self) -> int:
        return len(self.specs)


def _headless(rec: Rec) -> bool:
    return rec.cname is None and not rec.a and not rec.aaaa


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples specs are compared as."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _is_v4(text: str) -> bool:
    try:
        socket.inet_aton(text)
        return text.count(".") == 3
    except OSError:
        return False


def _is_v6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
        return True
    except OSError:
        return False


def first_address(cidr: str) -> str:
    """'10.43.0.0/16' -> '10.43.0.1' (the `kubernetes` Service's usual cluster IP)."""
    address, _, prefix = cidr.partition("/")
    value = struct.unpack("!I", socket.inet_aton(address))[0]
    bits = int(prefix or 32)
    mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return socket.inet_ntoa(struct.pack("!I", (value & mask) + 1))


# ---------------------------------------------------------------- the list+watch

class ServiceWatch(ListWatch):
    """One list+watch of Services, in a daemon thread; answers live in `services`."""

    def __init__(self, credentials: str | Loader, services: Services,
                 backoff: tuple[float, float] = BACKOFF,
                 watch_timeout: tuple[int, int] = WATCH_TIMEOUT, cache_path: str = "",
                 source: str = "kubeconfig") -> None:
        self.services = services
        self.cache_path = cache_path
        super().__init__("services", PATH, credentials, services,
                         backoff=backoff, watch_timeout=watch_timeout,
                         save=(lambda: services.save(cache_path)) if cache_path else None,
                         source=source)


def start(credentials: str | Loader, domain: str, service_cidr: str,
          state_dir: str = "", source: str = "kubeconfig") -> ServiceWatch:
    """Service names for the DNS service: answers.Names consults them from now on.
    `credentials`: a kubeconfig path or a loader (kubewatch.ListWatch). With a
    state dir, the last known Services are kept there and answer at once after a restart
    (until the first list replaces them: a restart always lists)."""
    from .answers import Names

    try:
        kubernetes_ip = first_address(service_cidr)
    except (OSError, ValueError):
        raise ValueError(f"--service-cidr {service_cidr!r} is not an IPv4 CIDR such as "
                         "10.43.0.0/16") from None
    # credentials that are missing (k3s not up yet, token not yet mounted) or broken are retried by the watch with
    # backoff and logged: pod names must never wait for the API server
    from ..paths import SERVICES_CACHE

    services = Services(domain, kubernetes_ip)
    cache = cached(services, state_dir, SERVICES_CACHE, "services")
    Names.services = services
    return ServiceWatch(credentials, services, cache_path=cache, source=source).start()

