"""Drive the plugin the way a runtime does: exec with env + stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
REFERENCE_PLUGINS = Path("/usr/lib/cni")

sys.path.insert(0, str(SRC))
from helpers.netns import require_own_id  # noqa: E402
from smarter_cni import launcher  # noqa: E402


def make_bin_dir(directory: Path, python: str = sys.executable) -> Path:
    """A CNI_PATH dir: our launcher as smarter-cni and c2d, plus the reference plugins."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("smarter-cni", "c2d"):
        launcher.write(str(directory / name), python, str(SRC))
    if REFERENCE_PLUGINS.is_dir():
        for plugin in REFERENCE_PLUGINS.iterdir():
            target = directory / plugin.name
            if not target.exists():
                target.symlink_to(plugin)
    return directory


STATE_DIR_ENV = "SMARTER_CNI_STATE_DIR"


@contextmanager
def state_dir_env(state_dir: Path | str) -> Iterator[None]:
    """In-process plugin code (teardown, stores) sees `state_dir`; the previous value comes back."""
    previous = os.environ.get(STATE_DIR_ENV)
    os.environ[STATE_DIR_ENV] = str(state_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STATE_DIR_ENV, None)
        else:
            os.environ[STATE_DIR_ENV] = previous


def teardown_bridge_network(config: dict, state_dir: Path | str) -> None:
    """The plugin's own teardown of a test network's bridge and rules, under the test's state dir."""
    from smarter_cni.dataplane.bridge_network import teardown_network
    from smarter_cni.netconf import parse_netconf

    with state_dir_env(state_dir):
        teardown_network(parse_netconf(config))


class Invocation:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode()
        self.stderr = proc.stderr.decode()
        try:
            self.json: Any = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            self.json = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def code(self) -> int | None:
        return self.json.get("code") if isinstance(self.json, dict) else None

    def __repr__(self) -> str:
        return f"<rc={self.returncode} out={self.stdout[:600]!r} err={self.stderr[-600:]!r}>"


class PluginRunner:
    """Exec a plugin from `bin_dir` with a per-test state dir.

    Every container ID must be this run's own (helpers.netns.cid / unique / adopt):
    `env` raises otherwise, so no test can share a host veth name with a concurrent run."""

    def __init__(self, bin_dir: Path, state_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.state_dir = state_dir

    def env(self, command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
            args: str = "", extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_PATH": str(self.bin_dir),
            "SMARTER_CNI_STATE_DIR": str(self.state_dir),
        }
        if container_id:
            require_own_id(container_id)
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if args:
            env["CNI_ARGS"] = args
        env.update(extra or {})
        return env

    def exec(self, plugin: str, env: dict[str, str], stdin: bytes | str | dict) -> Invocation:
        if isinstance(stdin, dict):
            stdin = json.dumps(stdin)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        proc = subprocess.run([str(self.bin_dir / plugin)], env=env, input=stdin,
                              capture_output=True, timeout=120)
        return Invocation(proc)

    def __call__(self, command: str, config: dict | str | bytes, container_id: str = "",
                 netns: str = "", ifname: str = "eth0", args: str = "",
                 plugin: str = "smarter-cni", extra: dict[str, str] | None = None) -> Invocation:
        env = self.env(command, container_id, netns, ifname, args, extra)
        return self.exec(plugin, env, config)


def pod_args(name: str, namespace: str = "default", uid: str = "", infra: str = "") -> str:
    parts = ["IgnoreUnknown=1", f"K8S_POD_NAMESPACE={namespace}", f"K8S_POD_NAME={name}"]
    if uid:
        parts.append(f"K8S_POD_UID={uid}")
    if infra:
        parts.append(f"K8S_POD_INFRA_CONTAINER_ID={infra}")
    return ";".join(parts)
