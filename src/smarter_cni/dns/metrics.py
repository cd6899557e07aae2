"""The DNS service's counters in the Prometheus text format (version 0.0.4).

Written by hand: the format is a few lines of text; this module and
health.py add ~0.1 MB of resident memory, prometheus_client 0.26 with the
same metrics ~10.9 MB (it pulls in threading, http.server, wsgiref, ...),
nearly doubling the service (measured; docs/dns.md). Names follow CoreDNS (what NodeLocal DNSCache, the
thing this replaces, exports), so existing dashboards and alerts work;
what CoreDNS has no name for is `smarter_cni_*`. The mapping is in docs/dns.md.

Two functions are for the rest of smarter-cni:
- `count_repair(kind)`: the node reconciler, running in this process,
  counts each repair it makes (exported as smarter_cni_node_repairs_total).
- `fetch_counters(address, port)` (or `fetch_metrics` + `counters_of`,
  `watch_info`): `smarter-cni status` reads the main counters of the running
  service, its watches' state and the credentials they use.
- `WATCHES`: the Kubernetes list+watches running in this process
  (kubewatch.py adds each it starts), exported as smarter_cni_dns_kube_*.
"""

from __future__ import annotations

import bisect
import os
import socket
import time

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PORT = 9153   # CoreDNS' prometheus plugin port
# CoreDNS' request duration buckets: 0.25 ms doubling to 8.192 s
BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))
# The query types CoreDNS names in its `type` label (its prometheus plugin's
# README); every other type is counted as "other".
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
              28: "AAAA", 33: "SRV", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
              50: "NSEC3", 65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY"}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}

REPAIRS: dict[str, int] = {}
WATCHES: list = []   # the running kubewatch.ListWatch es (Services, EndpointSlices)
STARTED = time.time()


def count_repair(kind: str) -> None:
    """One repair made by the node reconciler (e.g. 'dns-address', 'bridge', 'nat-rule')."""
    REPAIRS[kind] = REPAIRS.get(kind, 0) + 1


class Histogram:
    """Counts per bucket (not cumulative until rendered), sum and count."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += times
        self.sum += seconds * times
        self.count += times


class Latency:
    """The request duration histograms, one per query type seen: at most
    len(TYPE_NAMES) + 1 ("other"), however many types clients ask.

    The server's loop adds each answer of a batch to `pending[kind]` (one list
    increment; `kind` is kept with the slot and with each cached response) and
    `flush`es the batch once with its time; a forwarded answer, given later,
    is `observe`d alone."""

    __slots__ = ("kinds", "names", "histograms", "pending")

    def __init__(self) -> None:
        self.kinds: dict[int, int] = {}  # qtype (-1: every other) -> index in the lists
        self.names: list[str] = []
        self.histograms: list[Histogram] = []
        self.pending: list[int] = []

    def kind(self, qtype: int) -> int:
        """The index of `qtype`'s histogram, made on its first use."""
        if qtype not in TYPE_NAMES:
            qtype = -1
        index = self.kinds.get(qtype)
        if index is None:
            index = self.kinds[qtype] = len(self.names)
            self.names.append(TYPE_NAMES.get(qtype, "other"))
            self.histograms.append(Histogram())
            self.pending.append(0)
        return index

    def observe(self, kind: int, seconds: float) -> None:
        self.histograms[kind].observe(seconds)

    def flush(self, seconds: float) -> None:
        """Each answer counted in `pending` took `seconds` (its batch's time)."""
        pending = self.pending
        for index, times in enumerate(pending):
            if times:
                self.histograms[index].observe(seconds, times)
                pending[index] = 0


