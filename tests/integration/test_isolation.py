"""The suite's own machinery leaves an installed node alone.

1. The tests' private dockerd next to a node-like dockerd: both run in a
   network namespace of this test's own (standing in for the node's host
   netns), the node-like one with Docker's defaults (docker0, DOCKER chains,
   FORWARD policy). The private one is started exactly as every docker-mode
   test starts it (helpers.dockerd.start_private), given a network, a
   container and a lookup, then stopped. docker0, its address and the node
   dockerd's iptables must be unchanged, and `docker run` on the node dockerd
   must still work. The same check with the old `--bridge none` start fails.
2. The session guard (tests/conftest.py) turns a session that changed a
   watched resource into a failed run, whatever its tests said.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import dockerd as dockerd_helpers
from helpers.netns import NetnsFactory, delete_link, sh, unique

pytestmark = pytest.mark.root

TESTS = Path(__file__).resolve().parents[1]


def _ns_snapshot(ns: str) -> dict[str, object]:
    """docker0 and the namespace's iptables (counters dropped, order ignored)."""
    link = sh("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "docker0", check=False)
    rules = sh("ip", "netns", "exec", ns, "iptables-save").stdout.decode().splitlines()
    kept = sorted(line.split(" [")[0] for line in rules if line and not line.startswith("#"))
    return {"docker0": link.stdout.decode().split()[3:4] if link.returncode == 0 else None,
            "rules": kept}


class NodeDockerd:
    """A dockerd with Docker's default networking, in `ns`, files in a temp dir."""

    def __init__(self, ns: str) -> None:
        self.root = tempfile.mkdtemp(prefix="scni-nodedockerd-")
        self.socket = os.path.join(self.root, "docker.sock")
        with open(os.path.join(self.root, "daemon.json"), "w") as config:
            json.dump({"deprecated-key-path": os.path.join(self.root, "key.json")}, config)
        with open(os.path.join(self.root, "dockerd.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{ns}", "dockerd",
                 "--config-file", f"{self.root}/daemon.json", "--data-root", f"{self.root}/data",
                 "--exec-root", f"{self.root}/exec", "--pidfile", f"{self.root}/docker.pid",
                 "-H", f"unix://{self.socket}", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.daemon = dockerd_helpers.Dockerd(self.socket, self.proc.pid, self.root)
        self.daemon._proc = self.proc  # type: ignore[attr-defined]
        deadline = time.monotonic() + dockerd_helpers.START_TIMEOUT
        while not dockerd_helpers.ping(self.socket, 1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = Path(self.root, "dockerd.log").read_text(errors="replace")[-1500:]
                self.stop()
                pytest.fail(f"the node-like dockerd did not start: {log_text}")
            time.sleep(0.1)

    def stop(self) -> None:
        dockerd_helpers.stop_private(self.daemon, remove_root=False)
        dockerd_helpers._remove_root(self.root)


@pytest.fixture
def node_ns():
    """A netns standing in for the node, with a node-like dockerd in it."""
    if not (dockerd_helpers.shutil.which("dockerd") and os.path.exists(dockerd_helpers.BUSYBOX)):
        pytest.skip("needs dockerd (docker.io) and busybox-static")
    factory = NetnsFactory()
    ns, _ = factory.create("scni-node")
    node = None
    try:
        node = NodeDockerd(ns)
        yield ns, node
    finally:
        if node is not None:
            node.stop()
        factory.cleanup()


def _exercise_private(ns: str, extra_start: tuple[str, ...] = ()) -> None:
    """What a docker-mode test session does with its dockerd, inside `ns`."""
    if extra_start:  # the old helper's start, for the counter-check
        root = tempfile.mkdtemp(prefix="scni-olddockerd-")
        proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{ns}", "dockerd",
             "--data-root", f"{root}/data", "--exec-root", f"{root}/exec",
             "--pidfile", f"{root}/docker.pid", "-H", f"unix://{root}/docker.sock",
             *extra_start], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, start_new_session=True)
        daemon = dockerd_helpers.Dockerd(f"{root}/docker.sock", proc.pid, root)
        daemon._proc = proc  # type: ignore[attr-defined]
        deadline = time.monotonic() + dockerd_helpers.START_TIMEOUT
        while not dockerd_helpers.ping(daemon.socket, 1.0) and time.monotonic() < deadline:
            time.sleep(0.1)
        dockerd_helpers.stop_private(daemon, remove_root=True)
        return
    daemon = dockerd_helpers.start_private(netns=ns)
    try:
        image = dockerd_helpers.build_busybox_image(daemon, "scni-isolation/busybox:1")
        net = f"scni-{unique('', 10)}"
        daemon.cli("network", "create", "--subnet", "10.247.251.0/24", net)
        done = daemon.cli("run", "--rm", "--network", net, "--name", "alpha", image,
                          "nslookup", "alpha", "127.0.0.11")
        assert b"10.247.251." in done.stdout, done.stdout  # embedded DNS works
        dockerd_helpers.remove_network(daemon, net)
    finally:
        dockerd_helpers.stop_private(daemon, remove_root=True)


def test_private_dockerd_leaves_the_node_dockerd_alone(node_ns) -> None:
    ns, node = node_ns
    before = _ns_snapshot(ns)
    assert before["docker0"], "the node-like dockerd made no docker0"
    assert any(":DOCKER-ISOLATION-STAGE-1" in line for line in before["rules"]), before
    _exercise_private(ns)
    after = _ns_snapshot(ns)
    assert after["docker0"] == before["docker0"], (before["docker0"], after["docker0"])
    assert after["rules"] == before["rules"], sorted(set(before["rules"]) ^ set(after["rules"]))
    image = dockerd_helpers.build_busybox_image(node.daemon, "scni-node/busybox:1")
    ran = node.daemon.cli("run", "--rm", image, "echo", "node-dockerd-ok", check=False)
    assert ran.returncode == 0 and b"node-dockerd-ok" in ran.stdout, ran.stderr


def test_the_old_bridge_none_start_would_have_been_caught(node_ns) -> None:
    """Counter-check: the check above can fail. `--bridge none` deletes docker0."""
    ns, _node = node_ns
    before = _ns_snapshot(ns)
    _exercise_private(ns, extra_start=("--bridge", "none", "--log-level", "warn"))
    assert _ns_snapshot(ns)["docker0"] is None and before["docker0"]


GUARD_CONFTEST = '''
import importlib.util, sys
sys.path.insert(0, {tests!r})
from helpers import node_snapshot
node_snapshot.LINKS = node_snapshot.LINKS + ({link!r},)
spec = importlib.util.spec_from_file_location("suite_conftest", {conftest!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_sessionstart = suite.pytest_sessionstart
pytest_sessionfinish = suite.pytest_sessionfinish
pytest_terminal_summary = suite.pytest_terminal_summary
'''

GUARD_TEST = '''
import subprocess

def test_passes_but_changes_the_node():
    subprocess.run(["ip", "link", "add", {link!r}, "type", "bridge"], check=True)
'''


def test_session_guard_fails_a_session_that_changed_the_node(tmp_path) -> None:
    """The guard watches the default names; here one more, unique name is added to its
    list, and a passing test that creates that link must still fail the run."""
    assert importlib.util.find_spec("pytest")
    link = unique("sgd")
    (tmp_path / "conftest.py").write_text(GUARD_CONFTEST.format(
        tests=str(TESTS), link=link, conftest=str(TESTS / "conftest.py")))
    (tmp_path / "test_inner.py").write_text(GUARD_TEST.format(link=link))
    env = {k: v for k, v in os.environ.items() if k != "SMARTER_CNI_NODE_GUARD"}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                              capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path)
    finally:
        delete_link(link)
    assert "1 passed" in done.stdout, done.stdout
    assert done.returncode == 1, done.stdout
    assert "NODE CHANGED BY THE TEST SESSION" in done.stdout, done.stdout
    assert f"interface {link}" in done.stdout and "CHANGED" in done.stdout, done.stdout
