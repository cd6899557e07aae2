"""A node for the CRI tests: our network behind a private containerd, and pod helpers.

The conflist holds our plugin (asking for every capability containerd 1.6
can fill, so it receives all of runtimeConfig as kubelet's path delivers it)
and the reference `portmap`. containerd adds its own `cni-loopback` network.
The plugin finds its state dir through SMARTER_CNI_STATE_DIR in containerd's
environment, which libcni hands on to every plugin it execs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.cri import CRIClient
from helpers.cri_containerd import Containerd, PluginCall, make_cri_bin_dir, read_calls
from helpers.cri_image import build_archive

IMAGE = "docker.io/library/smarter-cni-busybox:cri-test"
SLEEP = ["/bin/sleep", "1000000"]
# What our plugin entry asks containerd for: everything go-cni 1.1 can put in
# runtimeConfig (ipRanges too, which containerd 1.6 never fills).
CAPABILITIES = {"io.kubernetes.cri.pod-annotations": True, "portMappings": True, "dns": True,
                "bandwidth": True, "ipRanges": True}
HOSTNAME_ANNOTATION = "smarter-cni.io/hostname"


@dataclass
class Pod:
    id: str
    name: str
    namespace: str
    uid: str
    ip: str
    config: dict[str, Any]


def network_conflist(network: dict[str, Any], dns_address: str) -> dict[str, Any]:
    """The conflist containerd reads: what `smarter-cni install` writes (cniVersions list
    and all), for the test's bridge, subnet and DNS address, then the reference portmap."""
    from smarter_cni.conflist import default_conflist

    conflist = default_conflist("bridge")
    ours = conflist["plugins"][0]
    ours.pop("gateway")  # the default: the subnet's first address
    ours.update({key: value for key, value in network.items()
                 if key not in ("cniVersion", "name")})
    ours.update(dnsAddress=dns_address, capabilities=CAPABILITIES)
    conflist["name"] = network["name"]
    conflist["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True}})
    return conflist


class CriNode:
    """Build with `CriNode(base, network, dns_address, state_dir).start()`; `cleanup()` always."""

    def __init__(self, base: Path, network: dict[str, Any], dns_address: str,
                 state_dir: Path) -> None:
        self.base = base
        self.network = network
        self.dns_address = dns_address
        self.state_dir = state_dir
        self.records = base / "calls"
        self.conf_dir = base / "net.d"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conflist = network_conflist(network, dns_address)
        self.conf_path = self.conf_dir / "10-cri-test.conflist"
        self.conf_path.write_text(json.dumps(self.conflist, indent=1))
        bin_dir = make_cri_bin_dir(base / "bin", self.records)
        self.containerd = Containerd(base / "containerd", bin_dir, self.conf_dir, IMAGE,
                                     env={"SMARTER_CNI_STATE_DIR": str(state_dir)})
        self.timings: dict[str, float] = {}

    @property
    def prefix_len(self) -> int:
        return int(self.network["subnet"].split("/")[1])

    @property
    def client(self) -> CRIClient:
        assert self.containerd.client is not None
        return self.containerd.client

    def start(self) -> CriNode:
        started = time.monotonic()
        archive = build_archive(self.base / "busybox.tar", IMAGE, SLEEP)
        self.timings["image build"] = time.monotonic() - started
        self.containerd.start()
        self.timings["containerd start"] = self.containerd.starts[-1]
        started = time.monotonic()
        self.containerd.import_image(archive, IMAGE)
        self.timings["image import"] = time.monotonic() - started
        return self

    # ------------------------------------------------------------ pods

    def sandbox_config(self, name: str, namespace: str = "default", hostname: str = "",
                       annotation_hostname: str = "", host_ports: dict[int, int] | None = None,
                       annotations: dict[str, str] | None = None) -> dict[str, Any]:
        uid = str(uuid.uuid4())
        config: dict[str, Any] = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
            "hostname": hostname or name,
            "log_directory": str(self.base / "logs" / uid),
            "dns_config": {"servers": [self.dns_address],
                           "searches": [f"{namespace}.svc.cluster.local", "svc.cluster.local",
                                        "cluster.local"],
                           "options": ["ndots:5"]},
            "labels": {"app": name},
            "annotations": dict(annotations or {}),
        }
        if annotation_hostname:
            config["annotations"][HOSTNAME_ANNOTATION] = annotation_hostname
        if host_ports:
            config["port_mappings"] = [{"protocol": 0, "container_port": container,
                                        "host_port": host}
                                       for host, container in host_ports.items()]
        return config

    def run_pod(self, name: str, **kwargs: Any) -> Pod:
        return self.run_sandbox(self.sandbox_config(name, **kwargs))

    def run_sandbox(self, config: dict[str, Any]) -> Pod:
        """RunPodSandbox with a whole config (e.g. a pod's, attempt + 1, as kubelet retries)."""
        metadata = config["metadata"]
        (self.base / "logs" / metadata["uid"]).mkdir(parents=True, exist_ok=True)
        pod_id = self.client.call("RunPodSandbox", config=config).pod_sandbox_id
        status = self.client.call("PodSandboxStatus", pod_sandbox_id=pod_id).status
        return Pod(pod_id, metadata["name"], metadata["namespace"], metadata["uid"],
                   status.network.ip, config)

    def pod_status(self, pod: Pod) -> Any:
        return self.client.call("PodSandboxStatus", pod_sandbox_id=pod.id).status

    def start_container(self, pod: Pod, command: list[str] = SLEEP, name: str = "main") -> str:
        container_id = self.client.call(
            "CreateContainer", pod_sandbox_id=pod.id, sandbox_config=pod.config,
            config={"metadata": {"name": name}, "image": {"image": IMAGE}, "command": command,
                    "log_path": f"{name}.log"}).container_id
        self.client.call("StartContainer", container_id=container_id)
        return container_id

    def exec(self, container_id: str, *cmd: str, timeout: int = 20) -> tuple[int, str, str]:
        answer = self.client.call("ExecSync", container_id=container_id, cmd=list(cmd),
                                  timeout=timeout)
        return answer.exit_code, answer.stdout.decode(), answer.stderr.decode()

    def stop_pod(self, pod: Pod) -> None:
        self.client.call("StopPodSandbox", pod_sandbox_id=pod.id)

    def remove_pod(self, pod: Pod) -> None:
        self.client.call("RemovePodSandbox", pod_sandbox_id=pod.id)

    # ------------------------------------------------------------ what the plugin saw

    def calls(self, pod: Pod | None = None, plugin: str = "smarter-cni") -> list[PluginCall]:
        """Recorded calls of `plugin` (ours, or "loopback"), oldest first."""
        return [call for call in read_calls(self.records)
                if call.plugin == plugin and (pod is None or call.container_id == pod.id)]

    def started_calls(self) -> int:
        """Plugin runs begun so far, finished or not (the recorder writes .env first)."""
        return sum(1 for _ in self.records.glob("*.env"))

    def running_calls(self) -> int:
        """Plugin runs begun and not finished (.rc is written last)."""
        return self.started_calls() - sum(1 for _ in self.records.glob("*.rc"))

    def attachments(self) -> dict[str, Any]:
        path = self.state_dir / "attachments.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text()).get("attachments", {})

    def attachment_of(self, pod: Pod) -> dict[str, Any] | None:
        for record in self.attachments().values():
            if record.get("container_id") == pod.id:
                return record
        return None

    def host_veths(self) -> list[str]:
        """The links enslaved to our bridge (the pods' host ends)."""
        bridge = self.network["bridge"]
        try:
            return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))
        except FileNotFoundError:
            return []

    # ------------------------------------------------------------ teardown

    def cleanup(self) -> list[str]:
        netns = sorted({call.netns for call in read_calls(self.records) if call.netns})
        return self.containerd.cleanup(netns)


