"""The plugin executable's first and only module on the fast path: a thin client.

The launcher imports this module and nothing else before it knows whether
the resident server (`resident.py`) will do the work. It uses built-in
modules only (`posix`, `_socket`, `sys`), so reaching the server costs
little more than the interpreter's start.

Protocol over `$SMARTER_CNI_STATE_DIR/plugin.sock` (SOCK_STREAM, 0600):

    client: b"SCNI1 <env bytes> <stdin bytes>\\n" env (NUL-separated K=V) stdin
    server: b"A"                  acknowledged: the request was read whole
    client: b"G"                  go: from here on the server does the work
    server: b"R <code> <n>\\n" <n bytes of stdout>

The env always carries one reserved key, SMARTER_CNI_PLUGIN=<name>: the plugin
this client was exec'd as ("smarter-cni" for smarter-cni and c2d, "loopback"
for the loopback launcher), set by the client over any value the runtime
passed. The server runs that plugin's handlers (resident_request.handlers_for); a
request without the key (an older client) is smarter-cni's; an unknown name
gets a CNI error (code 4), from the server or in-process alike.

The client falls back to doing the work itself, in this process exactly as
the plain plugin does, when the socket is missing or refuses (at once), no
acknowledgement arrives within ACK_TIMEOUT, or the connection ends without a
whole reply. It sends "go" only after the acknowledgement, so a server that
answers late never runs a request the client has given up on.

Either way the process leaves through `posix._exit` after flushing stdout:
the interpreter's teardown (~1.4 ms) does nothing a plugin needs (the
kernel closes files and drops the state lock).
"""

import posix
import sys

MAGIC = b"SCNI1"
SOCKET_NAME = "plugin.sock"
DEFAULT_STATE_DIR = "/run/smarter-cni"
ACK_TIMEOUT = 0.02  # seconds: longer than a busy server's accept + fork, short next to an exec
COMMANDS = (b"ADD", b"DEL", b"CHECK", b"STATUS", b"GC")
DISABLE_ENV = b"SMARTER_CNI_CLIENT_LOCAL"  # "1": never try the resident server
ACK_TIMEOUT_ENV = b"SMARTER_CNI_CLIENT_ACK_TIMEOUT"  # seconds, overrides ACK_TIMEOUT (tests)
UNRESPONSIVE_NAME = "plugin.unresponsive"  # mtime = until when clients skip the server
UNRESPONSIVE_HOLD = 10.0  # seconds a missed acknowledgement sends every client in-process
PLUGIN_ENV = b"SMARTER_CNI_PLUGIN"  # reserved request key: which plugin's handlers serve it
DEFAULT_PLUGIN = "smarter-cni"
PLUGINS = (DEFAULT_PLUGIN, "loopback")


def socket_path(environ: dict) -> bytes:
    state = environ.get(b"SMARTER_CNI_STATE_DIR") or DEFAULT_STATE_DIR.encode()
    return state + b"/" + SOCKET_NAME.encode()


def mark_path(environ: dict) -> bytes:
    state = environ.get(b"SMARTER_CNI_STATE_DIR") or DEFAULT_STATE_DIR.encode()
    return state + b"/" + UNRESPONSIVE_NAME.encode()


def marked_unresponsive(environ: dict) -> bool:
    """A client missed the acknowledgement lately: do not wait for it again (one stat)."""
    import time

    try:
        return posix.stat(mark_path(environ)).st_mtime > time.time()
    except OSError:
        return False


def mark_unresponsive(environ: dict) -> None:
    """So a hung server costs one ACK_TIMEOUT per UNRESPONSIVE_HOLD, not one per exec.

    The server removes the mark whenever it is idle, so a merely busy one is back at once.
    """
    import time

    path = mark_path(environ)
    until = time.time() + UNRESPONSIVE_HOLD
    try:
        posix.close(posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_CLOEXEC, 0o600))
        posix.utime(path, (until, until))
    except OSError:
        pass


