"""A private containerd with its CRI plugin, for driving the plugin the way kubelet does.

Everything it owns lives under one temp dir: config, root, state, the gRPC
socket, the CNI bin and conf dirs and a record of every plugin call. It is
stopped by its PID; shims it started are found by our socket in their
command line and ended by PID too. Nothing of the node's own containerd (or
dockerd's) is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import session_watch
from helpers.cri import CRIClient, CRIError
from helpers.plugin import SRC, make_bin_dir

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PLUGIN_LAUNCHER = "smarter-cni-launcher"

# The bin dir's `smarter-cni` (and `loopback`): keep a copy of what the runtime
# hands the plugin (environment, stdin, stdout, exit code), then run the real
# plugin on the same input. Plain sh, so a call costs ~2 ms more and nothing else changes.
RECORDER = """#!/bin/sh
# smarter-cni tests: record this CNI call, then run the plugin on the same input.
record="{records}/$(date +%s%N)-$$"
env > "$record.env"
tee "$record.in" | "{launcher}" > "$record.out"
rc=$?
cat "$record.out"
echo "$rc" > "$record.rc"
exit "$rc"
"""

CONFIG = """version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # pod netns under our state dir, not /var/run/netns: a containerd killed between
  # making a netns and recording its sandbox leaks that netns, and the tests kill it
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{base}/runc"
"""


@dataclass
class PluginCall:
    """One exec of the plugin by containerd, as the recorder saw it."""

    name: str
    env: dict[str, str]
    stdin: dict[str, Any]
    stdout: str
    returncode: int | None
    started_ns: int  # the recorder's start (CLOCK_REALTIME)
    ended_ns: int  # its exit code on disk: the plugin's run plus ~2 ms

    @property
    def plugin(self) -> str:
        return str(self.stdin.get("type", ""))

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")

    @property
    def container_id(self) -> str:
        return self.env.get("CNI_CONTAINERID", "")

    @property
    def netns(self) -> str | None:
        """CNI_NETNS as passed: None when unset, "" when set empty."""
        return self.env.get("CNI_NETNS")

    @property
    def runtime_config(self) -> dict[str, Any]:
        return self.stdin.get("runtimeConfig") or {}

    @property
    def cni_args(self) -> dict[str, str]:
        """CNI_ARGS as a dict (containerd's order of the pairs varies)."""
        pairs = (part.partition("=") for part in self.env.get("CNI_ARGS", "").split(";"))
        return {key: value for key, sep, value in pairs if sep}


def read_calls(records: Path) -> list[PluginCall]:
    """Every completed recorded call, oldest first."""
    calls = []
    for rc_file in sorted(records.glob("*.rc"), key=lambda p: int(p.stem.split("-")[0])):
        stem = records / rc_file.stem
        env = {}
        for line in Path(f"{stem}.env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        text = Path(f"{stem}.in").read_text()
        try:
            stdin = json.loads(text) if text.strip() else {}
        except ValueError:
            stdin = {"_unparsed": text}
        code = rc_file.read_text().strip()
        calls.append(PluginCall(rc_file.stem, env, stdin, Path(f"{stem}.out").read_text(),
                                int(code) if code.lstrip("-").isdigit() else None,
                                int(rc_file.stem.split("-")[0]), rc_file.stat().st_mtime_ns))
    return calls


def make_cri_bin_dir(directory: Path, records: Path) -> Path:
    """The test bin dir (launcher + reference plugins) with the recorder in front of our
    plugin and of the reference `loopback` (containerd's own cni-loopback network)."""
    from smarter_cni import launcher

    make_bin_dir(directory)
    records.mkdir(parents=True, exist_ok=True)
    real = directory / PLUGIN_LAUNCHER
    launcher.write(str(real), sys.executable, str(SRC))
    _put_recorder(directory / "smarter-cni", real, records)
    loopback = directory / "loopback"
    if loopback.is_symlink():
        _put_recorder(loopback, loopback.resolve(), records)
    return directory


def _put_recorder(dest: Path, real: Path, records: Path) -> None:
    temp = dest.with_name(dest.name + ".tmp")
    temp.write_text(RECORDER.format(records=records, launcher=real))
    temp.chmod(0o755)
    os.replace(temp, dest)


@dataclass
class Containerd:
    """A containerd of our own: `start()`, `restart()`, `stop()`, `cleanup()`."""

    base: Path
    bin_dir: Path
    conf_dir: Path
    sandbox_image: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    client: CRIClient | None = None
    starts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.socket = self.base / "containerd.sock"
        self.config = self.base / "containerd.toml"
        self.log = self.base / "containerd.log"
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONFIG.format(
            root=self.root, state=self.state, socket=self.socket, base=self.base,
            sandbox_image=self.sandbox_image, bin_dir=self.bin_dir, conf_dir=self.conf_dir))

    # ------------------------------------------------------------ process

    def start(self, timeout: float = 60.0) -> Containerd:
        env = dict(os.environ, **self.env)
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        # the watchdog ends it and its shims (their command lines name `base`) if pytest dies
        session_watch.track_process(self.proc.pid, marker=str(self.base))
        session_watch.note("mounts", str(self.base))
        if self.client is None:
            self.client = CRIClient(str(self.socket))
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.client.ready():
                self.starts.append(time.monotonic() - started)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"containerd's CRI was not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM our containerd (by PID), SIGKILL if it does not exit. Shims keep running."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL our containerd (by PID), as a crash: shims and plugin runs carry on."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------ images

    def import_image(self, archive: Path, reference: str, timeout: float = 30.0) -> None:
        done = subprocess.run([CTR, "--address", str(self.socket), "--namespace", "k8s.io",
                               "images", "import", str(archive)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import failed: {done.stdout}{done.stderr}")
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the CRI learns of it from containerd's events
            if self.client.call("ImageStatus", image={"image": reference}).image.id:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the CRI does not see {reference} after import")

    # ------------------------------------------------------------ teardown

    def shim_pids(self) -> list[int]:
        """containerd-shim processes that serve our socket (and only ours)."""
        needle = str(self.socket).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in argv[0] and needle in argv:
                pids.append(int(entry.name))
        return pids

    def remove_all_sandboxes(self) -> list[str]:
        """Stop and remove every sandbox our containerd knows; returns the errors."""
        errors: list[str] = []
        if self.client is None or self.pid is None:
            return errors
        try:
            items = self.client.call("ListPodSandbox", timeout=20).items
        except CRIError as err:
            return [str(err)]
        for item in items:
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                try:
                    self.client.call(method, timeout=60, pod_sandbox_id=item.id)
                except CRIError as err:
                    errors.append(str(err))
        return errors

    def cleanup(self, netns_paths: list[str] = ()) -> list[str]:
        """Leave nothing behind: sandboxes, containerd, shims, mounts, the pods' netns."""
        errors = self.remove_all_sandboxes()
        self.stop()
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in netns_paths:
            if path and os.path.exists(path):
                subprocess.run(["umount", path], capture_output=True, timeout=30)
                try:
                    os.unlink(path)
                except OSError as err:
                    errors.append(f"netns {path}: {err}")
        for mount in reversed(self._mounts_under_base()):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        if self.client is not None:
            self.client.close()
            self.client = None
        shutil.rmtree(self.base, ignore_errors=True)
        return errors

    def _mounts_under_base(self) -> list[str]:
        prefix = str(self.base) + "/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
        return sorted(mounts)
