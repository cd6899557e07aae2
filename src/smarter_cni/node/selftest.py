"""`smarter-cni selftest`: two throwaway pods through the installed plugin.

It does what a runtime does: makes each pod a sandbox (a fresh network
namespace in bridge mode; a `--network none` container in docker mode, as
cri-dockerd makes them), execs `loopback` and `smarter-cni` from the CNI bin
dir with the CNI environment and the installed config on stdin, then checks
from inside each pod that the other answers a ping and resolves by name
through the node DNS address. The pods are always deleted (CNI DEL, then the
sandbox), whatever failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any

from ..conflist import netconf_of, plugin_config
from ..dataplane.bridge import HOSTNAME_ANNOTATION
from ..dns.acl import host_has
from ..launcher import package_root
from .console import CLIError, Output
from .status import bin_dir_of, find_config

NAMESPACE = "smarter-cni-selftest"
IMAGE = "smarter-cni/selftest:busybox"
PLUGIN_TIMEOUT = 60.0


class Pod:
    def __init__(self, tag: str, letter: str) -> None:
        self.name = f"selftest-{tag}-{letter}"
        self.hostname = f"st-{tag}-host-{letter}"
        self.uid = str(uuid.uuid4())
        self.container_id = f"smartercniselftest{tag}{letter}"
        self.netns_name = ""
        self.netns = ""
        self.docker_id = ""
        self.address = ""
        self.added = False
        self.loopback_added = False
        self.checks: list[dict[str, Any]] = []

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{NAMESPACE}.svc"

    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={self.name};"
                f"K8S_POD_UID={self.uid};K8S_POD_INFRA_CONTAINER_ID={self.container_id}")


class Runner:
    """Exec CNI plugins from the bin dir the way a runtime does."""

    def __init__(self, bin_dir: str, config: dict[str, Any]) -> None:
        self.bin_dir = bin_dir
        self.config = config

    def call(self, plugin: str, command: str, pod: Pod, config: dict[str, Any] | None = None
             ) -> tuple[bool, Any, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
                    "CNI_NETNS": pod.netns, "CNI_IFNAME": "lo" if plugin == "loopback" else "eth0",
                    "CNI_ARGS": pod.cni_args(), "CNI_PATH": self.bin_dir})
        body = json.dumps(config or self.config).encode()
        try:
            done = subprocess.run([os.path.join(self.bin_dir, plugin)], input=body, env=env,
                                  capture_output=True, timeout=PLUGIN_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, None, f"{plugin} {command}: {err}"
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            answer = None
        if done.returncode != 0:
            msg = answer.get("msg") if isinstance(answer, dict) else None
            return False, answer, f"{plugin} {command} failed: " + (
                msg or done.stderr.decode(errors="replace").strip()[:300] or f"exit {done.returncode}")
        return True, answer, ""


# ---------------------------------------------------------------- sandboxes

def _sh(argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


class NetnsSandboxes:
    """Bridge mode: each pod is a named network namespace."""

    def create(self, pod: Pod) -> None:
        name = f"scni-selftest-{pod.container_id[-8:]}"
        done = _sh(["ip", "netns", "add", name])
        if done.returncode != 0:
            raise CLIError(f"cannot create network namespace {name}: {done.stderr.strip()}",
                           "run as root on a kernel with network namespaces")
        pod.netns_name = name
        pod.netns = f"/var/run/netns/{name}"

    def remove(self, pod: Pod) -> None:
        if pod.netns_name:
            _sh(["ip", "netns", "del", pod.netns_name])


class DockerSandboxes:
    """Docker mode: each pod is a sandbox container with network `none`, as cri-dockerd makes."""

    def __init__(self, socket_path: str) -> None:
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{socket_path}")
        if not shutil.which("docker"):
            raise CLIError("the docker command is needed for the docker-mode self-test",
                           "apt-get install docker.io (or docker-ce-cli)")

    def docker(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        done = _sh(["docker", *args], timeout=timeout, env=self.env)
        if check and done.returncode != 0:
            raise CLIError(f"docker {args[0]} failed: {done.stderr.strip()[:300]}",
                           "check that dockerd runs (docker info)")
        return done.stdout.strip()

    def ensure_image(self) -> str:
        if _sh(["docker", "image", "inspect", IMAGE], env=self.env).returncode == 0:
            return IMAGE
        build_busybox_image(self.env)
        return IMAGE

    def create(self, pod: Pod) -> None:
        image = self.ensure_image()
        pod.docker_id = self.docker("run", "-d", "--network", "none", "--hostname", pod.hostname,
                                    "--name", f"smarter-cni-{pod.name}",
                                    "--label", "smarter-cni-selftest=1", image, "sleep", "600")
        pod.container_id = pod.docker_id
        pid = self.docker("inspect", "-f", "{{.State.Pid}}", pod.docker_id)
        pod.netns = f"/proc/{pid}/ns/net"

    def remove(self, pod: Pod) -> None:
        if pod.docker_id:
            self.docker("rm", "-f", pod.docker_id, check=False)


def build_busybox_image(env: dict[str, str]) -> None:
    """No registry may be reachable: import a root filesystem of a static busybox."""
    busybox = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), "")
    if not busybox:
        raise CLIError("the docker-mode self-test needs a local image and busybox to build it",
                       "apt-get install busybox-static (then run selftest again)")
    root = tempfile.mkdtemp(prefix="smarter-cni-rootfs-")
    try:
        bin_dir = os.path.join(root, "bin")
        os.mkdir(bin_dir)
        shutil.copy2(busybox, os.path.join(bin_dir, "busybox"))
        applets = _sh([busybox, "--list"]).stdout.split()
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                os.symlink("busybox", os.path.join(bin_dir, applet))
        for directory in ("etc", "tmp", "proc", "sys", "dev"):
            os.makedirs(os.path.join(root, directory), exist_ok=True)
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True)
        done = subprocess.run(["docker", "import", "-", IMAGE], input=tar.stdout,
                              capture_output=True, env=env, timeout=120)
        if done.returncode != 0:
            raise CLIError(f"docker import failed: {done.stderr.decode(errors='replace')[:300]}",
                           "check that dockerd runs (docker info)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- checks

def in_pod(pod: Pod, *argv: str) -> dict[str, Any]:
    """Run node/inpod.py inside the pod's netns (this python, this package: no ping, no dig)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["PYTHONPATH"] = package_root()
    done = _sh(["nsenter", f"--net={pod.netns}", sys.executable, "-m", "smarter_cni.node.inpod",
                *argv], timeout=15, env=env)
    try:
        result = json.loads(done.stdout)
        if isinstance(result, dict) and "ok" in result:
            return result
    except ValueError:
        pass
    why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    return {"ok": False, "addresses": [], "detail": why[0][:120]}


