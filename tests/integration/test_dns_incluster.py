"""Service names and headless Services' endpoints with the pod's own ServiceAccount
(`smarter-cni dns --in-cluster`): both watches (Services, EndpointSlices) use it.

No Kubernetes API server can run on these machines: every test here runs the
real DNS service (a real process, asked with real `dig`) against the stand-in
API server (tests/helpers/kube_standin.py, a mock of the API server because none
can run here), which speaks the real protocol over real HTTPS with a real CA
and checks real bearer tokens. The service account
files are laid out as kubelet projects them (token and ca.crt behind the
`..data` symlink, swapped atomically on rotation) in a temp dir given with
--service-account-dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_dns_helpers import DnsService, Registry, dig, needs_tools, unique_loopback, write_conflist

from helpers.kube_standin import StandinAPI, endpoint, endpoint_slice, make_pki, service

pytestmark = [pytest.mark.root, needs_tools]

D = "svc.cluster.local"
DB = f"db.data.{D}"   # a headless Service: answered from the EndpointSlice watch
SRC = Path(__file__).resolve().parents[2] / "src"
USER = "system:serviceaccount:kube-system:smarter-cni"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


class ServiceAccountDir:
    """/var/run/secrets/kubernetes.io/serviceaccount as kubelet writes it: the files are
    symlinks into `..data`, a symlink to a timestamped dir that a rotation replaces."""

    def __init__(self, path: Path, token: str, ca: bytes, namespace: str = "kube-system") -> None:
        self.path = path
        path.mkdir()
        self.generation = 0
        self.write(token, ca, namespace)
        for name in ("token", "ca.crt", "namespace"):
            (path / name).symlink_to(f"..data/{name}")

    def write(self, token: str, ca: bytes | None = None, namespace: str = "kube-system") -> None:
        """A new generation of the files, then one atomic swap of `..data`."""
        self.generation += 1
        old = os.readlink(self.path / "..data") if (self.path / "..data").is_symlink() else ""
        stamp = self.path / f"..2026_11_30_00_00_{self.generation:02d}.000000001"
        stamp.mkdir()
        (stamp / "token").write_text(token)
        (stamp / "ca.crt").write_bytes(ca if ca is not None else
                                       (self.path / old / "ca.crt").read_bytes())
        (stamp / "namespace").write_text(namespace)
        link = self.path / "..data_tmp"
        link.symlink_to(stamp.name)
        os.rename(link, self.path / "..data")


def _cluster(api: StandinAPI) -> None:
    api.put_service(service("kubernetes", cluster_ip="10.43.0.1",
                            ports=[{"name": "https", "port": 443, "protocol": "TCP"}]))
    api.put_service(service("web", cluster_ip="10.43.0.20",
                            ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    api.put_service(service("db", "data", cluster_ip="None"))
    api.put_slice(endpoint_slice("db", [endpoint("10.42.0.5", "db-0", pod="db-0")], "data"))


def _start(tmp_path: Path, state_dir: Path, sa: Path, extra: list[str]) -> tuple[DnsService, str]:
    listen = unique_loopback()
    registry = Registry(state_dir)
    registry.add("c1", "pod-a", "10.99.0.5")   # pod names answer whatever the API does
    conf_dir = tmp_path / "net.d"   # named as installed, so `smarter-cni status` reads it
    conf_dir.mkdir()
    conf = write_conflist(conf_dir, dnsAddress=listen).rename(conf_dir / "10-smarter-cni.conflist")
    dns = DnsService(tmp_path, listen, state_dir, conf,
                     extra=["--no-address-setup", "--in-cluster", "--service-account-dir",
                            str(sa), "--service-cidr", "10.43.0.0/16", "--verbose", *extra])
    return dns.start(), listen


def _wait(listen: str, name: str, want: list[str], dns: DnsService, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = dig(listen, name)
        if sorted(got.values()) == want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {got!r}, wanted {want}; log: "
                                 f"{dns.log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def _wait_log(dns: DnsService, text: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = dns.log_path.read_text()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never logged: {log[-3000:]}")
        time.sleep(0.05)


def _status(tmp_path: Path, state_dir: Path, *flags: str) -> Any:
    """`smarter-cni status` (the real command) for the test's config and state dir: the
    JSON report with "--json", else the text an operator reads."""
    import json

    env = dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_STATE_DIR=str(state_dir),
               SMARTER_CNI_PREFIX=str(tmp_path / "prefix"))
    done = subprocess.run([sys.executable, "-m", "smarter_cni", "status", *flags,
                           "--cni-conf-dir", str(tmp_path / "net.d"),
                           "--cni-bin-dir", str(tmp_path / "bin")],
                          capture_output=True, text=True, timeout=60, env=env)
    return json.loads(done.stdout) if "--json" in flags else done.stdout


def _watch_state(listen: str) -> dict[str, dict[str, Any]]:
    """Per watch (services, endpointslices), from the real /metrics: up, objects, the last
    HTTP status while failing, token reloads, and the credentials and server it uses."""
    sys.path.insert(0, str(SRC))
    from smarter_cni.dns import metrics

    parsed = metrics.fetch_metrics(listen)
    counters = metrics.counters_of(parsed)
    return {resource: {"up": counters[f"watch_{resource}_up"] == 1,
                       "objects": int(counters[f"watch_{resource}_objects"]),
                       "last_status": int(counters[f"watch_{resource}_status"]),
                       "token_reloads": int(counters[f"watch_{resource}_token_reloads"]),
                       **info}
            for resource, info in metrics.watch_info(parsed).items()}


def _both(state: dict[str, dict[str, Any]], **want: Any) -> None:
    """Both watches have these values."""
    assert set(state) == {"services", "endpointslices"}, state
    for resource, values in state.items():
        assert {k: values[k] for k in want} == want, (resource, state)


def test_in_cluster_token_resolves_and_a_rotated_token_needs_no_restart(tmp_path, state_dir, pki):
    """Real DNS service + real dig, stand-in API server over real HTTPS with a bearer token.
    Both watches (Services, headless Services' EndpointSlices) use the token. kubelet rotates
    it: the server takes only the new one, and both watches go on with it from the file, in
    the same process, without a relist."""
    sa = ServiceAccountDir(tmp_path / "sa", "token-1", pki["ca.crt"].read_bytes())
    with StandinAPI(pki, token="token-1") as api:
        _cluster(api)
        dns, listen = _start(tmp_path, state_dir, sa.path, ["--api-server", api.url])
        try:
            pid = dns.proc.pid
            _wait(listen, f"web.default.{D}", ["10.43.0.20"], dns)
            _wait(listen, DB, ["10.42.0.5"], dns)
            _wait(listen, f"db-0.{DB}", ["10.42.0.5"], dns)
            assert dig(listen, "pod-a").values() == ["10.99.0.5"]
            state = _watch_state(listen)
            _both(state, credentials="in-cluster", server=api.url, up=True, last_status=0)
            assert (state["services"]["objects"], state["endpointslices"]["objects"]) == (3, 1)
            assert api.count("get endpointslices") == 1 and api.count("get services") == 1
            assert not api.refused_tokens

            # rotation as kubelet does it: new files first, the old token stops working later
            sa.write("token-2")
            api.token = "token-2"
            api.cut_watches()          # the open watches end (their timeout, or a restart)
            api.put_service(service("after-rotation", cluster_ip="10.43.0.21"))
            api.put_slice(endpoint_slice("db", [endpoint("10.42.0.6", "db-1", pod="db-1")],
                                         "data", name="db-rotated"))
            _wait(listen, f"after-rotation.default.{D}", ["10.43.0.21"], dns)
            _wait(listen, f"db-1.{DB}", ["10.42.0.6"], dns)
            assert "token-1" not in api.refused_tokens, "the new token was read before use"

            # the server refuses the token before kubelet has written the next one: a 401
            # that names the token file, retried with backoff, each retry reading it again
            api.token = "token-3"
            api.cut_watches()
            log = _wait_log(dns, "HTTP 401")
            assert f"the service account token from {sa.path}/token" in log
            assert "keep answering" in log
            deadline = time.monotonic() + 15
            while not all(w["last_status"] == 401 for w in _watch_state(listen).values()):
                assert time.monotonic() < deadline, _watch_state(listen)
                time.sleep(0.1)
            _both(_watch_state(listen), up=False, last_status=401)
            assert dig(listen, f"web.default.{D}").values() == ["10.43.0.20"], "still answers"
            assert sorted(dig(listen, DB).values()) == ["10.42.0.5", "10.42.0.6"]
            sa.write("token-3")
            api.put_service(service("after-401", cluster_ip="10.43.0.22"))
            api.put_slice(endpoint_slice("db", [endpoint("10.42.0.7", "db-2", pod="db-2")],
                                         "data", name="db-after-401"))
            _wait(listen, f"after-401.default.{D}", ["10.43.0.22"], dns, timeout=30)
            _wait(listen, f"db-2.{DB}", ["10.42.0.7"], dns, timeout=30)
            _wait(listen, DB, ["10.42.0.5", "10.42.0.6", "10.42.0.7"], dns)
            assert dns.proc.pid == pid and dns.proc.poll() is None, "no restart"
            assert api.count("get services") == 1, "resumed from the last resourceVersion"
            assert api.count("get endpointslices") == 1, "resumed: no relist"
            assert "token-2" in api.refused_tokens
            _both(_watch_state(listen), up=True, last_status=0, credentials="in-cluster")
        finally:
            dns.stop()


@pytest.mark.parametrize("resource", ["services", "endpointslices"])
def test_a_token_rotated_between_read_and_401_is_read_again_at_once(pki, tmp_path, resource):
    """In process (the watch threads of the DNS service: kubewatch.ListWatch under both
    ServiceWatch and EndpointSliceWatch) against the stand-in over real HTTPS: kubelet
    rotates the token right after the watch read it; the 401 that follows is retried at
    once with the new token, not after the (here 30 s) backoff."""
    sys.path.insert(0, str(SRC))
    from smarter_cni import incluster
    from smarter_cni.dns.endpoints import Endpoints, EndpointSliceWatch
    from smarter_cni.dns.services import Services, ServiceWatch

    sa = ServiceAccountDir(tmp_path / "sa", "old", pki["ca.crt"].read_bytes())
    with StandinAPI(pki, token="new") as api:
        _cluster(api)
        calls = []

        def load():
            creds = incluster.load(str(sa.path), api.url)
            if not calls:
                sa.write("new")   # rotated just after this read
            calls.append(creds.token)
            return creds

        services = Services("cluster.local")
        if resource == "services":
            table: Any = services
            watch: Any = ServiceWatch(load, services, backoff=(30.0, 60.0), source="in-cluster")
        else:
            table = Endpoints(services)
            watch = EndpointSliceWatch(load, table, backoff=(30.0, 60.0), source="in-cluster")
        started = time.monotonic()
        watch.start()
        try:
            while not watch.synced and time.monotonic() - started < 10:
                time.sleep(0.02)
            took = time.monotonic() - started
            counts = dict(watch.counts)   # before close: closing ends the watch
        finally:
            watch.close()
    assert watch.synced and table.count == (3 if resource == "services" else 1)
    assert calls[:2] == ["old", "new"]
    assert api.refused_tokens == ["old"]
    assert api.count(f"get {resource}") == 2, "the refused list and the one with the new token"
    assert counts["token_reloads"] == 1 and counts["errors"] == 1
    assert took < 10, took


def test_a_wrong_ca_is_a_clear_error_and_pod_names_still_answer(tmp_path, state_dir, pki):
    """Real DNS service, stand-in API server over real HTTPS: ca.crt holds another cluster's
    CA, then no certificate at all. Each is logged as what it is; pod names answer."""
    other = make_pki(tmp_path / "other-pki")
    sa = ServiceAccountDir(tmp_path / "sa", "token-1", other["ca.crt"].read_bytes())
    with StandinAPI(pki, token="token-1") as api:
        _cluster(api)
        dns, listen = _start(tmp_path, state_dir, sa.path, ["--api-server", api.url])
        try:
            log = _wait_log(dns, "does not verify")
            assert "the service account's ca.crt" in log and api.url in log
            assert "Traceback" not in log
            assert dig(listen, "pod-a").values() == ["10.99.0.5"]
            assert dig(listen, f"web.default.{D}").status == "NXDOMAIN"
            _both(_watch_state(listen), up=False, credentials="in-cluster")
            sa.write("token-1", b"not a certificate\n")
            log = _wait_log(dns, "holds no PEM certificate", timeout=10)
            assert f"{sa.path}/ca.crt" in log
            sa.write("token-1", pki["ca.crt"].read_bytes())   # the right CA: it recovers
            _wait(listen, f"web.default.{D}", ["10.43.0.20"], dns, timeout=30)
            _wait(listen, DB, ["10.42.0.5"], dns, timeout=30)
        finally:
            dns.stop()


def test_a_403_names_the_rbac_and_the_service_address_comes_from_the_environment(
        tmp_path, state_dir, pki, monkeypatch):
    """Real DNS service, stand-in API server over real HTTPS answering the API server's RBAC
    403 for the ServiceAccount. No --api-server: the address is KUBERNETES_SERVICE_HOST/PORT,
    as in a pod. Binding the ClusterRole (403 lifted) recovers without a restart; the real
    `smarter-cni status` shows the problem with its fix, then one `kube watch` line."""
    sa = ServiceAccountDir(tmp_path / "sa", "token-1", pki["ca.crt"].read_bytes())
    with StandinAPI(pki, token="token-1") as api:
        _cluster(api)
        api.forbidden = USER
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        dns, listen = _start(tmp_path, state_dir, sa.path, [])
        try:
            log = _wait_log(dns, "HTTP 403")
            assert f'User "{USER}" cannot list resource "services"' in log
            assert "get, list and watch on services" in log and "ClusterRole" in log
            _wait_log(dns, f'User "{USER}" cannot list resource "endpointslices"')
            deadline = time.monotonic() + 15
            while not all(w["last_status"] == 403 for w in _watch_state(listen).values()):
                assert time.monotonic() < deadline, _watch_state(listen)
                time.sleep(0.1)
            _both(_watch_state(listen), up=False, last_status=403, server=api.url)
            assert dig(listen, "pod-a").values() == ["10.99.0.5"]
            report = _status(tmp_path, state_dir, "--json")
            assert report["dns"]["kube"] == {
                r: {"credentials": "in-cluster", "server": api.url}
                for r in ("services", "endpointslices")}, report["dns"]
            problems = [p for p in report["problems"] if "not watching" in p["problem"]]
            assert len(problems) == 2, report["problems"]
            for problem in problems:
                assert f"on the API server {api.url}: HTTP 403" in problem["problem"]
                assert "endpointslices (apiGroup discovery.k8s.io)" in problem["fix"]
            api.forbidden = ""
            _wait(listen, f"web.default.{D}", ["10.43.0.20"], dns, timeout=30)
            _wait(listen, DB, ["10.42.0.5"], dns, timeout=30)
            _both(_watch_state(listen), up=True, last_status=0)
            report = _status(tmp_path, state_dir, "--json")
            assert not any("not watching" in p["problem"] for p in report["problems"])
            text = _status(tmp_path, state_dir)
            line = next(x for x in text.splitlines() if "kube watch" in x)
            assert "services up (3 objects" in line and "endpointslices up (1 objects" in line
            assert line.endswith(f"; with in-cluster credentials, API server {api.url}"), line
        finally:
            dns.stop()


def test_a_cluster_role_without_endpointslices_is_a_403_on_that_watch_only(
        tmp_path, state_dir, pki):
    """Real DNS service, stand-in API server over real HTTPS: the ServiceAccount may watch
    services but not endpointslices (a ClusterRole from before headless Services). Service
    names answer; the EndpointSlice watch is down with 403 and the status says which RBAC
    rule is missing; granting it recovers headless names without a restart (real dig)."""
    sa = ServiceAccountDir(tmp_path / "sa", "token-1", pki["ca.crt"].read_bytes())
    with StandinAPI(pki, token="token-1") as api:
        _cluster(api)
        api.forbidden = USER
        api.forbidden_resources = {"endpointslices"}
        dns, listen = _start(tmp_path, state_dir, sa.path, ["--api-server", api.url])
        try:
            _wait(listen, f"web.default.{D}", ["10.43.0.20"], dns)
            log = _wait_log(dns, 'cannot list resource "endpointslices" in API group '
                                 '"discovery.k8s.io"')
            assert "endpointslices (apiGroup discovery.k8s.io)" in log
            nodata = dig(listen, DB)
            assert (nodata.status, nodata.answers) == ("NOERROR", []), "the Service exists"
            deadline = time.monotonic() + 15
            while _watch_state(listen)["endpointslices"]["last_status"] != 403:
                assert time.monotonic() < deadline, _watch_state(listen)
                time.sleep(0.1)
            state = _watch_state(listen)
            assert state["services"]["up"] and not state["endpointslices"]["up"]
            report = _status(tmp_path, state_dir, "--json")
            (problem,) = [p for p in report["problems"] if "not watching" in p["problem"]]
            assert "not watching endpointslices" in problem["problem"]
            assert "HTTP 403" in problem["problem"]
            text = _status(tmp_path, state_dir)
            assert "endpointslices DOWN (HTTP 403)" in text, text
            api.forbidden = ""   # the ClusterRole gains endpointslices
            _wait(listen, DB, ["10.42.0.5"], dns, timeout=30)
            _wait(listen, f"db-0.{DB}", ["10.42.0.5"], dns)
            assert dns.proc.poll() is None
        finally:
            dns.stop()


def test_a_missing_token_is_logged_with_the_fix_and_pod_names_answer(tmp_path, state_dir):
    """Real DNS service; no API server is needed to see that there is no token
    (automountServiceAccountToken: false)."""
    empty = tmp_path / "sa"
    empty.mkdir()
    dns, listen = _start(tmp_path, state_dir, empty, ["--api-server", "https://127.0.0.1:1"])
    try:
        log = _wait_log(dns, "no service account token at")
        assert "automountServiceAccountToken: true" in log
        assert dig(listen, "pod-a").values() == ["10.99.0.5"]
        assert dig(listen, f"kubernetes.default.{D}").values() == ["10.43.0.1"]
        _both(_watch_state(listen), credentials="in-cluster", up=False, objects=0,
              server="https://127.0.0.1:1", last_status=0)
    finally:
        dns.stop()


@pytest.mark.parametrize("extra, message", [
    (["--in-cluster"], "KUBERNETES_SERVICE_HOST is not set"),
    (["--in-cluster", "--api-server", "http://127.0.0.1:6443"], "must be https://"),
    (["--in-cluster", "--kubeconfig", "/etc/k.yaml"], "give one"),
    (["--api-server", "https://127.0.0.1:6443"], "--api-server goes with --in-cluster"),
])
def test_bad_in_cluster_settings_are_clear_errors(tmp_path, state_dir, extra, message):
    """The real `smarter-cni dns` process: settings that can never work stop it with
    exit code 2 and one line, before it serves anything."""
    dns = DnsService(tmp_path, unique_loopback(), state_dir, write_conflist(tmp_path),
                     extra=["--no-address-setup", *extra])
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run(dns.argv(), capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
