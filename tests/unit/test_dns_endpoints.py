"""The headless-Service endpoint table (dns/endpoints.py) in process: parsing EndpointSlices
in the API's shape (tests/helpers/kube_standin.py builds them), events, and the answers
Services.answer gives with it. No API server or socket is needed for these."""

from __future__ import annotations

from helpers.kube_standin import endpoint, endpoint_slice, service
from smarter_cni.dns import wire
from smarter_cni.dns.endpoints import Endpoints, parse_slice
from smarter_cni.dns.services import Services

D = "svc.cluster.local"


class _Names:
    """What Services.answer needs of answers.Names: the SOA for NODATA."""

    def _soa(self, offset: int) -> bytes:
        return b"SOA"


def _table() -> tuple[Services, Endpoints]:
    services = Services("cluster.local")
    endpoints = Endpoints(services)
    services.endpoints = endpoints
    services.replace_all([service("db", "data", cluster_ip="None"),
                          service("web", cluster_ip="10.43.0.5")])
    return services, endpoints


def _ask(services: Services, name: str, qtype: int = wire.A) -> tuple[int, int] | None:
    """(rcode, answer count) or None (not a Service name: NXDOMAIN in the service)."""
    found = services.answer(wire.encode_name(name), qtype, True, _Names())
    return None if found is None else (found.rcode, len(found.answers))


def test_parse_keeps_ready_endpoints_of_the_slice_family_only():
    obj = endpoint_slice("db", [endpoint("10.42.0.1", "Db-0"), endpoint("10.42.0.2", ready=False),
                                endpoint("10.42.0.3", ready=None), endpoint("fd00::1"),
                                endpoint(["10.42.0.4", "junk"], "db-4"), {"addresses": "x"},
                                "nonsense", endpoint([], "db-5")], "data")
    assert parse_slice(obj) == ("data", "db-ipv4x7k2p", "db", (
        ("db-0", ("10.42.0.1",)), ("", ("10.42.0.3",)), ("db-4", ("10.42.0.4",))))
    fqdn = endpoint_slice("db", [endpoint("example.org")], "data", address_type="FQDN")
    assert parse_slice(fqdn)[3] == ()
    assert parse_slice({"metadata": {"name": "x"}}) is None
    assert parse_slice([]) is None
    unlabelled = endpoint_slice("db", [endpoint("10.42.0.1")], "data")
    del unlabelled["metadata"]["labels"]["kubernetes.io/service-name"]
    assert parse_slice(unlabelled)[2:] == ("", ())
    other_node = endpoint_slice("db", [endpoint("10.42.0.1", node_name="gw-2"),
                                       endpoint("10.42.0.2", node_name="gw-1")], "data")
    assert parse_slice(other_node, "gw-1")[3] == (("", ("10.42.0.2",)),)


def test_answers_merge_slices_and_follow_events():
    services, endpoints = _table()
    base = f"db.data.{D}"
    assert _ask(services, base) == (wire.NOERROR, 0), "headless, nothing listed yet: NODATA"
    endpoints.replace_all([
        endpoint_slice("db", [endpoint("10.42.0.1", "db-0"), endpoint("10.42.0.2", "db-1")],
                       "data", name="db-a"),
        endpoint_slice("db", [endpoint("10.42.0.2", "db-1"), endpoint("10.42.0.3", "db-2")],
                       "data", name="db-b"),   # a pod seen in two slices (a move): once
        endpoint_slice("db", [endpoint("fd00::1", "db-0")], "data", address_type="IPv6"),
        endpoint_slice("web", [endpoint("10.42.0.9", "web-0")], "default", headless=False)])
    assert _ask(services, base) == (wire.NOERROR, 3)
    assert _ask(services, base, wire.AAAA) == (wire.NOERROR, 1)
    assert _ask(services, f"db-1.{base}") == (wire.NOERROR, 1)
    assert _ask(services, f"db-0.{base}", wire.AAAA) == (wire.NOERROR, 1)
    assert _ask(services, f"web.default.{D}") == (wire.NOERROR, 1), "a ClusterIP: its IP only"
    assert _ask(services, f"web-0.web.default.{D}") is None, "no names under a ClusterIP"
    generation = services.generation
    gone = endpoint_slice("db", [], "data", name="db-b")
    assert endpoints.apply("MODIFIED", gone) and services.generation > generation
    assert _ask(services, base) == (wire.NOERROR, 2)
    assert _ask(services, f"db-2.{base}") is None
    assert not endpoints.apply("MODIFIED", gone), "no change, no new generation"
    assert endpoints.apply("DELETED", gone) and endpoints.count == 3
    # the slice's Service label changes (e.g. recreated): it moves between Services
    moved = endpoint_slice("cache", [endpoint("10.42.0.1", "db-0")], "data", name="db-a")
    services.apply("ADDED", service("cache", "data", cluster_ip="None"))
    assert endpoints.apply("MODIFIED", moved)
    assert _ask(services, base) == (wire.NOERROR, 0)
    assert _ask(services, f"db-0.cache.data.{D}") == (wire.NOERROR, 1)
    # the Service goes: its names go with it even while the slices linger
    services.apply("DELETED", service("cache", "data", cluster_ip="None"))
    assert _ask(services, f"cache.data.{D}") is None
    assert _ask(services, f"db-0.cache.data.{D}") is None


def test_hostnames_that_are_not_one_label_are_ignored():
    services, endpoints = _table()
    endpoints.replace_all([endpoint_slice("db", [endpoint("10.42.0.1", "a.b"),
                                                 endpoint("10.42.0.2", "x" * 64),
                                                 endpoint("10.42.0.3", "ok")], "data")])
    assert _ask(services, f"db.data.{D}") == (wire.NOERROR, 3)
    assert _ask(services, f"a.b.db.data.{D}") is None
    assert _ask(services, f"ok.db.data.{D}") == (wire.NOERROR, 1)
    assert len(endpoints.names) == 2


def test_status_reports_a_watch_that_is_down():
    from smarter_cni.node.status import Report, watch_problems

    report = Report()
    counters = {"pods": 3.0, "watch_services_up": 1.0, "watch_endpointslices_up": 0.0}
    watch_problems(report, counters, {"dns_service": "systemd"})
    assert len(report.problems) == 1, report.problems
    assert "not watching endpointslices" in report.problems[0]["problem"]
    assert "journalctl -u" in report.problems[0]["fix"]
    report = Report()
    watch_problems(report, {"pods": 1.0}, {})
    assert report.problems == [], "no kubeconfig: no watch, no problem"
