"""The node's attachment records: one JSON file, changed only under a lock.

Every change is written to a temp file in the same directory and renamed
over the old one, so a reader (the DNS service, `smarter-cni pods`) and a
plugin killed at any instant only ever see a whole old or a whole new file.
The flock serialises concurrent plugin runs; it is released by the kernel
when a holder dies, so a killed plugin never wedges the node.
"""

from __future__ import annotations

import fcntl
import os
import time

from .cni import jsonfast
from .cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError
from .paths import ensure_state_dir, state_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypedDict

    from .cni.request import Request

    class Attachment(TypedDict, total=False):
        """One pod interface on one network: the record both data planes write and the
        DNS service, `status`, `pods`, GC and uninstall read (JSON in attachments.json)."""

        network: str          # the CNI network name (conflist "name")
        mode: str             # "bridge" or "docker"
        container_id: str
        ifname: str           # the pod's interface name (CNI_IFNAME)
        netns: str
        ips: list[str]        # "addr/prefix", IPv4 first, then IPv6 when dual-stack
        gateway: str
        pod: dict[str, str]   # registry.pod_identity: name, namespace, uid, hostname
        domain: str
        ready: bool           # set by ADD's completion; only ready records are served
        created: float        # ADD's start: what makes a record "its own" (no resurrection)
        host_ifname: str      # bridge mode: the host veth
        mac: str
        pod_ifname: str
        docker_id: str        # docker mode: the sandbox container
        docker_network: str


FILE_NAME = "attachments.json"
LOCK_NAME = "lock"
LOCK_TIMEOUT = 30.0
FORMAT_VERSION = 1


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    return f"{network}/{container_id}/{ifname}"


def new_attachment(request: Request, network: str, mode: str, pod: dict[str, str], domain: str,
                   **fields: Any) -> Attachment:
    """The one shape of a new (not yet ready) attachment record; see `Attachment`."""
    record: Attachment = {
        "network": network, "mode": mode, "container_id": request.container_id,
        "ifname": request.ifname, "netns": request.netns, "ips": [], "gateway": "", "pod": pod,
        "domain": domain, "ready": False, "created": round(time.time(), 3)}
    record.update(fields)  # type: ignore[typeddict-item]
    return record


def same_record(current: Attachment | None, record: Attachment, identity: str) -> bool:
    """Whether `current`, the record under an ADD's key now, is still the one that ADD wrote.

    Compares the creation time and the data plane's `identity` field (`host_ifname`,
    `docker_id`): a DEL or GC that removed the record since must not be undone, nor a
    newer ADD's record overwritten.
    """
    return current is not None and current.get("created") == record.get("created") \
        and current.get(identity) == record.get(identity)


def records_path(directory: str | None = None) -> str:
    return os.path.join(directory or state_dir(), FILE_NAME)


def empty_state() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "attachments": {}, "networks": {}}


def load(directory: str | None = None) -> dict[str, Any]:
    """Read the current records without locking (renames keep them whole)."""
    try:
        with open(records_path(directory), "rb") as handle:
            data = jsonfast.loads(handle.read())
    except FileNotFoundError:
        return empty_state()
    except (OSError, jsonfast.JSONError) as err:
        raise CNIError(IO_FAILURE, f"cannot read {records_path(directory)}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("attachments"), dict):
        raise CNIError(IO_FAILURE, f"{records_path(directory)} is not a smarter-cni state file")
    data.setdefault("networks", {})
    return data


class Transaction:
    """`with Transaction() as state:` holds the lock; set `.dirty` to save on exit."""

    def __init__(self, directory: str | None = None) -> None:
        try:
            self.directory = directory or ensure_state_dir()
        except OSError as err:
            raise CNIError(IO_FAILURE, f"cannot create the state directory {state_dir()}: "
                           f"{err.strerror}") from None
        self.state: dict[str, Any] = {}
        self.dirty = False
        self._lock_fd = -1

    def __enter__(self) -> Transaction:
        path = os.path.join(self.directory, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise CNIError(IO_FAILURE, f"cannot open the state lock {path}: {err.strerror} "
                           f"(is {self.directory} a writable directory?)") from None
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise CNIError(TRY_AGAIN_LATER,
                                   f"state lock {self.directory}/{LOCK_NAME} is busy for "
                                   f"{LOCK_TIMEOUT:g} s; try again") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        self._lock_fd = fd
        try:
            self.state = load(self.directory)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind: Any, value: Any, trace: Any) -> None:
        try:
            if kind is None and self.dirty:
                if before_save is not None:
                    before_save()
                save(self.state, self.directory)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    @property
    def attachments(self) -> dict[str, dict[str, Any]]:
        return self.state["attachments"]

    @property
    def networks(self) -> dict[str, dict[str, Any]]:
        return self.state["networks"]


# Called under the lock before a transaction writes. The resident server's worker sets it
# to end itself when its client is gone, so its work stops where a killed plugin's would.
before_save: Any = None


def save(state: dict[str, Any], directory: str | None = None) -> None:
    """Write atomically: temp file, fsync-free (tmpfs), rename into place.

    Callers hold the lock (see Transaction), so one fixed temp name is enough,
    and a temp file left by a writer killed mid-save is simply overwritten and
    renamed by the next save instead of piling up in /run.
    """
    directory = directory or ensure_state_dir()
    final = os.path.join(directory, FILE_NAME)
    temp = os.path.join(directory, f".{FILE_NAME}.tmp")
    data = jsonfast.dumps(state, compact=True).encode()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temp, final)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise CNIError(IO_FAILURE, f"cannot write {final}: {err.strerror}") from None
