"""Turn the runtime's environment and stdin into one validated Request."""

from __future__ import annotations

import os

from . import jsonfast
from .errors import DECODING_FAILURE, INVALID_ENVIRONMENT, INVALID_NETWORK_CONFIG, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
MAX_STDIN = 1 << 20  # a network config is a few KB; refuse to buffer more than 1 MiB
_NEEDS = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
    "VERSION": (),
}
_ID_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


class Request:
    """One plugin invocation, parsed once."""

    __slots__ = (
        "command", "container_id", "netns", "ifname", "args", "path", "config", "raw_config",
    )

    def __init__(self) -> None:
        self.command = ""
        self.container_id = ""
        self.netns = ""
        self.ifname = ""
        self.args: dict[str, str] = {}
        self.path: list[str] = []
        self.config: dict[str, Any] = {}
        self.raw_config = b""

    @property
    def cni_version(self) -> str:
        version = self.config.get("cniVersion")
        return version if isinstance(version, str) and version else "0.1.0"

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")


def command_from_env(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND")
    if command is None:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set (other CNI_* variables "
                       "are); the runtime must set it to one of " + ", ".join(COMMANDS))
    if not command:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_COMMAND is empty; expected one of "
                       + ", ".join(COMMANDS))
    if command not in COMMANDS:
        raise CNIError(INVALID_ENVIRONMENT,
                       f"unknown CNI_COMMAND {command[:40]!r}; expected one of {', '.join(COMMANDS)}")
    return command


def parse_request(environ: Mapping[str, str], stdin: bytes) -> Request:
    request = Request()
    request.command = command_from_env(environ)
    missing = [name for name in _NEEDS[request.command] if not environ.get(name)]
    if missing:
        raise CNIError(INVALID_ENVIRONMENT,
                       f"{request.command} needs environment variable(s) {', '.join(missing)}")
    request.container_id = environ.get("CNI_CONTAINERID", "")
    if request.container_id:
        validate_container_id(request.container_id)
    request.ifname = environ.get("CNI_IFNAME", "")
    if request.ifname:
        validate_ifname(request.ifname)
    request.netns = environ.get("CNI_NETNS", "")
    if request.netns and request.command in ("ADD", "CHECK"):
        validate_netns(request.netns)
    request.args = parse_cni_args(environ.get("CNI_ARGS", ""))
    request.path = [p for p in environ.get("CNI_PATH", "").split(":") if p]
    request.raw_config = stdin
    request.config = parse_config(stdin, required=request.command != "VERSION")
    return request


def validate_container_id(value: str) -> None:
    if len(value) > 256 or value[0] not in _ID_FIRST or not set(value) <= _ID_REST:
        raise CNIError(INVALID_ENVIRONMENT,
                       "CNI_CONTAINERID must start with a letter or digit and contain only "
                       "letters, digits, '_', '.' and '-' (at most 256)")


def validate_ifname(value: str) -> None:
    problem = ""
    if len(value.encode()) > 15:
        problem = "is longer than 15 bytes"
    elif value in (".", ".."):
        problem = "is '.' or '..'"
    elif any(c in value for c in "/:") or any(c.isspace() for c in value):
        problem = "contains '/', ':' or whitespace"
    if problem:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {value[:40]!r} {problem}")


def validate_netns(value: str) -> None:
    if not value.startswith("/"):
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS must be an absolute path, got {value[:80]!r}")
    if not os.path.exists(value):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS {value[:200]} does not exist (was the sandbox removed?)")
    if not is_network_namespace(value):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS {value[:200]} is not a network namespace (expected a path "
                       "such as /var/run/netns/NAME or /proc/PID/ns/net)")


_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is
_CLONE_NEWNET = 0x40000000


def is_network_namespace(path: str) -> bool:
    """True for a network-namespace file. Stats first, so no device or FIFO is ever opened."""
    try:
        info = os.stat(path)
        nsfs = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False
    if info.st_dev != nsfs or (info.st_mode & 0o170000) != 0o100000:
        return False
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # an nsfs file we may not open: let the data plane report it
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return True  # kernel < 4.11 has no NS_GET_NSTYPE; nsfs is enough
    finally:
        os.close(fd)


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS is 'K=V;K=V'. Unknown keys are kept and ignored later."""
    args: dict[str, str] = {}
    if not text:
        return args
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {pair[:60]!r} is not KEY=VALUE")
        args[key] = value
    return args


def parse_config(stdin: bytes, required: bool = True) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN:
        raise CNIError(DECODING_FAILURE, f"network config is {len(stdin)} bytes; at most 1 MiB")
    if not stdin.strip():
        if required:
            raise CNIError(DECODING_FAILURE, "no network config on stdin")
        return {}
    try:
        config = jsonfast.loads(stdin)
    except jsonfast.JSONError as err:
        raise CNIError(DECODING_FAILURE, f"network config is not valid JSON: {err}") from None
    except RecursionError:
        raise CNIError(DECODING_FAILURE, "network config is nested too deeply") from None
    if not isinstance(config, dict):
        raise CNIError(DECODING_FAILURE, "network config must be a JSON object")
    version = config.get("cniVersion")
    if version is not None and not isinstance(version, str):
        raise CNIError(DECODING_FAILURE, "cniVersion must be a string such as \"1.0.0\"")
    name = config.get("name")
    if required and (not isinstance(name, str) or not name):
        raise CNIError(INVALID_NETWORK_CONFIG, "network config needs a non-empty string \"name\"")
    if required and (name[0] not in _ID_FIRST or not set(name) <= _ID_REST):
        # the spec's rule for network names; they end up in file keys and firewall comments
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"network name {name[:60]!r} must start with a letter or digit and "
                       "contain only letters, digits, '_', '.' and '-'")
    return config


def read_stdin(stream: Any | None = None) -> bytes:
    fd = 0 if stream is None else stream.fileno()
    chunks = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_STDIN:
            break
    return b"".join(chunks)
