"""Headless Services' endpoints in the node DNS (`smarter-cni dns --kubeconfig`), asked with
real `dig`.

No Kubernetes API server can run on these machines: the real DNS service (a
process on a private loopback address) lists and watches Services and
EndpointSlices on a stand-in API server (tests/helpers/kube_standin.py) over
real HTTPS with client-certificate authentication, in the real API's shapes:
EndpointSliceList with resourceVersion, the `service.kubernetes.io/headless`
label selector applied by the server, chunked watch events, BOOKMARKs, and a
410 Gone that forces a relist.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from test_dns_helpers import needs_tools
from test_dns_services import Env as ServicesEnv

from helpers.kube_standin import (
    StandinAPI,
    endpoint,
    endpoint_slice,
    make_pki,
    service,
)

pytestmark = [pytest.mark.root, needs_tools]

D = "svc.cluster.local"
DB = f"db.data.{D}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cluster(api: StandinAPI) -> None:
    api.put_service(service("web", cluster_ip="10.43.0.20", ports=[{"name": "http", "port": 80}]))
    api.put_service(service("db", "data", cluster_ip="None", ports=[{"name": "pg", "port": 5432}]))
    api.put_service(service("empty", "data", cluster_ip="None"))
    api.put_slice(endpoint_slice("db", [
        endpoint("10.42.0.5", "db-0", pod="db-0"),
        endpoint("10.42.0.6", "db-1", ready=False, pod="db-1"),     # not ready: left out
        endpoint("10.42.0.7", "db-2", ready=None, pod="db-2"),      # no condition: ready
        endpoint("10.42.0.8", pod="worker-x", node_name="gw-2"),    # another node, no hostname
    ], "data"))
    api.put_slice(endpoint_slice("db", [endpoint("fd00:42::5", "db-0", pod="db-0")], "data",
                                 address_type="IPv6"))
    api.put_slice(endpoint_slice("empty", [], "data"))
    # a ClusterIP Service's slice: not headless, so never sent (the label selector)
    api.put_slice(endpoint_slice("web", [endpoint("10.42.0.9", "web-0")], headless=False))


class Env(ServicesEnv):
    """test_dns_services.py's Env, with answers compared as sets (endpoints come in any
    order)."""

    def values(self, name: str, rtype: str = "A") -> list[str]:
        return sorted(self.dig(name, rtype).values(rtype))

    def wait_for(self, name: str, want: list[str], rtype: str = "A",
                 timeout: float = 20.0) -> float:
        """Seconds until `name` answers `want` (any order)."""
        started = time.monotonic()
        while True:
            got = self.dig(name, rtype)
            if sorted(got.values(rtype)) == sorted(want):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{name} {rtype}: {got!r}, wanted {want}; log: "
                                     f"{self.dns.log_path.read_text()[-3000:]}")
            time.sleep(0.02)


@pytest.fixture
def env(tmp_path, state_dir, pki):
    with StandinAPI(pki) as api:
        _cluster(api)
        made = Env(tmp_path, state_dir, api, pki)
        made.dns.start()
        try:
            made.wait_for(f"web.default.{D}", ["10.43.0.20"])
            made.wait_for(DB, ["10.42.0.5", "10.42.0.7", "10.42.0.8"])
            yield made
        finally:
            made.dns.stop()


def test_a_headless_service_answers_its_ready_endpoints(env):
    """Stand-in API over real HTTPS; real DNS process; real dig."""
    assert env.values(DB) == ["10.42.0.5", "10.42.0.7", "10.42.0.8"], "db-1 is not ready"
    assert env.values(DB, "AAAA") == ["fd00:42::5"]
    assert env.values(f"DB.Data.{D}") == ["10.42.0.5", "10.42.0.7", "10.42.0.8"]
    got = env.dig(DB)
    assert "aa" in got.flags and got.ttls("A") == [5, 5, 5], got
    # each pod by its hostname (spec.hostname + spec.subdomain, as StatefulSets set)
    assert env.values(f"db-0.{DB}") == ["10.42.0.5"]
    assert env.values(f"db-0.{DB}", "AAAA") == ["fd00:42::5"]
    assert env.values(f"db-2.{DB}") == ["10.42.0.7"]
    nodata = env.dig(f"db-2.{DB}", "AAAA")
    assert nodata.status == "NOERROR" and nodata.answers == [], nodata
    assert env.dig(f"db-1.{DB}").status == "NXDOMAIN", "a not-ready pod has no name"
    assert env.dig(f"nope.{DB}").status == "NXDOMAIN"
    # a headless Service without ready endpoints: the name exists, no data
    empty = env.dig(f"empty.data.{D}")
    assert empty.status == "NOERROR" and empty.answers == [], empty
    assert env.dig(f"gone.data.{D}").status == "NXDOMAIN"
    # ClusterIP Services are unchanged, their slices never come (label selector)
    assert env.values(f"web.default.{D}") == ["10.43.0.20"]
    assert env.dig(f"web-0.web.default.{D}").status == "NXDOMAIN"
    assert env.dig(f"_pg._tcp.{DB}", "SRV").status == "NOERROR"
    watched = [p for p in env.api.request_log if "endpointslices" in p]
    assert watched and all("labelSelector=service.kubernetes.io%2Fheadless" in p
                           for p in watched), watched


def test_watch_events_show_and_remove_endpoints_within_a_bounded_time(env):
    """Stand-in API over real HTTPS; real DNS process; real dig."""
    api = env.api
    slice_v4 = endpoint_slice("db", [endpoint("10.42.0.5", "db-0"),
                                     endpoint("10.42.0.6", "db-1", ready=True),
                                     endpoint("10.42.0.7", "db-2", ready=None),
                                     endpoint("10.42.0.8", node_name="gw-2")], "data")
    api.put_slice(slice_v4)                                    # db-1 turns ready
    shown = env.wait_for(DB, ["10.42.0.5", "10.42.0.6", "10.42.0.7", "10.42.0.8"])
    assert env.values(f"db-1.{DB}") == ["10.42.0.6"]
    slice_v4["endpoints"] = slice_v4["endpoints"][1:]          # db-0 deleted
    api.put_slice(slice_v4)
    removed = env.wait_for(DB, ["10.42.0.6", "10.42.0.7", "10.42.0.8"])
    env.wait_for(f"db-0.{DB}", ["fd00:42::5"], "AAAA")         # its IPv6 slice still says so
    assert env.dig(f"db-0.{DB}").answers == []
    api.delete_slice("data", "db-ipv6x7k2p")
    env.wait_for(f"db-0.{DB}", [], "AAAA")
    assert env.dig(f"db-0.{DB}", "AAAA").status == "NXDOMAIN"
    api.bookmark()
    # a new headless Service and its slice, then its endpoint turns not ready
    api.put_service(service("cache", "data", cluster_ip="None"))
    api.put_slice(endpoint_slice("cache", [endpoint("10.42.1.1", "cache-0")], "data"))
    env.wait_for(f"cache-0.cache.data.{D}", ["10.42.1.1"])
    api.put_slice(endpoint_slice("cache", [endpoint("10.42.1.1", "cache-0", ready=False)],
                                 "data"))
    env.wait_for(f"cache.data.{D}", [])
    assert env.dig(f"cache.data.{D}").status == "NOERROR", "NODATA: the Service is still there"
    api.delete_slice("data", "db-ipv4x7k2p")
    env.wait_for(DB, [])
    assert env.dig(DB).status == "NOERROR"
    api.delete_service("data", "db")
    env.wait_for(f"db-2.{DB}", [])
    assert env.dig(DB).status == "NXDOMAIN"
    assert (api.count("get endpointslices"), api.count("watch endpointslices")) == (1, 1), \
        "events only: no relist, no new watch"
    assert shown < 2.0 and removed < 2.0, (shown, removed)
    print(f"\nwatch event -> answer: shown {shown * 1000:.0f} ms, removed {removed * 1000:.0f} ms "
          "(dig polling every 20 ms included)")


def _wait_watching(api: StandinAPI) -> None:
    """Until both watches are open (a list lands before its watch request does)."""
    deadline = time.monotonic() + 10
    while api.open_watches("endpointslices") < 1 or api.open_watches("services") < 1:
        assert time.monotonic() < deadline, "the watches never opened"
        time.sleep(0.01)


def test_a_410_relist_keeps_the_answers_right(env):
    """Stand-in API over real HTTPS; real DNS process; real dig. Changes made while the
    DNS service could not watch are only seen through the relist the 410 forces."""
    api = env.api
    api.compact()   # an open watch gets ERROR 410 and ends: relist
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.50", "db-0")], "data"))
    env.wait_for(DB, ["10.42.0.50"])
    assert api.count("get endpointslices") == 2, "the 410 forced exactly one relist"

    _wait_watching(api)
    api.refuse = True     # the API server is away; changes happen meanwhile
    api.cut_watches()
    time.sleep(0.3)
    assert env.values(DB) == ["10.42.0.50"], "the last known endpoints keep answering"
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.51", "db-1")], "data"))
    api.put_slice(endpoint_slice("empty", [endpoint("10.42.0.60", "e-0")], "data"))
    api.delete_slice("data", "db-ipv6x7k2p")   # a deletion only a relist can show
    api.compact(send_gone=False)   # and etcd compacts: resuming gets 410
    api.refuse = False
    env.wait_for(DB, ["10.42.0.51"], timeout=30)
    assert env.values(f"e-0.empty.data.{D}") == ["10.42.0.60"]
    assert env.dig(f"db-0.{DB}").status == "NXDOMAIN"
    assert env.dig(DB, "AAAA").answers == []
    assert env.values(f"web.default.{D}") == ["10.43.0.20"]
    assert api.count("get endpointslices") == 3
    log = env.dns.log_path.read_text()
    assert "endpointslices: resourceVersion" in log and "listing again" in log


def test_a_cut_watch_reconnects_without_a_relist(env):
    """Stand-in API over real HTTPS; real DNS process; real dig."""
    api = env.api
    _wait_watching(api)
    api.cut_watches("endpointslices")   # a proxy or the server ended the stream
    deadline = time.monotonic() + 10
    while api.count("watch endpointslices") < 2:
        assert time.monotonic() < deadline, env.dns.log_path.read_text()[-2000:]
        time.sleep(0.02)
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.70", "db-0")], "data"))
    env.wait_for(DB, ["10.42.0.70"])
    assert api.count("get endpointslices") == 1, "resumed from the last resourceVersion"
    assert api.count("watch services") == 1, "the Services watch was not touched"


def test_a_restart_while_the_api_is_away_answers_the_last_known_endpoints(env):
    """Stand-in API over real HTTPS; real DNS process restarted; real dig."""
    api = env.api
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.5", "db-0"),
                                        endpoint("10.42.0.6", "db-1")], "data"))
    env.wait_for(DB, ["10.42.0.5", "10.42.0.6"])
    cache = env.registry.state_dir / "endpoints.json"
    assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
    env.dns.stop()
    api.refuse = True
    env.dns.start()
    assert env.values(DB) == ["10.42.0.5", "10.42.0.6"]
    assert env.values(f"db-1.{DB}") == ["10.42.0.6"]
    assert env.values(DB, "AAAA") == ["fd00:42::5"]
    assert "endpointslices: 3 answering from" in env.dns.log_path.read_text()
    api.delete_slice("data", "db-ipv6x7k2p")   # changed while we were away
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.6", "db-1")], "data"))
    api.refuse = False
    env.wait_for(DB, ["10.42.0.6"], timeout=30)   # the restart's list replaces the cache
    env.wait_for(DB, [], "AAAA")
    assert env.dig(f"db-0.{DB}").status == "NXDOMAIN"
    assert api.count("get endpointslices") == 2


def test_metrics_and_status_show_the_endpointslice_watch(env):
    """Stand-in API over real HTTPS; the real service's /metrics."""
    from smarter_cni.dns import metrics

    status, text = metrics.fetch(env.listen)
    assert status == 200
    parsed = metrics.parse_text(text)

    def value(name: str, resource: str, **labels: str) -> float:
        return next(v for lab, v in parsed[name]
                    if lab.get("resource") == resource and labels.items() <= lab.items())

    assert value("smarter_cni_dns_kube_watch_up", "endpointslices") == 1
    assert value("smarter_cni_dns_kube_watch_up", "services") == 1
    assert value("smarter_cni_dns_kube_objects", "endpointslices") == 3, "db v4+v6, empty"
    assert value("smarter_cni_dns_kube_objects", "services") == 3
    assert value("smarter_cni_dns_kube_requests_total", "endpointslices", kind="list") == 1
    counters = metrics.fetch_counters(env.listen)
    line = metrics.watch_summary(counters)
    assert "services up (3 objects" in line and "endpointslices up (3 objects" in line, line
    env.api.refuse = True
    env.api.cut_watches()
    deadline = time.monotonic() + 10
    while metrics.fetch_counters(env.listen).get("watch_endpointslices_up") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "endpointslices DOWN" in metrics.watch_summary(metrics.fetch_counters(env.listen))


