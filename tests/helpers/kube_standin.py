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
- GET /apis/discovery.k8s.io/v1/endpointslices[?labelSelector=KEY] -> an
  EndpointSliceList, and its watch, the same way (events, bookmarks, 410);
  a label selector `KEY` (exists) or `KEY=VALUE` filters lists and watches
  as the real server does (an object that stops matching is sent DELETED);
- Status objects with the real codes for 401, 403 and 404 (`token` is the one
  bearer token accepted: replace it to model a rotated service account token;
  `forbidden` names a user whose requests get the API server's RBAC 403, for
  every resource or only those in `forbidden_resources`).

resourceVersions are one counter for every kind, as etcd's revision is.

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


def endpoint_slice(service_name: str, endpoints: list[dict], namespace: str = "default",
                   name: str = "", address_type: str = "IPv4", headless: bool = True,
                   ports: list[dict] | None = None) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller makes it for a Service (labels
    kubernetes.io/service-name, endpointslice.kubernetes.io/managed-by and, for a
    headless Service, service.kubernetes.io/headless)."""
    labels = {"kubernetes.io/service-name": service_name,
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
              "app": service_name}
    if headless:
        labels["service.kubernetes.io/headless"] = ""
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name or f"{service_name}-{address_type.lower()}x7k2p",
                         "generateName": f"{service_name}-", "namespace": namespace,
                         "uid": f"uid-slice-{namespace}-{service_name}-{address_type}",
                         "labels": labels,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                              "name": service_name, "controller": True,
                                              "blockOwnerDeletion": True,
                                              "uid": f"uid-{namespace}-{service_name}"}]},
            "addressType": address_type, "endpoints": endpoints, "ports": ports or []}


def endpoint(address: str | list[str], hostname: str = "", ready: bool | None = True,
             node_name: str = "gw-1", pod: str = "") -> dict[str, Any]:
    """One endpoint of a slice; `ready=None` leaves the condition out (the API: ready)."""
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions = {"ready": ready, "serving": ready, "terminating": False}
    out: dict[str, Any] = {"addresses": [address] if isinstance(address, str) else address,
                           "conditions": conditions, "nodeName": node_name}
    if hostname:
        out["hostname"] = hostname
    if pod:
        out["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod,
                            "uid": f"uid-pod-{pod}"}
    return out


RESOURCES = {("api", "v1", "services"): ("services", "Service", "ServiceList", "v1"),
             ("apis", "discovery.k8s.io", "v1", "endpointslices"):
             ("endpointslices", "EndpointSlice", "EndpointSliceList", "discovery.k8s.io/v1")}


def _matches(obj: dict, selector: str) -> bool:
    """A label selector of `key`, `!key`, `key=value` terms, comma-separated (the subset
    clients here send)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "=" in term:
            key, _, value = term.partition("=")
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term not in labels:
            return False
    return True


