"""Run external commands (ip, iptables, nsenter, IPAM plugins) without a shell.

Uses posix_spawn and pipes directly: `subprocess` costs ~20 ms of imports,
more than the commands it would run.
"""

from __future__ import annotations

import os
import select
import time

from .cni.errors import DATAPLANE_FAILURE, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Sequence

DEFAULT_TIMEOUT = 20.0
_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class Completed:
    __slots__ = ("argv", "returncode", "stdout", "stderr")

    def __init__(self, argv: Sequence[str], returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def error_text(self) -> str:
        text = (self.stderr or self.stdout).decode("utf-8", "replace").strip()
        return text.replace("\n", "; ")[:500]


def find_program(name: str, extra_dirs: Sequence[str] = ()) -> str | None:
    """Absolute path of `name` in `extra_dirs`, then PATH, then the usual sbin dirs."""
    dirs = list(extra_dirs) + os.environ.get("PATH", "").split(":") + list(_SEARCH_PATH)
    for directory in dirs:
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run(
    argv: Sequence[str],
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Completed:
    """Run argv to completion; a time-out kills it and raises CNIError."""
    program = argv[0] if argv[0].startswith("/") else find_program(argv[0])
    if program is None:
        raise CNIError(DATAPLANE_FAILURE, f"required program {argv[0]!r} was not found; "
                       f"install it (e.g. apt-get install iproute2 iptables)")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, in_r, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
        os.set_inheritable(fd, False)
    try:
        pid = os.posix_spawn(program, list(argv), dict(os.environ if env is None else env),
                             file_actions=actions)
    except OSError as err:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise CNIError(DATAPLANE_FAILURE, f"cannot run {argv[0]}: {err.strerror}") from None
    os.close(in_r)
    os.close(out_w)
    os.close(err_w)
    deadline = time.monotonic() + timeout
    # Each fd is closed exactly once: in a threaded process (the DNS service runs this
    # from its reconciler thread) a second close could hit another thread's new socket.
    still_open = [in_w, out_r, err_r]
    try:
        out, err = _communicate(in_w, out_r, err_r, stdin, deadline, still_open)
    except TimeoutError:
        _kill(pid)
        raise CNIError(DATAPLANE_FAILURE,
                       f"{os.path.basename(argv[0])} did not finish within {timeout:g} s") from None
    finally:
        for fd in still_open:
            try:
                os.close(fd)
            except OSError:
                pass
    _, status = os.waitpid(pid, 0)
    return Completed(argv, os.waitstatus_to_exitcode(status), out, err)


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes, deadline: float,
                 still_open: list[int]) -> tuple[bytes, bytes]:
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    readers = [out_r, err_r]
    writers = [in_w] if data else []
    if not data:
        still_open.remove(in_w)
        os.close(in_w)
    view = memoryview(data)
    while readers or writers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready_r, ready_w, _ = select.select(readers, writers, [], remaining)
        for fd in ready_w:
            try:
                written = os.write(fd, view[:65536])
            except BrokenPipeError:
                written = len(view)
            view = view[written:]
            if not view:
                writers.remove(fd)
                still_open.remove(fd)
                os.close(fd)
        for fd in ready_r:
            chunk = os.read(fd, 65536)
            if chunk:
                chunks[fd].append(chunk)
            else:
                readers.remove(fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)  # SIGKILL; `signal` would import enum
        os.waitpid(pid, 0)
    except OSError:
        pass


def check(argv: Sequence[str], stdin: bytes = b"", what: str = "") -> Completed:
    """Run and raise a CNIError (with what failed and why) on a non-zero exit."""
    done = run(argv, stdin)
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"{what or ' '.join(argv[:3])} failed: {done.error_text}")
    return done