class Counts:
    """Responses by (proto, qtype, rcode), kept as a list indexed by a slot number so
    the server's fast path counts an answer with one list increment; `kinds[slot]`
    is the slot's histogram in `latency`."""

    def __init__(self) -> None:
        self.slots: dict[tuple[str, int, int], int] = {}
        self.values: list[int] = []
        self.kinds: list[int] = []
        self.latency = Latency()

    def slot(self, proto: str, qtype: int, rcode: int) -> int:
        key = (proto, qtype if qtype in TYPE_NAMES else -1, rcode)
        index = self.slots.get(key)
        if index is None:
            index = self.slots[key] = len(self.values)
            self.values.append(0)
            self.kinds.append(self.latency.kind(qtype))
        return index

    def add(self, proto: str, qtype: int, rcode: int, times: int = 1) -> None:
        self.values[self.slot(proto, qtype, rcode)] += times


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, Any]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


class Text:
    """Accumulates metric families in exposition order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str,
                  series: list[tuple[dict[str, Any], Histogram]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for labels, histogram in series:
            running = 0
            for bound, count in zip(BUCKETS, histogram.counts):
                running += count
                self.lines.append(
                    f"{name}_bucket{_labels({**labels, 'le': f'{bound:g}'})} {running}")
            self.lines.append(
                f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {histogram.count}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum)}")
            self.lines.append(f"{name}_count{_labels(labels)} {histogram.count}")

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def process_samples(text: Text) -> None:
    """The standard process_* metrics (as prometheus_client exports them)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return
    text.family("process_cpu_seconds_total", "counter",
                "Total user and system CPU time spent in seconds.", [({}, cpu)])
    text.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                [({}, rss)])
    text.family("process_open_fds", "gauge", "Number of open file descriptors.", [({}, fds)])
    text.family("process_start_time_seconds", "gauge",
                "Start time of the process since unix epoch in seconds.", [({}, STARTED)])


