"""The `smarter-cni` command line without touching the node: parsing, help,
config rendering, status and pods over files in temp dirs, error output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.sample_state import sample_state
from smarter_cni import cli
from smarter_cni.cli import main
from smarter_cni.node.console import format_table

SRC = Path(__file__).resolve().parents[2] / "src"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a child process (as the installed script runs it)."""
    full = dict(os.environ, PYTHONPATH=str(SRC), **(env or {}))
    full.pop("CNI_COMMAND", None)
    return subprocess.run([sys.executable, "-m", "smarter_cni", *args], env=full,
                          capture_output=True, text=True, timeout=60)



# ---------------------------------------------------------------- parsing and help

def test_help_lists_every_command():
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("install", "uninstall", "status", "pods", "selftest", "dns"):
        assert command in done.stdout
    assert "supervise-dns" not in done.stdout  # internal
    assert "sudo smarter-cni install" in done.stdout  # examples a person can follow


def test_install_help_names_the_options():
    done = run_cli("install", "--help")
    assert done.returncode == 0
    for option in ("--mode", "--subnet", "--gateway", "--dns-ip", "--bridge", "--network",
                   "--cni-bin-dir", "--cni-conf-dir", "--k3s", "--no-selftest",
                   "--no-dns-service"):
        assert option in done.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: smarter-cni" in capsys.readouterr().out


def test_unknown_command_and_bad_mode_are_usage_errors():
    done = run_cli("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run_cli("install", "--mode", "vxlan")
    assert done.returncode == 2 and "invalid choice: 'vxlan'" in done.stderr


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip().startswith("smarter-cni ")


# ---------------------------------------------------------------- output helpers

def test_tables_align():
    lines = format_table(("NAME", "ADDRESS"), [("a", "10.42.0.2"), ("longer-name", None)])
    assert lines == ["NAME         ADDRESS", "a            10.42.0.2", "longer-name"]


# ---------------------------------------------------------------- status and pods over files

def test_status_without_an_install_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTER_CNI_PREFIX", str(tmp_path / "prefix"))
    done = run_cli("status", "--cni-conf-dir", str(tmp_path),
                   env={"SMARTER_CNI_PREFIX": str(tmp_path / "prefix")})
    assert done.returncode == 1
    assert "no 10-smarter-cni.conflist found" in done.stdout
    assert "fix: run `sudo smarter-cni install`" in done.stdout
    report = json.loads(run_cli("status", "--json", "--cni-conf-dir", str(tmp_path),
                                env={"SMARTER_CNI_PREFIX": str(tmp_path / "p")}).stdout)
    assert report["ok"] is False and report["config"] is None
    assert report["problems"][0]["fix"]


def test_status_with_a_broken_config_has_no_traceback(tmp_path):
    (tmp_path / "10-smarter-cni.conflist").write_text("{not json")
    done = run_cli("status", "--cni-conf-dir", str(tmp_path),
                   env={"SMARTER_CNI_PREFIX": str(tmp_path / "p")})
    assert done.returncode == 1 and "not valid JSON" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_pods_table_and_json(tmp_path):
    env = {"SMARTER_CNI_STATE_DIR": str(sample_state(tmp_path))}
    done = run_cli("pods", env=env)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NAMESPACE", "HOSTNAME", "ADDRESS", "CONTAINER", "AGE"]
    assert lines[1].split() == ["db", "(not", "ready)", "shop", "-", "10.42.0.6", "b" * 12, "3s"]
    assert lines[2].split() == ["web", "shop", "web-0", "10.42.0.5", "a" * 12, "66m"]
    rows = json.loads(run_cli("pods", "--json", env=env).stdout)
    assert [(r["name"], r["address"], r["ready"]) for r in rows] == \
        [("db", "10.42.0.6", False), ("web", "10.42.0.5", True)]
    assert rows[1]["container"] == "a" * 64


def test_pods_with_nosample_state(tmp_path):
    done = run_cli("pods", env={"SMARTER_CNI_STATE_DIR": str(tmp_path / "none")})
    assert done.returncode == 0 and "no pods attached" in done.stdout
    assert json.loads(run_cli("pods", "--json",
                              env={"SMARTER_CNI_STATE_DIR": str(tmp_path / "n")}).stdout) == []


def test_pods_with_a_corrupt_state_file_is_an_error_not_a_traceback(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "attachments.json").write_text("[1, 2")
    done = run_cli("pods", env={"SMARTER_CNI_STATE_DIR": str(state)})
    assert done.returncode == 1
    assert done.stderr.startswith("smarter-cni: error:") and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_unexpected_failures_become_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMARTER_CNI_STATE_DIR", str(tmp_path))

    def broken() -> int:
        raise ZeroDivisionError("boom")

    assert cli._guarded(broken) == 1
    err = capsys.readouterr().err
    assert "unexpected failure: ZeroDivisionError: boom" in err and "Traceback" not in err
    assert "ZeroDivisionError" in (tmp_path / "smarter-cni.log").read_text()  # kept for the operator


@pytest.mark.root
def test_commands_that_change_the_node_refuse_without_root(tmp_path):
    for command in ("install", "uninstall", "selftest"):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "smarter_cni", command],
            env=dict(os.environ, PYTHONPATH=str(SRC), SMARTER_CNI_PREFIX=str(tmp_path)),
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, command
        assert "needs root" in done.stderr and f"sudo smarter-cni {command}" in done.stderr
