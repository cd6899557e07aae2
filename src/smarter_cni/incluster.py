"""In-cluster credentials: the pod's own ServiceAccount (`smarter-cni dns --in-cluster`).

What client-go's rest.InClusterConfig reads, with one difference the product
needs: the API server address. In a pod it is the `kubernetes` Service's
ClusterIP (KUBERNETES_SERVICE_HOST/PORT), which only routes where kube-proxy
(or a replacement) runs. smarter-cni runs without kube-proxy and the DaemonSet
is hostNetwork, so `--api-server URL` names the real address (k3s server:
https://127.0.0.1:6443) and the Service address is only the fallback.

The token file is a projected, bound token that kubelet rewrites about
hourly (at 80% of its lifetime): `load` reads it again each time it is
called, and each Kubernetes watch (kubewatch.ListWatch: Services and headless
Services' EndpointSlices) calls it before every connection and again at once
after a 401 when the file changed, so a rotated token is used without a restart.
"""

from __future__ import annotations

import os
import urllib.parse

from .kubeconfig import Credentials

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SOURCE = "in-cluster"
RBAC_HINT = ("the DaemonSet's ServiceAccount needs a ClusterRole with get, list and watch on "
             "services (apiGroup \"\") and endpointslices (apiGroup discovery.k8s.io) bound "
             "to it: see the ClusterRole in deploy/daemonset.yaml or the Helm chart with "
             "inCluster=true")


class InClusterError(ValueError):
    """In-cluster credentials that cannot work, with what the operator should do."""


def bracket(host: str) -> str:
    """An IPv6 literal in brackets, as a URL needs it; anything else as it is."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def server_url(api_server: str = "", environ: dict[str, str] | None = None) -> str:
    """The API server URL: `--api-server` when given, else the `kubernetes` Service
    from KUBERNETES_SERVICE_HOST/PORT (what every pod's environment carries)."""
    if api_server:
        return check_url(api_server, "--api-server")
    env = os.environ if environ is None else environ
    host = (env.get("KUBERNETES_SERVICE_HOST") or "").strip()
    port = (env.get("KUBERNETES_SERVICE_PORT") or "443").strip()
    if not host:
        raise InClusterError(
            "--in-cluster: no API server address: KUBERNETES_SERVICE_HOST is not set (not in "
            "a pod?); give --api-server https://HOST:PORT (k3s server: https://127.0.0.1:6443)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InClusterError(f"--in-cluster: KUBERNETES_SERVICE_PORT {port!r} is not a port")
    return check_url(f"https://{bracket(host)}:{port}", "KUBERNETES_SERVICE_HOST/PORT")


def check_url(url: str, what: str) -> str:
    """An https:// URL with a host and a valid port, without a trailing slash."""
    url = url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise InClusterError(f"{what} {url!r} is not a URL: {err} (an IPv6 address goes in "
                             "brackets: https://[fd00::1]:6443)") from None
    if parts.scheme != "https" or not parts.hostname:
        raise InClusterError(f"{what} {url!r} must be https://HOST[:PORT] "
                             "(e.g. https://127.0.0.1:6443)")
    if port == 0:
        raise InClusterError(f"{what} {url!r}: port 0")
    return url


def load(directory: str = SERVICE_ACCOUNT_DIR, api_server: str = "",
         environ: dict[str, str] | None = None) -> Credentials:
    """Credentials from the service account files, read now (the token rotates)."""
    creds = Credentials()
    creds.server = server_url(api_server, environ)
    token_path = os.path.join(directory, "token")
    try:
        with open(token_path, encoding="utf-8") as handle:
            creds.token = handle.read().strip()
    except FileNotFoundError:
        raise InClusterError(
            f"no service account token at {token_path}: the pod needs "
            "automountServiceAccountToken: true and a serviceAccountName (the Helm chart "
            "sets both with inCluster=true)") from None
    except (OSError, UnicodeError) as err:
        raise InClusterError(f"cannot read the service account token {token_path}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
    if not creds.token:
        raise InClusterError(f"the service account token {token_path} is empty")
    ca_path = os.path.join(directory, "ca.crt")
    try:
        with open(ca_path, "rb") as handle:
            ca = handle.read()
    except OSError as err:
        raise InClusterError(f"cannot read the cluster CA {ca_path}: "
                             f"{err.strerror or err}") from None
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        raise InClusterError(f"the cluster CA {ca_path} holds no PEM certificate")
    creds.ca_data = ca
    creds.source = SOURCE
    creds.token_file = token_path
    return creds


def namespace(directory: str = SERVICE_ACCOUNT_DIR) -> str:
    """The pod's namespace from the service account files ("" when unknown)."""
    try:
        with open(os.path.join(directory, "namespace"), encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeError):
        return ""
