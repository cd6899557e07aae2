"""A minimal Docker Engine API client: HTTP/1.1 over the daemon's unix socket.

Only docker mode pays for it, and it stays light: `_socket` (the C module)
instead of `socket` (which imports `enum`, ~10 ms) or `http.client`
(~35 ms). One short-lived connection per request (`Connection: close`), and
one deadline for everything a plugin run asks of the daemon, so a stopped or
wedged dockerd becomes CNI code 11 (try again later) within that bound.

Paths are unversioned: the daemon answers with its own API version, which
works from Docker 20.10 (API 1.41) to current releases for the calls used.
"""

from __future__ import annotations

import _socket
import time

from .cni import jsonfast
from .cni.errors import DOCKER_FAILURE, TRY_AGAIN_LATER, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_TIMEOUT = 5.0
MAX_RESPONSE = 32 << 20  # an inspect is a few KB; a listing of many containers stays far below


class DockerUnavailable(CNIError):
    """dockerd cannot be reached or did not answer in time (CNI code 11)."""

    def __init__(self, msg: str) -> None:
        super().__init__(TRY_AGAIN_LATER, msg)


class DockerAPIError(CNIError):
    """dockerd answered with an error status."""

    def __init__(self, status: int, message: str, what: str) -> None:
        super().__init__(DOCKER_FAILURE, f"{what}: dockerd said {status}: {message}")
        self.status = status
        self.message = message


class DockerClient:
    """Requests against one socket, all inside one time budget."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def extend(self, seconds: float) -> None:
        """Give a clean-up step its own small budget after the main one ran out."""
        self.deadline = max(self.deadline, time.monotonic() + seconds)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON body or None)."""
        payload = b"" if body is None else jsonfast.dumps(body, compact=True).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: smarter-cni\r\n"
                f"Connection: close\r\nContent-Length: {len(payload)}\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        raw = self._exchange(head.encode() + b"\r\n" + payload, f"{method} {path}")
        status, body_bytes = parse_response(raw)
        data: Any = None
        if body_bytes.strip():
            try:
                data = jsonfast.loads(body_bytes)
            except jsonfast.JSONError:
                data = {"message": body_bytes.decode("utf-8", "replace").strip()[:300]}
        return status, data

    def _exchange(self, request: bytes, what: str) -> bytes:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            try:
                sock.settimeout(self._remaining(what))
                sock.connect(self.socket_path)
                view = memoryview(request)
                while view:
                    sock.settimeout(self._remaining(what))
                    view = view[sock.send(view):]
                chunks = []
                total = 0
                while True:
                    sock.settimeout(self._remaining(what))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > MAX_RESPONSE:
                        raise DockerUnavailable(f"dockerd answer to {what} is over 32 MiB")
                    if response_complete(b"".join(chunks) if len(chunks) > 1 else chunk):
                        break
                return b"".join(chunks)
            except _socket.timeout:
                raise DockerUnavailable(
                    f"dockerd at {self.socket_path} did not answer {what} within "
                    f"{self.timeout:g} s; try again later") from None
            except FileNotFoundError:
                raise DockerUnavailable(
                    f"dockerd is not running: no socket at {self.socket_path}") from None
            except ConnectionRefusedError:
                raise DockerUnavailable(
                    f"dockerd is not running: {self.socket_path} refuses connections") from None
            except PermissionError:
                raise DockerUnavailable(
                    f"no permission to use {self.socket_path} (run as root)") from None
            except OSError as err:
                raise DockerUnavailable(
                    f"cannot talk to dockerd at {self.socket_path}: "
                    f"{err.strerror or err}") from None
        finally:
            sock.close()

    def _remaining(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DockerUnavailable(
                f"dockerd at {self.socket_path} did not answer {what} within "
                f"{self.timeout:g} s; try again later")
        return left

    def call(self, method: str, path: str, body: Any = None, what: str = "",
             ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        """Request and raise DockerAPIError unless the status is in `ok`."""
        status, data = self.request(method, path, body)
        if status not in ok:
            raise DockerAPIError(status, error_message(data), what or f"{method} {path}")
        return data

    def get(self, path: str, what: str = "") -> Any:
        return self.call("GET", path, what=what)

    def _inspect(self, path: str, what: str) -> dict[str, Any] | None:
        """An inspect document, or None on 404; any other failure raises DockerAPIError."""
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise DockerAPIError(status, error_message(data), what)
        return data

    def inspect_container(self, ref: str) -> dict[str, Any] | None:
        """The container's inspect document, or None when dockerd does not know it."""
        return self._inspect(f"/containers/{quote(ref)}/json", f"inspect container {ref[:64]}")

    def inspect_network(self, name: str) -> dict[str, Any] | None:
        """The network by exact name, or None (Docker also matches ID prefixes; we do not)."""
        data = self._inspect(f"/networks/{quote(name)}", f"inspect network {name}")
        if data is None or (data.get("Name") != name and data.get("Id") != name):
            return None
        return data


def error_message(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"][:300]
    return "no error message"


def quote(text: str) -> str:
    """Percent-encode everything outside the unreserved URL characters."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char.isalnum() and byte < 128 or char in "-._~":
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return b"", b""
    return raw[:end], raw[end + 4:]


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


def response_complete(raw: bytes) -> bool:
    """True once `raw` holds a whole response (so we need not wait for the close)."""
    head, body = _split(raw)
    if not head:
        return False
    headers = _headers(head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return body.endswith(b"0\r\n\r\n") and _dechunk(body) is not None
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        return len(body) >= int(length)
    return False  # length unknown: read to the close


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response; malformed -> DockerUnavailable."""
    head, body = _split(raw)
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") \
            or not status_line[1].isdigit():
        raise DockerUnavailable("dockerd sent no valid HTTP answer (is that socket dockerd's?)")
    headers = _headers(head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = _dechunk(body)
        if decoded is None:
            raise DockerUnavailable("dockerd's answer was cut off")
        body = decoded
    else:
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            if len(body) < int(length):
                raise DockerUnavailable("dockerd's answer was cut off")
            body = body[:int(length)]
    return int(status_line[1]), body


def _dechunk(body: bytes) -> bytes | None:
    """Decode a chunked body; None when incomplete or malformed."""
    out = []
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = body[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        if len(body) < start + size + 2:
            return None
        out.append(body[start:start + size])
        pos = start + size + 2
