"""The metrics and health endpoint of the real service: counters move with queries,
/healthz and /readyz fail when the DNS address is gone, off-node clients are refused."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
from test_dns_helpers import (
    SRC,
    DnsNode,
    DnsService,
    NetnsUpstream,
    Registry,
    dig,
    free_port,
    needs_tools,
    unique_loopback,
    write_conflist,
)

from smarter_cni.dns import metrics

pytestmark = [pytest.mark.root, needs_tools]


@pytest.fixture
def node(tmp_path, state_dir):
    """The service, its conflist, registry and upstreams (test_dns_helpers.DnsNode)."""
    made = DnsNode(tmp_path, state_dir)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def parts():
    made: list = []
    try:
        yield made
    finally:
        for part in reversed(made):
            part()


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(value for got, value in metrics.parse_text(text).get(name, [])
               if all(got.get(k) == v for k, v in labels.items()))


def test_counters_move_as_queries_are_made(node):
    upstream = node.dnsmasq({"fwd.test": "192.0.2.7"}, ["--local-ttl=60"])
    registry = node.registry
    registry.add("c1", "web", "10.99.0.5")
    registry.add("c2", "db", "10.99.0.6")
    listen = node.listen
    node.start([upstream.upstream])
    before = metrics.fetch_counters(listen)  # the default: the DNS address, port 9153
    assert before["pods"] == 2 and before["registry_reloads"] >= 1, before
    for _ in range(5):  # no cookie (a fresh one each time), as glibc asks: cached bytes
        assert dig(listen, "web.default.svc.cluster.local", "+nocookie").values() == \
            ["10.99.0.5"]
    for _ in range(2):
        assert dig(listen, "nope.default.svc.cluster.local").status == "NXDOMAIN"
    for _ in range(3):
        assert dig(listen, "fwd.test").values() == ["192.0.2.7"]
    assert dig(listen, "db.default", "+tcp").values() == ["10.99.0.6"]
    after = metrics.fetch_counters(listen)
    delta = {k: after[k] - before[k] for k in after}
    assert delta["queries"] == 11, delta
    assert delta["nxdomain"] == 2 and delta["servfail"] == 0, delta
    assert delta["forwarded"] == 1, delta                 # one miss went upstream
    assert delta["answer_cache_hits"] >= 4, delta  # the 2nd-5th: from the wire-bytes cache
    assert delta["answer_cache_misses"] >= 7, delta
    assert after["forward_cache_misses"] >= 1 and after["upstreams_up"] == 1, after
    assert 1e6 < after["rss_bytes"] < 60e6, after

    status, text = metrics.fetch(listen, path="/metrics")
    assert status == 200
    server = f"dns://{listen}:53"
    assert sample(text, "coredns_dns_requests_total", server=server, proto="udp", type="A") >= 10
    assert sample(text, "coredns_dns_requests_total", proto="tcp", type="A") == 1
    assert sample(text, "coredns_dns_responses_total", rcode="NXDOMAIN") == 2
    assert sample(text, "coredns_forward_requests_total", to=upstream.upstream) == 1
    assert sample(text, "coredns_forward_responses_total", to=upstream.upstream,
                  rcode="NOERROR") == 1
    assert sample(text, "coredns_dns_request_duration_seconds_count") >= 11
    assert sample(text, "coredns_dns_request_duration_seconds_count", server=server, zone=".",
                  type="A") >= 11
    assert sample(text, "coredns_dns_request_duration_seconds_bucket", le="+Inf") == \
        sample(text, "coredns_dns_request_duration_seconds_count")
    assert "# TYPE coredns_dns_request_duration_seconds histogram" in text
    assert sample(text, "smarter_cni_dns_pods") == 2

    registry.add("c3", "api", "10.99.0.7")
    assert dig(listen, "api.default").values() == ["10.99.0.7"]
    later = metrics.fetch_counters(listen)
    assert later["pods"] == 3 and later["registry_reloads"] == after["registry_reloads"] + 1
    assert "3 pods" in metrics.summary(later)


def test_request_duration_is_counted_per_query_type(node):
    """A, AAAA, a forwarded TXT and an unassigned type (CoreDNS' "other") each land
    in their own histogram, as many as asked, matching coredns_dns_requests_total."""
    upstream = node.dnsmasq({"fwd.test": "192.0.2.7"}, ["--local-ttl=60"])
    node.registry.add("c1", "web", "10.99.0.5")
    listen = node.listen
    node.start([upstream.upstream])
    name = "web.default.svc.cluster.local"

    def per_type(text: str, metric: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in metrics.parse_text(text).get(metric, []):
            if "le" not in labels:
                out[labels["type"]] = out.get(labels["type"], 0) + value
        return out

    before = metrics.fetch(listen)[1]
    for _ in range(3):  # the 2nd and 3rd from the cache of complete answers (fast path)
        assert dig(listen, name, "A", "+nocookie").values() == ["10.99.0.5"]
    assert dig(listen, name, "A", "+tcp").values() == ["10.99.0.5"]
    for _ in range(2):
        aaaa = dig(listen, name, "AAAA", "+nocookie")
        assert aaaa.status == "NOERROR" and aaaa.counts.get("ANSWER") == 0, aaaa
    assert dig(listen, "fwd.test", "TXT").status               # forwarded, timed alone
    assert dig(listen, name, "TYPE65280").status               # no name for it: "other"
    assert dig(listen, "fwd.test", "TYPE64").status            # SVCB: "other" in CoreDNS too
    status, after = metrics.fetch(listen)
    assert status == 200
    name_ = "coredns_dns_request_duration_seconds_count"
    counts = per_type(after, name_)
    earlier = per_type(before, name_)
    delta = {t: counts[t] - earlier.get(t, 0) for t in counts if counts[t] != earlier.get(t)}
    assert delta == {"A": 4, "AAAA": 2, "TXT": 1, "other": 2}, delta
    assert "SVCB" not in counts
    forwarded = "coredns_forward_requests_total"
    assert sample(after, forwarded) - sample(before, forwarded) == 2  # TXT and SVCB
    requests = per_type(after, "coredns_dns_requests_total")
    assert requests == counts, (requests, counts)  # every answer timed once, by its type
    for kind in counts:
        assert sample(after, "coredns_dns_request_duration_seconds_bucket", type=kind,
                      le="+Inf") == counts[kind]
        assert 0 < sample(after, "coredns_dns_request_duration_seconds_sum", type=kind) < 5
    assert "# TYPE coredns_dns_request_duration_seconds histogram" in after
    assert after.count("# TYPE coredns_dns_request_duration_seconds ") == 1


def test_count_repair_is_exported(tmp_path, state_dir, parts):
    """The reconciler runs inside the service process and calls count_repair()."""
    from smarter_cni.dns.acl import Acl
    from smarter_cni.dns.server import Server

    listen = unique_loopback()
    port = free_port(listen)
    server = Server(listen, port, str(state_dir), "cluster.local", 0x0A630000, 16, Acl([]), [])
    parts.append(server.close)
    kind = f"test-{random.getrandbits(32):x}"
    metrics.count_repair(kind)
    metrics.count_repair(kind)
    text = metrics.render(server).decode()
    assert f'smarter_cni_node_repairs_total{{kind="{kind}"}} 2' in text


def test_health_fails_when_the_dns_address_is_gone(tmp_path, state_dir, parts):
    link = NetnsUpstream({}).start(serve=False)  # the DNS address on a link of the node
    parts.append(link.stop)
    address = link.host_address
    cidr = f"{address}/30"
    registry = Registry(state_dir)
    registry.add("c1", "web", "10.99.0.5")
    at = unique_loopback()
    port = free_port(at)
    service = DnsService(tmp_path, address, state_dir, write_conflist(tmp_path), [],
                         ["--no-address-setup", "--metrics", f"{at}:{port}"]).start()
    parts.append(service.stop)
    assert metrics.fetch(at, port, "/healthz") == (200, "ok\n")
    status, body = metrics.fetch(at, port, "/readyz")
    assert status == 200 and "web" in body, body  # a pod name answered

    subprocess.run(["ip", "addr", "del", cidr, "dev", link.host_if], check=True)
    for path in ("/healthz", "/readyz"):
        status, body = metrics.fetch(at, port, path)
        assert status == 503 and address in body, (path, status, body)
    subprocess.run(["ip", "addr", "add", cidr, "dev", link.host_if], check=True)
    assert metrics.fetch(at, port, "/readyz")[0] == 200  # back with the address

    registry.remove("c1")  # no pod: the cluster domain's SOA is asked instead
    status, body = metrics.fetch(at, port, "/readyz")
    assert status == 200 and "cluster.local" in body, body
    assert metrics.fetch(at, port, "/nothing")[0] == 404


def test_an_off_node_client_is_refused(tmp_path, state_dir, parts):
    client = NetnsUpstream({}).start(serve=False)  # a host on a link of the node
    parts.append(client.stop)
    listen = client.host_address  # the node's own address on that link
    service = DnsService(tmp_path, listen, state_dir, write_conflist(tmp_path), [],
                         ["--no-address-setup"]).start()
    parts.append(service.stop)
    assert metrics.fetch(listen, path="/healthz")[0] == 200  # from the node itself

    script = ("import sys; sys.path.insert(0, sys.argv[1]); from smarter_cni.dns import metrics;"
              "print(metrics.fetch(sys.argv[2], path='/metrics')[0])")
    done = client.exec(sys.executable, "-c", script, str(SRC), listen)
    assert done.stdout.strip() == "403", done
    refused = dig(listen, "web.default", netns=client.ns)
    assert refused.status == "REFUSED", refused
    time.sleep(0.1)
    assert metrics.fetch_counters(listen)["refused"] >= 1