def _unrouted(address: str) -> bool:
    routes = subprocess.run(["ip", "-4", "route", "show", "match", address],
                            capture_output=True, text=True, timeout=30).stdout
    return all(not line or line.startswith("default") for line in routes.splitlines())


def free_subnet(prefix_len: int = 24) -> str | None:
    """The start of an unused /24 of 10.244.0.0/16 (as tests/conftest.py's bridge_network
    picks), as a subnet of `prefix_len` bits."""
    for _ in range(50):
        start = f"10.244.{random.randint(0, 255)}.0"
        if _unrouted(start):
            return f"{start}/{prefix_len}"
    return None


def free_link_local() -> str | None:
    """A 169.254.x.y no interface of the node has."""
    for _ in range(50):
        address = f"169.254.{random.randint(100, 250)}.{random.randint(2, 254)}"
        found = subprocess.run(["ip", "-4", "-o", "addr", "show", "to", address],
                               capture_output=True, text=True, timeout=30).stdout
        if not found.strip():
            return address
    return None


def route_device(address: str) -> str:
    """The device the host routes `address` through ('' if none)."""
    fields = subprocess.run(["ip", "-4", "-o", "route", "get", address], capture_output=True,
                            text=True, timeout=30).stdout.split()
    return fields[fields.index("dev") + 1] if "dev" in fields else ""