def ping(pod: Pod, address: str) -> tuple[bool, str]:
    result = in_pod(pod, "ping", address)
    return bool(result["ok"]), str(result.get("detail", ""))


def resolve(pod: Pod, server: str, name: str, qtype: str = "A") -> list[str]:
    """A (or AAAA) records for `name` asked of `server` from inside the pod."""
    return list(in_pod(pod, "resolve", server, name, qtype).get("addresses") or [])


# ---------------------------------------------------------------- the test

def selftest(out: Output, conf_dir: str | None = None, bin_dir: str | None = None,
             nested: bool = False) -> int:
    path, conflist = find_config(conf_dir)
    if path is None or conflist is None:
        raise CLIError("no smarter-cni config found" if path is None else f"{path} is unreadable",
                       "run `sudo smarter-cni install` first")
    conf = netconf_of(conflist)
    bins = bin_dir_of(bin_dir)
    if not os.access(os.path.join(bins, "smarter-cni"), os.X_OK):
        raise CLIError(f"the plugin is not installed in {bins}",
                       "run `sudo smarter-cni install` (or pass --cni-bin-dir)")
    config = plugin_config(conflist)
    runner = Runner(bins, config)
    sandboxes: Any = (NetnsSandboxes() if conf.mode == "bridge"
                      else DockerSandboxes(conf.docker_socket))
    tag = uuid.uuid4().hex[:6]
    pods = [Pod(tag, "a"), Pod(tag, "b")]
    failures: list[str] = []
    indent = "  " if nested else ""
    if not nested:
        out.say(f"smarter-cni self-test ({conf.mode} mode, config {path})")
    try:
        for pod in pods:
            with out.step(f"{indent}Creating pod {pod.name}") as step:
                _add_pod(runner, sandboxes, pod, conf, failures)
                step.detail = pod.address or "no address"
        if not failures:
            _check_pods(out, pods, conf, indent)
    finally:
        with out.step(f"{indent}Deleting the test pods"):
            for pod in pods:
                _delete_pod(runner, sandboxes, pod, failures)
    rows = []
    for pod in pods:
        for check in pod.checks:
            if not check["ok"]:
                failures.append(f"{pod.name}: {check['check']} {check['target']}: {check['detail']}")
            rows.append((pod.name, pod.address or "-", check["check"], check["target"],
                         "ok" if check["ok"] else "FAILED", check["detail"]))
    if rows:
        out.table(("POD", "ADDRESS", "CHECK", "TARGET", "RESULT", "DETAIL"), rows, indent=indent + "  ")
    passed = not failures
    for failure in failures:
        out.note(f"{indent}  failed: {failure}")
    out.say(f"{indent}self-test {'passed' if passed else 'FAILED'}")
    if not nested:
        out.emit({"passed": passed, "mode": conf.mode, "config": path, "failures": failures,
                  "pods": [{"name": p.name, "hostname": p.hostname, "address": p.address,
                            "checks": p.checks} for p in pods]})
    return 0 if passed else 1


