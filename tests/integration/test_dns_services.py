"""Service names in the node DNS (`smarter-cni dns --kubeconfig`), asked with real `dig`.

No Kubernetes API server can run on these machines: the DNS service (a real
process) lists and watches Services on a stand-in (tests/helpers/kube_standin.py)
that speaks the real protocol over HTTPS with client certificates:
ServiceList with resourceVersion, chunked watch events, BOOKMARKs, and a
410 Gone (an ERROR event, as after etcd compaction) that forces a relist.
"""

from __future__ import annotations

import socket
import statistics
import struct
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from test_dns_helpers import (
    DnsService,
    Registry,
    dig,
    needs_tools,
    unique_loopback,
    write_conflist,
)

from helpers.kube_standin import StandinAPI, make_pki, service, write_kubeconfig

pytestmark = [pytest.mark.root, needs_tools]

D = "svc.cluster.local"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cluster(api: StandinAPI) -> None:
    api.put_service(service("kubernetes", cluster_ip="10.43.0.1",
                            ports=[{"name": "https", "port": 443, "protocol": "TCP"}]))
    api.put_service(service("web", cluster_ip="10.43.0.20", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"port": 8080}]))
    api.put_service(service("db", "data", cluster_ip="None",
                            ports=[{"name": "pg", "port": 5432}]))
    api.put_service(service("ext", kind="ExternalName", external_name="example.org"))
    api.put_service(service("dual", cluster_ip="10.43.0.30",
                            cluster_ips=["10.43.0.30", "fd00:43::30"]))