class StandinAPI:
    """The server. Use as a context manager; `url` is its https://127.0.0.1:PORT."""

    def __init__(self, pki: dict[str, Path], token: str = "",
                 nodes: dict[str, dict] | None = None) -> None:
        self.pki = pki
        self.token = token
        self.nodes = nodes or {}
        self.lock = threading.Lock()
        self.services: dict[tuple[str, str], dict] = {}
        self.slices: dict[tuple[str, str], dict] = {}
        self.stores = {"services": self.services, "endpointslices": self.slices}
        self.version = 1000
        self.oldest_watchable = 0          # a watch from before this gets 410 Gone
        # (rv, resource, type, object, old object) for watch replay
        self.history: list[tuple[int, str, str, dict, dict | None]] = []
        self.watchers: list[tuple[str, queue.Queue]] = []   # (resource, feed)
        self.requests: dict[str, int] = {}   # "get"/"watch" (any resource), "get endpointslices"
        self.request_log: list[str] = []
        self.refuse = False                # answer nothing (connection closed at once)
        self.list_pause = 0.0
        self.forbidden = ""                # a user name: its requests get 403 (no RBAC)
        self.forbidden_resources: set[str] = set()  # only these (empty: every resource)
        self.refused_tokens: list[str] = []  # bearer tokens answered 401, in order
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
        return self._put("services", obj)

    def delete_service(self, namespace: str, name: str) -> None:
        self._delete("services", namespace, name)

    def put_slice(self, obj: dict) -> int:
        """Add or replace an EndpointSlice (endpoint_slice()); watches get ADDED/MODIFIED."""
        return self._put("endpointslices", obj)

    def delete_slice(self, namespace: str, name: str) -> None:
        self._delete("endpointslices", namespace, name)

    def _put(self, resource: str, obj: dict) -> int:
        obj = copy.deepcopy(obj)
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        store = self.stores[resource]
        with self.lock:
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            old = store.get(key)
            store[key] = obj
            self._emit(resource, "MODIFIED" if old is not None else "ADDED", obj, old)
            return self.version

    def _delete(self, resource: str, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.stores[resource].pop((namespace, name))
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.version)
            self._emit(resource, "DELETED", obj, None)

    def bookmark(self) -> None:
        """A BOOKMARK event to every open watch (the server's current resourceVersion)."""
        with self.lock:
            self.version += 1   # time moves on (other kinds of objects change)
            for resource, watcher in self.watchers:
                _, kind, _, api_version = _resource_by_name(resource)
                watcher.put({"type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.version),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})

    def compact(self, send_gone: bool = True) -> None:
        """Forget history: resuming from any earlier version now gets 410 Gone. With
        `send_gone`, open watches get the ERROR event a real server sends and end."""
        with self.lock:
            self.oldest_watchable = self.version
            self.history.clear()
            if send_gone:
                for _, watcher in self.watchers:
                    watcher.put(_gone_event(self.version))
                    watcher.put(None)

    def cut_watches(self, resource: str = "") -> None:
        """End every open watch stream (the server restarted or a proxy timed out), or
        only those of `resource`."""
        with self.lock:
            for watching, watcher in self.watchers:
                if not resource or watching == resource:
                    watcher.put(None)

    def open_watches(self, resource: str = "") -> int:
        with self.lock:
            return sum(1 for watching, _ in self.watchers if not resource or watching == resource)

    def _emit(self, resource: str, kind: str, obj: dict, old: dict | None) -> None:
        self.history.append((self.version, resource, kind, copy.deepcopy(obj),
                             copy.deepcopy(old)))
        for watching, watcher in self.watchers:
            if watching == resource:
                watcher.put(("change", kind, copy.deepcopy(obj), copy.deepcopy(old)))

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
                parts = url.path.strip("/").split("/")
                resource = RESOURCES.get(tuple(parts), ("",))[0]
                with api.lock:
                    api.requests[kind] = api.requests.get(kind, 0) + 1
                    if resource:
                        key = f"{kind} {resource}"
                        api.requests[key] = api.requests.get(key, 0) + 1
                    api.request_log.append(self.path)
                if not self._authorized(resource or parts[-1]):
                    return
                if parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
                    found = api.nodes.get(parts[3])
                    if found is None:
                        self._json(404, status(404, "NotFound", f'nodes "{parts[3]}" not found'))
                    else:
                        self._json(200, found)
                elif resource:
                    if kind == "watch":
                        self._watch(resource, query)
                    else:
                        self._list(resource, query)
                else:
                    self._json(404, status(404, "NotFound", "the server could not find the "
                                           "requested resource"))

            def _authorized(self, resource: str) -> bool:
                if api.token:
                    if self.headers.get("Authorization") != f"Bearer {api.token}":
                        with api.lock:
                            api.refused_tokens.append(
                                self.headers.get("Authorization", "").removeprefix("Bearer "))
                        self._json(401, status(401, "Unauthorized", "Unauthorized"))
                        return False
                    if api.forbidden and (not api.forbidden_resources
                                          or resource in api.forbidden_resources):
                        group = "discovery.k8s.io" if resource == "endpointslices" else ""
                        self._json(403, status(403, "Forbidden", (  # the real message
                            f'{resource} is forbidden: User "{api.forbidden}" cannot list '
                            f'resource "{resource}" in API group "{group}" at the cluster '
                            'scope')))
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

            def _list(self, resource: str, query: dict[str, str]) -> None:
                _, kind, list_kind, api_version = _resource_by_name(resource)
                selector = query.get("labelSelector", "")
                with api.lock:
                    items = [copy.deepcopy(s) for s in api.stores[resource].values()
                             if _matches(s, selector)]
                    version = api.version
                for item in items:  # a real list leaves kind/apiVersion out of its items
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                self._json(200, {"kind": list_kind, "apiVersion": api_version,
                                 "metadata": {"resourceVersion": str(version)}, "items": items})

            def _watch(self, resource: str, query: dict[str, str]) -> None:
                try:
                    since = int(query.get("resourceVersion") or "0")
                except ValueError:
                    self._json(400, status(400, "BadRequest", "bad resourceVersion"))
                    return
                selector = query.get("labelSelector", "")
                _, object_kind, _, api_version = _resource_by_name(resource)
                feed: queue.Queue = queue.Queue()
                with api.lock:
                    gone = since < api.oldest_watchable
                    if not gone:
                        for rv, watching, kind, obj, old in api.history:
                            if rv > since and watching == resource:
                                feed.put(("change", kind, copy.deepcopy(obj), copy.deepcopy(old)))
                        api.watchers.append((resource, feed))
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
                        if isinstance(event, tuple):  # filter as the real server does
                            event = _filtered(event, selector)
                            if event is None:
                                continue
                            event["object"].update(kind=object_kind, apiVersion=api_version)
                        if event["type"] == "BOOKMARK" and \
                                query.get("allowWatchBookmarks") != "true":
                            continue
                        self._chunk(event)
                finally:
                    with api.lock:
                        if (resource, feed) in api.watchers:
                            api.watchers.remove((resource, feed))
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


def _resource_by_name(resource: str) -> tuple[str, str, str, str]:
    return next(v for v in RESOURCES.values() if v[0] == resource)


def _filtered(change: tuple, selector: str) -> dict | None:
    """The event a watch with `selector` sees for one change: an object that stops
    matching is DELETED for it, one that starts matching ADDED (the apiserver's cacher)."""
    _, kind, obj, old = change
    now = _matches(obj, selector)
    before = old is not None and _matches(old, selector)
    if kind == "DELETED":
        return {"type": "DELETED", "object": obj} if now else None
    if now and before:
        return {"type": "MODIFIED", "object": obj}
    if now:
        return {"type": "ADDED", "object": obj}
    if before:
        return {"type": "DELETED", "object": obj}
    return None


def _gone_event(since: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": status(
        410, "Expired", f"too old resource version: {since} (compacted)")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
