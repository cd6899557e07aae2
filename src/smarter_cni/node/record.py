"""What an installation made, and where: the prefix, its records, the markers in our files.

Two records live in the prefix. `install.json` is written by `smarter-cni
install` (dirs, config, network, DNS address and interface, service, unit,
state dir); uninstall undoes exactly that and deletes it. `program.json` is
written by install.sh (what it made in the prefix, the PATH link);
`uninstall --purge` removes exactly that. Nothing is ever removed by a guess.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ..files import write_atomic
from .console import CLIError

PREFIX_ENV = "SMARTER_CNI_PREFIX"
DEFAULT_PREFIX = "/opt/smarter-cni"
RECORD_NAME = "install.json"
PROGRAM_RECORD_NAME = "program.json"
# first-line markers: a file holding one was written by smarter-cni (ours to replace or remove)
PLUGIN_MARKER = "smarter-cni CNI plugin launcher"
LOOPBACK_MARKER = "loopback CNI plugin (Python; written by `smarter-cni install`)"
UNIT_MARKER = "smarter-cni"


def prefix() -> str:
    """Where install.sh put the venv: $SMARTER_CNI_PREFIX, else the venv's parent, else /opt."""
    explicit = os.environ.get(PREFIX_ENV)
    if explicit:
        return explicit
    if os.path.basename(sys.prefix) == "venv" and sys.prefix != sys.base_prefix:
        return os.path.dirname(sys.prefix)
    return DEFAULT_PREFIX


def record_path() -> str:
    return os.path.join(prefix(), RECORD_NAME)


def program_record_path() -> str:
    return os.path.join(prefix(), PROGRAM_RECORD_NAME)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_record() -> dict[str, Any]:
    """The node install record; {} when there is none."""
    return _load(record_path())


def load_program_record() -> dict[str, Any]:
    """What install.sh made in the prefix (venv, share, docs, the PATH link); {} if none."""
    return _load(program_record_path())


def save_record(record: dict[str, Any]) -> None:
    mkdir(prefix())
    write_file(record_path(), json.dumps(record, indent=2) + "\n", 0o644)


def forget_record() -> None:
    try:
        os.unlink(record_path())
    except OSError:
        pass


def template_dirs() -> list[str]:
    """$PREFIX/share (copied there by install.sh), then a source checkout's deploy/."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(prefix(), "share"),
            os.path.join(os.path.dirname(os.path.dirname(here)), "deploy")]


def find_template(name: str) -> str | None:
    for directory in template_dirs():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def own_file(path: str, marker: str) -> bool:
    """True when `path` is a file smarter-cni wrote (so removing or replacing it is ours to do)."""
    try:
        with open(path, errors="replace") as handle:
            return marker in handle.read(512)
    except OSError:
        return False


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    """files.write_atomic, with a failure the operator can act on."""
    try:
        write_atomic(path, text, mode)
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err.strerror}",
                       "check that the directory is writable and the disk is not full") from None


def mkdir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create {path}: {err.strerror}", "check the path and permissions"
                       ) from None


def missing_dirs(path: str) -> list[str]:
    """`path` and those of its parents that do not exist yet (what makedirs will create)."""
    missing = []
    while path and path != "/" and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing
