"""Docker mode: the reconciler checks and reports, and never recreates on its own.

Recreating a Docker network is dockerd's business (and a test's DNS service
pointed at a config must never create networks on a shared dockerd), so the
reconciler logs what is wrong once and `status` lists it. Only the case that
needs no dockerd is here: the node's dockerd on /var/run/docker.sock is not
for tests, and a second one in the host's namespace fights it for iptables.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.plugin import SRC  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni import reconcile  # noqa: E402
from smarter_cni.netconf import parse_netconf  # noqa: E402

pytestmark = pytest.mark.root


def test_dockerd_not_answering_is_reported_once_and_nothing_is_made(tmp_path, state_dir):
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "gone", "type": "smarter-cni",
                          "mode": "docker", "dockerSocket": str(tmp_path / "docker.sock")})
    problems = reconcile.check(conf, str(state_dir))
    assert len(problems) == 1 and problems[0].startswith("dockerd does not answer on"), problems
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    logged, reconcile.log.stream = reconcile.log.stream, io.StringIO()
    try:
        assert reconciler.tick() == [] and reconciler.tick() == []
    finally:
        logged, reconcile.log.stream = reconcile.log.stream, logged
    said = [line for line in logged.getvalue().splitlines() if "does not answer" in line]
    assert len(said) == 1, said  # once, not every tick
    assert not (tmp_path / "docker.sock").exists()
