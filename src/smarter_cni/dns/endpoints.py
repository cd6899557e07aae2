"""Headless Services' ready endpoints in the node DNS, from ONE list+watch of EndpointSlices.

Only the slices of headless Services come (label selector
`service.kubernetes.io/headless`, which the EndpointSlice controller puts on
them), so a cluster's ClusterIP Services cost nothing here. Answers (TTL 5 s):

- `SVC.NS.svc.DOMAIN` A / AAAA: every ready endpoint's address (conditions.ready
  true or absent, as the API defines "unknown = ready"; a Service with
  publishNotReadyAddresses has every endpoint marked ready by the controller);
- `HOSTNAME.SVC.NS.svc.DOMAIN` A / AAAA: that endpoint's addresses (the pod's
  spec.hostname when its spec.subdomain is the Service: StatefulSet pods);
- a headless Service with no ready endpoint: NOERROR without data (the Service
  name exists: dns/services.py answers it).

By default every endpoint the API reports is answered, on any node, as the
Kubernetes DNS specification says: the slice says where a pod runs
(nodeName) but not whether its address routes from here, and some do from
anywhere (host-network pods' node addresses; clusters that route pod CIDRs).
`dns --endpoints-node NAME` keeps only the endpoints on node NAME (and those
without a nodeName): on the node-local default, other nodes' pod addresses
do not route here and may even be a local pod's (every node hands out the
same subnet), and a big cluster's endpoints then cost nothing here.

The last known endpoints keep answering while the API server is away, also
across a restart of the DNS service (endpoints.json in the state dir, as
services.json; a restart lists again first thing).

Held per slice: the Service's name and, per ready endpoint, its hostname and
addresses (strings); per Service name and hostname name: the encoded records
(shared between the two names). Nothing else of a slice is kept.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from . import wire
from .kubewatch import ListWatch, Loader, cached
from .services import Rec, Services, _is_v4, _is_v6

SELECTOR = "service.kubernetes.io/headless"
SERVICE_LABEL = "kubernetes.io/service-name"
PATH = "/apis/discovery.k8s.io/v1/endpointslices"
TTL = 5


def parse_slice(obj: Any, node: str = "") -> tuple[str, str, str, tuple] | None:
    """(namespace, slice name, Service name, ((hostname, addresses), ...)) of an
    EndpointSlice: only ready endpoints, only addresses of the slice's family. None
    when the object is unusable; the Service name is "" when the slice names none.
    With `node`, endpoints on other nodes are left out too."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        return None
    labels = meta.get("labels")
    service = labels.get(SERVICE_LABEL) if isinstance(labels, dict) else None
    if not isinstance(service, str):
        service = ""
    family = obj.get("addressType")
    valid = _is_v4 if family == "IPv4" else _is_v6 if family == "IPv6" else None
    found = []
    endpoints = obj.get("endpoints")
    if valid is not None and service and isinstance(endpoints, list):
        for endpoint in endpoints:
            if not isinstance(endpoint, dict):
                continue
            conditions = endpoint.get("conditions")
            ready = conditions.get("ready") if isinstance(conditions, dict) else None
            if ready is False:
                continue
            where = endpoint.get("nodeName")
            if node and isinstance(where, str) and where and where != node:
                continue
            addresses = endpoint.get("addresses")
            if not isinstance(addresses, list):
                continue
            kept = tuple(a for a in addresses if isinstance(a, str) and valid(a))
            if not kept:
                continue
            hostname = endpoint.get("hostname")
            found.append((hostname.lower() if isinstance(hostname, str) else "", kept))
    return namespace, name, service, tuple(found)


