"""A stand-in Kubernetes API server for tests (no real API server can run on these machines).

It speaks the parts of the real protocol smarter-cni uses, over real HTTPS
with a CA, a server certificate and client-certificate (or bearer token)
authentication made with `openssl` for each test:

- GET /api/v1/nodes/NAME -> a Node object (the real shape: metadata, spec.podCIDR(s));
- GET /api/v1/services -> a ServiceList with metadata.resourceVersion;
- GET /api/v1/services?watch=1&resourceVersion=RV&allowWatchBookmarks=true ->
  a chunked stream of watch events (ADDED, MODIFIED, DELETED, BOOKMARK), and
  an ERROR event holding a 410 Gone Status when RV is older than the server
  keeps (what a real API server does after compaction), which forces a relist;
- Status objects with the real codes for 401, 403 and 404.

Tests drive it from outside: add/modify/delete services (each bumps the
resourceVersion and is sent to open watches), send bookmarks, expire old
versions (410), cut open watches, or refuse connections altogether. Every
request is counted by kind.
"""

from __future__ import annotations

import base64
import copy
import json
import queue
import socket
import ssl
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_pki(directory: Path, client_cn: str = "system:node:gw-1") -> dict[str, Path]:
    """CA, server cert for 127.0.0.1 and a client cert, all signed by the CA (EC keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / name for name in (
        "ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt", "san.cnf")}
    files["san.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]),
        "-subj", "/CN=standin-ca", "-days", "2")
    for who, subject, extra in (("server", "/CN=127.0.0.1", ["-extfile", str(files["san.cnf"])]),
                                ("client", f"/O=system:nodes/CN={client_cn}", [])):
        csr = directory / f"{who}.csr"
        run("req", *ec, "-keyout", str(files[f"{who}.key"]), "-out", str(csr), "-subj", subject)
        run("x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]), "-CAkey",
            str(files["ca.key"]), "-CAcreateserial", "-out", str(files[f"{who}.crt"]),
            "-days", "2", *extra)
    return files


def write_kubeconfig(path: Path, server: str, pki: dict[str, Path], token: str = "",
                     embed: bool = True) -> Path:
    """A kubeconfig as k3s writes it (-data fields), or with file paths, or a bearer token."""
    def b64(name: str) -> str:
        return base64.b64encode(pki[name].read_bytes()).decode()

    cluster = (f"    certificate-authority-data: {b64('ca.crt')}" if embed
               else f"    certificate-authority: {pki['ca.crt']}")
    if token:
        user = f"    token: {token}"
    elif embed:
        user = (f"    client-certificate-data: {b64('client.crt')}\n"
                f"    client-key-data: {b64('client.key')}")
    else:
        user = f"    client-certificate: {pki['client.crt']}\n    client-key: {pki['client.key']}"
    path.write_text(f"""apiVersion: v1
