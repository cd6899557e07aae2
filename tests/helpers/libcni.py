"""Drive CNI plugins through libcni, as containerd, CRI-O and cri-dockerd do.

`tests/libcni/main.go` is a small driver over Debian's libcni source
(golang-github-appc-cni-dev, v1.1.2). The `libcni` session fixture builds it
once in GOPATH mode (no downloads) and yields a `LibcniDriver`. A test module
declares the fixture with one line, `libcni = helpers.libcni.fixture()`;
the binary is built once per session whichever modules use it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.netns import require_own_id
from helpers.plugin import Invocation

ROOT = Path(__file__).resolve().parents[2]
DRIVER_SRC = ROOT / "tests" / "libcni"
GOPATH = Path("/usr/share/gocode")
LIBCNI_SRC = GOPATH / "src" / "github.com" / "containernetworking" / "cni" / "libcni"


class LibcniResult(Invocation):
    """One driver run: exit status, parsed JSON output and stderr."""

    @property
    def error(self) -> str:
        return self.json.get("error", "") if isinstance(self.json, dict) else ""

    @property
    def code(self) -> int | None:
        return self.json.get("code") if isinstance(self.json, dict) and not self.ok else None

    def __repr__(self) -> str:
        return f"<libcni rc={self.returncode} out={self.stdout[:800]!r} err={self.stderr[-800:]!r}>"


class LibcniDriver:
    """Runs the built driver binary with a conflist, CNI_PATH and a cache dir."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(self, command: str, conflist: Path | None = None, *, cni_path: Path | str,
            cache_dir: Path | None = None, container_id: str = "", netns: str = "",
            ifname: str = "eth0", args: str = "", capability_args: dict | None = None,
            plugin: str = "", env: dict[str, str] | None = None,
            timeout: float = 120) -> LibcniResult:
        """`env` is the driver's environment, which libcni passes on to plugins."""
        argv = [str(self.binary), "-command", command, "-cni-path", str(cni_path),
                "-ifname", ifname, "-timeout", f"{int(timeout)}s"]
        if conflist is not None:
            argv += ["-conflist", str(conflist)]
        if cache_dir is not None:
            argv += ["-cache-dir", str(cache_dir)]
        if container_id:
            require_own_id(container_id)
            argv += ["-container-id", container_id]
        if netns:
            argv += ["-netns", netns]
        if args:
            argv += ["-args", args]
        if capability_args is not None:
            argv += ["-capability-args", json.dumps(capability_args)]
        if plugin:
            argv += ["-plugin", plugin]
        proc = subprocess.run(argv, env=_clean_env(env), capture_output=True,
                              timeout=timeout + 10)
        return LibcniResult(proc)


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The test process's environment without CNI_* (libcni sets those itself)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CNI_")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra or {})
    return env


def build_driver(out_dir: Path) -> Path:
    """Build the driver in GOPATH mode against the packaged libcni source."""
    binary = out_dir / "libcni-driver"
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="",
               GOPROXY="off", CGO_ENABLED="0")
    if "HOME" not in os.environ and "GOCACHE" not in os.environ:
        env["GOCACHE"] = str(out_dir / "gocache")  # go refuses to build without a cache
    proc = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=DRIVER_SRC, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the libcni driver failed:\n{proc.stdout}{proc.stderr}")
    return binary


_built: list[LibcniDriver] = []


def session_driver(tmp_path_factory) -> LibcniDriver:
    """The driver, built on first use in this pytest session."""
    if _built:
        return _built[0]
    if shutil.which("go") is None:
        pytest.skip("`go` is not installed (apt-get install golang-go); run-tests.sh installs it")
    if not LIBCNI_SRC.is_dir():
        pytest.fail(f"libcni source missing at {LIBCNI_SRC}: apt-get install "
                    "golang-github-appc-cni-dev (run-tests.sh installs it)")
    _built.append(LibcniDriver(build_driver(tmp_path_factory.mktemp("libcni"))))
    return _built[0]


def fixture():
    """A session-scoped `libcni` fixture for a test module."""

    @pytest.fixture(scope="session")
    def libcni(tmp_path_factory) -> LibcniDriver:
        return session_driver(tmp_path_factory)

    return libcni
