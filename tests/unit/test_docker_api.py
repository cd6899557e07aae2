"""The Docker API client over real unix sockets served by small in-test servers.

No dockerd here: each server plays one behaviour of the daemon (chunked
answers, a trickle of bytes, a wedged daemon, a hang-up) so the client's
parsing and its time bound are exercised on a real socket.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from smarter_cni.docker_api import (
    DockerAPIError,
    DockerClient,
    DockerUnavailable,
    parse_response,
    quote,
    response_complete,
)


class Server:
    """Accept connections on a unix socket and answer each with `handler(conn)`."""

    def __init__(self, path: str, handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        want = int(line.split(b":")[1])
                        while len(body) < want:
                            body += conn.recv(4096)
                self.requests.append(head + b"\r\n\r\n" + body)
                try:
                    self.handler(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(handler) -> str:
        path = str(tmp_path / f"d{len(servers)}.sock")
        servers.append(Server(path, handler))
        return path

    start.servers = servers  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for server in servers:
            server.close()


def chunked(body: bytes, size: int = 7) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def test_chunked_json_answer_is_decoded(serve):
    body = b'{"Id": "abc", "State": {"Pid": 42}}'

    def handler(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body))
        time.sleep(1.2)  # keep the connection open: the client must not wait for the close

    path = serve(handler)
    client = DockerClient(path, timeout=5)
    start = time.monotonic()
    assert client.inspect_container("abc") == {"Id": "abc", "State": {"Pid": 42}}
    assert time.monotonic() - start < 1.0


def test_request_line_headers_and_body_sent(serve):
    def handler(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    path = serve(handler)
    client = DockerClient(path)
    status, data = client.request("POST", "/networks/my%20net/connect", {"Container": "x"})
    assert (status, data) == (200, None)
    sent = serve.servers[0].requests[0]
    assert sent.startswith(b"POST /networks/my%20net/connect HTTP/1.1\r\n")
    assert b"\r\nHost: docker\r\n" in sent and b"Content-Type: application/json" in sent
    assert sent.endswith(b'{"Container":"x"}')


def test_answer_trickling_byte_by_byte(serve):
    answer = b'HTTP/1.1 404 Not Found\r\nContent-Length: 36\r\n\r\n{"message":"No such container: abc"}'

    def handler(conn):
        for i in range(len(answer)):
            conn.send(answer[i:i + 1])
            time.sleep(0.001)

    path = serve(handler)
    assert DockerClient(path).inspect_container("abc") is None


def test_error_status_becomes_docker_failure(serve):
    def handler(conn):
        body = b'{"message":"no available IPv4 addresses"}'
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    path = serve(handler)
    with pytest.raises(DockerAPIError) as err:
        DockerClient(path).call("POST", "/networks/n/connect", {}, what="connect")
    assert err.value.code == 105 and err.value.status == 500
    assert "no available IPv4 addresses" in err.value.msg


def test_wedged_daemon_gives_code_11_within_the_budget(serve):
    path = serve(lambda conn: time.sleep(1.2))
    start = time.monotonic()
    with pytest.raises(DockerUnavailable) as err:
        DockerClient(path, timeout=0.5).inspect_container("abc")
    elapsed = time.monotonic() - start
    assert err.value.code == 11 and "did not answer" in err.value.msg
    assert 0.45 < elapsed < 1.5


def test_budget_covers_all_requests_of_a_run(serve):
    def handler(conn):
        time.sleep(0.3)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    path = serve(handler)
    client = DockerClient(path, timeout=0.8)
    client.request("GET", "/a")
    client.request("GET", "/b")
    with pytest.raises(DockerUnavailable):
        client.request("GET", "/c")  # 0.9 s in: over the run's 0.8 s budget


def test_hang_up_without_answer_is_code_11(serve):
    path = serve(lambda conn: None)  # read the request, close
    with pytest.raises(DockerUnavailable) as err:
        DockerClient(path).inspect_container("abc")
    assert "no valid HTTP answer" in err.value.msg


def test_answer_cut_off_is_code_11(serve):
    path = serve(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"Id\""))
    with pytest.raises(DockerUnavailable) as err:
        DockerClient(path).inspect_container("abc")
    assert "cut off" in err.value.msg


def test_no_socket_is_code_11_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(DockerUnavailable) as err:
        DockerClient(str(tmp_path / "missing.sock")).inspect_container("abc")
    assert err.value.code == 11 and "not running" in err.value.msg
    assert time.monotonic() - start < 0.5


def test_stale_socket_file_is_code_11(tmp_path):
    path = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens: what a crashed dockerd leaves
    assert os.path.exists(path)
    with pytest.raises(DockerUnavailable) as err:
        DockerClient(path).inspect_container("abc")
    assert "refuses connections" in err.value.msg


def test_inspect_network_ignores_id_prefix_matches(serve):
    body = b'{"Name": "other", "Id": "abcdef0123"}'
    path = serve(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body))
    assert DockerClient(path).inspect_network("abc") is None


def test_parse_response_and_completeness():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b'{"a": 1}', 3)
    assert parse_response(raw) == (200, b'{"a": 1}')
    for cut in range(len(raw) - 1):
        assert not response_complete(raw[:cut])
    assert response_complete(raw)
    fixed = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    assert response_complete(fixed) and parse_response(fixed) == (204, b"")
    assert not response_complete(b"HTTP/1.1 200 OK\r\n\r\n{}")  # no length: read to close
    with pytest.raises(DockerUnavailable):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_quote():
    assert quote("mynet") == "mynet"
    assert quote("a b/c?d") == "a%20b%2Fc%3Fd"
    assert quote("é") == "%C3%A9"