def _add_pod(runner: Runner, sandboxes: Any, pod: Pod, conf: Any, failures: list[str]) -> None:
    sandboxes.create(pod)
    if os.access(os.path.join(runner.bin_dir, "loopback"), os.X_OK):
        loop_config = {"cniVersion": runner.config.get("cniVersion", "1.0.0"),
                       "name": "cni-loopback", "type": "loopback"}
        ok, _, why = runner.call("loopback", "ADD", pod, loop_config)
        pod.loopback_added = ok
        if not ok:
            failures.append(why)
    config = dict(runner.config)
    if conf.mode == "bridge":
        config["runtimeConfig"] = {"io.kubernetes.cri.pod-annotations":
                                   {HOSTNAME_ANNOTATION: pod.hostname}}
    pod.added = True  # DEL even when ADD failed half-way: that is what runtimes do
    ok, answer, why = runner.call("smarter-cni", "ADD", pod, config)
    if not ok:
        failures.append(why)
        return
    ips = (answer or {}).get("ips") or []
    if ips:
        pod.address = str(ips[0].get("address", "")).split("/", 1)[0]
    if not pod.address:
        failures.append(f"{pod.name}: ADD returned no address: {answer}")


def _check_pods(out: Output, pods: list[Pod], conf: Any, indent: str) -> None:
    # IPv4 pods ask the IPv4 DNS address for A records; IPv6-only pods the IPv6 one for AAAA
    server, qtype = (conf.dns_address, "A") if conf.ipv4 else (conf.dns_address6, "AAAA")
    # pods reach the DNS address through the node; were it not the node's own,
    # their queries would be forwarded out of the node: never send them then
    dns_here = host_has(server)
    with out.step(f"{indent}Checking ping and names between the pods") as step:
        for pod, peer in ((pods[0], pods[1]), (pods[1], pods[0])):
            ok, detail = ping(pod, peer.address)
            pod.checks.append({"check": "ping", "target": peer.address, "ok": ok, "detail": detail})
            for name in (peer.name, f"{peer.fqdn}.{conf.domain}", peer.hostname):
                if not dns_here:
                    pod.checks.append({"check": "resolve", "target": name, "ok": False,
                                       "detail": f"DNS address {server} is not on "
                                                 "this node (is the DNS service running?)"})
                    continue
                addresses = resolve(pod, server, name, qtype)
                ok = peer.address in addresses
                detail = " ".join(addresses) if addresses else "no answer / no record"
                pod.checks.append({"check": "resolve", "target": name, "ok": ok, "detail": detail})
        checks = [check for pod in pods for check in pod.checks]
        failed = sum(1 for check in checks if not check["ok"])
        if failed:
            step.fail(f"{failed} of {len(checks)} checks failed")
        else:
            step.detail = f"{len(checks)} checks"


def _delete_pod(runner: Runner, sandboxes: Any, pod: Pod, failures: list[str]) -> None:
    try:
        if pod.added:
            ok, _, why = runner.call("smarter-cni", "DEL", pod)
            if not ok:
                failures.append(why)
        if pod.loopback_added:
            runner.call("loopback", "DEL", pod,
                        {"cniVersion": runner.config.get("cniVersion", "1.0.0"),
                         "name": "cni-loopback", "type": "loopback"})
    finally:
        sandboxes.remove(pod)