def test_endpoints_node_keeps_only_this_nodes_endpoints(tmp_path, state_dir, pki):
    """Stand-in API over real HTTPS; real DNS process with --endpoints-node; real dig."""
    with StandinAPI(pki) as api:
        _cluster(api)
        made = Env(tmp_path, state_dir, api, pki, ("--endpoints-node", "gw-1"))
        made.dns.start()
        try:
            made.wait_for(DB, ["10.42.0.5", "10.42.0.7"])   # 10.42.0.8 is on gw-2
            assert made.values(f"db-0.{DB}", "AAAA") == ["fd00:42::5"]
            api.put_slice(endpoint_slice("db", [endpoint("10.42.0.5", "db-0", node_name="gw-2"),
                                                endpoint("10.42.0.9", "db-9")], "data"))
            made.wait_for(DB, ["10.42.0.9"])
            assert made.dig(f"db-0.{DB}").answers == [], "db-0 moved to another node"
        finally:
            made.dns.stop()


def test_figures_rss_per_100_endpoints(tmp_path, state_dir, pki):
    """Stand-in API over real HTTPS; the real DNS process's RSS with no endpoint and with
    2000 (20 headless Services of 100 pods with hostnames), the list's parse included."""
    rss = []
    for count in (0, 20):
        with StandinAPI(pki) as api:
            api.put_service(service("probe", "apps", cluster_ip="None"))
            api.put_slice(endpoint_slice("probe", [endpoint("10.42.250.1", "p-0")], "apps"))
            for n in range(count):
                api.put_service(service(f"set{n}", "apps", cluster_ip="None"))
                api.put_slice(endpoint_slice(f"set{n}", [
                    endpoint(f"10.42.{n}.{i + 1}", f"set{n}-{i}") for i in range(100)], "apps"))
            made = Env(tmp_path, state_dir, api, pki)
            made.dns.start()
            try:
                made.wait_for(f"p-0.probe.apps.{D}", ["10.42.250.1"])
                if count:
                    made.wait_for(f"set{count - 1}-99.set{count - 1}.apps.{D}",
                                  [f"10.42.{count - 1}.100"])
                time.sleep(1.0)
                rss.append(made.dns.rss_kib())
            finally:
                made.dns.stop()
    per_100 = (rss[1] - rss[0]) / 20
    print(f"\nRSS with 1 endpoint {rss[0]} KiB, with 2001 {rss[1]} KiB: "
          f"{per_100:.0f} KiB per 100 endpoints (the list's parse included)")
    assert per_100 < 1024, "well under 10 KB of RSS per endpoint"


def test_figures_memory_per_100_endpoints():
    """In process (no API server needed): what the table holds per endpoint, with
    StatefulSet-style hostnames, 10 headless Services of 100 endpoints each."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from smarter_cni.dns.endpoints import Endpoints
    from smarter_cni.dns.services import Services

    services = Services("cluster.local")
    services.replace_all([service(f"set{n}", "apps", cluster_ip="None") for n in range(10)])
    slices = [endpoint_slice(f"set{n}", [endpoint(f"10.42.{n}.{i + 1}", f"set{n}-{i}")
                                         for i in range(100)], "apps") for n in range(10)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = Endpoints(services)
    table.replace_all(slices)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table.names) == 1010
    per_100 = traced / 10
    print(f"\nheadless endpoints: {per_100 / 1024:.1f} KiB per 100 endpoints with hostnames "
          f"({traced / 1000:.0f} B/endpoint, tracemalloc)")
    assert per_100 < 100 * 1024, "the table stays small per endpoint"