def ack_timeout(environ: dict) -> float:
    value = environ.get(ACK_TIMEOUT_ENV)
    if value:
        try:
            return min(max(float(value), 0.001), 60.0)
        except ValueError:
            pass
    return ACK_TIMEOUT


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = posix.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def encode_request(environ: dict, stdin: bytes) -> bytes:
    env = b"\0".join(key + b"=" + value for key, value in environ.items())
    return MAGIC + b" %d %d\n" % (len(env), len(stdin)) + env + stdin


def ask_resident(environ: dict, stdin: bytes, ack_timeout: float = ACK_TIMEOUT):
    """(exit code, stdout bytes) from the resident server, or None: do it yourself."""
    import _socket

    if marked_unresponsive(environ):
        return None
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(ack_timeout)
        try:
            sock.connect(socket_path(environ))
            sock.sendall(encode_request(environ, stdin))
            if sock.recv(1) != b"A":
                return None
        except TimeoutError:  # a full backlog, or no acknowledgement in time
            mark_unresponsive(environ)
            return None
        sock.settimeout(None)  # the server works now; a runtime's own timeout bounds it
        sock.sendall(b"G")
        reply = bytearray()
        need = -1  # the whole reply's length, once its header is in
        while need < 0 or len(reply) < need:  # not until EOF: the worker's exit is not waited for
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if need < 0 and b"\n" in reply:
                head = bytes(reply[:reply.index(b"\n")]).split(b" ")
                if len(head) == 3 and head[2].isdigit():
                    need = reply.index(b"\n") + 1 + int(head[2])
        return decode_reply(bytes(reply))
    except OSError:  # missing, refused, timed out, reset: all mean "not now"
        return None
    finally:
        sock.close()


def decode_reply(reply: bytes):
    head, sep, body = reply.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != b"R":
        return None
    try:
        code, size = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if len(body) != size:
        return None  # cut short: the server died mid-reply
    return code, body


def write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[posix.write(1, view):]
        except InterruptedError:
            continue
        except OSError:
            return


def main(name: str = DEFAULT_PLUGIN) -> int:
    """Serve one exec of plugin `name` (the launcher's): through the resident server when
    it answers, else in-process."""
    environ = posix.environ
    argv = sys.argv[1:]
    plugin = name != DEFAULT_PLUGIN or b"CNI_COMMAND" in environ or (
        not argv and any(k.startswith(b"CNI_") for k in environ))
    if not plugin:
        from smarter_cni.entry import main as entry_main

        return entry_main()  # the operator's command line: a normal exit
    stdin = read_all(0)
    answer = None
    if (environ.get(b"CNI_COMMAND") in COMMANDS and environ.get(DISABLE_ENV) != b"1"
            and name in PLUGINS):
        request_env = dict(environ)
        request_env[PLUGIN_ENV] = name.encode()
        answer = ask_resident(request_env, stdin, ack_timeout(environ))
    if answer is not None:
        write_out(answer[1])
        posix._exit(answer[0])
    posix._exit(run_local(stdin, name))


def plugin_handlers(name: str):
    """The CNI handler table of plugin `name` (its modules imported now); for a name no
    launcher should carry, a table that answers every command with a CNI error (code 4)."""
    if name == DEFAULT_PLUGIN:
        from smarter_cni.plugin import HANDLERS

        return HANDLERS
    if name == "loopback":
        from smarter_cni.loopback import HANDLERS

        return HANDLERS
    from smarter_cni.cni.errors import INVALID_ENVIRONMENT, CNIError

    def unknown(request):
        raise CNIError(INVALID_ENVIRONMENT, f"unknown plugin {name[:40]!r} (SMARTER_CNI_PLUGIN or "
                       f"the launcher); known: {', '.join(PLUGINS)}. Rewrite the launchers "
                       "with `smarter-cni install`")

    return dict.fromkeys(("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"), unknown)


def run_local(stdin: bytes, name: str = DEFAULT_PLUGIN) -> int:
    """The plugin itself, in this process: the fallback, and the only path without a server."""
    from smarter_cni.cni import dispatch

    code = dispatch.run(plugin_handlers(name), stdin=stdin)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    if "logging" in sys.modules:  # the repair path logs through handlers that buffer
        sys.modules["logging"].shutdown()
    return code