def render(server: Any) -> bytes:
    """Every metric of a running `Server`."""
    tag = {"server": server.server_label}
    zone = {**tag, "zone": "."}
    text = Text()
    counts: Counts = server.counts
    requests: dict[tuple[str, str], int] = {}
    responses: dict[str, int] = {}
    for (proto, qtype, rcode), index in counts.slots.items():
        value = counts.values[index]
        key = (proto, TYPE_NAMES.get(qtype, "other"))
        requests[key] = requests.get(key, 0) + value
        name = RCODE_NAMES.get(rcode, str(rcode))
        responses[name] = responses.get(name, 0) + value
    text.family("coredns_dns_requests_total", "counter",
                "Counter of DNS requests made per zone, protocol and family.",
                [({**zone, "proto": p, "family": "1", "type": t}, v)
                 for (p, t), v in sorted(requests.items())])
    text.family("coredns_dns_responses_total", "counter",
                "Counter of response status codes.",
                [({**zone, "rcode": r, "plugin": ""}, v) for r, v in sorted(responses.items())])
    latency = counts.latency
    text.histogram("coredns_dns_request_duration_seconds",
                   "Histogram of the time (in seconds) each request took.",
                   [({**zone, "type": t}, h)
                    for t, h in sorted(zip(latency.names, latency.histograms), key=first)])
    forwarder = server.forwarder
    fstats = forwarder.stats
    positive, negative = forwarder.cache.counts(time.monotonic())
    text.family("coredns_cache_entries", "gauge", "The number of elements in the cache.",
                [({**tag, "type": "success"}, positive), ({**tag, "type": "denial"}, negative)])
    text.family("coredns_cache_hits_total", "counter", "The count of cache hits.",
                [({**tag, "type": t}, v) for t, v in fstats.cache_hits.items()])
    text.family("coredns_cache_misses_total", "counter", "The count of cache misses.",
                [(tag, fstats.cache_misses)])
    text.family("coredns_cache_served_stale_total", "counter",
                "The number of requests served from stale cache entries.", [(tag, fstats.stale)])
    text.family("coredns_cache_evictions_total", "counter", "The count of cache evictions.",
                [(tag, forwarder.cache.evictions)])
    text.family("coredns_forward_requests_total", "counter",
                "Counter of requests made per upstream.",
                [({"to": to}, v) for to, v in sorted(fstats.requests.items())])
    text.family("coredns_forward_responses_total", "counter",
                "Counter of responses received per upstream.",
                [({"to": to, "rcode": rcode}, v)
                 for (to, rcode), v in sorted(fstats.responses.items())])
    text.family("smarter_cni_dns_upstream_failures_total", "counter",
                "Upstream attempts that failed, per upstream and reason "
                "(timeout, unreachable, tcp).",
                [({"to": to, "reason": why}, v) for (to, why), v in sorted(fstats.failures.items())])
    text.family("smarter_cni_dns_upstream_up", "gauge",
                "1 while the upstream answers, 0 while it is skipped as down.",
                [({"to": u.label}, 0 if u.failures else 1) for u in forwarder.health])
    text.family("smarter_cni_dns_forward_servfail_total", "counter",
                "Client queries no upstream answered and no stale answer covered: SERVFAIL "
                "(immediate: every upstream was known to be down).",
                [({**tag, "immediate": "true"}, fstats.fast_fail),
                 ({**tag, "immediate": "false"}, fstats.servfail - fstats.fast_fail)])
    text.family("smarter_cni_dns_forward_tcp_retries_total", "counter",
                "Truncated upstream answers fetched again over TCP.", [(tag, fstats.tcp_retries)])
    stats = server.stats
    text.family("smarter_cni_dns_answer_cache_hits_total", "counter",
                "Queries answered from the cache of complete responses (wire bytes).",
                [(tag, stats.cached)])
    text.family("smarter_cni_dns_answer_cache_misses_total", "counter",
                "Queries that missed the cache of complete responses.",
                [(tag, stats.misses)])
    text.family("smarter_cni_dns_answer_cache_entries", "gauge",
                "Complete responses cached (UDP and TCP).",
                [(tag, len(server.udp_cache) + len(server.tcp_cache))])
    text.family("smarter_cni_dns_pods", "gauge", "Pods whose names are served.",
                [(tag, server.names.pods)])
    text.family("smarter_cni_dns_names", "gauge", "Names served (every form of every pod).",
                [(tag, server.names.count)])
    text.family("smarter_cni_dns_registry_reloads_total", "counter",
                "Times the pod registry was read after it changed.", [(tag, stats.reloads)])
    text.family("smarter_cni_dns_registry_errors_total", "counter",
                "Registry reads that failed (the last good names kept).",
                [(tag, stats.registry_errors)])
    text.family("smarter_cni_dns_internal_errors_total", "counter",
                "Queries dropped by an internal error (a bug: please report).",
                [(tag, stats.errors)])
    text.family("smarter_cni_node_repairs_total", "counter",
                "Repairs made by the node reconciler, per kind.",
                [({"kind": k}, v) for k, v in sorted(REPAIRS.items())])
    watch_samples(text)
    text.family("smarter_cni_build_info", "gauge", "A metric with a constant 1 value.",
                [({"version": __version__}, 1)])
    process_samples(text)
    return text.render()


