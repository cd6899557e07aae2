"""Shared fixtures: real netns, a CNI bin dir with our launcher, per-test state.

Root-only tests skip (with the reason) when not root; CI runs as root.

Node guard: the suite may run on a node where smarter-cni is installed at
the defaults (and Docker runs). As root, the session records that install
and `docker0` at its start (helpers/node_snapshot.py) and compares at its
end; any change fails the run loudly, whatever the tests said.
SMARTER_CNI_NODE_GUARD=0 turns it off (e.g. on a shared machine where
someone else changes docker0 during the run).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import node_snapshot, session_watch  # noqa: E402
from helpers.netns import NetnsFactory, unique  # noqa: E402
from helpers.plugin import SRC, PluginRunner, make_bin_dir, teardown_bridge_network  # noqa: E402

sys.path.insert(0, str(SRC))

IS_ROOT = os.geteuid() == 0
# Plugin code run in-process (dispatch tests, teardowns, stores) must never fall
# back to the node's /run/smarter-cni: the whole session gets a private default.
_SESSION_STATE = tempfile.mkdtemp(prefix="smarter-cni-test-state.")
os.environ["SMARTER_CNI_STATE_DIR"] = _SESSION_STATE
session_watch.note("dir", _SESSION_STATE)
# Fixtures shared by the chaining tests (host_port, portmap_chains_restored), and the
# tests' private dockerd (registered here first, so pytest rewrites its asserts).
pytest_plugins = ("helpers.portmap", "helpers.dockerd")


_GUARD: dict[str, object] = {}


def _guarding() -> bool:
    return IS_ROOT and os.environ.get("SMARTER_CNI_NODE_GUARD", "1") != "0"


def pytest_configure(config):
    """Start the session watchdog (helpers/session_watch.py): if pytest is killed, no
    fixture runs, so it removes what this run left. SMARTER_CNI_TEST_WATCH=0: off;
    SMARTER_CNI_TEST_WATCH_DIR: its registry and log go there (kept) instead of a
    temp dir of its own (removed after a clean end)."""
    if not IS_ROOT or os.environ.get("SMARTER_CNI_TEST_WATCH", "1") == "0":
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        session_watch.start(os.environ.get("SMARTER_CNI_TEST_WATCH_DIR", ""))
        return
    with capman.global_and_fixture_disabled():  # it logs to the real stderr, not a capture
        session_watch.start(os.environ.get("SMARTER_CNI_TEST_WATCH_DIR", ""))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    session_watch.finish()  # every fixture has run: the watcher finds nothing


def pytest_sessionstart(session):
    if _guarding():
        _GUARD["before"] = node_snapshot.take()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_STATE, ignore_errors=True)
    before = _GUARD.get("before")
    if before is None:
        return
    same, table = node_snapshot.compare(before, node_snapshot.take())
    if not same:
        _GUARD["report"] = table
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    report = _GUARD.get("report")
    if report:
        terminalreporter.section("NODE CHANGED BY THE TEST SESSION", sep="!", red=True, bold=True)
        terminalreporter.write_line("The default smarter-cni install or docker0 differs from the "
                                    "session start (tests/helpers/node_snapshot.py):")
        terminalreporter.write_line(str(report))


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces, links and iptables")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns():
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def state_dir(tmp_path: Path):
    """A per-test state dir; with SMARTER_CNI_TEST_RESIDENT=1 a resident server serves it,
    so the same tests run through the thin client's resident path instead of its fallback."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    if os.environ.get("SMARTER_CNI_TEST_RESIDENT") != "1":
        yield path
        return
    from helpers.resident import running_server

    with running_server(path, tmp_path / "resident.log"):  # what it served: --verbose lines
        yield path


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory) -> Path:
    return make_bin_dir(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture
def plugin(bin_dir: Path, state_dir: Path) -> PluginRunner:
    return PluginRunner(bin_dir, state_dir)


def _subnet_is_free(cidr: str) -> bool:
    routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                            capture_output=True, text=True).stdout
    return all(not line or line.startswith("default") for line in routes.splitlines())


@pytest.fixture
def bridge_network(state_dir: Path):
    """A unique bridge name and an unused /24 from 10.244.0.0/16, torn down afterwards.

    The fixture removes the bridge and the firewall rules the plugin set up,
    even when the test fails.
    """
    for _ in range(50):
        cidr = f"10.244.{random.randint(0, 255)}.0/24"
        if _subnet_is_free(cidr):
            break
    else:
        pytest.skip("no free /24 in 10.244.0.0/16 on this host")
    name = unique("t")
    config = {
        "cniVersion": "1.0.0",
        "name": f"net-{name}",
        "type": "smarter-cni",
        "bridge": f"br{name[:10]}",
        "subnet": cidr,
    }
    try:
        yield config
    finally:
        teardown_bridge_network(config, state_dir)
