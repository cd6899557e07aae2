"""One list+watch of a Kubernetes resource in a daemon thread (client-go's reflector).

Used for Services (dns/services.py) and for headless Services' EndpointSlices
(dns/endpoints.py): list (resourceVersion=0, in pages), then watch from the
list's resourceVersion with allowWatchBookmarks and a server-side timeout of
5-10 min; a watch that ends is resumed from the last resourceVersion (a
bookmark's included), a 410 Gone (or an ERROR event with code 410) forces a
relist, and errors back off from 1 s to 60 s with jitter. The table keeps
answering meanwhile.

Credentials are a kubeconfig (`dns --kubeconfig`) or the pod's ServiceAccount
(`dns --in-cluster`, incluster.py), loaded again before every connection:
kubeconfig certificates and service account tokens rotate. A 401 right after
the token file changed (kubelet swapped it between read and use) is retried at
once with the new token; other errors are logged once each, with the fix (the
token file for a 401, the RBAC for a 403, the CA for a failed verification).

A table is any object with `replace_all(items)` (after a list), `apply(kind,
obj) -> bool` (one ADDED/MODIFIED/DELETED event; True when answers changed)
and `count` (objects held); `save()` is called after changes when given.

Every started watch is listed in metrics.WATCHES, for /metrics and
`smarter-cni status`.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import urllib.parse
from typing import Any, Callable

from .. import kubeapi, kubeconfig
from . import metrics
from .log import log  # not `logging`: ~1.3 MB in the service

LIST_PAGE = 500
WATCH_TIMEOUT = (300, 600)     # seconds, chosen per watch (the reflector's 5-10 min)
BACKOFF = (1.0, 60.0)
REQUEST_TIMEOUT = 10.0


Loader = Callable[[], kubeconfig.Credentials]


class Gone(Exception):
    """410: the resourceVersion is too old (compacted): relist."""


def loader(credentials: str | Loader) -> Loader:
    """A kubeconfig path as a loader; a loader (incluster.load bound to its options) as it is."""
    if isinstance(credentials, str):
        path = credentials
        return lambda: kubeconfig.load(path)
    return credentials


class ListWatch:
    """One list+watch of `path` (e.g. /api/v1/services), optionally with a label selector;
    `resource` names it in logs and metrics. `credentials` is a kubeconfig path or a
    function returning fresh kubeconfig.Credentials (called before every connection);
    `source` ("kubeconfig", "in-cluster") names them in logs, metrics and status."""

    def __init__(self, resource: str, path: str, credentials: str | Loader, table: Any,
                 selector: str = "", backoff: tuple[float, float] = BACKOFF,
                 watch_timeout: tuple[int, int] = WATCH_TIMEOUT,
                 save: Callable[[], None] | None = None, source: str = "kubeconfig") -> None:
        self.resource = resource
        self.path = path
        self.selector = selector
        self.load_credentials = loader(credentials)
        self.source = source
        # the API server: known before the first load when the loader says (in-cluster)
        self.server: str = getattr(credentials, "server", "")
        self.table = table
        self.save = save
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.stop = threading.Event()
        self.resource_version = ""
        self.counts = {"list": 0, "watch": 0, "events": 0, "bookmarks": 0, "gone": 0,
                       "errors": 0, "token_reloads": 0}
        self.last_error = ""
        self.last_status = 0     # HTTP status of the last refused request (0: another error)
        self.failing = False
        self.synced = False      # listed at least once since start
        self.connection: Any = None
        self.thread = threading.Thread(target=self._run, name=f"{resource}-watch", daemon=True)

    def start(self) -> ListWatch:
        metrics.WATCHES.append(self)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        connection = self.connection
        if connection is not None and connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)
        if self in metrics.WATCHES:
            metrics.WATCHES.remove(self)

    @property
    def up(self) -> bool:
        """Listed, and the API server answered the last request."""
        return self.synced and not self.failing

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self.stop.is_set():
            creds = None
            try:
                creds = self.load_credentials()  # certificates and tokens rotate
                self.server = creds.server
                if not self.resource_version:
                    self._list(creds)
                self._watch(creds)
                delay = self.backoff[0]
            except Gone:
                self.counts["gone"] += 1
                log.info("%s: resourceVersion %s expired (410 Gone): listing again",
                         self.resource, self.resource_version)
                self.resource_version = ""
            except Exception as err:  # unreachable, refused, TLS, RBAC, garbage: keep answering
                self.counts["errors"] += 1
                self.last_status = getattr(err, "status", 0) or 0
                if self.last_status == 401 and creds is not None and token_rotated(creds):
                    # kubelet wrote a new token since this one was read: use it now
                    self.counts["token_reloads"] += 1
                    log.info("%s: token %s was rotated: reading it again", self.resource,
                             creds.token_file)
                    continue
                error = explain(err, creds, self.source)
                if not self.failing or error != self.last_error:
                    log.warning("%s: %s; the %d known %s keep answering; retrying with "
                                "backoff", self.resource, error, self.table.count,
                                self.resource)
                    self.failing = True
                self.last_error = error
                self.stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])

    def _request(self, creds: kubeconfig.Credentials, query: dict[str, str],
                 timeout: float) -> Any:
        connection = kubeapi.connect(creds, timeout)
        self.connection = connection
        if self.selector:
            query = {**query, "labelSelector": self.selector}
        path = kubeapi.base_path(creds) + self.path + "?" + urllib.parse.urlencode(query)
        connection.request("GET", path, headers=kubeapi.headers(creds))
        response = connection.getresponse()
        if self.failing:
            log.info("%s: API server %s answers again (HTTP %d, %s credentials)",
                     self.resource, creds.server, response.status, self.source)
            self.failing = False
            self.last_status = 0
        if response.status == 410:
            connection.close()
            raise Gone()
        if response.status != 200:
            body = response.read(65536)
            connection.close()
            try:
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError):
                message = ""
            raise kubeapi.APIError(f"GET {self.path}: HTTP {response.status} "
                                   f"{message or response.reason}", response.status)
        return connection, response

    def _list(self, creds: kubeconfig.Credentials) -> None:
        items: list[Any] = []
        query = {"limit": str(LIST_PAGE), "resourceVersion": "0"}
        while True:
            self.counts["list"] += 1
            connection, response = self._request(creds, query, REQUEST_TIMEOUT)
            try:
                page = json.loads(response.read())
            finally:
                connection.close()
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            page = None  # its items are in `items`: one copy of the list at most
            token = meta.get("continue")
            if not token:
                break
            query = {"limit": str(LIST_PAGE), "continue": token}
        self.table.replace_all(items)
        del items  # the parsed list is the biggest thing this thread ever holds
        self.synced = True
        self._save()
        self.resource_version = str(meta.get("resourceVersion") or "")
        log.info("%s: %d listed (resourceVersion %s)", self.resource, self.table.count,
                 self.resource_version)

    def _watch(self, creds: kubeconfig.Credentials) -> None:
        seconds = random.randint(*self.watch_timeout)
        self.counts["watch"] += 1
        connection, response = self._request(
            creds, {"watch": "1", "resourceVersion": self.resource_version,
                    "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)},
            seconds + 30)  # the server ends it first; a dead link ends it here
        try:
            while not self.stop.is_set():
                line = response.readline(1 << 24)
                if not line:
                    return  # the server's timeout: resume from the last resourceVersion
                if not line.strip():
                    continue
                event = json.loads(line)
                self._event(event)
        finally:
            connection.close()
            self.connection = None

    def _save(self) -> None:
        if self.save is not None:
            try:
                self.save()
            except OSError as err:
                log.warning("%s: cannot save: %s", self.resource, err)

    def _event(self, event: Any) -> None:
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise Gone()
            message = obj.get("message", "") if isinstance(obj, dict) else ""
            raise kubeapi.APIError(f"watch ERROR {code}: {message}", code or 0)
        version = ((obj or {}).get("metadata") or {}).get("resourceVersion") \
            if isinstance(obj, dict) else None
        if kind == "BOOKMARK":
            self.counts["bookmarks"] += 1
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self.counts["events"] += 1
            if self.table.apply(kind, obj):
                self._save()
        if isinstance(version, str) and version:
            self.resource_version = version


def cached(table: Any, state_dir: str, file_name: str, resource: str) -> str:
    """The cache file `state_dir`/`file_name` ("" without a state dir), with what `table`
    last knew loaded from it: that answers at once after a restart, until the first list
    replaces it (a restart always lists)."""
    if not state_dir:
        return ""
    path = os.path.join(state_dir, file_name)
    loaded = table.load(path)
    if loaded:
        log.info("%s: %d answering from %s until the API server lists them", resource, loaded,
                 path)
    return path


def token_rotated(creds: kubeconfig.Credentials) -> bool:
    """The token file now holds another token than the one just refused."""
    if not creds.token_file:
        return False
    try:
        with open(creds.token_file, encoding="utf-8") as handle:
            return handle.read().strip() not in ("", creds.token)
    except (OSError, UnicodeError):
        return False


def explain(err: Exception, creds: kubeconfig.Credentials | None, source: str) -> str:
    """One line an operator can act on: what failed, with which credentials, what to do."""
    import ssl

    text = f"{type(err).__name__}: {err}"
    if isinstance(err, ssl.SSLCertVerificationError) and creds is not None:
        ca = "the service account's ca.crt" if source == "in-cluster" else "the kubeconfig's CA"
        return (f"{text}: the API server {creds.server} has a certificate that {ca} does not "
                "verify (wrong CA file, or --api-server names another server)")
    if isinstance(err, ssl.SSLError) and creds is not None and source == "in-cluster":
        return (f"{text}: TLS with {creds.server} failed; check the service account's ca.crt "
                "and that --api-server is the API server")
    status = getattr(err, "status", 0)
    if creds is None or status not in (401, 403):
        return text
    if status == 401:
        if source == "in-cluster":
            return (f"{text}: the API server refused the service account token from "
                    f"{creds.token_file} (expired, revoked, or from another cluster); it is "
                    "read again before each retry")
        return f"{text}: the kubeconfig's credentials are not accepted by {creds.server}"
    if source == "in-cluster":
        from ..incluster import RBAC_HINT

        return f"{text}: {RBAC_HINT}"
    return (f"{text}: the kubeconfig's user needs get, list and watch on services and "
            "endpointslices (discovery.k8s.io)")
