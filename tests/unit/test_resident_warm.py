"""A worker's per-request hygiene (resident_request.serve_request), over a real socket pair and the
real dispatch.run; the handlers are small test ones so each guarantee is visible alone."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

from smarter_cni import client, resident, resident_request, resident_supervisor, store
from smarter_cni.cni import dispatch

STATE = tempfile.mkdtemp(prefix="smarter-cni-warm-")
atexit.register(shutil.rmtree, STATE, True)


def _ask(handlers: dict, env: dict[bytes, bytes]) -> tuple[int, bytes] | None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.sendall(client.encode_request(env, b'{"cniVersion": "1.0.0", "name": "n", '
                                                b'"type": "smarter-cni"}') + b"G")
        base = dict(os.environ)
        resident_request.serve_request(theirs, dispatch, handlers, False, base, 30)
        theirs.close()
        data = b""
        while chunk := ours.recv(65536):
            data += chunk
        assert data[:1] == b"A"
        return client.decode_reply(data[1:])
    finally:
        ours.close()


def _env(command: bytes, **extra: bytes) -> dict[bytes, bytes]:
    env = {b"SMARTER_CNI_STATE_DIR": STATE.encode(),  # never the node's /run/smarter-cni
           b"CNI_COMMAND": command, b"CNI_CONTAINERID": b"c1", b"CNI_NETNS": b"/proc/self/ns/net",
           b"CNI_IFNAME": b"eth0", b"CNI_PATH": b"/nonexistent"}
    env.update({k.encode(): v for k, v in extra.items()})
    return env


def test_the_request_sees_its_own_environment_and_the_server_gets_its_own_back():
    seen = {}

    def handler(request):
        seen.update(os.environ)
        os.environ["LEFT_BEHIND"] = "x"  # a handler that changes the environment
        return {"cniVersion": "1.0.0"}

    before = dict(os.environ)
    answer = _ask({"ADD": handler}, _env(b"ADD", SMARTER_CNI_WARM_PROBE=b"1"))
    assert answer is not None and answer[0] == 0, answer
    assert seen["SMARTER_CNI_WARM_PROBE"] == "1" and seen["CNI_CONTAINERID"] == "c1"
    assert dict(os.environ) == before  # nothing of the request stays, nothing of ours is lost
    assert store.before_save is None  # the client-gone check is only armed during a request


def test_a_failing_request_is_an_error_reply_and_the_next_one_is_served():
    def broken(request):
        raise RuntimeError("boom")

    before = dict(os.environ)
    answer = _ask({"ADD": broken}, _env(b"ADD"))
    assert answer is not None and answer[0] == 1
    assert b'"code": 999' not in answer[1] and b"unexpected failure" in answer[1]
    assert dict(os.environ) == before
    answer = _ask({"ADD": lambda request: {"cniVersion": "1.0.0"}}, _env(b"ADD"))
    assert answer is not None and answer[0] == 0, answer


def test_a_client_that_gave_up_is_not_served():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ran = []
    ours.sendall(client.encode_request(_env(b"ADD"), b"{}"))
    ours.close()  # gone before "go"
    resident_request.serve_request(theirs, dispatch, {"ADD": lambda r: ran.append(r)}, False,
                                   dict(os.environ), 30)
    theirs.close()
    assert ran == []


def test_on_by_default_in_bridge_mode_off_in_docker_mode_unless_asked():
    assert resident_supervisor.enabled({}, "bridge") is True
    assert resident_supervisor.enabled({}, "docker") is False
    assert resident_supervisor.enabled({"SMARTER_CNI_RESIDENT": "1"}, "docker") is True
    assert resident_supervisor.enabled({"SMARTER_CNI_RESIDENT": "0"}, "bridge") is False
    assert resident.mode({}) == "warm" and resident.mode({"SMARTER_CNI_RESIDENT_MODE": "fork"}) \
        == "fork"


def test_the_client_and_the_server_agree_on_the_protocol_names():
    """client.py keeps its own copies (it imports built-in modules only)."""
    from smarter_cni import client, paths, resident

    assert resident.MAGIC == client.MAGIC
    assert resident.SOCKET_NAME == paths.PLUGIN_SOCKET == client.SOCKET_NAME
    assert resident.UNRESPONSIVE_NAME == paths.PLUGIN_UNRESPONSIVE == client.UNRESPONSIVE_NAME


def test_the_server_picks_the_handlers_the_client_names():
    from smarter_cni import loopback, plugin

    ours = {"ADD": lambda request: None}
    assert resident_request.handlers_for({}) is plugin.HANDLERS  # an older client sends no name
    assert resident_request.handlers_for({}, ours) is ours
    assert resident_request.handlers_for({"SMARTER_CNI_PLUGIN": "smarter-cni"}, ours) is ours
    assert resident_request.handlers_for({"SMARTER_CNI_PLUGIN": "loopback"}, ours) is loopback.HANDLERS
    assert client.PLUGIN_ENV == b"SMARTER_CNI_PLUGIN"


def test_an_unknown_plugin_name_is_a_cni_error_through_the_warm_path():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.sendall(client.encode_request(_env(b"VERSION", SMARTER_CNI_PLUGIN=b"nosuch"),
                                           b'{"cniVersion": "0.4.0"}') + b"G")
        resident_request.serve_request(theirs, dispatch, {}, False, dict(os.environ), 30)
        theirs.close()
        data = b""
        while chunk := ours.recv(65536):
            data += chunk
    finally:
        ours.close()
    code, body = client.decode_reply(data[1:])
    assert code == 1 and b'"code": 4' in body and b"unknown plugin 'nosuch'" in body, body
    assert b'"cniVersion": "0.4.0"' in body  # answered in the version asked