class Endpoints:
    """{wire name: Rec} for headless Services' names and their pods' hostname names,
    kept by the EndpointSlice watch; consulted by Services.answer, whose `generation`
    it bumps (the DNS loop then clears its answer caches)."""

    def __init__(self, services: Services, node: str = "") -> None:
        self.services = services
        self.node = node   # only endpoints on this node ("": all)
        self.slices: dict[tuple[str, str], tuple[str, tuple]] = {}   # (ns, slice) -> parsed
        self.by_service: dict[tuple[str, str], set[str]] = {}         # (ns, svc) -> slices
        self.names: dict[bytes, Rec] = {}
        self.owned: dict[tuple[str, str], tuple[bytes, ...]] = {}     # (ns, svc) -> names
        self.synced = False

    @property
    def count(self) -> int:
        return len(self.slices)

    def replace_all(self, objects: list[Any]) -> None:
        """After a list: every Service's names again, in one swap."""
        slices: dict[tuple[str, str], tuple[str, tuple]] = {}
        for obj in objects:
            parsed = parse_slice(obj, self.node)
            if parsed is not None and parsed[2]:
                slices[(parsed[0], parsed[1])] = (parsed[2], parsed[3])
        self.replace_slices(slices)
        self.synced = True

    def replace_slices(self, slices: dict[tuple[str, str], tuple[str, tuple]]) -> None:
        """The table from parsed slices (a list, or the cache file)."""
        by_service: dict[tuple[str, str], set[str]] = {}
        for (namespace, name), (service, _) in slices.items():
            by_service.setdefault((namespace, service), set()).add(name)
        names: dict[bytes, Rec] = {}
        owned: dict[tuple[str, str], tuple[bytes, ...]] = {}
        for key, members in by_service.items():
            entries = self._entries(key, [slices[(key[0], m)][1] for m in members])
            names.update(entries)
            owned[key] = tuple(entries)
        with self.services.lock:
            self.slices, self.by_service, self.names, self.owned = slices, by_service, names, owned
            self.services.generation += 1

    def save(self, path: str) -> None:
        """The known endpoints, so a restart while the API server is away still answers."""
        from ..files import write_atomic

        with self.services.lock:
            rows = [[ns, name, svc, [[host, list(addrs)] for host, addrs in eps]]
                    for (ns, name), (svc, eps) in self.slices.items()]
        write_atomic(path, json.dumps({"version": 1, "slices": rows}), 0o600)

    def load(self, path: str) -> int:
        """Answer from the cache file until the first list lands; the count loaded."""
        try:
            with open(path, encoding="utf-8") as handle:
                rows = json.load(handle).get("slices") or []
            slices = {(str(ns), str(name)): (str(svc), tuple(
                (str(host), tuple(str(a) for a in addrs)) for host, addrs in eps))
                for ns, name, svc, eps in rows}
        except (OSError, ValueError, TypeError, AttributeError):
            return 0
        self.replace_slices(slices)
        return len(slices)

    def apply(self, kind: str, obj: Any) -> bool:
        """One watch event; True when answers changed."""
        parsed = parse_slice(obj, self.node)
        if parsed is None:
            return False
        namespace, name, service, endpoints = parsed
        key = (namespace, name)
        before = self.slices.get(key)
        if kind == "DELETED" or not service:
            if before is None:
                return False
            after = None
        else:
            after = (service, endpoints)
            if before == after:
                return False  # e.g. a pod's condition that is not `ready` changed
        touched: set[tuple[str, str]] = set()
        if before is not None:
            touched.add((namespace, before[0]))
        if after is not None:
            touched.add((namespace, after[0]))
        with self.services.lock:
            if before is not None:
                members = self.by_service.get((namespace, before[0]), set())
                members.discard(name)
                if not members:
                    self.by_service.pop((namespace, before[0]), None)
                del self.slices[key]
            if after is not None:
                self.slices[key] = after
                self.by_service.setdefault((namespace, after[0]), set()).add(name)
            for svc_key in touched:
                self._rebuild(svc_key)
            self.services.generation += 1
        return True

    def _rebuild(self, key: tuple[str, str]) -> None:
        """One Service's names from its slices now (under the lock)."""
        for name_key in self.owned.pop(key, ()):
            self.names.pop(name_key, None)
        members = self.by_service.get(key)
        if not members:
            return
        entries = self._entries(key, [self.slices[(key[0], m)][1] for m in members])
        self.names.update(entries)
        self.owned[key] = tuple(entries)

    def _entries(self, key: tuple[str, str], groups: list[tuple]) -> dict[bytes, Rec]:
        """The Service name and each hostname name with their records (none when no
        endpoint is ready: the Service's own entry in Services answers NODATA)."""
        namespace, service = key
        domain = self.services.domain
        try:
            base = wire.encode_name(f"{service}.{namespace}.svc.{domain}".lower())
        except (wire.FormatError, UnicodeError):
            return {}
        records: dict[str, bytes] = {}   # one bytes object per address, shared by names
        all_a: list[bytes] = []
        all_aaaa: list[bytes] = []
        hosts: dict[str, tuple[list[bytes], list[bytes]]] = {}
        for endpoints in groups:
            for hostname, addresses in endpoints:
                for address in addresses:
                    record = records.get(address)
                    fresh = record is None
                    if fresh:
                        record = records[address] = _record(address)
                    v6 = ":" in address
                    if fresh:
                        (all_aaaa if v6 else all_a).append(record)
                    if hostname:
                        pair = hosts.setdefault(hostname, ([], []))
                        if record not in pair[v6]:
                            pair[v6].append(record)
        if not records:
            return {}
        out = {base: Rec(a=tuple(sorted(all_a)), aaaa=tuple(sorted(all_aaaa)))}
        for hostname, (a, aaaa) in hosts.items():
            try:
                label = wire.encode_name(hostname)[:-1]
            except (wire.FormatError, UnicodeError):
                continue
            if len(label) < 2 or label[0] != len(label) - 1:
                continue  # not one DNS label
            out[label + base] = Rec(a=tuple(sorted(a)), aaaa=tuple(sorted(aaaa)))
        return out


def _record(address: str) -> bytes:
    if ":" in address:
        return wire.record(wire.QUESTION_POINTER, wire.AAAA, TTL,
                           socket.inet_pton(socket.AF_INET6, address))
    return wire.record(wire.QUESTION_POINTER, wire.A, TTL, socket.inet_aton(address))


class EndpointSliceWatch(ListWatch):
    """One list+watch of headless Services' EndpointSlices; answers live in `endpoints`."""

    def __init__(self, credentials: str | Loader, endpoints: Endpoints, cache_path: str = "",
                 **kw: Any) -> None:
        self.endpoints = endpoints
        super().__init__("endpointslices", PATH, credentials, endpoints,
                         selector=SELECTOR,
                         save=(lambda: endpoints.save(cache_path)) if cache_path else None, **kw)


def start(credentials: str | Loader, services: Services, node: str = "",
          state_dir: str = "", source: str = "kubeconfig") -> EndpointSliceWatch:
    """Headless Services' endpoints for the DNS service, consulted by `services` from now on
    (with `node`: only that node's); `credentials` as the Services watch's (the same
    kubeconfig path or in-cluster loader). With a state dir, the last known endpoints are kept
    there and answer at once after a restart, until the first list replaces them."""
    from ..paths import ENDPOINTS_CACHE

    endpoints = Endpoints(services, node)
    cache = cached(endpoints, state_dir, ENDPOINTS_CACHE, "endpointslices")
    services.endpoints = endpoints
    return EndpointSliceWatch(credentials, endpoints, cache, source=source).start()