class Env:
    """The real DNS service on a private loopback address, with Service names from `api`
    (test_dns_headless.py builds on it)."""

    def __init__(self, tmp_path: Path, state_dir: Path, api: StandinAPI, pki: dict,
                 extra: tuple[str, ...] = ()) -> None:
        self.listen = unique_loopback()
        self.api = api
        self.registry = Registry(state_dir)
        self.registry.save()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, pki)
        self.dns = DnsService(tmp_path, self.listen, state_dir, write_conflist(tmp_path),
                              extra=["--no-address-setup", "--kubeconfig", str(kubeconfig),
                                     "--service-cidr", "10.43.0.0/16", "--verbose", *extra])

    def dig(self, *args: str, **kw):
        return dig(self.listen, *args, **kw)

    def wait_for(self, name: str, want: list[str], rtype: str = "A", timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            got = self.dig(name, rtype)
            if got.values(rtype) == want:
                return got
            if time.monotonic() > deadline:
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
            yield made
        finally:
            made.dns.stop()


def _srv(result) -> list[str]:
    return sorted(" ".join(line.split()[4:]) for line in result.stdout.splitlines()
                  if line and not line.startswith(";") and line.split()[3:4] == ["SRV"])


def test_service_answers(env):
    assert env.dig(f"web.default.{D}").values() == ["10.43.0.20"]
    assert env.dig(f"WEB.Default.{D}").values() == ["10.43.0.20"], "case-insensitive"
    got = env.dig(f"_http._tcp.web.default.{D}", "SRV")
    assert _srv(got) == [f"0 100 80 web.default.{D}."], got
    assert _srv(env.dig(f"_dns._udp.web.default.{D}", "SRV")) == [f"0 100 53 web.default.{D}."]
    assert _srv(env.dig(f"web.default.{D}", "SRV")) == sorted(
        f"0 100 {p} web.default.{D}." for p in (80, 53, 8080))
    nodata = env.dig(f"_tcp.web.default.{D}")
    assert nodata.status == "NOERROR" and nodata.answers == [], "an empty non-terminal"
    headless = env.dig(f"db.data.{D}")
    assert headless.status == "NOERROR" and headless.answers == []
    cname = env.dig(f"ext.default.{D}")
    assert cname.status == "NOERROR" and cname.values("CNAME") == ["example.org"]
    assert env.dig(f"dual.default.{D}").values() == ["10.43.0.30"]
    assert env.dig(f"dual.default.{D}", "AAAA").values("AAAA") == ["fd00:43::30"]
    assert env.dig(f"web.default.{D}", "AAAA").status == "NOERROR"
    assert env.dig(f"kubernetes.default.{D}").values() == ["10.43.0.1"]
    assert env.dig(f"default.{D}").status == "NOERROR", "a namespace with Services exists"
    assert env.dig(f"nope.default.{D}").status == "NXDOMAIN"
    assert "aa" in env.dig(f"web.default.{D}").flags


def test_search_path_forms_are_nxdomain_from_memory_never_forwarded(tmp_path, state_dir, pki):
    from test_dns_helpers import Dnsmasq

    # an upstream that WOULD answer the search-path forms: any forwarding shows
    upstream = Dnsmasq(tmp_path, {f"web.default.{D}.lan": "192.0.2.7",
                                  f"web.default.{D}.default.{D}": "192.0.2.8",
                                  "web.lan": "192.0.2.9"}).start()
    try:
        with StandinAPI(pki) as api:
            _cluster(api)
            made = Env(tmp_path, state_dir, api, pki)
            made.dns.upstreams = [upstream.upstream]
            made.dns.start()
            try:
                made.wait_for(f"web.default.{D}", ["10.43.0.20"])
                for name in (f"web.default.{D}.default.{D}", f"web.default.{D}.{D}",
                             f"web.default.{D}.cluster.local", f"web.default.{D}.lan",
                             f"x.{D}.example.com"):
                    got = made.dig(name)
                    assert got.status == "NXDOMAIN" and got.answers == [], (name, got)
                assert made.dig("web.lan").values() == ["192.0.2.9"], "other names forward"
            finally:
                made.dns.stop()
    finally:
        upstream.stop()


def test_a_pod_name_wins_over_a_service_of_the_same_name(env):
    env.registry.add("c1", "web", "10.99.0.5")
    env.wait_for(f"web.default.{D}", ["10.99.0.5"])
    env.registry.remove("c1")
    env.wait_for(f"web.default.{D}", ["10.43.0.20"])


def test_the_watch_follows_changes_bookmarks_and_a_410_relist(env):
    api = env.api
    assert api.count("get services") == 1, "one list"
    started = time.monotonic()
    api.put_service(service("new", "apps", cluster_ip="10.43.1.1"))
    env.wait_for(f"new.apps.{D}", ["10.43.1.1"])
    propagation = time.monotonic() - started
    api.put_service(service("new", "apps", cluster_ip="10.43.1.2"))
    env.wait_for(f"new.apps.{D}", ["10.43.1.2"])
    api.bookmark()
    api.delete_service("apps", "new")
    env.wait_for(f"new.apps.{D}", [])
    assert env.dig(f"new.apps.{D}").status == "NXDOMAIN"
    assert env.dig(f"apps.{D}").status == "NXDOMAIN", "the namespace went with its last Service"
    assert (api.count("get services"), api.count("watch services")) == (1, 1), "no relist, still one watch"

    api.compact()          # etcd compacted: the open watch gets ERROR 410 and ends
    api.put_service(service("after", "apps", cluster_ip="10.43.1.3"))
    env.wait_for(f"after.apps.{D}", ["10.43.1.3"])
    assert api.count("get services") == 2, "the 410 forced exactly one relist"
    assert env.dig(f"web.default.{D}").values() == ["10.43.0.20"]
    log = env.dns.log_path.read_text()
    assert "410 Gone" in log and "listing again" in log
    print(f"\nwatch event -> answer: {propagation * 1000:.1f} ms")


def test_known_services_keep_answering_while_the_api_is_unreachable(env):
    api = env.api
    api.refuse = True      # the API server is gone: connections close at once
    api.cut_watches()
    time.sleep(1.5)
    assert env.dig(f"web.default.{D}").values() == ["10.43.0.20"]
    assert env.dig(f"kubernetes.default.{D}").values() == ["10.43.0.1"]
    assert "keep answering" in env.dns.log_path.read_text()
    api.put_service(service("late", cluster_ip="10.43.2.2"))  # changed while unreachable
    api.refuse = False
    env.wait_for(f"late.default.{D}", ["10.43.2.2"], timeout=30)  # backoff 1, 2, 4 s ...
    assert api.count("get services") == 1, "resumed from the last resourceVersion: no relist"
    assert "answers again" in env.dns.log_path.read_text()


def test_a_restart_while_the_api_is_away_answers_the_last_known_services(env):
    env.api.put_service(service("kept", "apps", cluster_ip="10.43.3.3"))
    env.wait_for(f"kept.apps.{D}", ["10.43.3.3"])
    cache = env.registry.state_dir / "services.json"
    assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
    env.dns.stop()
    env.api.refuse = True
    env.dns.start()
    assert env.dig(f"kept.apps.{D}").values() == ["10.43.3.3"]
    assert env.dig(f"_http._tcp.web.default.{D}", "SRV").status == "NOERROR"
    assert "answering from" in env.dns.log_path.read_text()
    env.api.delete_service("apps", "kept")   # gone while we were away
    env.api.refuse = False
    env.wait_for(f"kept.apps.{D}", [], timeout=30)  # the restart's list replaces the cache
    assert env.api.count("get services") == 2


def test_kubernetes_default_answers_before_any_list(tmp_path, state_dir, pki):
    with StandinAPI(pki) as api:
        api.refuse = True
        made = Env(tmp_path, state_dir, api, pki)
        made.dns.start()
        try:
            assert made.dig(f"kubernetes.default.{D}").values() == ["10.43.0.1"]
            assert made.dig(f"web.default.{D}").status == "NXDOMAIN"
        finally:
            made.dns.stop()


# ---------------------------------------------------------------- figures

def _query(sock: socket.socket, address: tuple[str, int], name: str, qid: int) -> float:
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\x00" + struct.pack("!HH", 1, 1)
    started = time.perf_counter()
    sock.sendto(packet, address)
    data, _ = sock.recvfrom(4096)
    elapsed = time.perf_counter() - started
    assert data[:2] == packet[:2] and data[3] & 0x0F == 0 and data[7] >= 1, name
    return elapsed


def test_figures_latency_memory_and_api_load(tmp_path, state_dir, pki):
    """1000 Services: answer latency (first answer and cached), RSS per Service,
    traced memory per Service, and the steady-state API requests per node."""
    count = 1000
    with StandinAPI(pki) as api:  # the fixed cost: TLS, HTTP, JSON, the thread, one Service
        api.put_service(service("kubernetes", cluster_ip="10.43.0.1"))
        made = Env(tmp_path, state_dir, api, pki)
        made.dns.start()
        try:
            made.wait_for(f"kubernetes.default.{D}", ["10.43.0.1"])
            time.sleep(1.0)
            base_rss = made.dns.rss_kib()
        finally:
            made.dns.stop()
    with StandinAPI(pki) as api:
        for n in range(count):
            api.put_service(service(f"svc{n}", f"ns{n % 20}",
                                    cluster_ip=f"10.43.{4 + n // 250}.{n % 250 + 1}",
                                    ports=[{"name": "http", "port": 80}]))
        made = Env(tmp_path, state_dir, api, pki)
        made.dns.start()
        try:
            made.wait_for(f"svc999.ns19.{D}", ["10.43.7.250"])
            time.sleep(1.0)
            rss = made.dns.rss_kib()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(2)
            address = (made.listen, 53)
            first = [_query(sock, address, f"svc{n}.ns{n % 20}.{D}", n + 1) for n in range(count)]
            cached = [_query(sock, address, f"svc{n % 50}.ns{n % 50 % 20}.{D}", n + 1)
                      for n in range(5000)]
            sock.close()
        finally:
            made.dns.stop()

    # in process: what the table itself holds per Service
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from smarter_cni.dns.services import Services

    objects = [service(f"svc{n}", f"ns{n % 20}", cluster_ip=f"10.43.{4 + n // 250}.{n % 250 + 1}",
                       ports=[{"name": "http", "port": 80}]) for n in range(count)]
    tracemalloc.start()
    table = Services("cluster.local")
    before = tracemalloc.get_traced_memory()[0]
    table.replace_all(objects)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    p50_first = statistics.median(first) * 1e6
    p99_first = sorted(first)[int(len(first) * 0.99)] * 1e6
    p50_cached = statistics.median(cached) * 1e6
    per_service_rss = (rss - base_rss) * 1024 / count
    print(f"\n{count} Services: first answer p50 {p50_first:.0f} us p99 {p99_first:.0f} us; "
          f"cached p50 {p50_cached:.0f} us (dig-free UDP client on loopback); "
          f"RSS with 1 Service {base_rss} KiB, with {count} {rss} KiB ({per_service_rss:.0f} "
          f"B/Service, the list's parse included); table {traced / count:.0f} B/Service "
          f"(tracemalloc)")
    assert traced / count < 4096, "the table stays small per Service"
    assert p50_first < 20000 and p50_cached < 20000  # loose: 2 shared cores, figures above


def test_api_load_at_steady_state(pki):
    """With the watch ended by the server every T seconds (production: 300-600 s), the
    steady state is one watch request per T and no list: here T = 1 s for 5 s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    import tempfile

    from smarter_cni.dns.services import Services, ServiceWatch

    with StandinAPI(pki) as api, tempfile.TemporaryDirectory() as tmp:
        _cluster(api)
        kubeconfig = write_kubeconfig(Path(tmp) / "kc", api.url, pki)
        table = Services("cluster.local")
        watch = ServiceWatch(str(kubeconfig), table, watch_timeout=(1, 1)).start()
        try:
            time.sleep(5.5)
        finally:
            watch.close()
        lists, watches = api.count("get services"), api.count("watch services")
    assert lists == 1, "no relist at steady state"
    assert 4 <= watches <= 7, watches
    assert table.count == 5
    mean = sum((300, 600)) / 2
    print(f"\nsteady state: {lists} list, {watches} watches in 5.5 s with T=1 s -> "
          f"{3600 / mean:.0f} requests per node per hour with T=300-600 s "
          f"({3600 / mean * 1000 / 3600:.1f}/s for 1000 nodes)")


def test_a_missing_kubeconfig_never_stops_the_dns_and_a_bad_cidr_is_a_clear_error(
        tmp_path, state_dir):
    import subprocess

    listen = unique_loopback()
    registry = Registry(state_dir)
    registry.add("c1", "web", "10.99.0.5")
    dns = DnsService(tmp_path, listen, state_dir, write_conflist(tmp_path),
                     extra=["--no-address-setup", "--kubeconfig", str(tmp_path / "k3s.yaml")])
    dns.start()   # k3s not up yet: its kubeconfig does not exist
    try:
        assert dig(listen, "web.default.svc.cluster.local").values() == ["10.99.0.5"]
        assert dig(listen, f"kubernetes.default.{D}").values() == ["10.43.0.1"]
        time.sleep(0.3)
        assert "No such file or directory" in dns.log_path.read_text()
    finally:
        dns.stop()
    bad = DnsService(tmp_path, listen, state_dir, write_conflist(tmp_path),
                     extra=["--no-address-setup", "--kubeconfig", "/x", "--service-cidr", "nope"])
    done = subprocess.run(bad.argv(), capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "--service-cidr 'nope' is not an IPv4 CIDR" in done.stderr
    assert "Traceback" not in done.stderr
