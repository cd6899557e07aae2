"""How the node DNS service runs: a systemd unit where systemd runs the node, else a supervisor.

The supervisor is `smarter-cni supervise-dns -- smarter-cni dns ...`, started
in its own session with its PID in the state dir; it restarts the service
when it exits (backing off if it keeps failing fast).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from .. import paths
from ..dns.address import DEFAULT_INTERFACE
from ..dns.probe import wait_for_dns
from ..launcher import package_root
from ..netconf import NetConf
from ..reconcile import address_port
from .console import CLIError
from .record import UNIT_MARKER, find_template, mkdir, own_file, write_file

UNIT_NAME = "smarter-cni-dns.service"
UNIT_DIR_ENV = "SMARTER_CNI_UNIT_DIR"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
SERVICE_KINDS = ("auto", "systemd", "supervisor")


def systemd_running() -> bool:
    """systemd is the init system (the test sd_booted() makes)."""
    return os.path.isdir("/run/systemd/system")


def cli_executable() -> list[str]:
    """How to run this installation's `smarter-cni` (the venv's script if there is one)."""
    script = os.path.join(os.path.dirname(sys.executable), "smarter-cni")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "smarter_cni"]


def service_kind(choice: str) -> str:
    """--service: auto is systemd where systemd runs the node, else the supervisor."""
    if choice == "auto":
        return "systemd" if systemd_running() else "supervisor"
    if choice == "systemd" and not systemd_running():
        raise CLIError("--service systemd, but systemd does not run this node",
                       "use --service supervisor (or auto)")
    if choice not in SERVICE_KINDS:
        raise CLIError(f"--service {choice!r} is not one of {', '.join(SERVICE_KINDS)}")
    return choice


def unit_path() -> str:
    """Where the systemd unit goes: $SMARTER_CNI_UNIT_DIR, else /etc/systemd/system."""
    return os.path.join(os.environ.get(UNIT_DIR_ENV) or DEFAULT_UNIT_DIR, UNIT_NAME)


def dns_arguments(conf_path: str, conf: NetConf, interface: str = DEFAULT_INTERFACE,
                  kubeconfig: str = "") -> list[str]:
    argv = ["--config", conf_path, "--interface", interface]
    if kubeconfig:  # Service names (dns/services.py)
        argv += ["--kubeconfig", kubeconfig]
    return argv


def start_dns_service(kind: str, conf_path: str, conf: NetConf,
                      interface: str = DEFAULT_INTERFACE, kubeconfig: str = "") -> str:
    """(Re)start the DNS service so it runs this version with this config; returns its kind."""
    argv = cli_executable() + ["dns"] + dns_arguments(conf_path, conf, interface, kubeconfig)
    if kind == "systemd":
        install_unit(argv)
    else:
        stop_supervisor()
        start_supervisor(argv)
    for address in conf.dns_addresses():  # each family's listener (IPv6 only: just that one)
        if not wait_for_dns(address, conf.domain, 10.0):
            raise CLIError(f"the DNS service does not answer on {address_port(address, 53)}",
                           f"see {dns_log_hint(kind)}; `smarter-cni status` shows what else "
                           "is wrong")
    return kind


def dns_log_hint(kind: str) -> str:
    if kind == "systemd":
        return f"journalctl -u {UNIT_NAME}"
    return os.path.join(paths.state_dir(), paths.DNS_LOG)


def unit_text(argv: list[str]) -> str:
    exec_start = " ".join(argv)
    template = find_template(UNIT_NAME)
    if template:
        with open(template) as handle:
            lines = handle.read().splitlines()
        out = []
        for line in lines:
            if line.startswith("ExecStart="):
                line = f"ExecStart={exec_start}"
            out.append(line)
        text = "\n".join(out) + "\n"
    else:
        text = ("[Unit]\nDescription=smarter-cni node DNS service\nAfter=network-online.target\n"
                "Wants=network-online.target\n\n[Service]\n"
                f"ExecStart={exec_start}\nRestart=always\nRestartSec=1\n\n"
                "[Install]\nWantedBy=multi-user.target\n")
    state = os.environ.get("SMARTER_CNI_STATE_DIR")
    if state and "SMARTER_CNI_STATE_DIR" not in text:
        text = text.replace("[Service]\n", f"[Service]\nEnvironment=SMARTER_CNI_STATE_DIR={state}\n")
    return text


def install_unit(argv: list[str]) -> None:
    path = unit_path()
    mkdir(os.path.dirname(path))
    write_file(path, unit_text(argv), 0o644)
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME],
                ["systemctl", "restart", UNIT_NAME]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise CLIError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:300]}",
                           f"see journalctl -u {UNIT_NAME}")


def remove_unit(path: str) -> bool:
    """Stop, disable and delete the unit install wrote at `path` (the record's)."""
    if not path or not own_file(path, UNIT_MARKER):
        return False
    if systemd_running():
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], capture_output=True,
                       timeout=60)
    os.unlink(path)
    if systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=60)
    return True


def pidfile_path() -> str:
    return os.path.join(paths.state_dir(), paths.SUPERVISOR_PIDFILE)


def supervisor_pid() -> int:
    """The running supervisor's PID, or 0 (a stale pidfile or a reused PID is not it)."""
    try:
        with open(pidfile_path()) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid > 0 and _is_supervisor(pid) else 0


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return b"supervise-dns" in cmdline and state != "Z"


def start_supervisor(argv: list[str]) -> int:
    state = paths.ensure_state_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["SMARTER_CNI_STATE_DIR"] = state
    root = package_root()  # a source checkout is not on the default sys.path
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_fd = os.open(os.path.join(state, paths.DNS_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(cli_executable() + ["supervise-dns", "--"] + argv,
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, close_fds=True, env=env, cwd="/")
    finally:
        os.close(log_fd)
    write_file(pidfile_path(), f"{proc.pid}\n", 0o644)
    return proc.pid


def stop_supervisor(timeout: float = 10.0) -> bool:
    """Stop the supervisor and the DNS service under it; True if one was running.

    The supervisor leads its own process group (started with a new session),
    so the group signal reaches the DNS service too, even if the supervisor
    itself has to be killed.
    """
    pid = supervisor_pid()
    if pid:
        group = pid if _process_group(pid) == pid else 0
        _signal(pid, group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_supervisor(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_supervisor(pid) or (group and _group_alive(group)):
            _signal(pid, group, signal.SIGKILL)
    try:
        os.unlink(pidfile_path())
    except OSError:
        pass
    return bool(pid)


def _process_group(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def _signal(pid: int, group: int, signum: int) -> None:
    try:
        if group:
            os.killpg(group, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except OSError:
        return False


def supervise(argv: list[str]) -> int:
    """Run argv; restart it when it exits (1 s, doubling to 30 s if it keeps failing fast)."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise CLIError("supervise-dns needs the command to run")
    stopping = False
    child: subprocess.Popen | None = None

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    delay = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if stopping:  # the signal came while it was being started
            child.terminate()
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
        if stopping:
            break
        ran = time.monotonic() - started
        delay = 1.0 if ran > 60 else min(delay * 2, 30.0)
        _log(f"dns service exited with {code} after {ran:.1f} s; restarting in {delay:.0f} s")
        end = time.monotonic() + delay
        while not stopping and time.monotonic() < end:
            time.sleep(0.1)
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} supervisor: {text}", file=sys.stderr, flush=True)
