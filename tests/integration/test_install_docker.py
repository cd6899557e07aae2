"""install.sh --mode docker against a real dockerd: install, self-test, status, uninstall.

The daemon is the shared test dockerd (helpers.dockerd: the machine's if one
answers, else a private one on a temp socket); DOCKER_HOST points install.sh
at it and the installer writes that socket into the config. The network has
a unique name and a free /24, and is removed whatever happens.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from test_install import Install, _is_our_supervisor, dns_address_present

from helpers.dockerd import free_subnet, remove_network

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]

SELFTEST_IMAGE = "smarter-cni/selftest:busybox"


@pytest.fixture(scope="module")
def dinst(tmp_path_factory, dockerd):
    installation = Install(tmp_path_factory.mktemp("install-docker"), mode="docker")
    installation.subnet = free_subnet(dockerd)
    installation.dns_ip = installation.subnet.rsplit(".", 1)[0] + ".2"
    installation.env["DOCKER_HOST"] = dockerd.host
    try:
        yield installation
    finally:
        installation.cleanup()
        remove_network(dockerd, installation.network)
        for ref in dockerd.out("ps", "-aq", "--filter", "label=smarter-cni-selftest=1").split():
            dockerd.cli("rm", "-f", ref, check=False)


@pytest.fixture(scope="module")
def docker_install(dinst):
    return dinst.install_sh()


def test_install_sh_docker_mode_selftest_passes(dinst, docker_install, dockerd):
    done = docker_install
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test passed" in done.stdout and "FAILED" not in done.stdout
    network = dockerd.network_inspect(dinst.network)
    assert network is not None and network["Driver"] == "bridge"
    pool = network["IPAM"]["Config"][0]
    assert pool["Subnet"] == dinst.subnet
    assert dinst.dns_ip in (pool.get("AuxiliaryAddresses") or {}).values()
    plugin = json.loads(dinst.conflist_path.read_text())["plugins"][0]
    assert plugin["mode"] == "docker" and plugin["network"] == dinst.network
    assert plugin.get("dockerSocket", "/var/run/docker.sock") == dockerd.socket
    # the self-test's sandboxes are gone
    assert dockerd.out("ps", "-aq", "--filter", "label=smarter-cni-selftest=1") == ""


def test_selftest_and_status_in_docker_mode(dinst, docker_install):
    assert docker_install.returncode == 0
    code, report = dinst.json("selftest")
    assert code == 0 and report["passed"] and report["mode"] == "docker", report
    assert all(c["ok"] for pod in report["pods"] for c in pod["checks"])
    code, status = dinst.json("status")
    assert code == 0 and status["ok"], status
    assert status["docker_network"]["present"] is True
    assert status["dns"]["answering"] is True


def test_uninstall_docker_mode_leaves_nothing(dinst, docker_install, dockerd):
    assert docker_install.returncode == 0
    pid = dinst.supervisor_pid()
    done = dinst.run("uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert dockerd.network_inspect(dinst.network) is None, said
    assert dockerd.cli("image", "inspect", SELFTEST_IMAGE, check=False).returncode != 0, said
    assert not dinst.conflist_path.exists(), said
    assert not dinst.state_dir.exists(), (said, list(dinst.state_dir.iterdir()))
    assert not (dinst.bin_dir / "smarter-cni").exists(), said
    assert not _is_our_supervisor(pid), said
    assert not dns_address_present(dinst.dns_ip), said
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(dinst.conflist_path) not in ps, ps