def watch_samples(text: Text) -> None:
    """The Kubernetes list+watches (Services, EndpointSlices), one label set each."""
    if not WATCHES:
        return
    rows = [({"resource": w.resource}, w) for w in WATCHES]
    text.family("smarter_cni_dns_kube_watch_up", "gauge",
                "1 once the resource is listed and while the API server answers the watch.",
                [(labels, 1 if w.up else 0) for labels, w in rows])
    text.family("smarter_cni_dns_kube_objects", "gauge",
                "Objects of the resource held for answers.",
                [(labels, w.table.count) for labels, w in rows])
    text.family("smarter_cni_dns_kube_requests_total", "counter",
                "List (page) and watch requests made to the API server.",
                [({**labels, "kind": kind}, w.counts[kind])
                 for labels, w in rows for kind in ("list", "watch")])
    text.family("smarter_cni_dns_kube_events_total", "counter",
                "Watch events received (ADDED/MODIFIED/DELETED: event; BOOKMARK: bookmark).",
                [({**labels, "type": kind}, w.counts[kind + "s"])
                 for labels, w in rows for kind in ("event", "bookmark")])
    text.family("smarter_cni_dns_kube_relists_total", "counter",
                "410 Gone answers that forced a relist.",
                [(labels, w.counts["gone"]) for labels, w in rows])
    text.family("smarter_cni_dns_kube_errors_total", "counter",
                "Failed list/watch attempts (retried with backoff; the last answers kept).",
                [(labels, w.counts["errors"]) for labels, w in rows])
    text.family("smarter_cni_dns_kube_last_status", "gauge",
                "HTTP status of the last refused request while the watch fails (401: "
                "credentials, 403: RBAC); 0 when up or the failure was not an HTTP answer.",
                [(labels, w.last_status if w.failing else 0) for labels, w in rows])
    text.family("smarter_cni_dns_kube_token_reloads_total", "counter",
                "Times a rotated service account token was read again at once after a 401.",
                [(labels, w.counts["token_reloads"]) for labels, w in rows])
    text.family("smarter_cni_dns_kube_watch_info", "gauge",
                "The credentials (kubeconfig, in-cluster) and API server a watch uses "
                "(always 1).",
                [({**labels, "credentials": w.source, "server": w.server}, 1)
                 for labels, w in rows])


# -- for `smarter-cni status`

MAIN_COUNTERS = {
    "queries": "coredns_dns_requests_total",
    "servfail": ("coredns_dns_responses_total", "SERVFAIL"),
    "nxdomain": ("coredns_dns_responses_total", "NXDOMAIN"),
    "refused": ("coredns_dns_responses_total", "REFUSED"),
    "answer_cache_hits": "smarter_cni_dns_answer_cache_hits_total",
    "answer_cache_misses": "smarter_cni_dns_answer_cache_misses_total",
    "forward_cache_hits": "coredns_cache_hits_total",
    "forward_cache_misses": "coredns_cache_misses_total",
    "served_stale": "coredns_cache_served_stale_total",
    "forwarded": "coredns_forward_requests_total",
    "upstream_failures": "smarter_cni_dns_upstream_failures_total",
    "upstreams_up": "smarter_cni_dns_upstream_up",
    "pods": "smarter_cni_dns_pods",
    "registry_reloads": "smarter_cni_dns_registry_reloads_total",
    "repairs": "smarter_cni_node_repairs_total",
    "rss_bytes": "process_resident_memory_bytes",
}