clusters:
- cluster:
{cluster}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
{user}
""")
    return path


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def node(name: str, pod_cidrs: list[str] | None, legacy: str | None = None) -> dict[str, Any]:
    """A Node as the API returns it (the fields a CNI reads, plus the usual neighbours)."""
    spec: dict[str, Any] = {"providerID": f"k3s://{name}"}
    if pod_cidrs is not None:
        spec["podCIDRs"] = list(pod_cidrs)
        if pod_cidrs:
            spec["podCIDR"] = pod_cidrs[0]
    if legacy is not None:
        spec["podCIDR"] = legacy
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": "3f1c0c52-0000-4000-8000-000000000001",
                         "resourceVersion": "812", "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"},
                                     {"type": "Hostname", "address": name}]}}


def service(name: str, namespace: str = "default", cluster_ip: str | None = "10.43.0.10",
            ports: list[dict] | None = None, kind: str = "ClusterIP",
            external_name: str = "", cluster_ips: list[str] | None = None) -> dict[str, Any]:
    """A Service as the API returns it (no resourceVersion yet: the server stamps it)."""
    spec: dict[str, Any] = {"type": kind, "ports": ports or []}
    if kind == "ExternalName":
        spec["externalName"] = external_name
    else:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = cluster_ips if cluster_ips is not None else (
            [cluster_ip] if cluster_ip else [])
        spec["ipFamilies"] = ["IPv6" if ":" in ip else "IPv4" for ip in spec["clusterIPs"]]
    return {"metadata": {"name": name, "namespace": namespace,
                         "uid": f"uid-{namespace}-{name}", "labels": {"app": name}},
            "spec": spec, "status": {"loadBalancer": {}}}


class StandinAPI:
    """The server. Use as a context manager; `url` is its https://127.0.0.1:PORT."""

    def __init__(self, pki: dict[str, Path], token: str = "",
                 nodes: dict[str, dict] | None = None) -> None:
        self.pki = pki
        self.token = token
        self.nodes = nodes or {}
        self.lock = threading.Lock()
        self.services: dict[tuple[str, str], dict] = {}
        self.version = 1000
        self.oldest_watchable = 0          # a watch from before this gets 410 Gone
        self.history: list[tuple[int, str, dict]] = []   # (rv, type, object) for watch replay
        self.watchers: list[queue.Queue] = []
        self.requests: dict[str, int] = {}
        self.request_log: list[str] = []
        self.refuse = False                # answer nothing (connection closed at once)
        self.list_pause = 0.0
        handler = self._handler_class()
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki["server.crt"]), str(pki["server.key"]))
        context.load_verify_locations(str(pki["ca.crt"]))
        context.verify_mode = ssl.CERT_OPTIONAL  # a token client brings no certificate
        self.context = context
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> StandinAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.cut_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ test controls

    def count(self, kind: str) -> int:
        with self.lock:
            return self.requests.get(kind, 0)

    def put_service(self, obj: dict) -> int:
        """Add or replace a service; open watches get ADDED or MODIFIED. Returns its RV."""
        obj = copy.deepcopy(obj)
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            kind = "MODIFIED" if key in self.services else "ADDED"
            self.services[key] = obj
            self._emit(kind, obj)
            return self.version

    def delete_service(self, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.services.pop((namespace, name))
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.version)
            self._emit("DELETED", obj)

    def bookmark(self) -> None:
        """A BOOKMARK event to every open watch (the server's current resourceVersion)."""
        with self.lock:
            self.version += 1   # time moves on (other kinds of objects change)
            event = {"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1",
                     "metadata": {"resourceVersion": str(self.version),
                                  "annotations": {"k8s.io/initial-events-end": "true"}}}}
            for watcher in self.watchers:
                watcher.put(event)

    def compact(self, send_gone: bool = True) -> None:
        """Forget history: resuming from any earlier version now gets 410 Gone. With
        `send_gone`, open watches get the ERROR event a real server sends and end."""
        with self.lock:
            self.oldest_watchable = self.version
            self.history.clear()
            if send_gone:
                for watcher in self.watchers:
                    watcher.put(_gone_event(self.version))
                    watcher.put(None)

    def cut_watches(self) -> None:
        """End every open watch stream (the server restarted or a proxy timed out)."""
        with self.lock:
            for watcher in self.watchers:
                watcher.put(None)

    def open_watches(self) -> int:
        with self.lock:
            return len(self.watchers)

    def _emit(self, kind: str, obj: dict) -> None:
        self.history.append((self.version, kind, copy.deepcopy(obj)))
        for watcher in self.watchers:
            watcher.put({"type": kind, "object": copy.deepcopy(obj)})

    # ------------------------------------------------------------ HTTP

    def _handler_class(self) -> type:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            refused = False

            def setup(self) -> None:
                if api.refuse:  # the API server is "down": the connection closes at once
                    self.refused = True
                    self.request.close()
                    return
                try:
                    self.request = api.context.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError):
                    self.refused = True
                    return
                super().setup()

            def handle(self) -> None:
                if self.refused:
                    return
                try:
                    super().handle()
                except (ssl.SSLError, ConnectionError, OSError):
                    pass

            def finish(self) -> None:
                if not self.refused:
                    try:
                        super().finish()
                    except OSError:
                        pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                kind = "watch" if query.get("watch") in ("1", "true") else "get"
                with api.lock:
                    api.requests[kind] = api.requests.get(kind, 0) + 1
                    api.request_log.append(self.path)
                if not self._authorized():
                    return
                parts = url.path.strip("/").split("/")
                if parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
                    found = api.nodes.get(parts[3])
                    if found is None:
                        self._json(404, status(404, "NotFound", f'nodes "{parts[3]}" not found'))
                    else:
                        self._json(200, found)
                elif parts == ["api", "v1", "services"]:
                    if kind == "watch":
                        self._watch(query)
                    else:
                        self._list()
                else:
                    self._json(404, status(404, "NotFound", "the server could not find the "
                                           "requested resource"))

            def _authorized(self) -> bool:
                if api.token:
                    if self.headers.get("Authorization") != f"Bearer {api.token}":
                        self._json(401, status(401, "Unauthorized", "Unauthorized"))
                        return False
                    return True
                if not self.request.getpeercert():
                    self._json(401, status(401, "Unauthorized", "Unauthorized"))
                    return False
                return True

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _list(self) -> None:
                with api.lock:
                    items = [copy.deepcopy(s) for s in api.services.values()]
                    version = api.version
                for item in items:
                    item.setdefault("kind", "Service")
                self._json(200, {"kind": "ServiceList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": str(version)}, "items": items})

            def _watch(self, query: dict[str, str]) -> None:
                try:
                    since = int(query.get("resourceVersion") or "0")
                except ValueError:
                    self._json(400, status(400, "BadRequest", "bad resourceVersion"))
                    return
                feed: queue.Queue = queue.Queue()
                with api.lock:
                    gone = since < api.oldest_watchable
                    if not gone:
                        for rv, kind, obj in api.history:
                            if rv > since:
                                feed.put({"type": kind, "object": copy.deepcopy(obj)})
                        api.watchers.append(feed)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if gone:
                        self._chunk(_gone_event(since))
                        return
                    timeout = float(query.get("timeoutSeconds") or "3600")
                    while True:
                        try:
                            event = feed.get(timeout=timeout)
                        except queue.Empty:
                            break
                        if event is None:
                            break
                        if event["type"] == "BOOKMARK" and \
                                query.get("allowWatchBookmarks") != "true":
                            continue
                        self._chunk(event)
                finally:
                    with api.lock:
                        if feed in api.watchers:
                            api.watchers.remove(feed)
                    try:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True

            def _chunk(self, event: dict) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-stream is normal here


def _gone_event(since: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": status(
        410, "Expired", f"too old resource version: {since} (compacted)")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
