"""Docker mode: the reconciler recreates a missing Docker network this node claimed,
and only reports everything else.

A Docker network cannot be removed while anything is attached, so a missing
one is recreated (ensure_network: the config's subnet and gateway, the DNS
address reserved) once it was missing at two looks in a row, and only when
the state holds this node's claim (install's claim_network or a pod's ADD):
a test's DNS service pointed at some config never creates networks on a
shared dockerd. The reconciler runs in-process here, against the tests'
private dockerd (helpers/dockerd.py); test_heal_docker_faults.py measures
the real DNS service.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.dockerd import free_subnet  # noqa: E402
from helpers.netns import run_id  # noqa: E402
from helpers.plugin import SRC  # noqa: E402

sys.path.insert(0, str(SRC))
from smarter_cni import reconcile  # noqa: E402
from smarter_cni.dataplane import docker_mode  # noqa: E402
from smarter_cni.dataplane.docker_network import DNS_AUX_NAME  # noqa: E402
from smarter_cni.netconf import parse_netconf  # noqa: E402

pytest_plugins = ("helpers.dockerd",)
pytestmark = pytest.mark.root


class Logged:
    """The reconciler's log lines while the block runs."""

    def __enter__(self) -> Logged:
        self.saved, reconcile.log.stream = reconcile.log.stream, io.StringIO()
        return self

    def __exit__(self, *exc: object) -> None:
        self.text = reconcile.log.stream.getvalue()
        reconcile.log.stream = self.saved

    def lines(self, word: str) -> list[str]:
        return [line for line in self.text.splitlines() if word in line]


def test_dockerd_not_answering_is_reported_once_and_nothing_is_made(tmp_path, state_dir):
    conf = parse_netconf({"cniVersion": "1.0.0", "name": run_id("gone"), "type": "smarter-cni",
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


def _tick_twice(reconciler: reconcile.Reconciler) -> tuple[list[str], list[str]]:
    return reconciler.tick(), reconciler.tick()


@pytest.mark.docker
def test_a_claimed_docker_network_removed_is_recreated_with_the_reservation(
        docker_network, dockerd, state_dir):
    conf = parse_netconf(docker_network)
    first_id = docker_mode.ensure_network(conf)
    docker_mode.claim_network(conf, str(state_dir))
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    with Logged() as logged:
        assert _tick_twice(reconciler) == ([], [])  # whole: nothing to do
        dockerd.cli("network", "rm", docker_network["network"])
        first, second = _tick_twice(reconciler)
        assert reconciler.tick() == []  # whole again
    assert first == [], "recreated at the first look (the installer's migration would race)"
    assert len(second) == 1 and second[0].startswith(
        f"docker network {docker_network['network']} is missing (recreated as"), second
    network = dockerd.network_inspect(docker_network["network"])
    assert network is not None and network["Id"] != first_id
    pool = network["IPAM"]["Config"][0]
    assert pool["Subnet"] == docker_network["subnet"]
    assert pool["AuxiliaryAddresses"] == {DNS_AUX_NAME: docker_network["dnsAddress"]}
    assert network["Labels"].get(docker_mode.MANAGED_LABEL) == "true"
    assert reconcile.check(conf, str(state_dir)) == []
    repaired = logged.lines("repaired")
    assert len(repaired) == 1 and "DNS address" in repaired[0], logged.text
    assert not logged.lines("not repaired"), logged.text
    repairs = json.loads((state_dir / "repairs.json").read_text())
    assert [r["by"] for r in repairs] == ["reconciler"]


@pytest.mark.docker
def test_an_unclaimed_docker_network_is_reported_once_and_not_made(docker_network, dockerd,
                                                                   state_dir):
    conf = parse_netconf(docker_network)  # never created, never claimed
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    with Logged() as logged:
        assert reconciler.tick() == [] and reconciler.tick() == [] and reconciler.tick() == []
    assert dockerd.network_inspect(docker_network["network"]) is None
    said = logged.lines("is missing")
    assert len(said) == 1 and "not repaired" in said[0], logged.text


@pytest.mark.docker
def test_a_docker_network_that_does_not_match_is_reported_not_replaced(docker_network, dockerd,
                                                                       state_dir):
    conf = parse_netconf(docker_network)
    docker_mode.claim_network(conf, str(state_dir))
    other = free_subnet(dockerd)
    dockerd.cli("network", "create", "--subnet", other, docker_network["network"])
    made = dockerd.network_inspect(docker_network["network"])["Id"]
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    with Logged() as logged:
        assert _tick_twice(reconciler) == ([], [])
    assert dockerd.network_inspect(docker_network["network"])["Id"] == made
    assert len(logged.lines("subnet is")) == 1, logged.text


@pytest.mark.docker
def test_dockerd_back_after_an_outage_is_said_once(docker_network, dockerd, state_dir, tmp_path):
    """The socket path is a symlink the test points at nothing, then at the dockerd."""
    link = tmp_path / "docker.sock"
    link.symlink_to(tmp_path / "nothing.sock")
    conf = parse_netconf(dict(docker_network, dockerSocket=str(link)))
    docker_mode.ensure_network(parse_netconf(docker_network))
    reconciler = reconcile.Reconciler(conf, str(state_dir))
    with Logged() as logged:
        assert _tick_twice(reconciler) == ([], [])
        link.unlink()
        link.symlink_to(dockerd.socket)
        assert _tick_twice(reconciler) == ([], [])
    assert len(logged.lines("does not answer")) == 2, logged.text  # the report, then its end
    back = logged.lines("no longer: dockerd does not answer")
    assert len(back) == 1 and "INFO" in back[0], logged.text
    assert reconcile.check(conf, str(state_dir)) == []
