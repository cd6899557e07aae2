"""How bridge mode learns a pod's spec.hostname (runtimes do not pass it).

The Kubernetes API server here is a stand-in: no cluster can run on this
machine, so a small HTTPS server with real TLS and client certificates
answers the one GET the plugin makes. Everything else is real.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.netns import run_id
from helpers.plugin import pod_args

pytestmark = pytest.mark.root


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=system:node:{name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        ext = d / f"{name}.ext"
        ext.write_text(extra + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(ext), "-out", str(d / f"{name}.crt"))
    return d


class FakeAPI(BaseHTTPRequestHandler):
    pods: dict = {}
    delay = 0.0
    seen_client_cn: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        time.sleep(self.delay)
        cert = self.connection.getpeercert()
        self.seen_client_cn.append(dict(x[0] for x in cert["subject"])["commonName"])
        pod = self.pods.get(self.path)
        body = json.dumps(pod or {"kind": "Status", "code": 404}).encode()
        self.send_response(200 if pod else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server(pki):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    context.load_verify_locations(pki / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeAPI.pods = {}
    FakeAPI.delay = 0.0
    FakeAPI.seen_client_cn = []
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _kubeconfig(path: Path, pki: Path, port: int) -> Path:
    # Relative paths, as k3s writes them, are resolved against the kubeconfig's directory.
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {pki}/ca.crt
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: user
  name: Default
current-context: Default
preferences: {{}}
users:
- name: user
  user:
    client-certificate: {pki}/client.crt
    client-key: {pki}/client.key
""")
    return path


def _recorded_pod(plugin, network: str, container: str) -> dict:
    state = json.loads((plugin.state_dir / "attachments.json").read_text())
    return state["attachments"][f"{network}/{container}/eth0"]["pod"]


def test_hostname_from_pod_annotation(plugin, bridge_network, netns):
    _, path = netns.create()
    config = dict(bridge_network, runtimeConfig={
        "io.kubernetes.cri.pod-annotations": {"smarter-cni.io/hostname": "Example"}})
    assert plugin("ADD", config, run_id("ctr-ann"), path, args=pod_args("example-x7k2p")).ok
    pod = _recorded_pod(plugin, bridge_network["name"], run_id("ctr-ann"))
    assert pod["name"] == "example-x7k2p" and pod["hostname"] == "example"


def test_hostname_from_the_api_server(plugin, bridge_network, netns, api_server, pki, tmp_path):
    FakeAPI.pods["/api/v1/namespaces/edge/pods/example-x7k2p"] = {
        "metadata": {"name": "example-x7k2p"}, "spec": {"hostname": "example"}}
    config = dict(bridge_network, kubeconfig=str(
        _kubeconfig(tmp_path / "kubelet.kubeconfig", pki, api_server.server_address[1])))
    _, path = netns.create()
    added = plugin("ADD", config, run_id("ctr-api"), path, args=pod_args("example-x7k2p", "edge"))
    assert added.ok, added
    assert _recorded_pod(plugin, bridge_network["name"], run_id("ctr-api"))["hostname"] == "example"
    assert FakeAPI.seen_client_cn == ["system:node:client"]


def test_a_slow_api_server_costs_the_hostname_not_the_pod(
        plugin, bridge_network, netns, api_server, pki, tmp_path):
    FakeAPI.delay = 10.0
    config = dict(bridge_network, kubeconfig=str(
        _kubeconfig(tmp_path / "kubelet.kubeconfig", pki, api_server.server_address[1])))
    _, path = netns.create()
    started = time.monotonic()
    added = plugin("ADD", config, run_id("ctr-slow"), path, args=pod_args("web", "edge"))
    elapsed = time.monotonic() - started
    assert added.ok, added
    assert elapsed < 5.0, f"ADD waited {elapsed:.1f} s for the API server"
    assert _recorded_pod(plugin, bridge_network["name"], run_id("ctr-slow"))["hostname"] == ""
    log = (plugin.state_dir / "smarter-cni.log").read_text()
    assert "pod lookup edge/web failed" in log


def test_a_missing_kubeconfig_is_logged_not_fatal(plugin, bridge_network, netns, tmp_path):
    _, path = netns.create()
    config = dict(bridge_network, kubeconfig=str(tmp_path / "absent.kubeconfig"))
    assert plugin("ADD", config, run_id("ctr-nokc"), path, args=pod_args("web")).ok
    assert _recorded_pod(plugin, bridge_network["name"], run_id("ctr-nokc"))["hostname"] == ""
