"""Ask the Kubernetes API for a pod's spec.hostname, within a hard time limit.

Only used when the network config names a `kubeconfig` and the pod did not
carry the `smarter-cni.io/hostname` annotation. Any failure (no API server,
slow network, no permission) returns "" and is logged: a hostname is a
convenience, and ADD must never hang or fail because of it.
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
