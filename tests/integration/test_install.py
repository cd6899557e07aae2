"""install.sh and the `smarter-cni` operator commands, for real, in bridge mode.

One installation per module (install.sh is the slow part: venv + pip): a
temp prefix (SMARTER_CNI_PREFIX), temp CNI dirs, a temp state dir, a temp
unit dir (SMARTER_CNI_UNIT_DIR) and link dir (SMARTER_CNI_LINK_DIR), the
supervisor as the DNS service, a unique network name, bridge and DNS
interface, a free /24 and a unique link-local DNS address, so nothing of the
machine's own is touched (an installed node keeps running). The tests run in file order against it and the
last one uninstalls; the fixture's teardown removes whatever is left even
when a test failed half-way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.netns import link_exists, unique
from helpers.plugin import ROOT, PluginRunner, pod_args, teardown_bridge_network

pytestmark = pytest.mark.root

INSTALL_SH = ROOT / "install.sh"


def free_subnet(prefix: str = "10.246") -> str:
    for _ in range(100):
        cidr = f"{prefix}.{random.randint(0, 255)}.0/24"
        routes = subprocess.run(["ip", "-4", "route", "show", "match", cidr.split("/")[0]],
                                capture_output=True, text=True).stdout
        if all(not line or line.startswith("default") for line in routes.splitlines()):
            return cidr
    pytest.skip(f"no free /24 in {prefix}.0.0/16")


def free_dns_ip() -> str:
    """A link-local address no interface has (the DNS service binds port 53 on it)."""
    have = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        address = f"169.254.{random.randint(10, 250)}.{random.randint(10, 250)}"
        if f" {address}/" not in have:
            return address
    pytest.skip("no free link-local address")


class Install:
    """One installation's dirs, options and environment."""

    def __init__(self, base: Path, mode: str = "bridge") -> None:
        self.base = base
        self.prefix = base / "prefix"
        self.bin_dir = base / "cni-bin"
        self.conf_dir = base / "cni-conf"
        self.state_dir = base / "state"
        self.unit_dir = base / "units"
        self.link_dir = base / "links"
        self.mode = mode
        self.name = unique("s", 10)
        self.bridge = f"br{self.name[:12]}"
        self.network = f"scni-{self.name}"
        self.dns_interface = f"dn{self.name[:12]}"
        self.subnet = free_subnet()
        self.dns_ip = free_dns_ip()
        self.env = dict(os.environ, SMARTER_CNI_PREFIX=str(self.prefix),
                        SMARTER_CNI_STATE_DIR=str(self.state_dir), SMARTER_CNI_SKIP_APT="1",
                        SMARTER_CNI_UNIT_DIR=str(self.unit_dir),
                        SMARTER_CNI_LINK_DIR=str(self.link_dir))

    @property
    def options(self) -> list[str]:
        opts = ["--mode", self.mode, "--cni-bin-dir", str(self.bin_dir), "--cni-conf-dir",
                str(self.conf_dir), "--subnet", self.subnet, "--dns-ip", self.dns_ip,
                "--network", self.network, "--dns-interface", self.dns_interface,
                "--service", "supervisor"]
        if self.mode == "bridge":
            opts += ["--bridge", self.bridge]
        return opts

    @property
    def cli(self) -> Path:
        return self.prefix / "venv" / "bin" / "smarter-cni"

    @property
    def conflist_path(self) -> Path:
        return self.conf_dir / "10-smarter-cni.conflist"

    def install_sh(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(INSTALL_SH), *self.options, *extra], env=self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.cli), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> tuple[int, object]:
        done = self.run(*args, "--json")
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"not JSON: {done.stdout!r} {done.stderr!r}") from None

    def plugin_config(self) -> dict:
        conflist = json.loads(self.conflist_path.read_text())
        config = dict(conflist["plugins"][0])
        config["name"] = conflist["name"]
        config["cniVersion"] = conflist["cniVersion"]
        return config

    def supervisor_pid(self) -> int:
        try:
            return int((self.state_dir / "dns-supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def cleanup(self) -> None:
        """Whatever a failed test left: uninstall, then remove each part by hand."""
        if self.cli.exists():
            self.run("uninstall", "--force")
        pid = self.supervisor_pid()
        if pid and _is_our_supervisor(pid):
            os.kill(pid, signal.SIGTERM)
        if self.mode == "bridge":
            teardown_bridge_network({"name": self.network, "type": "smarter-cni", "bridge": self.bridge,
                                     "subnet": self.subnet}, self.state_dir)
        for device in (self.dns_interface, "lo"):
            subprocess.run(["ip", "addr", "del", f"{self.dns_ip}/32", "dev", device],
                           capture_output=True)
        if link_exists(self.dns_interface):
            subprocess.run(["ip", "link", "del", self.dns_interface], capture_output=True)


def _is_our_supervisor(pid: int) -> bool:
    try:
        return b"supervise-dns" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def dns_address_present(address: str) -> bool:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return f" {address}/" in out


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    installation = Install(tmp_path_factory.mktemp("install"))
    try:
        yield installation
    finally:
        installation.cleanup()


@pytest.fixture(scope="module")
def first_install(inst):
    """install.sh with the self-test, as an operator runs it."""
    started = time.monotonic()
    done = inst.install_sh()
    took = time.monotonic() - started
    print(f"install.sh took {took:.1f} s")
    return done


def test_install_sh_installs_and_its_selftest_passes(inst, first_install):
    done = first_install
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test passed" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # the self-test pinged and resolved by name in both directions
    assert done.stdout.count(" resolve ") == 6 and "FAILED" not in done.stdout
    assert "Checking ping and names between the pods ... ok: 8 checks" in done.stdout
    assert f"--cluster-dns={inst.dns_ip}" in done.stdout


def test_everything_is_in_place(inst, first_install):
    assert first_install.returncode == 0
    for name in ("smarter-cni", "c2d", "loopback"):
        path = inst.bin_dir / name
        assert os.access(path, os.X_OK), name
        # run by the venv's python, which runs on the distribution's (install.sh's choice)
        assert path.read_text().startswith(f"#!{inst.prefix}/venv/bin/python -IS\n"), name
    if os.access(SYSTEM_PYTHON, os.X_OK):
        assert _base_of(inst.prefix / "venv" / "bin" / "python") == os.path.realpath(SYSTEM_PYTHON)
    conflist = json.loads(inst.conflist_path.read_text())
    assert oct(inst.conflist_path.stat().st_mode & 0o777) == "0o644"
    plugin = conflist["plugins"][0]
    assert plugin["type"] == "smarter-cni" and plugin["mode"] == "bridge"
    assert plugin["subnet"] == inst.subnet and plugin["bridge"] == inst.bridge
    assert plugin["dnsAddress"] == inst.dns_ip
    assert link_exists(inst.bridge)
    assert dns_address_present(inst.dns_ip)
    assert _is_our_supervisor(inst.supervisor_pid())
    assert not list(inst.conf_dir.glob(".*tmp")), "temp files left next to the config"
    # the settings that keep a test install off a real one
    assert conflist["name"] == inst.network
    record = json.loads((inst.prefix / "install.json").read_text())
    # on our own dummy interface; `lo` on kernels without the dummy driver (as here)
    device = subprocess.run(["ip", "-o", "addr", "show", "to", inst.dns_ip],
                            capture_output=True, text=True).stdout.split()[1]
    assert device in (inst.dns_interface, "lo") and record["dns_address_device"] == device
    assert (record["network"], record["dns_interface"], record["dns_service"]) == \
        (inst.network, inst.dns_interface, "supervisor")
    assert "unit_path" not in record and not inst.unit_dir.exists()
    # `smarter-cni` on PATH: a link in the link dir, recorded as the program's
    link = inst.link_dir / "smarter-cni"
    assert os.readlink(link) == str(inst.cli)
    program = json.loads((inst.prefix / "program.json").read_text())
    assert program["link"] == str(link) and program["made"] == ["docs", "share", "venv"]
    shown = subprocess.run(["smarter-cni", "--version"], capture_output=True, text=True,
                           env=dict(inst.env, PATH=f"{inst.link_dir}:/usr/bin:/bin"))
    assert shown.returncode == 0 and shown.stdout.startswith("smarter-cni ")


def test_selftest_needs_neither_ping_nor_dig(inst, first_install, tmp_path):
    """A fresh Debian 12 has neither: the self-test probes from Python inside each pod."""
    env = dict(inst.env, PATH=_path_without(tmp_path, "ping", "dig", "nslookup"))
    done = subprocess.run([str(inst.cli), "selftest"], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test passed" in done.stdout and "FAILED" not in done.stdout
    checks = [line.split()[2] for line in done.stdout.splitlines()
              if line.strip().startswith("selftest-") and len(line.split()) > 4]
    assert sorted(checks) == ["ping"] * 2 + ["resolve"] * 6


def test_selftest_command(inst, first_install):
    code, report = inst.json("selftest")
    assert code == 0, report
    assert report["passed"] is True and report["mode"] == "bridge"
    addresses = [pod["address"] for pod in report["pods"]]
    assert len(set(addresses)) == 2
    base = inst.subnet.rsplit(".", 1)[0] + "."
    assert all(a.startswith(base) for a in addresses)
    for pod in report["pods"]:
        assert {c["check"] for c in pod["checks"]} == {"ping", "resolve"}
        assert all(c["ok"] for c in pod["checks"])
    # the throwaway pods are gone again
    assert inst.json("pods")[1] == []


def test_status_reports_a_healthy_node(inst, first_install):
    code, report = inst.json("status")
    assert code == 0, report
    assert report["ok"] is True and report["problems"] == []
    assert report["config"] == str(inst.conflist_path)
    assert report["mode"] == "bridge" and report["network_present"] is True
    assert report["dns"]["answering"] is True and report["dns"]["answer"] == "NXDOMAIN"
    assert report["pool"] == {"used": 0, "size": 253, "percent": 0.0}
    counters = report["dns"]["metrics"]  # from the service's own metrics endpoint
    assert counters["queries"] >= 1 and counters["nxdomain"] >= 1, counters  # status' own probe
    human = inst.run("status")
    assert human.returncode == 0 and "no problems found" in human.stdout
    assert "counters" in human.stdout and " queries (" in human.stdout


class Added:
    """A pod ADDed through the installed plugin, as a runtime would."""

    def __init__(self, inst, netns, name: str, hostname: str = "") -> None:
        self.name = name
        self.runner = PluginRunner(inst.bin_dir, inst.state_dir)
        self.ns_name, self.ns_path = netns.create("inst")
        self.config = inst.plugin_config()
        if hostname:
            self.config["runtimeConfig"] = {
                "io.kubernetes.cri.pod-annotations": {"smarter-cni.io/hostname": hostname}}
        self.container = unique("c", 32)
        result = self.call("ADD")
        assert result.ok, result
        self.result = result.json
        self.address = result.json["ips"][0]["address"].split("/")[0]

    def call(self, command: str, config: dict | None = None):
        return self.runner(command, config or self.config, container_id=self.container,
                           netns=self.ns_path, args=pod_args(self.name, "edge"))

    def delete(self) -> None:
        result = self.call("DEL")
        assert result.ok, result


def test_pods_and_status_show_attached_pods(inst, first_install, netns):
    added = [Added(inst, netns, "web", "web-0"), Added(inst, netns, "sensor")]
    try:
        code, rows = inst.json("pods")
        assert code == 0
        by_name = {row["name"]: row for row in rows}
        assert set(by_name) == {"web", "sensor"}
        assert by_name["web"]["hostname"] == "web-0" and by_name["web"]["namespace"] == "edge"
        assert by_name["web"]["address"] == added[0].address
        assert by_name["sensor"]["address"] == added[1].address
        assert by_name["web"]["container"] == added[0].container
        assert all(row["ready"] for row in rows)
        assert all(0 <= row["age_seconds"] < 120 for row in rows)
        human = inst.run("pods").stdout.splitlines()
        assert human[0].split() == ["NAME", "NAMESPACE", "HOSTNAME", "ADDRESS", "CONTAINER", "AGE"]
        assert any(line.split()[:4] == ["web", "edge", "web-0", added[0].address] for line in human)
        assert inst.json("status")[1]["pool"]["used"] == 2
    finally:
        for pod in added:
            pod.delete()
    assert inst.json("pods")[1] == []


def test_uninstall_refuses_while_pods_are_attached(inst, first_install, netns):
    pod = Added(inst, netns, "busy")
    try:
        done = inst.run("uninstall")
        assert done.returncode == 1
        assert "still attached" in done.stderr and "edge/busy" in done.stderr
        assert "--force" in done.stderr and "Traceback" not in done.stderr
        assert inst.conflist_path.exists() and link_exists(inst.bridge)
    finally:
        pod.delete()


def test_rerunning_install_is_harmless_to_running_pods(inst, first_install, netns):
    pod = Added(inst, netns, "keeper", "keep-0")
    ns_name, address = pod.ns_name, pod.address
    try:
        before = json.loads((inst.state_dir / "attachments.json").read_text())["attachments"]
        done = inst.install_sh("--no-selftest")
        assert done.returncode == 0, done.stdout + done.stderr
        after = json.loads((inst.state_dir / "attachments.json").read_text())["attachments"]
        assert after == before
        # the pod still has its address and reaches its gateway over the same bridge
        shown = netns.exec(ns_name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f" {address}/" in shown.decode()
        gateway = inst.subnet.rsplit(".", 1)[0] + ".1"
        assert netns.exec(ns_name, "ping", "-c1", "-W2", gateway, check=False).returncode == 0
        # and the (restarted) DNS service still knows it
        dig = netns.exec(ns_name, "dig", f"@{inst.dns_ip}", "keep-0", "+short", "+time=2",
                         check=False).stdout.decode().split()
        assert address in dig
        check = pod.call("CHECK", dict(pod.config, prevResult=pod.result))
        assert check.ok, check
    finally:
        pod.delete()


def _forward_rules(inst) -> list[list[str]]:
    """This installation's own FORWARD accepts (found by the network's rule comment)."""
    from smarter_cni.dataplane.firewall import comment, split_words
    from smarter_cni.netconf import parse_netconf

    mark = comment(parse_netconf(inst.plugin_config()))
    text = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True,
                          check=True).stdout
    return [split_words(line)[1:] for line in text.splitlines()
            if line.startswith("-A FORWARD ") and mark in line]


def _delete_forward_rules(inst) -> None:
    rules = _forward_rules(inst)
    assert rules, "the installation has no FORWARD accepts to delete"
    for words in rules:
        subprocess.run(["iptables", "-t", "filter", "-D", *words], check=True)


def test_status_shows_drift_and_the_installer_claims_the_network(inst, first_install):
    """Drift is a problem (exit 1); once install has claimed the network, the installed DNS
    service's reconciler repairs it before any pod runs, and status lists that repair."""
    from smarter_cni import store

    rules = _forward_rules(inst)
    assert len(rules) == 2, rules  # in and out of the bridge
    # As on a node installed with --no-selftest: no pod ever ran, so no ADD marked the
    # network (the self-test's pods did here; the marker is taken away to be like it).
    with store.Transaction(str(inst.state_dir)) as tx:
        assert tx.networks.pop(inst.network, None) is not None
        tx.dirty = True
    _delete_forward_rules(inst)  # not this node's to keep now: the reconciler leaves it
    code, report = inst.json("status")
    assert code == 1, report
    drift = [d for d in report["drift"] if "FORWARD accept" in d]
    assert len(drift) == len(rules) and all(inst.bridge in d for d in drift), report["drift"]
    said = {p["problem"]: p["fix"] for p in report["problems"]}
    assert all("start a pod" in said.get(d, "") for d in drift), report["problems"]
    human = inst.run("status")
    assert human.returncode == 1 and all(d in human.stdout for d in drift), human.stdout
    assert f"drift     {len(report['drift'])} (listed below)" in human.stdout

    done = inst.run("install", *inst.options, "--no-selftest")
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((inst.state_dir / "attachments.json").read_text())
    assert inst.network in state["networks"]  # claimed by the installer, no pod ADDed
    assert _forward_rules(inst) == rules  # install's own set-up restored them
    _delete_forward_rules(inst)
    deadline = time.monotonic() + 10
    while _forward_rules(inst) != rules and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _forward_rules(inst) == rules, "the reconciler did not restore the FORWARD accepts"
    code, report = inst.json("status")
    assert code == 0 and report["drift"] == [], report
    repaired = [r for r in report["repairs"] if "FORWARD accept" in r["what"]]
    assert repaired and repaired[-1]["by"] == "reconciler", report["repairs"]
    assert repaired[-1]["network"] == inst.network
    human = inst.run("status")
    assert human.returncode == 0 and "last repairs:" in human.stdout
    assert repaired[-1]["what"] in human.stdout and "no problems found" in human.stdout


def test_uninstall_leaves_nothing_behind(inst, first_install):
    pid = inst.supervisor_pid()
    assert pid
    done = inst.run("uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not inst.conflist_path.exists()
    for name in ("smarter-cni", "c2d", "loopback"):
        assert not (inst.bin_dir / name).exists()
    assert not link_exists(inst.bridge)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert inst.bridge not in rules and inst.subnet not in rules
    time.sleep(0.2)
    assert not _is_our_supervisor(pid)
    assert not dns_address_present(inst.dns_ip)
    assert not link_exists(inst.dns_interface)  # our dummy interface, once empty
    assert not inst.state_dir.exists()
    assert not (inst.prefix / "install.json").exists()
    assert not inst.bin_dir.exists() and not inst.conf_dir.exists()  # install made them
    assert (inst.prefix / "venv").is_dir() and "--purge" in done.stdout
    assert (inst.link_dir / "smarter-cni").is_symlink()  # the program (and its link) stay
    # a second uninstall has nothing left but the program: --purge takes that too
    again = inst.run("uninstall", "--purge")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert not inst.prefix.exists()
    assert not (inst.link_dir / "smarter-cni").is_symlink()


def test_uninstall_without_a_record_refuses_and_says_how(tmp_path):
    from helpers.plugin import SRC

    env = dict(os.environ, SMARTER_CNI_PREFIX=str(tmp_path / "nothing-here"),
               PYTHONPATH=str(SRC), SMARTER_CNI_STATE_DIR=str(tmp_path / "state"))
    for extra in ([], ["--purge"], ["--force"]):
        done = subprocess.run([sys.executable, "-m", "smarter_cni", "uninstall", *extra],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert f"no install record at {tmp_path}/nothing-here/install.json" in done.stderr
        assert "SMARTER_CNI_PREFIX=DIR smarter-cni uninstall" in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "nothing-here").exists() and not (tmp_path / "state").exists()


# ---------------------------------------------------------------- prerequisites

def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH dir with every program of the usual dirs linked in, except `missing`."""
    import shutil

    bin_dir = tmp_path / "path"
    bin_dir.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = bin_dir / name
            if name in missing or target.exists() or target.is_symlink():
                continue
            target.symlink_to(os.path.join(directory, name))
    python = bin_dir / "python3"
    if python.is_symlink():
        python.unlink()
    python.symlink_to(os.path.realpath(sys.executable))
    for name in missing:
        assert shutil.which(name, path=str(bin_dir)) is None, name
    return str(bin_dir)


def test_install_sh_names_a_missing_prerequisite(tmp_path):
    env = dict(os.environ, PATH=_path_without(tmp_path, "ip"), SMARTER_CNI_SKIP_APT="1",
               SMARTER_CNI_PREFIX=str(tmp_path / "prefix"))
    done = subprocess.run(["bash", str(INSTALL_SH), "--cni-bin-dir", str(tmp_path / "b"),
                           "--cni-conf-dir", str(tmp_path / "c")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "missing prerequisite" in done.stderr and "ip (iproute2)" in done.stderr
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "b").exists()


def test_install_sh_docker_mode_needs_a_running_docker(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
               SMARTER_CNI_SKIP_APT="1", SMARTER_CNI_PREFIX=str(tmp_path / "prefix"))
    done = subprocess.run(["bash", str(INSTALL_SH), "--mode", "docker", "--cni-bin-dir",
                           str(tmp_path / "b"), "--cni-conf-dir", str(tmp_path / "c")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Docker" in done.stderr and f"{tmp_path}/no-docker.sock" in done.stderr
    assert not (tmp_path / "prefix").exists()


def test_install_sh_needs_root(tmp_path):
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "bash", str(INSTALL_SH)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SMARTER_CNI_PREFIX=str(tmp_path / "p")))
    assert done.returncode != 0
    assert "must be run as root" in done.stderr and "sudo ./install.sh" in done.stderr


def test_install_sh_rejects_a_bad_mode():
    done = subprocess.run(["bash", str(INSTALL_SH), "--mode", "vxlan"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "--mode must be 'bridge' or 'docker'" in done.stderr


# ---------------------------------------------------------------- the venv's interpreter

SYSTEM_PYTHON = "/usr/bin/python3"


def _base_of(python: Path | str) -> str:
    """The real path of the interpreter `python` runs on (a venv's: its base)."""
    code = ("import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', '') "
            "or sys.executable))")
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def _venv_only(inst: Install, env: dict) -> subprocess.CompletedProcess:
    """install.sh up to and with the venv: an invalid --subnet stops `smarter-cni install`
    at its option check, before it makes anything (every other option is private too)."""
    done = subprocess.run(["bash", str(INSTALL_SH), *inst.options, "--subnet", "10.999.0.0/24"],
                          env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "'10.999.0.0' is not an IPv4 address" in done.stderr, done.stderr
    assert not inst.bin_dir.exists() and not inst.state_dir.exists()
    return done


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no /usr/bin/python3 here")
def test_install_sh_builds_the_venv_on_the_distributions_python(tmp_path):
    # Another interpreter: a copy of the distribution's binary (it finds its standard
    # library by its built-in prefix), so its real path differs on any machine. It is
    # reached through a wrapper that records each run, first on PATH as `python3`.
    alt = tmp_path / "alt"
    alt.mkdir()
    shutil.copy2(os.path.realpath(SYSTEM_PYTHON), alt / "python3")
    runs = tmp_path / "wrapper-runs"
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    wrapper = path_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {runs}\nexec {alt}/python3 "$@"\n')
    wrapper.chmod(0o755)
    inst = Install(tmp_path)
    path = f"{path_dir}:{os.environ['PATH']}"
    env = dict(inst.env, PATH=path)
    env.pop("PYTHON", None)
    venv = inst.prefix / "venv"
    distro = os.path.realpath(SYSTEM_PYTHON)

    def program() -> dict:
        return json.loads((inst.prefix / "program.json").read_text())

    def shebangs_name_the_venv() -> None:
        for name in ("smarter-cni", "c2d", "pip"):
            first = (venv / "bin" / name).read_text().splitlines()[0]
            assert first in (f"#!{venv}/bin/python", f"#!{venv}/bin/python3"), (name, first)
        assert not (inst.prefix / ".venv.new").exists() and not (inst.prefix / ".venv.old").exists()
        shown = subprocess.run([str(venv / "bin" / "smarter-cni"), "--version"],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.startswith("smarter-cni "), shown

    # 1. by default the distribution's, though another python3 is first on PATH
    done = _venv_only(inst, env)
    assert f"==> python: {SYSTEM_PYTHON} -> {distro} " in done.stdout
    assert "the distribution's" in done.stdout
    assert not runs.exists(), f"PATH's python3 was run: {runs.read_text()}"
    assert _base_of(venv / "bin" / "python") == distro
    assert f"home = {os.path.dirname(SYSTEM_PYTHON)}\n" in (venv / "pyvenv.cfg").read_text()
    assert "python" not in program()
    shebangs_name_the_venv()

    # 2. PYTHON= overrides it: the venv is rebuilt on that one, and it is remembered
    done = _venv_only(inst, dict(env, PYTHON=str(wrapper)))
    assert f"==> python: {wrapper} -> {alt}/python3 " in done.stdout
    assert f"runs on {distro}: rebuilding it on {alt}/python3" in done.stdout
    assert runs.read_text().strip()
    assert _base_of(venv / "bin" / "python") == str(alt / "python3")
    assert f"home = {alt}\n" in (venv / "pyvenv.cfg").read_text()
    assert program()["python"] == str(wrapper)
    shebangs_name_the_venv()

    # 3. a later run without PYTHON= keeps it, and keeps the venv as it is
    cfg = (venv / "pyvenv.cfg").stat()
    done = _venv_only(inst, env)
    assert "remembered in" in done.stdout and "rebuilding" not in done.stdout
    assert (venv / "pyvenv.cfg").stat().st_ino == cfg.st_ino
    assert _base_of(venv / "bin" / "python") == str(alt / "python3")

    # 4. that interpreter removed (as a distribution upgrade removes python3.X): the
    # venv no longer runs; the next run forgets it and rebuilds on the distribution's
    (tmp_path / "alt").rename(tmp_path / "alt-gone")
    done = _venv_only(inst, env)
    assert "does not run (its interpreter is gone?): rebuilding it" in done.stdout
    assert f"the distribution's; PYTHON={wrapper} of an earlier run no longer works" in done.stdout
    assert _base_of(venv / "bin" / "python") == distro
    assert "python" not in program()
    shebangs_name_the_venv()
    (tmp_path / "alt-gone").rename(tmp_path / "alt")

    # 5. no usable distribution interpreter: python3 from PATH, as before
    fresh = Install(tmp_path / "fresh")
    runs.unlink()
    fresh_env = dict(fresh.env, PATH=path, SMARTER_CNI_SYSTEM_PYTHON=str(tmp_path / "no-such"))
    fresh_env.pop("PYTHON", None)
    done = _venv_only(fresh, fresh_env)
    assert f"==> python: python3 -> {alt}/python3 " in done.stdout and "python3 on PATH" in done.stdout
    assert runs.read_text().strip()
    assert _base_of(fresh.prefix / "venv" / "bin" / "python") == str(alt / "python3")


def test_install_sh_refuses_a_python_that_is_not_there(tmp_path):
    done = subprocess.run(["bash", str(INSTALL_SH)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=str(tmp_path / "python9"),
                                   SMARTER_CNI_SKIP_APT="1",
                                   SMARTER_CNI_PREFIX=str(tmp_path / "prefix")))
    assert done.returncode == 1
    assert f"PYTHON={tmp_path}/python9 is not a command" in done.stderr
    assert not (tmp_path / "prefix").exists()
