"""Smoke run of bench/interpreters.py (the launcher's start per venv interpreter) at 3
rounds, so it does not rot. The numbers are not judged; what is checked: it builds a
venv on each interpreter given, runs the real launcher's VERSION and the bare floor on
each, and reports both and the per-round difference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no /usr/bin/python3 here")
def test_interpreters_quick(tmp_path: Path) -> None:
    other = tmp_path / "python3"  # another interpreter: a copy of the binary, another real path
    shutil.copy2(os.path.realpath(SYSTEM_PYTHON), other)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "interpreters.py"), "--rounds", "3",
                           "--python", SYSTEM_PYTHON, "--python", str(other)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines()
            if line.startswith(("/usr/bin", str(other))) and "difference" not in line]
    assert len(rows) == 4, done.stdout
    for row in rows:
        assert re.search(r"(smarter-cni VERSION|python -I -S -c pass)\s+\d+\.\d\d\s", row), row
    assert f"{other} - {os.path.realpath(SYSTEM_PYTHON)}, version: per-round difference" in done.stdout
