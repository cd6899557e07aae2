"""A minimal Kubernetes API client over a kubeconfig (kubeconfig.py).

The plugin asks for a pod's spec.hostname, within a hard time limit: only
when the network config names a `kubeconfig` and the pod did not carry the
`smarter-cni.io/hostname` annotation. Any failure (no API server, slow
network, no permission) returns "" and is logged: a hostname is a
convenience, and ADD must never hang or fail because of it.

The installer reads the node's podCIDR (`node_pod_cidr`) and the DNS service
lists and watches Services (dns/services.py) through `connect`/`headers`.
"""

from __future__ import annotations

import os
import urllib.parse

from . import kubeconfig
from .cni import jsonfast
from .logs import log

DEFAULT_TIMEOUT = 2.0


def _ssl_context(creds: kubeconfig.Credentials):
    import ssl

    context = ssl.create_default_context(cafile=creds.ca_file or None,
                                         cadata=creds.ca_data.decode() if creds.ca_data else None)
    if creds.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.cert_file:
        context.load_cert_chain(creds.cert_file, creds.key_file or None)
    elif creds.cert_data:
        # ssl can only load a client key from a path: give it anonymous memory files, so the
        # key never lands on a disk, not even when the plugin is killed half-way.
        fds = [_memory_file(data) for data in (creds.cert_data, creds.key_data) if data]
        try:
            paths = [f"/proc/self/fd/{fd}" for fd in fds]
            context.load_cert_chain(paths[0], paths[1] if len(paths) > 1 else None)
        finally:
            for fd in fds:
                os.close(fd)
    return context


def _memory_file(data: bytes) -> int:
    fd = os.memfd_create("smarter-cni-credential", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


class APIError(Exception):
    """A request the API server refused or could not answer: what and why."""

    def __init__(self, message: str, status: int = 0, fix: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.fix = fix


def connect(creds: kubeconfig.Credentials, timeout: float):
    """An HTTPS connection to the kubeconfig's server (not yet opened)."""
    import http.client

    url = urllib.parse.urlsplit(creds.server)
    return http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=timeout,
                                       context=_ssl_context(creds))


def base_path(creds: kubeconfig.Credentials) -> str:
    """The server URL's path (a kubeconfig may name https://host:6443/some/prefix)."""
    return urllib.parse.urlsplit(creds.server).path.rstrip("/")


def headers(creds: kubeconfig.Credentials) -> dict[str, str]:
    out = {"Accept": "application/json", "User-Agent": "smarter-cni"}
    if creds.token:
        out["Authorization"] = f"Bearer {creds.token}"
    return out


def get_json(creds: kubeconfig.Credentials, path: str, timeout: float = 10.0) -> dict:
    """GET one object; APIError names the server, the status and the API's own message."""
    connection = connect(creds, timeout)
    try:
        connection.request("GET", base_path(creds) + path, headers=headers(creds))
        response = connection.getresponse()
        body = response.read(8 << 20)
    except OSError as err:  # refused, unreachable, TLS, time-out
        raise APIError(f"cannot reach the API server {creds.server}: "
                       f"{type(err).__name__}: {err}") from None
    finally:
        connection.close()
    try:
        data = jsonfast.loads(body) if body.strip() else {}
    except (jsonfast.JSONError, RecursionError):
        data = {}
    if response.status != 200:
        reason = data.get("message") if isinstance(data, dict) else ""
        raise APIError(f"GET {path} on {creds.server}: HTTP {response.status} "
                       f"{reason or response.reason}", response.status)
    if not isinstance(data, dict):
        raise APIError(f"GET {path} on {creds.server}: the answer is not a JSON object")
    return data


def node_pod_cidr(kubeconfig_path: str, node_name: str, timeout: float = 10.0) -> str:
    """The node's IPv4 pod CIDR: spec.podCIDRs (dual-stack clusters list one per family),
    else spec.podCIDR. APIError when there is none (yet) or the API cannot tell."""
    try:
        creds = kubeconfig.load(kubeconfig_path)
    except (OSError, kubeconfig.KubeconfigError, ValueError) as err:
        raise APIError(f"kubeconfig {kubeconfig_path}: {err}") from None
    path = f"/api/v1/nodes/{urllib.parse.quote(node_name, safe='')}"
    try:
        node = get_json(creds, path, timeout)
    except APIError as err:
        if err.status == 404:
            raise APIError(f"the API server {creds.server} has no node named {node_name!r}",
                           404) from None
        raise
    spec = node.get("spec") if isinstance(node.get("spec"), dict) else {}
    cidrs = spec.get("podCIDRs")
    candidates = [c for c in cidrs if isinstance(c, str)] if isinstance(cidrs, list) else []
    if isinstance(spec.get("podCIDR"), str):
        candidates.append(spec["podCIDR"])
    candidates = list(dict.fromkeys(candidates))  # podCIDR repeats podCIDRs[0]
    for cidr in candidates:
        if ":" not in cidr and cidr:
            return cidr
    fix = "give the node's IPv4 pod CIDR with --subnet"
    if candidates:
        raise APIError(f"node {node_name} has only IPv6 pod CIDRs ({', '.join(candidates)}); "
                       "smarter-cni hands out IPv4 addresses", fix=fix)
    raise APIError(f"node {node_name} has no spec.podCIDR yet (the controller manager allocates "
                   "one when it runs with --allocate-node-cidrs, as k3s does)",
                   fix="wait until the node is registered and try again, or " + fix)


def pod_hostname(kubeconfig_path: str, namespace: str, name: str,
                 timeout: float = DEFAULT_TIMEOUT) -> str:
    """spec.hostname of pod namespace/name, or "" when unknown or unreachable."""
    if not (kubeconfig_path and namespace and name):
        return ""
    import signal

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {timeout:g} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, timeout)  # bounds the whole lookup, not each read
    try:
        return _lookup(kubeconfig_path, namespace, name, timeout)
    except Exception as err:  # any failure only costs the hostname
        log("warning", f"pod lookup {namespace}/{name} failed: {type(err).__name__}: {err}")
        return ""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _lookup(kubeconfig_path: str, namespace: str, name: str, timeout: float) -> str:
    import http.client

    creds = kubeconfig.load(kubeconfig_path)
    url = urllib.parse.urlsplit(creds.server)
    connection = http.client.HTTPSConnection(url.hostname or "", url.port or 443,
                                             timeout=timeout, context=_ssl_context(creds))
    headers = {"Accept": "application/json"}
    if creds.token:
        headers["Authorization"] = f"Bearer {creds.token}"
    path = (f"{url.path}/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
            f"/pods/{urllib.parse.quote(name, safe='')}")
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read(1 << 20)
    finally:
        connection.close()
    if response.status != 200:
        log("warning", f"pod lookup {namespace}/{name}: HTTP {response.status}")
        return ""
    pod = jsonfast.loads(body)
    hostname = (pod.get("spec") or {}).get("hostname") or ""
    return hostname if isinstance(hostname, str) else ""