def parse_text(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {metric name: [(labels, value)]} (enough for our own output)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for part in rest.rstrip("}").split('",'):
            key, _, raw = part.partition('="')
            if key:
                labels[key] = raw.rstrip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def fetch(address: str, port: int = DEFAULT_PORT, path: str = "/metrics",
          timeout: float = 2.0) -> tuple[int, str]:
    """(HTTP status, body) of one GET to the service's metrics endpoint; OSError if none."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks).decode("utf-8", "replace")
    head, _, body = raw.partition("\r\n\r\n")
    try:
        status = int(head.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP answer from {address}:{port}") from None
    return status, body


Parsed = dict[str, list[tuple[dict[str, str], float]]]


def fetch_metrics(address: str, port: int = DEFAULT_PORT, timeout: float = 2.0) -> Parsed:
    """The running DNS service's metrics, parsed; OSError when the endpoint does not answer."""
    status, body = fetch(address, port, "/metrics", timeout)
    if status != 200:
        raise OSError(f"metrics endpoint {address}:{port} answered HTTP {status}")
    return parse_text(body)


def fetch_counters(address: str, port: int = DEFAULT_PORT, timeout: float = 2.0
                   ) -> dict[str, float]:
    """The main counters of the running DNS service, summed over their labels
    (`MAIN_COUNTERS` names them). Raises OSError when the endpoint does not answer."""
    return counters_of(fetch_metrics(address, port, timeout))


def counters_of(metrics: Parsed) -> dict[str, float]:
    """`MAIN_COUNTERS` and the watches' `watch_RESOURCE_*` from parsed metrics."""
    counters: dict[str, float] = {}
    for key, spec in MAIN_COUNTERS.items():
        if isinstance(spec, tuple):
            name, rcode = spec
            samples = [v for labels, v in metrics.get(name, []) if labels.get("rcode") == rcode]
        else:
            samples = [v for _, v in metrics.get(spec, [])]
        counters[key] = sum(samples)
    for labels, value in metrics.get("smarter_cni_dns_kube_watch_up", []):
        resource = labels.get("resource", "")
        counters[f"watch_{resource}_up"] = value
        for name, key in (("smarter_cni_dns_kube_objects", "objects"),
                          ("smarter_cni_dns_kube_relists_total", "relists"),
                          ("smarter_cni_dns_kube_errors_total", "errors"),
                          ("smarter_cni_dns_kube_last_status", "status"),
                          ("smarter_cni_dns_kube_token_reloads_total", "token_reloads")):
            counters[f"watch_{resource}_{key}"] = sum(
                v for lab, v in metrics.get(name, []) if lab.get("resource") == resource)
    return counters


def watch_info(metrics: Parsed) -> dict[str, dict[str, str]]:
    """{resource: {"credentials": ..., "server": ...}} of the running watches."""
    return {labels.get("resource", ""): {"credentials": labels.get("credentials", ""),
                                         "server": labels.get("server", "")}
            for labels, _ in metrics.get("smarter_cni_dns_kube_watch_info", [])}


def credentials_text(info: dict[str, str]) -> str:
    """'in-cluster credentials, API server https://127.0.0.1:6443'."""
    return f"{info.get('credentials') or '?'} credentials, API server {info.get('server') or '?'}"


def watch_summary(counters: dict[str, float],
                  info: dict[str, dict[str, str]] | None = None) -> str:
    """One line for `smarter-cni status` about the Kubernetes watches ("" when none run),
    ending with the credentials and API server they use (`info`: watch_info)."""
    parts = []
    for key in counters:
        if key.startswith("watch_") and key.endswith("_up"):
            resource = key[len("watch_"):-len("_up")]
            status = int(counters.get(f"watch_{resource}_status", 0))
            state = "up" if counters[key] else f"DOWN{f' (HTTP {status})' if status else ''}"
            parts.append(f"{resource} {state} "
                         f"({int(counters.get(f'watch_{resource}_objects', 0))} objects, "
                         f"{int(counters.get(f'watch_{resource}_relists', 0))} relists, "
                         f"{int(counters.get(f'watch_{resource}_errors', 0))} errors)")
    sources = sorted({credentials_text(v) for v in (info or {}).values()})
    if parts and len(sources) == 1:  # one source for every watch (dns/service.py)
        parts.append(f"with {sources[0]}")
    elif parts and sources:
        parts.append("with " + "; ".join(f"{r}: {credentials_text(v)}"
                                          for r, v in sorted((info or {}).items())))
    return "; ".join(parts)


def summary(counters: dict[str, float]) -> str:
    """One line for `smarter-cni status`."""
    c = {k: int(v) for k, v in counters.items()}
    return (f"{c['pods']} pods; {c['queries']} queries ({c['nxdomain']} NXDOMAIN, "
            f"{c['servfail']} SERVFAIL, {c['refused']} refused); answer cache "
            f"{c['answer_cache_hits']} hits / {c['answer_cache_misses']} misses; forwarded "
            f"{c['forwarded']} (cache {c['forward_cache_hits']} hits / "
            f"{c['forward_cache_misses']} misses, {c['served_stale']} stale), "
            f"{c['upstream_failures']} upstream failures, {c['upstreams_up']} upstreams up; "
            f"{c['registry_reloads']} registry reloads; {c['repairs']} repairs; "
            f"RSS {counters['rss_bytes'] / 1e6:.1f} MB")
